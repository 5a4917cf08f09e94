"""Admission at capacity: each service's calls in flight divided among the subjects asking for them.

A service admits `capacity` calls at once (HUBMESH_MAX_IN_FLIGHT). Below it, every call is admitted,
whoever makes it. At it, the policy decides (HUBMESH_ADMISSION):

- `first_come`: refused at once (AT_CAPACITY): whoever arrives while a slot is free gets it, so a
  subject sending many requests holds every slot and everyone else gets 429s;
- `fair` (default): the capacity is divided max-min fairly among the subjects *asking* (those with
  calls in flight or waiting), in proportion to their weights (Caller.weight, default 1), band by
  band (Caller.priority: a higher band's demand is met first, lower bands share what it leaves).
  A subject's share is what water-filling gives it: subjects asking for less than an equal split keep
  what they ask for; the rest is split among the others by weight. Then
    - a call of a subject **below its share** is admitted at once if fewer than `capacity + burst`
      calls are in flight (it borrows one of `burst` slots above capacity — the subjects over their
      share get no new slot until the total is back below capacity, so the borrowed slot is paid back
      out of their next completions, and a subject that asks rarely starts at once however hard
      another one floods), or else waits, up to `wait_s` (and the call's deadline), for a slot;
    - a call of a subject **at or over its share** is refused at once (its wait has no bound: every
      freed slot goes to someone below their share first);
    - a freed slot goes to the waiting subject furthest below its share: highest band first, then
      the fewest calls in flight per unit of weight, then the oldest waiter.
  Capacity nobody else asks for stays with whoever asks (work-conserving: a free slot below
  capacity is never refused), so a flooder alone gets the whole service, and with others asking it
  holds what they leave.

`FairShare` is the policy alone, synchronous and with no clock, so that its tests can drive every
interleaving; `Admission` puts it on the event loop (waits, timeouts, cancellation) with metrics.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

from prometheus_client import Counter, Gauge, Histogram

Policy = Literal["fair", "first_come"]
Outcome = Literal["admitted", "borrowed", "wait", "refused"]
Reason = Literal["", "at_capacity", "over_share", "wait_timeout"]

ADMITTED = Counter(
    "hubmesh_admission_admitted", "Calls admitted by the service's admission control, by how", ["how"],
)  # how: at_once (below capacity), borrowed (above it, a subject below its fair share), after_wait
REFUSED = Counter(
    "hubmesh_admission_refused", "Calls refused AT_CAPACITY, by reason", ["reason"],
)  # at_capacity (first_come, or nowhere to wait), over_share (fair: at or over its share), wait_timeout
WAIT = Histogram(
    "hubmesh_admission_wait_seconds", "How long calls waited for a slot (admitted or not)",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
ACTIVE_SUBJECTS = Gauge("hubmesh_admission_active_subjects", "Subjects with calls in flight or waiting")
WAITING = Gauge("hubmesh_admission_waiting", "Calls waiting for a slot")


@dataclass(eq=False, slots=True)
class Ticket:
    """One call's place: in flight once `granted`; `future` is the waiting call's (Admission's)."""

    subject: str
    seq: int
    granted: bool = False
    released: bool = False
    borrowed: bool = False  # admitted above capacity
    future: asyncio.Future | None = None


@dataclass(slots=True)
class _Subject:
    weight: float = 1.0
    priority: int = 0
    in_flight: int = 0
    waiting: deque[Ticket] = field(default_factory=deque)

    @property
    def demand(self) -> int:
        return self.in_flight + len(self.waiting)


@dataclass(frozen=True, slots=True)
class Decision:
    outcome: Outcome
    ticket: Ticket | None  # None when refused
    reason: Reason = ""


def water_fill(capacity: float, demand: dict[str, float], weight: dict[str, float],
               priority: dict[str, int]) -> dict[str, float]:
    """Max-min fair shares of `capacity` among subjects with `demand`, weighted, band by band (higher
    `priority` first): within a band, a subject asking for less than its weighted part of what is
    left gets what it asks for; the others split the rest by weight."""
    shares = {subject: 0.0 for subject in demand}
    left = float(capacity)
    for band in sorted({priority[s] for s in demand}, reverse=True):
        members = [s for s in demand if priority[s] == band and demand[s] > 0]
        while members and left > 1e-9:
            level = left / sum(weight[s] for s in members)
            capped = [s for s in members if demand[s] <= level * weight[s]]
            if not capped:
                for s in members:
                    shares[s] = level * weight[s]
                left = 0.0
                break
            for s in capped:
                shares[s] = demand[s]
                left -= demand[s]
            members = [s for s in members if s not in capped]
    return shares


class FairShare:
    """The admission policy's state: calls in flight and waiting, per subject (module docstring)."""

    def __init__(self, capacity: int, *, policy: Policy = "fair", burst: int = 0, queue: bool = True) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self.policy: Policy = policy
        self.burst = burst if policy == "fair" else 0
        self.queue = queue and policy == "fair"
        self.in_flight = 0
        self.waiting = 0
        self._subjects: dict[str, _Subject] = {}
        self._seq = 0

    @property
    def active_subjects(self) -> int:
        return len(self._subjects)

    def in_flight_of(self, subject: str) -> int:
        state = self._subjects.get(subject)
        return state.in_flight if state is not None else 0

    def shares(self, extra: str | None = None) -> dict[str, float]:
        """Each asking subject's share of the capacity (with one more call of `extra` asking)."""
        subjects = self._subjects
        demand: dict[str, float] = {s: st.demand + (s == extra) for s, st in subjects.items()}
        return water_fill(self.capacity, demand, {s: st.weight for s, st in subjects.items()},
                          {s: st.priority for s, st in subjects.items()})

    def request(self, subject: str, weight: float = 1.0, priority: int = 0) -> Decision:
        """A call of `subject` arrives: admitted (at once, or borrowing a slot above capacity), told to
        wait (its ticket is granted by a later release() or withdraw()), or refused."""
        if self.in_flight < self.capacity:
            return Decision("admitted", self._admit(self._state(subject, weight, priority), subject, False))
        if self.policy != "fair":
            return Decision("refused", None, "at_capacity")
        state = self._subjects.get(subject)
        known = state is not None
        state = self._state(subject, weight, priority)
        if state.demand >= self.shares(extra=subject)[subject]:
            if not known:
                del self._subjects[subject]
            return Decision("refused", None, "over_share")
        if self.in_flight < self.capacity + self.burst:
            return Decision("borrowed", self._admit(state, subject, True))
        if not self.queue:
            if not known:
                del self._subjects[subject]
            return Decision("refused", None, "at_capacity")
        self._seq += 1
        ticket = Ticket(subject, self._seq)
        state.waiting.append(ticket)
        self.waiting += 1
        return Decision("wait", ticket)

    def release(self, ticket: Ticket) -> list[Ticket]:
        """A granted call has ended: its slot is free. The waiting tickets granted as a result."""
        if not ticket.granted or ticket.released:
            return []
        ticket.released = True
        self.in_flight -= 1
        state = self._subjects[ticket.subject]
        state.in_flight -= 1
        self._forget_if_idle(ticket.subject, state)
        return self._dispatch()

    def withdraw(self, ticket: Ticket) -> list[Ticket]:
        """A call gives up (its wait timed out, it was cancelled): out of the queue, or, if it had
        been granted meanwhile, its slot released. The waiting tickets granted as a result."""
        if ticket.granted:
            return self.release(ticket)
        state = self._subjects.get(ticket.subject)
        if state is None or ticket not in state.waiting:
            return []
        state.waiting.remove(ticket)
        self.waiting -= 1
        self._forget_if_idle(ticket.subject, state)
        return self._dispatch()  # less demand: others' shares may have grown

    # -- internals --

    def _state(self, subject: str, weight: float, priority: int) -> _Subject:
        state = self._subjects.get(subject)
        if state is None:
            state = self._subjects[subject] = _Subject()
        state.weight = weight if weight > 0 else 1.0
        state.priority = priority
        return state

    def _admit(self, state: _Subject, subject: str, borrowed: bool) -> Ticket:
        self._seq += 1
        ticket = Ticket(subject, self._seq, granted=True, borrowed=borrowed)
        state.in_flight += 1
        self.in_flight += 1
        return ticket

    def _forget_if_idle(self, subject: str, state: _Subject) -> None:
        if state.in_flight == 0 and not state.waiting:
            del self._subjects[subject]

    def _dispatch(self) -> list[Ticket]:
        """Grants free slots to waiters, the one furthest below its share first."""
        granted: list[Ticket] = []
        while self.waiting:
            subject, state = min(
                ((s, st) for s, st in self._subjects.items() if st.waiting),
                key=lambda item: (-item[1].priority, item[1].in_flight / item[1].weight, item[1].waiting[0].seq),
            )
            if self.in_flight < self.capacity:
                borrowed = False
            elif self.in_flight < self.capacity + self.burst and state.demand - 1 < self.shares()[subject]:
                borrowed = True
            else:
                break
            ticket = state.waiting.popleft()
            self.waiting -= 1
            state.in_flight += 1
            self.in_flight += 1
            ticket.granted, ticket.borrowed = True, borrowed
            granted.append(ticket)
        return granted


class Refused(Exception):
    """A call admission refuses; `reason` says why (Reason), the message what to tell the caller."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class Admission:
    """FairShare on the event loop: acquire() admits, waits (up to `wait_s` and the call's time
    left) or raises Refused; release() frees the slot. Counts what it decides (module metrics)."""

    def __init__(self, capacity: int, *, policy: Policy = "fair", wait_s: float = 0.5, burst: int = 0) -> None:
        self.policy = FairShare(capacity, policy=policy, burst=burst, queue=wait_s > 0)
        self.wait_s = wait_s

    @property
    def capacity(self) -> int:
        return self.policy.capacity

    async def acquire(self, subject: str, weight: float = 1.0, priority: int = 0,
                      time_left_s: float | None = None) -> Ticket:
        decision = self.policy.request(subject, weight, priority)
        if decision.ticket is None:
            raise self._refuse(decision.reason, subject)
        ticket = decision.ticket
        if decision.outcome != "wait":
            ADMITTED.labels("borrowed" if decision.outcome == "borrowed" else "at_once").inc()
            self._gauges()
            return ticket
        ticket.future = asyncio.get_running_loop().create_future()
        self._gauges()
        bound = self.wait_s if time_left_s is None else min(self.wait_s, time_left_s)
        started = time.monotonic()
        try:
            async with asyncio.timeout(bound):
                await ticket.future
        except TimeoutError:
            if not ticket.granted:  # (granted just as the time ran out: it keeps the slot)
                self._wake(self.policy.withdraw(ticket))
                WAIT.observe(time.monotonic() - started)
                raise self._refuse("wait_timeout", subject) from None
        except BaseException:  # cancelled while waiting: the slot, if it came, goes to the next
            self._wake(self.policy.withdraw(ticket))
            raise
        WAIT.observe(time.monotonic() - started)
        ADMITTED.labels("after_wait").inc()
        return ticket

    def release(self, ticket: Ticket) -> None:
        self._wake(self.policy.release(ticket))

    def _wake(self, granted: list[Ticket]) -> None:
        for ticket in granted:
            if ticket.future is not None and not ticket.future.done():
                ticket.future.set_result(None)
            # else its call was cancelled meanwhile: its own withdraw() releases the slot
        self._gauges()

    def _gauges(self) -> None:
        ACTIVE_SUBJECTS.set(self.policy.active_subjects)
        WAITING.set(self.policy.waiting)

    def _refuse(self, reason: Reason, subject: str) -> Refused:
        REFUSED.labels(reason).inc()
        self._gauges()
        capacity = self.policy.capacity
        if reason == "over_share":
            message = (f"the service is at capacity ({capacity} requests in flight) and this caller has its "
                       f"fair share of it ({self.policy.in_flight_of(subject)} in flight); retry shortly")
        elif reason == "wait_timeout":
            message = (f"the service is at capacity ({capacity} requests in flight) and no slot came free "
                       f"within {self.wait_s:g} s; retry shortly")
        else:
            message = f"the service is at capacity ({capacity} requests in flight); retry shortly"
        return Refused(reason, message)
