"""Stall figures: a Triton replica that hangs mid-stream, frozen (SIGSTOP) or cut off (its network
namespace's link down), against the same round uninterrupted; and a saturated engine that must not be
taken for a hung one.

Three engine-simulator Tritons behind the text service and the façade (the same stack as `make run`,
text only, catalog.sim.toml); replica 2 runs inside a network namespace of its own (a veth pair, a
private /30 in 10.203.0.0/16), so its link can be cut. Everything runs as the official clients see it:
chat streams over the façade's SSE.

- *frozen*: 18 seeded chat streams at once; when they are about a third through, the replica with
  the most of them is SIGSTOPped (its whole process group: server and model); the round's texts must
  equal the uninterrupted round's, no client sees an error; figures: both rounds' seconds, when the
  first stall was declared, the requests the replica got after it, and the seconds from SIGCONT until
  a canary has admitted it again;
- *partition*: the same with replica 2's link cut (`ip link set ... down` inside its namespace) and
  restored;
- *saturation*: every replica's engine limited to a few sequences (`max_num_seqs`), closed-loop chat
  streams at twice that many, for a while: the engines' waiting queues stay above 0 (sampled), and no
  stall is declared; figures: the deadlines the service computed (hubmesh_text_stall_deadline_seconds).

    .venv/bin/python -m bench.stalls [--saturation-s 180] [--json out.json]

Needs root for the namespace (without it the partition figures are left out). The end-to-end test
tests/e2e/test_stall_e2e.py runs the same functions, shorter.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from local import processes
from local.prometheus import metric_sum
from local.stack import MODALITIES, ROOT, LocalStack, StackConfig
from local.triton import TritonServer

KEY = "stall-key"
MODEL = "hubmesh/sim-llama-3-8b"
TRITON_MODEL = "sim"
SIM_CATALOG = ROOT / "services" / "text" / "catalog.sim.toml"
TEXT_ONLY = tuple(m for m in MODALITIES if m.name == "text")
PACE = {"time_scale": 5}  # ~24 ms a token: 18 streams stay within what two cores carry
STREAMS = 18


# -- a replica in a network namespace ------------------------------------------------------------------

class Netns:
    """A network namespace joined to this one by a veth pair: host side .1, namespace side .2 of
    10.203.<octet>.0/30 (an octet no interface here uses)."""

    def __init__(self, tag: str | None = None) -> None:
        tag = tag or str(os.getpid() % 100000)
        self.name = f"hubmesh-stall-{tag}"
        self.host_if, self.ns_if = f"hmst{tag}a"[:15], f"hmst{tag}b"[:15]
        used = subprocess.run(["ip", "-o", "-4", "addr"], capture_output=True, text=True, check=True).stdout
        octet = next(o for o in [int(tag) % 200 + 20, *range(20, 250)] if f"10.203.{o}." not in used)
        self.host_ip, self.ns_ip = f"10.203.{octet}.1", f"10.203.{octet}.2"
        self.created = False

    def _ip(self, *args: str, inside: bool = False) -> None:
        cmd = ["ip", "netns", "exec", self.name, "ip", *args] if inside else ["ip", *args]
        subprocess.run(cmd, check=True, capture_output=True)

    def create(self) -> None:
        self._ip("netns", "add", self.name)
        self.created = True
        self._ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
        self._ip("link", "set", self.ns_if, "netns", self.name)
        self._ip("addr", "add", f"{self.host_ip}/30", "dev", self.host_if)
        self._ip("link", "set", self.host_if, "up")
        self._ip("link", "set", "lo", "up", inside=True)
        self._ip("addr", "add", f"{self.ns_ip}/30", "dev", self.ns_if, inside=True)
        self._ip("link", "set", self.ns_if, "up", inside=True)

    def cut(self) -> None:
        """The namespace's link goes down: packets either way are lost, connections stay open."""
        self._ip("link", "set", self.ns_if, "down", inside=True)

    def restore(self) -> None:
        self._ip("link", "set", self.ns_if, "up", inside=True)

    def delete(self) -> None:
        """Removes the namespace (its veth end, and so the pair, goes with it)."""
        if self.created:
            subprocess.run(["ip", "netns", "delete", self.name], capture_output=True)
            subprocess.run(["ip", "link", "delete", self.host_if], capture_output=True)
            self.created = False

    @staticmethod
    def available() -> bool:
        return os.geteuid() == 0 and subprocess.run(["ip", "netns", "list"], capture_output=True).returncode == 0


@dataclass
class NetnsTriton(TritonServer):
    """A TritonServer listening on the namespace's address, run inside it."""

    netns: Netns | None = None

    @property
    def host(self) -> str:
        return self.netns.ns_ip

    def command(self) -> list[str]:
        cmd = [arg.replace("=127.0.0.1", f"={self.host}") for arg in super().command()]
        return ["ip", "netns", "exec", self.netns.name, *cmd]

    def is_ready(self) -> bool:
        return processes.http_ok(f"http://{self.host}:{self.http_port}/v2/health/ready", timeout_s=2)


def host_of(triton: TritonServer) -> str:
    return getattr(triton, "host", "127.0.0.1")


# -- the stack ---------------------------------------------------------------------------------------

@dataclass
class StallStack:
    """Three sim Tritons (the last one in a namespace when `netns`), the text service, the façade."""

    run_dir: Path
    netns: bool = True
    env: dict[str, str] = field(default_factory=dict)
    stack: LocalStack | None = None
    ns: Netns | None = None

    def start(self) -> None:
        config = StackConfig.with_free_ports(api_key=KEY, run_dir=self.run_dir, replicas={"text": 3},
                                             models={"text": (TRITON_MODEL,)})
        config.extra_env.update({"HUBMESH_TEXT_TRITON_PROBE_INTERVAL_S": "0.5",
                                 "HUBMESH_TEXT_CATALOG": str(SIM_CATALOG), **self.env})
        self.stack = LocalStack(config, modalities=TEXT_ONLY)
        try:
            if self.netns:
                self.ns = Netns()
                self.ns.create()
                last = self.stack.replicas["text"][-1]
                self.stack.replicas["text"][-1] = NetnsTriton(**{f: getattr(last, f) for f in (
                    "model_repository", "models", "log_path", "http_port", "grpc_port", "metrics_port", "shm_prefix",
                    "extra_args")}, netns=self.ns)
            self.stack.start_tritons(wait_s=300)
            reload_sim(self.tritons, PACE)
            url = ",".join(f"{host_of(t)}:{t.grpc_port}:{t.metrics_port}" for t in self.tritons)
            self.stack.start_service("text", env={"HUBMESH_TEXT_TRITON_URL": url})
            self.stack.start_facade()
        except BaseException:
            self.stop()
            raise

    @property
    def tritons(self) -> list[TritonServer]:
        return self.stack.replicas["text"]

    def address(self, replica: int) -> str:
        triton = self.tritons[replica]
        return f"{host_of(triton)}:{triton.grpc_port}"

    def metric(self, name: str, **labels: str) -> float:
        return metric_sum(f"http://127.0.0.1:{self.stack.config.ports['text']['metrics']}/metrics", name, **labels)

    def metrics_text(self) -> str:
        url = f"http://127.0.0.1:{self.stack.config.ports['text']['metrics']}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.read().decode()

    def triton_metric(self, replica: int, name: str) -> float:
        triton = self.tritons[replica]
        return metric_sum(f"http://{host_of(triton)}:{triton.metrics_port}/metrics", name)

    def busiest(self) -> int:
        in_flight = [self.metric("hubmesh_replica_in_flight", replica=self.address(i)) for i in range(3)]
        return max(range(3), key=in_flight.__getitem__)

    def freeze(self, replica: int) -> None:
        os.killpg(self.tritons[replica].proc.pid, signal.SIGSTOP)

    def thaw(self, replica: int) -> None:
        os.killpg(self.tritons[replica].proc.pid, signal.SIGCONT)

    def serving(self, replica: int) -> bool:
        address = self.address(replica)
        return (self.metric("hubmesh_replica_quarantined", replica=address) == 0
                and self.metric("hubmesh_replica_ready", replica=address, model=TRITON_MODEL) == 1)

    def stop(self) -> None:
        if self.stack is not None:
            for triton in self.tritons:  # a frozen Triton would not hear SIGTERM
                if triton.proc is not None and triton.proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(triton.proc.pid, signal.SIGCONT)
            if self.ns is not None:
                with contextlib.suppress(subprocess.CalledProcessError):
                    self.ns.restore()
            self.stack.stop()
        if self.ns is not None:
            self.ns.delete()


def reload_sim(tritons: list[TritonServer], parameters: dict) -> None:
    """Every replica loads `sim` again with `parameters` over its config.pbtxt's (a fresh engine;
    the nonce makes Triton load it even when the config did not change)."""
    nonce = str(time.monotonic_ns())
    for triton in tritons:
        base = f"http://{host_of(triton)}:{triton.http_port}/v2"
        with urllib.request.urlopen(f"{base}/models/{TRITON_MODEL}/config", timeout=30) as response:
            config = json.loads(response.read())
        params = dict(config.get("parameters") or {})
        params.update({k: {"string_value": str(v)} for k, v in {**parameters, "bench_reset": nonce}.items()})
        config["parameters"] = params
        body = json.dumps({"parameters": {"config": json.dumps(config)}}).encode()
        request = urllib.request.Request(f"{base}/repository/models/{TRITON_MODEL}/load", data=body,
                                         headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(request, timeout=120):
            pass


# -- the clients ---------------------------------------------------------------------------------------

def chat(i: int, max_tokens: int | None = None) -> dict:
    """Seeded (temperature 1): a continuation must reproduce the sampled text exactly."""
    return {"model": MODEL, "stream": True, "temperature": 1.0, "seed": 1000 + i,
            "max_tokens": max_tokens or 80 + (i * 7) % 50,
            "messages": [{"role": "user", "content": f"Stream {i}: " + "tell me about the mesh " * (10 + i % 9)}]}


async def stream(http: aiohttp.ClientSession, base_url: str, body: dict, on_event=None) -> tuple[str, list]:
    """The text and the in-band errors of one chat stream."""
    text, errors = "", []
    async with http.post(f"{base_url}/chat/completions", json=body,
                         headers={"Authorization": f"Bearer {KEY}"}) as response:
        if response.status != 200:
            return text, [{"status": response.status, "body": await response.text()}]
        async for line in response.content:
            line = line.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if "error" in event:
                errors.append(event["error"])
                continue
            text += "".join(c.get("delta", {}).get("content") or "" for c in event["choices"])
            if on_event is not None:
                on_event()
    return text, errors


def run_round(base_url: str, bodies: list[dict], at_events: int | None = None, action=None) -> dict:
    """All `bodies` streamed at once; `action()` (in a thread) once the streams have had `at_events`
    content events in all. Texts, errors, seconds."""
    async def main():
        count = 0
        fired = asyncio.Event()
        acted: list[asyncio.Task] = []

        def on_event():
            nonlocal count
            count += 1
            if action is not None and not fired.is_set() and count >= at_events:
                fired.set()
                acted.append(asyncio.create_task(asyncio.to_thread(action)))

        started = time.monotonic()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as http:
            results = await asyncio.gather(*(stream(http, base_url, body, on_event) for body in bodies))
        seconds = time.monotonic() - started
        for task in acted:
            await task
        return {"texts": [t for t, _ in results], "errors": [e for _, errors in results for e in errors],
                "seconds": seconds, "acted": bool(acted)}

    return asyncio.run(main())


# -- the scenarios ------------------------------------------------------------------------------------

class Watcher:
    """Polls the service's metrics (every 50 ms, in a thread) for the moment the hang on `address` is
    noticed — a stall the guard declared, or the channel's keepalive closing the connection (the
    replica ejected), whichever comes first: both are bounds the service keeps — and how many requests
    had been routed there then."""

    def __init__(self, stack: StallStack, address: str) -> None:
        self.stack, self.address = stack, address
        self.before = self._counts()
        self.noticed_at: float | None = None
        self.noticed_by: str | None = None
        self.routed_at_notice: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _counts(self) -> dict[str, float]:
        return {"stall": self.stack.metric("hubmesh_text_stalls_total", replica=self.address),
                "keepalive": self.stack.metric("hubmesh_replica_ejections_total", replica=self.address)}

    def routed(self) -> float:
        return self.stack.metric("hubmesh_route_decisions_total", replica=self.address)

    def _run(self) -> None:
        while not self._stop.is_set() and self.noticed_at is None:
            routed = self.routed()
            counts = self._counts()
            by = [how for how in ("stall", "keepalive") if counts[how] > self.before[how]]
            if by:
                self.noticed_at, self.noticed_by, self.routed_at_notice = time.monotonic(), by[0], routed
            self._stop.wait(0.05)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def wait_serving(stack: StallStack, replica: int, timeout_s: float = 60.0) -> float:
    """Seconds until `replica` is in service again (not quarantined, ready)."""
    started = time.monotonic()
    while not stack.serving(replica):
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"replica {replica} not back in service after {timeout_s} s")
        time.sleep(0.05)
    return time.monotonic() - started


def hang_round(stack: StallStack, how: str, reference: dict, streams: int = STREAMS) -> dict:
    """One round with a replica hung a third of the way through: frozen (`how="sigstop"`, the busiest
    replica) or cut off (`how="partition"`, the namespaced one); then it is let go. Figures."""
    bodies = [chat(i) for i in range(streams)]
    chosen: dict = {}
    moved_before = stack.metric("hubmesh_text_migrations_total", outcome="moved")

    def hang():
        replica = stack.busiest() if how == "sigstop" else len(stack.tritons) - 1
        chosen["replica"] = replica
        chosen["in_flight"] = stack.metric("hubmesh_replica_in_flight", replica=stack.address(replica))
        chosen["watcher"] = Watcher(stack, stack.address(replica))
        chosen["at"] = time.monotonic()
        stack.freeze(replica) if how == "sigstop" else stack.ns.cut()

    total_events = sum(b["max_tokens"] for b in bodies)
    outcome = run_round(stack.stack.config.base_url, bodies, at_events=total_events // 3, action=hang)
    watcher: Watcher = chosen["watcher"]
    watcher.stop()
    replica = chosen["replica"]
    routed_while_hung = None if watcher.noticed_at is None else watcher.routed() - watcher.routed_at_notice
    let_go = time.monotonic()
    stack.thaw(replica) if how == "sigstop" else stack.ns.restore()
    back_s = wait_serving(stack, replica)
    return {
        "how": how, "streams": streams, "replica": stack.address(replica),
        "streams_on_replica_when_hung": chosen["in_flight"],
        "uninterrupted_s": round(reference["seconds"], 2), "hung_s": round(outcome["seconds"], 2),
        "added_s": round(outcome["seconds"] - reference["seconds"], 2),
        "noticed_after_s": None if watcher.noticed_at is None else round(watcher.noticed_at - chosen["at"], 2),
        "noticed_by": watcher.noticed_by,  # "stall" (the guard) or "keepalive" (the connection closed)
        "requests_routed_there_after_noticed": routed_while_hung,
        "back_in_service_after_s": round(back_s, 2),
        "let_go_after_s": round(let_go - chosen["at"], 2),
        "migrations": stack.metric("hubmesh_text_migrations_total", outcome="moved") - moved_before,
        "client_errors": len(outcome["errors"]), "errors": outcome["errors"][:3],
        "wrong_texts": sum(a != b for a, b in zip(outcome["texts"], reference["texts"], strict=True)),
    }


def _histogram(text: str) -> dict[tuple[str, str, str], float]:
    """(phase, series, le) -> value of hubmesh_text_stall_deadline_seconds in a Prometheus exposition."""
    values = {}
    for line in text.splitlines():
        if not line.startswith("hubmesh_text_stall_deadline_seconds_"):
            continue
        series = line.split("{", 1)[0].rsplit("_", 1)[1]
        phase = line.split('phase="')[1].split('"')[0]
        le = line.split('le="')[1].split('"')[0] if 'le="' in line else ""
        values[(phase, series, le)] = float(line.rsplit(" ", 1)[1])
    return values


def deadlines(stack: StallStack, before: str = "") -> dict:
    """hubmesh_text_stall_deadline_seconds per phase since `before` (an earlier exposition): count,
    mean, and the upper bounds of the buckets holding the median and the largest."""
    now, then = _histogram(stack.metrics_text()), _histogram(before)
    out = {}
    for phase in ("first_token", "inter_token"):
        delta = {k: v - then.get(k, 0.0) for k, v in now.items() if k[0] == phase}
        count, total = delta.get((phase, "count", ""), 0.0), delta.get((phase, "sum", ""), 0.0)
        buckets = sorted((float(k[2]), v) for k, v in delta.items() if k[1] == "bucket")
        p50 = next((b for b, v in buckets if count and v >= count / 2), None)
        top = next((b for b, v in buckets if count and v >= count), None)
        out[phase] = {"count": count, "mean_s": round(total / count, 3) if count else None,
                      "p50_at_most_s": p50, "max_at_most_s": top}
    return out


def saturation(stack: StallStack, seconds: float, max_num_seqs: int = 4, workers_per_slot: int = 2) -> dict:
    """Every engine limited to `max_num_seqs` sequences; closed-loop streams at `workers_per_slot`
    times the slots, for `seconds`. Waiting-queue samples, stalls, migrations, errors, deadlines."""
    reload_sim(stack.tritons, {**PACE, "max_num_seqs": max_num_seqs})
    for replica in range(len(stack.tritons)):
        wait_serving(stack, replica)
    workers = len(stack.tritons) * max_num_seqs * workers_per_slot
    stalls_before = stack.metric("hubmesh_text_stalls_total")
    exposition_before = stack.metrics_text()
    moved_before = stack.metric("hubmesh_text_migrations_total", outcome="moved")
    samples: list[list[float]] = [[] for _ in stack.tritons]
    stop = threading.Event()

    def sample():
        while not stop.wait(0.5):
            for i in range(len(stack.tritons)):
                samples[i].append(stack.triton_metric(i, "vllm:num_requests_waiting"))

    sampler = threading.Thread(target=sample, daemon=True)

    async def load():
        outcome = {"streams": 0, "errors": []}
        end = time.monotonic() + seconds
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as http:
            async def worker(w: int):
                i = w
                while time.monotonic() < end:
                    _, errors = await stream(http, stack.stack.config.base_url, chat(i, 40 + (i * 13) % 80))
                    outcome["streams"] += 1
                    outcome["errors"] += errors
                    i += workers
            await asyncio.gather(*(worker(w) for w in range(workers)))
        return outcome

    sampler.start()
    try:
        outcome = asyncio.run(load())
    finally:
        stop.set()
        sampler.join(timeout=10)
        reload_sim(stack.tritons, PACE)
    # the first and last samples are the load's ramp up and down
    steady = [s[2:-2] or s for s in samples]
    return {
        "seconds": seconds, "max_num_seqs": max_num_seqs, "concurrent_streams": workers,
        "streams_completed": outcome["streams"], "client_errors": len(outcome["errors"]),
        "stalls": stack.metric("hubmesh_text_stalls_total") - stalls_before,
        "migrations": stack.metric("hubmesh_text_migrations_total", outcome="moved") - moved_before,
        "waiting_samples": [len(s) for s in steady],
        "share_of_samples_with_waiting": [round(sum(v > 0 for v in s) / len(s), 3) if s else None for s in steady],
        "mean_waiting": [round(sum(s) / len(s), 2) if s else None for s in steady],
        "deadlines": deadlines(stack, exposition_before),
    }


def measure(saturation_s: float = 180.0, netns: bool | None = None) -> dict:
    netns = Netns.available() if netns is None else netns
    with tempfile.TemporaryDirectory(prefix="hubmesh-stalls-") as tmp:
        stack = StallStack(Path(tmp), netns=netns)
        stack.start()
        try:
            base = stack.stack.config.base_url
            run_round(base, [chat(i) for i in range(STREAMS)])  # warm: every replica's pace measured
            reference = run_round(base, [chat(i) for i in range(STREAMS)])
            results = {"sigstop": hang_round(stack, "sigstop", reference)}
            if netns:
                results["partition"] = hang_round(stack, "partition", reference)
            results["saturation"] = saturation(stack, saturation_s)
        finally:
            stack.stop()
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--saturation-s", type=float, default=180.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    results = measure(args.saturation_s)
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
