"""The stall deadline and the guard's decision (services.text.stalls), in simulated time: a fake clock
advanced tick by tick, calls that are fakes with a cancel()."""

from __future__ import annotations

import math

import pytest

from services.text.stalls import (
    FIRST_TOKEN, INTER_TOKEN, Pace, StallGuard, StallPolicy, first_token_deadline, inter_token_deadline,
)

POLICY = StallPolicy(k=8.0, floor_s=1.0, cold_s=30.0, window=4, tick_s=0.1)


class FakeReplica:
    def __init__(self, address: str) -> None:
        self.address = address


class FakeCall:
    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Clock:
    """Simulated time: `tick()` advances it by one guard tick and runs the guard's check."""

    def __init__(self, guard: StallGuard | None = None) -> None:
        self.now = 100.0
        self.guard = guard
        self.stalled: list = []

    def __call__(self) -> float:
        return self.now

    def run(self, seconds: float) -> list:
        """Advances `seconds` tick by tick; the calls declared stalled on the way."""
        found = []
        for _ in range(round(seconds / self.guard.policy.tick_s)):
            self.now += self.guard.policy.tick_s
            found += self.guard.check(self.now)
        return found


def guarded(policy: StallPolicy = POLICY) -> tuple[StallGuard, Clock]:
    clock = Clock()
    guard = StallGuard(policy, clock)
    clock.guard = guard
    guard._start = lambda: None  # no event loop: the test's clock runs the checks
    return guard, clock


# -- the deadlines ----------------------------------------------------------------------------------

def test_inter_token_deadline_is_k_times_the_longest_recent_gap_with_a_floor():
    pace = Pace(window=4)
    assert inter_token_deadline(POLICY, pace) == 30.0  # not measured yet: cold
    pace.gaps.extend([0.02, 0.05, 0.03])
    assert inter_token_deadline(POLICY, pace) == 1.0  # 8 × 0.05 = 0.4 < floor
    pace.gaps.append(0.5)  # a step that carried someone's prefill
    assert inter_token_deadline(POLICY, pace) == pytest.approx(4.0)
    pace.gaps.extend([0.02] * 4)  # the window moved on
    assert inter_token_deadline(POLICY, pace) == 1.0


def test_first_token_deadline_scales_with_the_prefill_and_queue_ahead():
    pace = Pace(window=4)
    assert first_token_deadline(POLICY, pace, units=10) == 30.0  # cold
    pace.unit_times.append(0.05)  # the replica took 50 ms per unit of prefill lately
    assert first_token_deadline(POLICY, pace, units=1) == 1.0  # 8 × 0.05 < floor
    assert first_token_deadline(POLICY, pace, units=40) == pytest.approx(16.0)  # a long prompt, a queue
    assert first_token_deadline(POLICY, pace, units=80) == pytest.approx(2 * first_token_deadline(POLICY, pace, 40))


def test_a_reply_that_comes_only_at_the_end_waits_for_its_tokens():
    pace = Pace(window=4)
    pace.unit_times.append(0.05)
    assert first_token_deadline(POLICY, pace, units=1, tokens_in_reply=100) == math.inf  # gaps unknown: no deadline
    pace.gaps.append(0.02)
    assert first_token_deadline(POLICY, pace, units=1, tokens_in_reply=100) == pytest.approx(8 * (0.05 + 2.0))


def test_k_zero_turns_the_guard_off():
    guard = StallGuard(StallPolicy(k=0))
    assert guard.watch(FakeReplica("r"), units=1) is None


# -- the guard ----------------------------------------------------------------------------------------

def measured(guard: StallGuard, clock: Clock, replica, gap_s: float = 0.05, unit_s: float = 0.05) -> None:
    pace = guard.pace(replica)
    pace.gaps.extend([gap_s] * 4)
    pace.unit_times.append(unit_s)
    pace.heard = clock.now


def streaming(guard: StallGuard, clock: Clock, replica, units: float = 1.0, tokens: int = 5, every_s: float = 0.05):
    """A call that has had `tokens` responses, one every `every_s` (simulated)."""
    watch = guard.watch(replica, units)
    watch.call = FakeCall()
    for _ in range(tokens):
        clock.now += every_s
        watch.heard(clock.now)
    return watch


def test_a_silent_replica_stalls_its_call_after_the_inter_token_deadline():
    guard, clock = guarded()
    replica = FakeReplica("a")
    measured(guard, clock, replica)
    watch = streaming(guard, clock, replica)
    assert clock.run(0.9) == []  # under the floor (8 × 50 ms = 0.4 s < 1 s)
    stalled = clock.run(0.3)
    assert stalled == [watch] and watch.call.cancelled
    assert watch.stall.phase == INTER_TOKEN and watch.stall.deadline_s == 1.0 and 1.0 < watch.stall.silent_s <= 1.1
    assert clock.run(5) == []  # declared once


def test_a_call_that_is_still_answered_never_stalls():
    guard, clock = guarded()
    replica = FakeReplica("a")
    measured(guard, clock, replica)
    watch = streaming(guard, clock, replica)
    for _ in range(100):  # 10 s of tokens every 0.1 s
        assert clock.run(0.1) == []
        watch.heard(clock.now)
    assert not watch.call.cancelled


def test_a_waiting_request_on_a_busy_replica_is_not_stalled():
    """Saturated: a queued request gets nothing for long, but the replica goes on answering others."""
    guard, clock = guarded()
    replica = FakeReplica("a")
    measured(guard, clock, replica)
    queued = guard.watch(replica, units=1)  # deadline: the floor
    queued.call = FakeCall()
    running = streaming(guard, clock, replica, tokens=1)
    for _ in range(300):  # 30 s, the others' tokens keep coming
        assert clock.run(0.1) == []
        running.heard(clock.now)
    assert not queued.call.cancelled
    stalled = clock.run(1.2)  # then the replica falls silent: both stall
    assert set(stalled) == {queued, running}
    assert queued.stall.phase == FIRST_TOKEN and running.stall.phase == INTER_TOKEN


def test_a_long_prefill_gets_a_long_first_token_deadline():
    guard, clock = guarded()
    replica = FakeReplica("a")
    measured(guard, clock, replica, unit_s=0.05)
    watch = guard.watch(replica, units=40)  # 8 × 40 × 50 ms = 16 s
    watch.call = FakeCall()
    assert watch.deadline == pytest.approx(16.0)
    assert clock.run(15.8) == []
    assert clock.run(0.4) == [watch] and watch.stall.phase == FIRST_TOKEN


def test_an_unmeasured_replica_gets_the_cold_deadline():
    guard, clock = guarded()
    watch = guard.watch(FakeReplica("new"), units=1)
    watch.call = FakeCall()
    assert clock.run(29.9) == []
    assert clock.run(0.2) == [watch]


def test_measurements_come_from_the_calls():
    guard, clock = guarded()
    replica = FakeReplica("a")
    watch = guard.watch(replica, units=4)
    clock.now += 0.4
    assert watch.heard(clock.now) == clock.now  # the first response
    for gap in (0.03, 0.07, 0.05):
        clock.now += gap
        watch.heard(clock.now)
    pace = guard.pace(replica)
    assert pace.unit_s() == pytest.approx(0.1) and pace.gap_s() == pytest.approx(0.07)
    assert pace.heard == clock.now


def test_a_blocked_event_loop_is_forgiven():
    """The guard's own loop stood still (replies may be waiting unread): that time is not silence."""
    guard, clock = guarded()
    replica = FakeReplica("a")
    measured(guard, clock, replica)
    watch = streaming(guard, clock, replica)
    clock.run(0.5)
    clock.now += 5.0  # no tick for 5 s
    assert guard.check(clock.now) == []
    assert clock.run(0.3) == []  # 0.5 + 0.1 + 0.3 s of real silence: under the floor
    assert clock.run(0.3) == [watch]


def test_other_replicas_are_judged_by_their_own_pace():
    guard, clock = guarded()
    fast, slow = FakeReplica("fast"), FakeReplica("slow")
    measured(guard, clock, fast, gap_s=0.02)
    measured(guard, clock, slow, gap_s=0.5)  # 8 × 0.5 = 4 s
    on_fast = streaming(guard, clock, fast, every_s=0.02)
    on_slow = streaming(guard, clock, slow, every_s=0.5)
    clock.now = max(on_fast.last, on_slow.last)
    assert clock.run(1.2) == [on_fast]
    assert clock.run(2.5) == []
    assert clock.run(0.5) == [on_slow]


def test_a_hung_replica_takes_everything_on_it_along():
    """Calls on a replica without a first response: the replica is given their prefill; then it is hung
    and every call there moves, whatever its own deadline; other replicas are not touched."""
    guard, clock = guarded()
    replica, other = FakeReplica("a"), FakeReplica("b")
    measured(guard, clock, replica)
    measured(guard, clock, other)
    queued = guard.watch(replica, units=20)  # 8 × 20 × 50 ms = 8 s
    queued.call = FakeCall()
    elsewhere = guard.watch(other, units=400)
    elsewhere.call = FakeCall()
    running = streaming(guard, clock, replica, tokens=1)
    guard.pace(other).heard = clock.now + 100  # the other replica keeps answering
    assert clock.run(7.8) == []
    assert set(clock.run(0.4)) == {running, queued}
    assert queued.stall.phase == FIRST_TOKEN and running.stall.deadline_s == pytest.approx(8.0)
    late = guard.watch(replica, units=400)  # sent there just before the quarantine
    late.call = FakeCall()
    assert clock.run(1.2) == [late]  # the replica is hung: its silence is the evidence
    assert not elsewhere.call.cancelled


def test_a_hung_replica_that_answers_again_is_judged_afresh():
    guard, clock = guarded()
    replica = FakeReplica("a")
    measured(guard, clock, replica)
    first = streaming(guard, clock, replica, tokens=1)
    assert clock.run(1.2) == [first]
    later = guard.watch(replica, units=400)  # routed there before the quarantine, say
    later.call = FakeCall()
    clock.now += 0.1
    later.heard(clock.now)  # the replica answers: no longer hung
    guard.unwatch(first)
    assert clock.run(0.9) == []


def test_prefill_waiting_on_the_replica_lengthens_its_silence_allowance():
    """An engine without chunked prefill is silent while it prefills what was queued."""
    guard, clock = guarded()
    replica = FakeReplica("a")
    measured(guard, clock, replica, gap_s=0.05, unit_s=0.1)
    running = streaming(guard, clock, replica, tokens=2)
    guard.pace(replica).unit_times.clear()
    guard.pace(replica).unit_times.append(0.1)  # a unit of prefill takes 0.1 s there
    queued = guard.watch(replica, units=5)  # 8 × 5 × 0.1 = 4 s
    queued.call = FakeCall()
    assert clock.run(3.9) == []
    assert set(clock.run(0.3)) == {running, queued}


def test_a_call_with_nowhere_to_go_is_left_alone():
    guard, clock = guarded()
    guard.may_move = lambda watch: False
    replica = FakeReplica("only")
    measured(guard, clock, replica)
    watch = streaming(guard, clock, replica)
    assert clock.run(10) == [] and not watch.call.cancelled


def test_the_silence_allowance_counts_prefill_work_not_queue_waits():
    """Times to first token measured under a queue are long; the replica's silence allowance uses the
    fastest recent one, so a hung saturated replica is still found within its inter-token deadline."""
    pace = Pace(window=8)
    pace.gaps.append(0.05)
    pace.unit_times.extend([0.05, 3.0, 4.0])  # the last two waited for a slot
    assert inter_token_deadline(POLICY, pace, pending_units=4) == pytest.approx(8 * 4 * 0.05)
    assert first_token_deadline(POLICY, pace, units=4) == pytest.approx(8 * 4 * 4.0)  # its own: patient
