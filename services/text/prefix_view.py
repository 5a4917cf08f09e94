"""One routing view shared by every text-service replica: what each prefix picker placed where, and
what each has in flight, over NATS (docs/routing.md says why this design and shows its figures).

Every text-service replica runs a PrefixPicker with its own approximate PrefixIndex. Alone, each
index sees 1/N of the traffic when N replicas take part, and each picker sees the others' load only
through gauges scraped every 0.5 s: the hit ratio falls with N. With a PrefixView attached, every
picker also *publishes*

- `placed`: the chained block hashes a prompt put on a Triton replica (and its prefill and context
  in blocks), on `<subject>.placed`, which a JetStream stream keeps for `replay_s`;
- `started` / `done`: that call's first token and its end, on `<subject>.load`;
- `state`: every `heartbeat_s`, its whole in-flight picture per Triton replica (it replaces what the
  others held of it: lost messages and a restarted peer cost at most one heartbeat);

and *applies* every other picker's: their placements go into its own index (the same hashes: they
are stable across processes), their in-flight calls into its load terms. The decision stays local
(no round trip on a request's path): publishing appends a few bytes to a buffer that a task sends,
batched, after the event loop's turn.

A picker that starts replays the stream's placements (JetStream, the last `replay_s`) and learns the
in-flight picture from the next heartbeats: within `heartbeat_s` + the replay. When the bus is gone
(not configured, not reachable, or lost) the picker is today's local one: its own index (which keeps
what it learnt), its own calls plus the engines' scraped gauges; nothing a client sees. When the bus
comes back the view is live again at the next heartbeat of each peer. Peers not heard from for
`expiry_s` are dropped (a replica that died leaves no phantom load). No engine KV events are used.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import struct
import time
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter, Gauge

log = logging.getLogger(__name__)

VIEW_EVENTS = Counter("hubmesh_prefix_view_events_total", "Shared routing view: events by direction and kind",
                      ["direction", "kind"])
VIEW_LIVE = Gauge("hubmesh_prefix_view_live", "1 while the shared routing view (NATS) is connected")
VIEW_PEERS = Gauge("hubmesh_prefix_view_peers", "Other text-service replicas heard from within the expiry")

PLACED, STARTED, DONE, STATE = 1, 2, 3, 4
KINDS = {PLACED: "placed", STARTED: "started", DONE: "done", STATE: "state"}
_HEAD = struct.Struct("<BQ")  # kind, origin
_PLACED = struct.Struct("<IIHH")  # blocks, new blocks, len(address), len(model) ; then address, model, hashes (q)
_LOAD = struct.Struct("<IIH")  # blocks, new blocks (0 when already started), len(address) ; then address
_STATE_ROW = struct.Struct("<IIIIH")  # calls, prefilling, prefill, context, len(address) ; then address
_RECORD = struct.Struct("<I")  # length of each record of a batch


@dataclass(slots=True)
class InFlight:
    """Calls on one Triton replica, in the picker's units: calls, those without a first token, their
    uncached prompt blocks (queued prefill), their prompt blocks (context)."""

    calls: int = 0
    prefilling: int = 0
    prefill: int = 0
    context: int = 0


@dataclass
class _Peer:
    seen: float
    load: dict[str, InFlight] = field(default_factory=dict)


def encode_placed(origin: int, address: str, model: str, hashes: Sequence[int], blocks: int, new_blocks: int) -> bytes:
    a, m = address.encode(), model.encode()
    return (_HEAD.pack(PLACED, origin) + _PLACED.pack(blocks, new_blocks, len(a), len(m)) + a + m
            + array("q", hashes).tobytes())


def encode_load(kind: int, origin: int, address: str, blocks: int, new_blocks: int) -> bytes:
    a = address.encode()
    return _HEAD.pack(kind, origin) + _LOAD.pack(blocks, new_blocks, len(a)) + a


def encode_state(origin: int, load: dict[str, InFlight]) -> bytes:
    out = [_HEAD.pack(STATE, origin)]
    for address, f in load.items():
        a = address.encode()
        out.append(_STATE_ROW.pack(max(0, f.calls), max(0, f.prefilling), max(0, f.prefill), max(0, f.context), len(a)))
        out.append(a)
    return b"".join(out)


def batch(records: Sequence[bytes]) -> bytes:
    return b"".join(_RECORD.pack(len(r)) + r for r in records)


def unbatch(data: bytes) -> list[bytes]:
    out, at, view = [], 0, memoryview(data)
    while at + 4 <= len(data):
        (size,) = _RECORD.unpack_from(data, at)
        out.append(bytes(view[at + 4: at + 4 + size]))
        at += 4 + size
    return out


class PrefixView:
    """The shared view one PrefixPicker publishes to and applies (see the module's docstring).

    `url` empty: local only (the picker behaves as without a view). The picker calls placed/started/
    done (synchronous, cheap: they queue bytes), reads `remote(address)` and `live`; `run()` keeps the
    connection, the subscription, the replay and the heartbeats, until cancelled."""

    def __init__(self, url: str = "", subject: str = "hubmesh.route", stream: str = "HUBMESH_ROUTE",
                 heartbeat_s: float = 1.0, expiry_s: float = 3.5, replay_s: float = 300.0,
                 connect_timeout_s: float = 2.0, origin: int | None = None) -> None:
        self.url = url
        self.subject = subject
        self.stream = stream
        self.heartbeat_s = heartbeat_s
        self.expiry_s = expiry_s
        self.replay_s = replay_s
        self.connect_timeout_s = connect_timeout_s
        self.origin = origin if origin is not None else int.from_bytes(os.urandom(8), "little")
        self.picker = None  # the PrefixPicker applying it (attach)
        self.live = False  # connected: remote figures count
        self.replayed = 0  # placements learnt from the stream at the last (re)connection
        self.state = "local" if not url else "connecting"  # local, connecting, live, lost
        self._peers: dict[int, _Peer] = {}
        self._remote: dict[str, InFlight] = {}  # address -> the live peers' calls there, summed
        self._placed: list[bytes] = []
        self._load: list[bytes] = []
        self._beat = False  # a heartbeat is due (drain)
        self._wake = asyncio.Event()  # binds to the running loop when first awaited
        self._nc: Any = None  # nats.aio.client.Client once connected

    # -- the picker's side (synchronous, on its decision path) ----------------------------------------

    def attach(self, picker) -> None:
        self.picker = picker
        picker.view = self

    def remote(self, address: str) -> InFlight | None:
        """The other pickers' calls on `address` (None when the view is not live)."""
        return self._remote.get(address) if self.live else None

    def remote_totals(self) -> tuple[int, int, int]:
        """(calls, prefill, context) of every live peer on every replica."""
        if not self.live:
            return 0, 0, 0
        calls = prefill = context = 0
        for f in self._remote.values():
            calls += f.calls
            prefill += f.prefill
            context += f.context
        return calls, prefill, context

    def placed(self, address: str, model: str, hashes: Sequence[int], blocks: int, new_blocks: int) -> None:
        if not self.live:
            return
        self._placed.append(encode_placed(self.origin, address, model, hashes, blocks, new_blocks))
        self._wake.set()

    def started(self, address: str, new_blocks: int) -> None:
        if not self.live:
            return
        self._load.append(encode_load(STARTED, self.origin, address, 0, new_blocks))
        self._wake.set()

    def done(self, address: str, blocks: int, new_blocks: int) -> None:
        if not self.live:
            return
        self._load.append(encode_load(DONE, self.origin, address, blocks, new_blocks))
        self._wake.set()

    def drain(self) -> tuple[list[bytes], list[bytes]]:
        """The records queued since the last call: (placements, load events); what the send loop
        publishes. A heartbeat asked for comes last, taken now: it holds every event before it."""
        placed, self._placed = self._placed, []
        load, self._load = self._load, []
        if self._beat:
            self._beat = False
            load.append(self._own_state())
        return placed, load

    def heartbeat(self) -> None:
        """Asks for this picker's whole in-flight picture to be sent (peers replace what they held of it)."""
        if self.live:
            self._beat = True
            self._wake.set()

    # -- applying what others publish -------------------------------------------------------------

    def apply(self, record: bytes, now: float | None = None, replay: bool = False) -> None:
        """One record of another picker (its own are ignored); `replay`: from the stream (index only)."""
        kind, origin = _HEAD.unpack_from(record, 0)
        if origin == self.origin:
            return
        at = _HEAD.size
        picker = self.picker
        if kind == PLACED:
            blocks, new_blocks, la, lm = _PLACED.unpack_from(record, at)
            at += _PLACED.size
            address = record[at: at + la].decode()
            at += la + lm
            hashes = array("q")
            hashes.frombytes(record[at:])
            if picker is not None:
                picker.index.insert(address, hashes)
            if replay:
                VIEW_EVENTS.labels("replayed", "placed").inc()
                return
            f = self._peer(origin, now).load.setdefault(address, InFlight())
            f.calls += 1
            f.prefilling += 1
            f.prefill += new_blocks
            f.context += blocks
        elif kind in (STARTED, DONE):
            blocks, new_blocks, la = _LOAD.unpack_from(record, at)
            address = record[at + _LOAD.size: at + _LOAD.size + la].decode()
            f = self._peer(origin, now).load.setdefault(address, InFlight())
            if new_blocks or kind == STARTED:
                f.prefilling -= 1
                f.prefill -= new_blocks
            if kind == DONE:
                f.calls -= 1
                f.context -= blocks
        elif kind == STATE:
            peer = self._peer(origin, now)
            peer.load = {}
            while at < len(record):
                calls, prefilling, prefill, context, la = _STATE_ROW.unpack_from(record, at)
                at += _STATE_ROW.size
                peer.load[record[at: at + la].decode()] = InFlight(calls, prefilling, prefill, context)
                at += la
        else:
            return
        VIEW_EVENTS.labels("in", KINDS[kind]).inc()
        self._sum()

    def _peer(self, origin: int, now: float | None) -> _Peer:
        peer = self._peers.get(origin)
        now = time.monotonic() if now is None else now
        if peer is None:
            peer = self._peers[origin] = _Peer(now)
            VIEW_PEERS.set(len(self._peers))
        peer.seen = now
        return peer

    def _sum(self) -> None:
        total: dict[str, InFlight] = {}
        for peer in self._peers.values():
            for address, f in peer.load.items():
                t = total.get(address)
                if t is None:
                    t = total[address] = InFlight()
                t.calls += max(0, f.calls)
                t.prefilling += max(0, f.prefilling)
                t.prefill += max(0, f.prefill)
                t.context += max(0, f.context)
        self._remote = total

    def expire(self, now: float | None = None) -> None:
        """Drops peers not heard from for `expiry_s` (their calls ended with them)."""
        now = time.monotonic() if now is None else now
        gone = [o for o, p in self._peers.items() if now - p.seen > self.expiry_s]
        for origin in gone:
            del self._peers[origin]
        if gone:
            VIEW_PEERS.set(len(self._peers))
            self._sum()

    def forget_peers(self) -> None:
        self._peers.clear()
        self._remote = {}
        VIEW_PEERS.set(0)

    # -- the bus --------------------------------------------------------------------------------------

    def _own_state(self) -> bytes:
        picker = self.picker
        load: dict[str, InFlight] = {} if picker is None else picker.own_load()
        return encode_state(self.origin, load)

    async def run(self) -> None:
        """Connects (again and again until it works), subscribes, replays, publishes; until cancelled."""
        if not self.url:
            log.info("shared routing view: off (HUBMESH_TEXT_ROUTING_BUS_URL empty): local prefix index only")
            return
        import nats

        while True:
            try:
                await self._reachable()  # nats.connect itself would retry forever (max_reconnect_attempts)
                self._nc = await nats.connect(
                    self.url, connect_timeout=self.connect_timeout_s, allow_reconnect=True,
                    max_reconnect_attempts=-1, reconnect_time_wait=0.5, ping_interval=2, max_outstanding_pings=2,
                    disconnected_cb=self._disconnected, reconnected_cb=self._reconnected,
                    error_cb=self._error, name=f"hubmesh-text-{self.origin:x}",
                )
                break
            except Exception as err:
                if self.state != "lost":
                    log.warning("shared routing view: NATS at %s unreachable (%s): routing with the local prefix "
                                "index only; trying again every 2 s", self.url, err or type(err).__name__)
                self.state = "lost"
                await asyncio.sleep(2.0)
        try:
            await self._nc.subscribe(f"{self.subject}.>", cb=self._received)
            await self._online("connected")
            await asyncio.gather(self._send_loop(), self._heartbeat_loop())
        finally:
            self.live = False
            VIEW_LIVE.set(0)
            await self.close()

    async def _reachable(self) -> None:
        """Raises OSError unless some server of the URL accepts a TCP connection now."""
        from urllib.parse import urlsplit

        errors = []
        for part in self.url.split(","):
            where = urlsplit(part.strip() if "://" in part else f"nats://{part.strip()}")
            try:
                _, writer = await asyncio.wait_for(
                    asyncio.open_connection(where.hostname, where.port or 4222), self.connect_timeout_s)
            except (OSError, TimeoutError) as err:
                errors.append(f"{where.hostname}:{where.port or 4222}: {err or type(err).__name__}")
                continue
            writer.close()
            return
        raise OSError("; ".join(errors))

    async def _online(self, how: str) -> None:
        self.replayed = await self._replay()
        self.live = True
        self.state = "live"
        VIEW_LIVE.set(1)
        self.heartbeat()
        log.info("shared routing view: %s to NATS at %s; %d placements replayed from the stream", how, self.url,
                 self.replayed)

    async def _replay(self) -> int:
        """Creates the stream if needed and applies its placements (JetStream); 0 when it cannot."""
        from nats.js.api import DeliverPolicy, StorageType, StreamConfig

        try:
            js = self._nc.jetstream(timeout=2.0)
            config = StreamConfig(name=self.stream, subjects=[f"{self.subject}.placed"], max_age=self.replay_s,
                                  storage=StorageType.MEMORY, max_msgs=200_000, max_bytes=256 << 20)
            try:
                info = await js.add_stream(config)
            except Exception:
                info = await js.stream_info(self.stream)
            last = info.state.last_seq
            if not info.state.messages:
                return 0
            sub = await js.subscribe(f"{self.subject}.placed", ordered_consumer=True,
                                     deliver_policy=DeliverPolicy.ALL)
            count = 0
            try:
                while True:
                    msg = await sub.next_msg(timeout=2.0)
                    for record in unbatch(msg.data):
                        self.apply(record, replay=True)
                        count += 1
                    if msg.metadata.sequence.stream >= last:
                        break
            finally:
                await sub.unsubscribe()
            return count
        except Exception as err:
            log.warning("shared routing view: no replay from JetStream (%s); learning from live updates",
                        err or type(err).__name__)
            return 0

    async def _received(self, msg) -> None:
        now = time.monotonic()
        for record in unbatch(msg.data):
            try:
                self.apply(record, now)
            except (struct.error, UnicodeDecodeError, ValueError):
                VIEW_EVENTS.labels("in", "malformed").inc()

    async def _send_loop(self) -> None:
        placed_subject, load_subject = f"{self.subject}.placed", f"{self.subject}.load"
        while True:
            await self._wake.wait()
            self._wake.clear()
            placed, load = self.drain()
            if not self.live:
                continue  # lost bus: nothing queues up (the next heartbeat says where we are)
            try:
                if placed:
                    await self._nc.publish(placed_subject, batch(placed))
                    VIEW_EVENTS.labels("out", "placed").inc(len(placed))
                if load:
                    await self._nc.publish(load_subject, batch(load))
                    VIEW_EVENTS.labels("out", "load").inc(len(load))
            except Exception as err:
                log.debug("shared routing view: publish failed: %s", err)

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            self.expire()
            self.heartbeat()

    async def _disconnected(self) -> None:
        if self.live:
            log.warning("shared routing view: NATS connection lost: routing with the local prefix index and "
                        "scraped engine load until it is back")
        self.live = False
        self.state = "lost"
        VIEW_LIVE.set(0)
        self.forget_peers()

    async def _reconnected(self) -> None:
        # not inside the client's reconnection: the replay needs its reader running
        asyncio.get_running_loop().create_task(self._online("reconnected"))

    async def _error(self, err) -> None:
        log.debug("shared routing view: NATS: %s", err)

    async def close(self) -> None:
        """Closes the connection, within a second: a service that stops never waits on a lost bus."""
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._nc.close(), 1.0)
