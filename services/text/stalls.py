"""Noticing a Triton replica that hangs: a stall deadline for every generation, from the replica's own pace.

A replica that dies closes its connections (UNAVAILABLE, services.text.migration moves the
generation). One that hangs — a GPU fallen off the bus, an engine stuck in a collective, a frozen
process, a network partition — keeps the connection open and sends nothing. The text service sees
every response of every generation, so it knows each replica's pace and can tell silence from work:

- *Inter-token*: the replica's recent gaps between two responses of one generation (the last
  `window` of them, on every generation there). The expectation is the longest of them: a step that
  carries another request's prefill chunk is slow, and saturated engines have many.
- *First token*: the picker's cost model (services.text.prefix_picker) says how much prefill stands before
  the request — its uncached prompt blocks, times one more for each sequence decoding there, plus
  the prefill queued ahead of it — in units of one block's prefill; the replica's recent first
  responses say how long a unit takes there (the longest of their time-to-first-token per unit). A
  non-streamed generation answers only at its end: its expectation adds max_tokens inter-token gaps.

A generation is *stalled* when it has received nothing for k × its expectation (at least the floor)
**and** its replica has sent nothing on any of this process's calls for k × the replica's
inter-token expectation — or, while calls there wait for their first response, k × their prefill
(an engine without chunked prefill, as the CPU model, is silent while it runs one): an engine that is only slow — saturated, with requests waiting for a slot,
or preempted — goes on answering its other requests, and a queued request then waits as long as it
must. A call with no other replica to go to is not declared stalled (cancelling it would only turn
a wait into an error; its call deadline and keepalive still end it). Once one call of a replica has stalled (the replica *hung*, until it answers anything again),
every other call there that has been silent for the replica's inter-token deadline stalls too — at
once, not after its own first-token deadline, which under a long queue is long: the same evidence
(nothing from the replica on any call for that long) stands for all of them. Until a replica has been measured (a new one, or a kind of measurement it never gave), its
deadline is `cold_s`.

The guard (StallGuard) runs one check every `tick_s` over every call in flight, so a token costs
the call one clock read and a few stores; a check that comes late (this process's event loop was
blocked: the replies may be waiting unread) forgives the time it was late. A stalled call is
cancelled; the backend then moves the generation as on UNAVAILABLE and quarantines the replica
(services.common.replicas: no new work; admitted again after a canary generation succeeds).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from services.common.metrics import STALL_DEADLINE

log = logging.getLogger(__name__)

FIRST_TOKEN = "first_token"
INTER_TOKEN = "inter_token"


@dataclass(frozen=True)
class StallPolicy:
    """How patient the guard is (HUBMESH_TEXT_STALL_*; services.text.settings)."""

    k: float = 16.0  # a call is stalled after k × what the replica's pace leads to expect; 0: never
    floor_s: float = 2.0  # never sooner than this
    cold_s: float = 120.0  # the deadline while the replica's pace of that kind is not known yet
    window: int = 128  # recent measurements kept per replica
    tick_s: float = 0.1  # how often calls in flight are checked

    @property
    def enabled(self) -> bool:
        return self.k > 0


class Pace:
    """What one replica's recent responses say of its speed."""

    __slots__ = ("gaps", "unit_times", "heard", "hung")

    def __init__(self, window: int = 64) -> None:
        self.gaps: deque[float] = deque(maxlen=window)  # seconds between two responses of one call
        self.unit_times: deque[float] = deque(maxlen=max(1, window // 2))  # time to first response per cost unit
        self.heard = -math.inf  # when any call there last received something
        self.hung = False  # a call there stalled, and nothing was received since

    def gap_s(self) -> float | None:
        return max(self.gaps) if self.gaps else None

    def unit_s(self) -> float | None:
        """The slowest recent time to first response per unit (queue waits included)."""
        return max(self.unit_times) if self.unit_times else None

    def fast_unit_s(self) -> float | None:
        """The fastest: about what a unit of prefill itself takes, without a queue before it."""
        return min(self.unit_times) if self.unit_times else None


def inter_token_deadline(policy: StallPolicy, pace: Pace, pending_units: float = 0.0) -> float:
    """Seconds of silence after which a generation that has answered before is stalled; with
    `pending_units` of prefill waiting on the replica (calls without a first response), at least
    k × their prefill at the replica's fastest recent pace (the prefill's own work, not its wait in a
    queue, which is not silent): an engine without chunked prefill is silent while it runs one."""
    gap = pace.gap_s()
    if gap is None:
        return max(policy.floor_s, policy.cold_s)
    unit = pace.fast_unit_s() if pending_units else None
    prefill = pending_units * unit if unit is not None else 0.0
    return max(policy.floor_s, policy.k * max(gap, prefill))


def first_token_deadline(policy: StallPolicy, pace: Pace, units: float, tokens_in_reply: int = 0) -> float:
    """Seconds a generation may wait for its first response: k × (its prefill and the queue ahead,
    `units` of the cost model, at the replica's measured seconds a unit), plus, for a call that only
    answers at its end, `tokens_in_reply` inter-token gaps (no deadline while those are unknown)."""
    unit = pace.unit_s()
    if unit is None:
        return max(policy.floor_s, policy.cold_s)
    expected = max(units, 1.0) * unit
    if tokens_in_reply:
        gap = pace.gap_s()
        if gap is None:
            return math.inf
        expected += tokens_in_reply * gap
    return max(policy.floor_s, policy.k * expected)


class Watch:
    """One Triton call in flight, as the guard sees it."""

    __slots__ = ("replica", "pace", "started", "last", "deadline", "streamed", "units", "call", "stall", "model")

    def __init__(self, replica, pace: Pace, started: float, deadline: float, units: float, streamed: bool,
                 model: str = "") -> None:
        self.replica = replica
        self.model = model
        self.pace = pace
        self.started = started
        self.last: float | None = None  # when the call last received something
        self.deadline = deadline  # of the first response (inter-token deadlines are the replica's)
        self.units = units
        self.streamed = streamed
        self.call = None  # what cancel() is called on when it stalls
        self.stall: Stall | None = None

    def heard(self, now: float) -> float | None:
        """A response arrived at `now`; the inter-token deadline that starts when it is the first."""
        pace, last = self.pace, self.last
        self.last = pace.heard = now
        pace.hung = False
        if last is not None:
            pace.gaps.append(now - last)
            return None
        if self.streamed:
            pace.unit_times.append((now - self.started) / max(self.units, 1.0))
        return now

    @property
    def phase(self) -> str:
        return FIRST_TOKEN if self.last is None else INTER_TOKEN


@dataclass(frozen=True)
class Stall:
    """Why a call was declared stalled."""

    phase: str
    silent_s: float
    deadline_s: float

    def describe(self, address: str) -> str:
        return (f"Triton replica {address} stalled: no {self.phase.replace('_', ' ')} for {self.silent_s:.2f} s "
                f"(deadline {self.deadline_s:.2f} s)")


class StallGuard:
    """Watches every Triton call of a backend (`watch`/`unwatch`), and cancels those that stall.

    `check(now)` is the whole decision (the unit tests drive it with their own clock); `run()`
    calls it every tick on the event loop."""

    def __init__(self, policy: StallPolicy = StallPolicy(), clock: Callable[[], float] = time.monotonic,
                 may_move: Callable[[Watch], bool] | None = None) -> None:
        self.policy = policy
        self.clock = clock
        # whether a call could go on elsewhere: one that could not is left to its call deadline (and to
        # keepalive), since cancelling it would only turn a wait into an error
        self.may_move = may_move
        self._paces: dict[str, Pace] = {}
        self._watches: set[Watch] = set()
        self._task: asyncio.Task | None = None
        self._wake: asyncio.Event | None = None
        self._last_check: float | None = None

    def pace(self, replica) -> Pace:
        pace = self._paces.get(replica.address)
        if pace is None:
            pace = self._paces[replica.address] = Pace(self.policy.window)
        return pace

    def watch(self, replica, units: float, tokens_in_reply: int = 0, model: str = "") -> Watch | None:
        """Starts watching a call on `replica` whose first response needs `units` of prefill (the cost
        model's) and, when it is not streamed, `tokens_in_reply` tokens; None when the guard is off."""
        if not self.policy.enabled:
            return None
        pace = self.pace(replica)
        deadline = first_token_deadline(self.policy, pace, units, tokens_in_reply)
        if math.isfinite(deadline):
            STALL_DEADLINE.labels(FIRST_TOKEN).observe(deadline)
        watch = Watch(replica, pace, self.clock(), deadline, units, streamed=not tokens_in_reply, model=model)
        self._watches.add(watch)
        self._start()
        return watch

    def unwatch(self, watch: Watch | None) -> None:
        if watch is not None:
            self._watches.discard(watch)

    def observe_first(self, watch: Watch) -> None:
        """The call's first response came: the inter-token deadline it now runs under, for the record."""
        STALL_DEADLINE.labels(INTER_TOKEN).observe(inter_token_deadline(self.policy, watch.pace))

    def check(self, now: float) -> list[Watch]:
        """Declares stalled (and cancels) every call past its deadline on a silent replica; returns them."""
        since = 0.0 if self._last_check is None else now - self._last_check
        self._last_check = now
        if since > 2 * max(self.policy.tick_s, 0.25):
            # this loop was blocked: replies may be waiting unread; the time lost is not silence
            self._forgive(since - self.policy.tick_s)
            return []
        stalled = []
        pending: dict[int, float] = {}  # pace -> prefill units of its calls without a first response
        for watch in self._watches:
            if watch.last is None and watch.stall is None:
                pending[id(watch.pace)] = pending.get(id(watch.pace), 0.0) + watch.units
        replica_deadlines: dict[int, float] = {}
        for watch in self._watches:
            if watch.stall is not None:
                continue
            pace = watch.pace
            key = id(pace)
            replica_deadline = replica_deadlines.get(key)
            if replica_deadline is None:
                replica_deadline = replica_deadlines[key] = inter_token_deadline(  # hung: no more allowance
                    self.policy, pace, 0.0 if pace.hung else pending.get(key, 0.0))
            if watch.last is None:
                silent, deadline = now - watch.started, watch.deadline
            else:
                silent, deadline = now - watch.last, replica_deadline
            if now - pace.heard <= replica_deadline:
                continue
            if silent <= deadline:
                if not (pace.hung and silent > replica_deadline):
                    continue
                deadline = replica_deadline  # the replica is hung: what waits there moves at once
            if self.may_move is not None and not self.may_move(watch):
                continue
            watch.stall = Stall(watch.phase, silent, deadline)
            pace.hung = True
            stalled.append(watch)
            if watch.call is not None:
                watch.call.cancel()
        if stalled:  # calls of a replica found hung later in this round
            stalled += self.check_hung(now, replica_deadlines)
        return stalled

    def check_hung(self, now: float, replica_deadlines: dict[int, float]) -> list[Watch]:
        """The calls of replicas found hung in this check's round that it had already passed over."""
        found = []
        for watch in self._watches:
            pace = watch.pace
            if watch.stall is None and pace.hung and id(pace) in replica_deadlines:
                deadline = inter_token_deadline(self.policy, pace)
                silent = now - (watch.started if watch.last is None else watch.last)
                if silent > deadline and (self.may_move is None or self.may_move(watch)):
                    watch.stall = Stall(watch.phase, silent, deadline)
                    found.append(watch)
                    if watch.call is not None:
                        watch.call.cancel()
        return found

    def _forgive(self, seconds: float) -> None:
        for watch in self._watches:
            if watch.last is None:
                watch.started += seconds
            else:
                watch.last += seconds
        for pace in self._paces.values():
            pace.heard += seconds

    def forget(self, replica) -> None:
        """`replica` left: its measurements go (watches end with their calls)."""
        self._paces.pop(replica.address, None)

    def _start(self) -> None:
        if self._wake is not None:
            self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self.run())

    async def run(self) -> None:
        """Checks every tick while calls are in flight (idle otherwise)."""
        self._wake = asyncio.Event()
        while True:
            if not self._watches:
                self._last_check = None
                self._wake.clear()
                await self._wake.wait()
            await asyncio.sleep(self.policy.tick_s)
            try:
                for watch in self.check(self.clock()):
                    assert watch.stall is not None, "check() returns the calls it declared stalled"
                    log.warning("%s", watch.stall.describe(watch.replica.address))
            except Exception:  # a failing check never stops the guard
                log.exception("stall check failed")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
