"""The Triton replicas behind a modality service: discovery, one channel each, readiness, ejection, load.

`HUBMESH_<MODALITY>_TRITON_URL` names them, comma-separated; each target is

    host:port[:metrics_port]   one replica (IPv6 as [::1]:8001:8002)
    dns:///host:port           every address the name resolves to (a headless Kubernetes Service),
                               resolved again every `resolve_interval_s`

Each replica gets its own gRPC channel. A probe loop asks every replica, every `probe_interval_s`,
which of the service's Triton models are ready there: the candidates for a model are the replicas
where it is ready. A replica whose call fails because it is gone (UNAVAILABLE) is *ejected* at once —
no new request goes to it — and admitted again when a probe finds it ready. A replica that hangs (a
generation there stalled, services.text.stalls) is *quarantined*: no new request goes to it, and
"model ready", which a hung engine still answers, does not bring it back; a `canary` (a call that
must really compute, e.g. a generation of a few tokens, within a short deadline) is tried every
`probe_interval_s`, and the replica is admitted again when one succeeds. Only when every replica of
a model is quarantined do the quarantined ones stay candidates (a false alarm everywhere must not
stop the service). With `scrape`, a loop reads
each replica's Prometheus metrics (Triton's metrics port) for the engine's own load, under the names
Triton's vLLM backend gives them (`vllm:num_requests_running`, ...): off every request's path.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import aiohttp
import grpc
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.grpc import service_pb2, service_pb2_grpc

from services.common.grpc_options import TRITON_CHANNEL_OPTIONS
from services.common.metrics import CANARIES, EJECTIONS, REPLICA_IN_FLIGHT, REPLICA_QUARANTINED, REPLICA_READY

log = logging.getLogger(__name__)
MAX_NOTES = 50

DNS_SCHEME = "dns:///"


@dataclass(frozen=True)
class Target:
    """One entry of TRITON_URL: a replica, or (discover) a DNS name standing for many."""

    host: str
    port: int
    metrics_port: int  # 0: not scraped
    discover: bool = False


def _port(text: str, entry: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"{entry!r}: {text!r} is not a port")
    return int(text)


def parse_targets(value: str, metrics_port: int = 0) -> tuple[Target, ...]:
    """The targets of a TRITON_URL value; ValueError saying which entry is wrong.

    `metrics_port` applies to entries without a third number and to every DNS target."""
    targets = []
    for entry in (part.strip() for part in value.split(",")):
        if not entry:
            continue
        discover = entry.startswith(DNS_SCHEME)
        rest = entry.removeprefix(DNS_SCHEME)
        if rest.startswith("["):  # [v6]:port[:metrics]
            host, _, ports = rest[1:].partition("]")
            parts = ports.removeprefix(":").split(":") if ports.startswith(":") else []
        else:
            host, *parts = rest.split(":")
        if not host or not 1 <= len(parts) <= (1 if discover else 2):
            raise ValueError(f"{entry!r}: expected host:port[:metrics_port] or dns:///host:port")
        port = _port(parts[0], entry)
        metrics = _port(parts[1], entry) if len(parts) == 2 else metrics_port
        targets.append(Target(host, port, metrics, discover))
    if not targets:
        raise ValueError("no Triton target given")
    return tuple(targets)


@dataclass
class EngineLoad:
    """What a replica's engine reports of one model (None where it exports nothing)."""

    running: float = 0.0
    waiting: float = 0.0
    kv_usage: float | None = None
    kv_capacity_tokens: int | None = None  # from vllm:cache_config_info (num_gpu_blocks × block_size)
    ours: int = 0  # this process's calls in flight there when the figures were read

    def others(self) -> float:
        """Requests other clients (other pickers) had on the engine when it was read."""
        return max(0.0, self.running + self.waiting - self.ours)


def address_of(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Replica:
    """One Triton server: its channel and stub, which models are ready there, its load."""

    def __init__(self, host: str, port: int, metrics_port: int, channel_options: list) -> None:
        self.address = address_of(host, port)
        self.metrics_url = f"http://{address_of(host, metrics_port)}/metrics" if metrics_port else None
        self._options = channel_options
        self.channel: grpc.aio.Channel | None = None  # opened on first use (in the event loop)
        self._stub: service_pb2_grpc.GRPCInferenceServiceStub | None = None
        self.ready_models: frozenset[str] | None = None  # None: never probed (a candidate for every model)
        self.ejected = False
        self.quarantined = False  # stalled: out until a canary succeeds (ReplicaSet.quarantine)
        self.in_flight = 0  # calls of this process now running there
        self.load: dict[str, EngineLoad] = {}  # Triton model -> what the engine last reported
        self._gauge = REPLICA_IN_FLIGHT.labels(self.address)

    @property
    def stub(self) -> service_pb2_grpc.GRPCInferenceServiceStub:
        if self._stub is None:
            self.channel = grpc.aio.insecure_channel(self.address, options=self._options)
            self._stub = service_pb2_grpc.GRPCInferenceServiceStub(self.channel)
        return self._stub

    async def close(self) -> None:
        if self.channel is not None:
            await self.channel.close()

    def serves(self, model: str) -> bool:
        return not self.quarantined and self.has(model)

    def has(self, model: str) -> bool:
        """Ready for `model` as far as probes know (quarantined or not)."""
        return not self.ejected and (self.ready_models is None or model in self.ready_models)

    def outstanding(self, model: str) -> float:
        """Requests on this replica: ours in flight now, plus other clients' as its engine last counted
        them (figures a scrape old would otherwise count our own finished calls as load)."""
        load = self.load.get(model)
        return self.in_flight if load is None else self.in_flight + load.others()

    @contextlib.contextmanager
    def busy(self):
        """Counts one call in flight for as long as the block runs."""
        self.in_flight += 1
        self._gauge.inc()
        try:
            yield self
        finally:
            self.in_flight -= 1
            self._gauge.dec()

    def __repr__(self) -> str:
        return f"Replica({self.address})"


class ReplicaSet:
    """Every replica of the targets; `run()` keeps discovery, readiness and load current."""

    def __init__(
        self,
        targets: Sequence[Target],
        models: Iterable[str] = (),
        channel_options: list | None = None,
        probe_interval_s: float = 1.0,
        resolve_interval_s: float = 10.0,
        scrape_interval_s: float = 0.5,
        scrape: bool = False,
        canary=None,
        canary_timeout_s: float = 2.0,
    ) -> None:
        self._targets = tuple(targets)
        self.models = tuple(dict.fromkeys(models))
        self._options = channel_options if channel_options is not None else TRITON_CHANNEL_OPTIONS
        self._probe_interval_s = probe_interval_s
        self._resolve_interval_s = resolve_interval_s
        self._scrape_interval_s = scrape_interval_s
        self._scrape = scrape
        self._replicas: dict[str, Replica] = {}
        self._retired: set[Replica] = set()
        self._discovered: set[str] = set()  # addresses found through DNS (retired when they vanish)
        self._probed = asyncio.Event()
        # async (replica) -> bool: whether a quarantined replica really computes again (see quarantine)
        self.canary = canary
        self.canary_timeout_s = canary_timeout_s
        # (replica) -> seconds a canary may take there (at least canary_timeout_s)
        self.canary_deadline: Callable[[Replica], float] | None = None
        self._canaries: dict[str, asyncio.Task] = {}
        for target in self._targets:
            if not target.discover:
                self._add(target.host, target.port, target.metrics_port)
        self.listeners: list = []  # callables (replica, event) for "ejected"/"admitted"/"removed"
        # what happened to generations there (a migration off it, a stall): (unix time, address, event),
        # the latest MAX_NOTES, for the mesh's events (services/common/mesh.py)
        self.notes: collections.deque[tuple[float, str, str]] = collections.deque(maxlen=MAX_NOTES)

    @classmethod
    def from_url(cls, url: str, **options) -> ReplicaSet:
        return cls(parse_targets(url), **options)

    # -- what the pickers see -----------------------------------------------------------------

    @property
    def replicas(self) -> list[Replica]:
        return list(self._replicas.values())

    def candidates(self, model: str, excluded: Iterable[Replica] = ()) -> list[Replica]:
        """Replicas that can serve `model` now, in a stable order."""
        excluded = set(excluded)
        found = [r for r in self._replicas.values() if r.serves(model) and r not in excluded]
        if not found:  # every one quarantined: better a suspect replica than none
            found = [r for r in self._replicas.values() if r.quarantined and r.has(model) and r not in excluded]
        return found

    async def is_ready(self, model: str) -> bool:
        """True when some replica has `model` ready (probing now if no probe has run yet)."""
        if not self._probed.is_set():
            await self.refresh()
        return any(r.has(model) for r in self._replicas.values())

    def eject(self, replica: Replica, why: str) -> None:
        """No new calls go to `replica` until a probe finds it ready again (a quarantined one stays
        quarantined: its canary decides)."""
        if replica.ejected or replica.quarantined or replica.address not in self._replicas:
            return
        replica.ejected = True
        replica.ready_models = frozenset()  # nothing is known ready there until a probe says so
        replica.load.clear()
        EJECTIONS.labels(replica.address).inc()
        self._set_ready_gauges(replica, frozenset())
        log.warning("Triton replica %s ejected: %s", replica.address, why)
        self._notify(replica, "ejected")

    def quarantine(self, replica: Replica, why: str) -> bool:
        """No new calls go to `replica` until a canary succeeds there; False if it already was."""
        if replica.quarantined or replica.address not in self._replicas:
            return False
        replica.quarantined = True
        replica.load.clear()
        REPLICA_QUARANTINED.labels(replica.address).set(1)
        self._set_ready_gauges(replica, frozenset())
        log.warning("Triton replica %s quarantined: %s", replica.address, why)
        self._notify(replica, "quarantined")
        if self.canary is not None:
            self._canaries[replica.address] = asyncio.get_running_loop().create_task(self._canary_loop(replica))
        return True

    def readmit(self, replica: Replica) -> None:
        """`replica` served a canary: it takes new calls again (every model of the set is ready there)."""
        if not replica.quarantined:
            return
        replica.quarantined = replica.ejected = False
        replica.ready_models = frozenset(self.models) if self.models else None
        REPLICA_QUARANTINED.labels(replica.address).set(0)
        self._set_ready_gauges(replica, frozenset(self.models))
        log.info("Triton replica %s admitted again: a canary generation succeeded", replica.address)
        self._notify(replica, "admitted")

    async def try_canary(self, replica: Replica) -> bool:
        """One canary on `replica` within `canary_timeout_s` (or `canary_deadline(replica)` when longer);
        a timeout or any error is a failure."""
        timeout = self.canary_timeout_s
        if self.canary_deadline is not None:
            timeout = max(timeout, self.canary_deadline(replica))
        try:
            async with asyncio.timeout(timeout):
                ok = bool(await self.canary(replica))
        except asyncio.CancelledError:
            raise
        except Exception as err:  # whatever went wrong, the replica stays out
            log.info("canary on Triton replica %s failed: %s", replica.address, err or type(err).__name__)
            ok = False
        CANARIES.labels(replica.address, "ok" if ok else "failed").inc()
        return ok

    async def _canary_loop(self, replica: Replica) -> None:
        try:
            while replica.quarantined and self._replicas.get(replica.address) is replica:
                await asyncio.sleep(self._probe_interval_s)
                if await self.try_canary(replica):
                    self.readmit(replica)
        finally:
            self._canaries.pop(replica.address, None)

    # -- keeping it current ---------------------------------------------------------------------

    async def refresh(self) -> None:
        """One round of discovery (when DNS targets exist) and readiness probes."""
        if any(t.discover for t in self._targets):
            await self._resolve()
        await asyncio.gather(*(self._probe(r) for r in list(self._replicas.values())))
        self._probed.set()

    async def run(self) -> None:
        """Discovery, probes and scraping until cancelled."""
        loops = [self._every(self._probe_interval_s, self._probe_all)]
        if any(t.discover for t in self._targets):
            loops.append(self._every(self._resolve_interval_s, self._resolve))
        if self._scrape and any(t.metrics_port for t in self._targets):
            loops.append(self._scrape_loop())
        await self.refresh()
        await asyncio.gather(*loops)

    async def close(self) -> None:
        for task in list(self._canaries.values()):
            task.cancel()
        for replica in [*self._replicas.values(), *self._retired]:
            await replica.close()

    @staticmethod
    async def _every(interval_s: float, work) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await work()
            except Exception:  # a failing round never stops the loop
                log.exception("replica upkeep failed")

    async def _probe_all(self) -> None:
        await asyncio.gather(*(self._probe(r) for r in list(self._replicas.values())))
        for replica in list(self._retired):
            if replica.in_flight == 0:
                self._retired.discard(replica)
                await replica.close()

    async def _probe(self, replica: Replica) -> None:
        """Which of our models are ready on `replica` (none when it does not answer); a quarantined
        replica is left to its canary."""
        if replica.quarantined:
            return
        try:
            if self.models:
                replies = await asyncio.gather(*(
                    replica.stub.ModelReady(service_pb2.ModelReadyRequest(name=m), timeout=2.0) for m in self.models
                ))
                ready = frozenset(m for m, reply in zip(self.models, replies, strict=True) if reply.ready)
                answered = True
            else:  # no model list: the server's own readiness stands for every model
                answered = (await replica.stub.ServerReady(service_pb2.ServerReadyRequest(), timeout=2.0)).ready
                ready = frozenset()
        except grpc.aio.AioRpcError:
            ready, answered = frozenset(), False
        usable = bool(ready) if self.models else answered
        if replica.quarantined:  # quarantined while the probe ran
            return
        if ready != replica.ready_models:
            self._set_ready_gauges(replica, ready)
        replica.ready_models = ready if self.models else (None if answered else frozenset())
        if replica.ejected and usable:
            replica.ejected = False
            log.info("Triton replica %s admitted again", replica.address)
            self._notify(replica, "admitted")

    def _set_ready_gauges(self, replica: Replica, ready: frozenset[str]) -> None:
        for model in self.models:
            REPLICA_READY.labels(replica.address, model).set(1 if model in ready else 0)

    async def _resolve(self) -> None:
        """Adds the addresses the DNS targets resolve to now, retires those they no longer do."""
        loop = asyncio.get_running_loop()
        seen = {a for a in self._replicas if a not in self._discovered}
        for target in (t for t in self._targets if t.discover):
            try:
                infos = await loop.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
            except OSError as err:
                log.warning("cannot resolve %s: %s (keeping the replicas known)", target.host, err)
                seen |= self._discovered
                continue
            for *_, sockaddr in infos:
                seen.add(self._add(str(sockaddr[0]), target.port, target.metrics_port, discovered=True).address)
        for address in [a for a in self._replicas if a not in seen]:
            replica = self._replicas.pop(address)
            self._discovered.discard(address)
            self._retired.add(replica)  # its channel closes once its calls are done
            log.info("Triton replica %s no longer resolves: retired", address)
            self._notify(replica, "removed")

    def _add(self, host: str, port: int, metrics_port: int, discovered: bool = False) -> Replica:
        existing = self._replicas.get(address_of(host, port))
        if existing is not None:
            return existing
        replica = Replica(host, port, metrics_port, self._options)
        if discovered:
            replica.ready_models = frozenset()  # not a candidate before its first probe
            self._discovered.add(replica.address)
            log.info("Triton replica %s discovered", replica.address)
        self._replicas[replica.address] = replica
        return replica

    def note(self, replica: Replica, event: str) -> None:
        """Something that happened to a generation on `replica` (not a change of its state: no
        listener hears it)."""
        self.notes.append((time.time(), replica.address, event))

    def _notify(self, replica: Replica, event: str) -> None:
        for listener in self.listeners:
            listener(replica, event)

    # -- the engines' own load ------------------------------------------------------------------

    async def _scrape_loop(self) -> None:
        timeout = aiohttp.ClientTimeout(total=max(0.2, self._scrape_interval_s * 2))
        async with aiohttp.ClientSession(timeout=timeout) as http:
            while True:
                started = time.monotonic()
                await asyncio.gather(*(self._scrape_one(http, r) for r in list(self._replicas.values())
                                       if r.metrics_url and not r.ejected))
                await asyncio.sleep(max(0.0, self._scrape_interval_s - (time.monotonic() - started)))

    async def _scrape_one(self, http: aiohttp.ClientSession, replica: Replica) -> None:
        if replica.metrics_url is None:
            return
        try:
            async with http.get(replica.metrics_url) as response:
                text = await response.text()
        except (aiohttp.ClientError, TimeoutError, OSError):
            replica.load.clear()  # stale figures would mislead; the probes decide readiness
            return
        loads = parse_engine_load(text)
        for load in loads.values():
            load.ours = replica.in_flight
        replica.load = loads


# vLLM's metric names (Triton's vLLM backend exports them under these names too)
_GAUGES = {"vllm:num_requests_running": "running", "vllm:num_requests_waiting": "waiting",
           "vllm:kv_cache_usage_perc": "kv_usage", "vllm:gpu_cache_usage_perc": "kv_usage"}


def parse_engine_load(text: str) -> dict[str, EngineLoad]:
    """Triton model -> EngineLoad, from a Prometheus exposition (only the vllm: families are read)."""
    relevant = "\n".join(line for line in text.splitlines() if line.startswith(("vllm:", "# TYPE vllm:")))
    loads: dict[str, EngineLoad] = {}
    try:
        families = list(text_string_to_metric_families(relevant + "\n"))
    except ValueError:
        return loads
    for family in families:
        for sample in family.samples:
            model = sample.labels.get("model")
            if model is None:
                continue
            load = loads.setdefault(model, EngineLoad())
            field = _GAUGES.get(sample.name)
            if field is not None:
                setattr(load, field, float(sample.value))
            elif sample.name == "vllm:cache_config_info":
                blocks, size = sample.labels.get("num_gpu_blocks", ""), sample.labels.get("block_size", "")
                if blocks.isdigit() and size.isdigit():
                    load.kv_capacity_tokens = int(blocks) * int(size)
    return loads
