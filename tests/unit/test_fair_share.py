"""Admission at capacity (services/common/fair_share.py): max-min fair shares, weights and priority
bands, a flooder held to its share while others are served, work conservation, bounded waits.

The policy (FairShare) is synchronous and clock-free: its invariants are checked after every step of
every interleaving of requests, completions and give-ups up to a length, and of longer random ones;
Admission (the event-loop side) is driven by its own state, never by sleeps."""

from __future__ import annotations

import asyncio
import itertools

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from facade.text_streams import TextStreams
from hubmesh.common.v1 import common_pb2 as common_pb
from hubmesh.text.v1 import text_generation_pb2 as pb
from hubmesh.text.v1 import text_generation_pb2_grpc as pb_grpc
from services.common.errors import reason_and_field
from services.common.fair_share import Admission, FairShare, Refused, Ticket, water_fill
from services.common.interceptors import AdmissionInterceptor, MetricsInterceptor
from services.text.servicer import TextGenerationServicer
from tests.unit.test_text_streams import ScriptedBackend, read_all
from tests.unit.text_service_fixture import CATALOG, MODEL, serving

# -- shares --------------------------------------------------------------------------------------


def shares(capacity, demand, weight=None, priority=None):
    return water_fill(capacity, demand, weight or dict.fromkeys(demand, 1.0), priority or dict.fromkeys(demand, 0))


def test_water_fill_is_max_min_fair():
    assert shares(16, {"a": 100, "b": 1}) == {"a": 15, "b": 1}
    assert shares(16, {"a": 100, "b": 100}) == {"a": 8, "b": 8}
    assert shares(12, {"a": 100, "b": 100, "c": 2}) == {"a": 5, "b": 5, "c": 2}
    assert shares(8, {"a": 3, "b": 2}) == {"a": 3, "b": 2}  # nobody capped: everyone gets its demand


def test_water_fill_weights_and_bands():
    assert shares(12, {"a": 100, "b": 100}, weight={"a": 2.0, "b": 1.0}) == {"a": 8, "b": 4}
    # the higher band's demand first; the lower band shares what it leaves
    assert shares(10, {"hi": 6, "lo1": 100, "lo2": 100}, priority={"hi": 1, "lo1": 0, "lo2": 0}) == {
        "hi": 6, "lo1": 2, "lo2": 2}
    assert shares(4, {"hi": 9, "lo": 9}, priority={"hi": 1, "lo": 0}) == {"hi": 4, "lo": 0}


@given(st.integers(1, 64), st.dictionaries(st.sampled_from("abcdef"), st.tuples(
    st.integers(1, 80), st.sampled_from([0.5, 1.0, 2.0, 3.0]), st.integers(-1, 1)), min_size=1))
@settings(derandomize=True, max_examples=300)
def test_water_fill_properties(capacity, asks):
    demand = {s: float(d) for s, (d, _, _) in asks.items()}
    weight = {s: w for s, (_, w, _) in asks.items()}
    priority = {s: p for s, (_, _, p) in asks.items()}
    got = water_fill(capacity, demand, weight, priority)
    assert sum(got.values()) <= capacity + 1e-6
    assert all(-1e-9 <= got[s] <= demand[s] + 1e-9 for s in demand)
    if sum(demand.values()) <= capacity:
        assert got == pytest.approx(demand)  # everyone gets what it asks for
    else:
        assert sum(got.values()) == pytest.approx(capacity)  # nothing left over while someone wants more
    for s, t in itertools.permutations(demand, 2):  # max-min: s short of its demand gets at least t's weighted part
        if priority[s] == priority[t] and got[s] < demand[s] - 1e-6:
            assert got[s] / weight[s] >= got[t] / weight[t] - 1e-6


# -- the policy, step by step --------------------------------------------------------------------


class Model:
    """Drives a FairShare and checks its invariants after every step."""

    WEIGHTS = {"a": 1.0, "b": 1.0, "c": 2.0}

    def __init__(self, capacity: int, burst: int, policy: str = "fair", priorities: dict | None = None) -> None:
        self.fs = FairShare(capacity, policy=policy, burst=burst)  # type: ignore[arg-type]
        self.capacity, self.burst = capacity, burst
        self.priorities = priorities or {}
        self.held: dict[str, list[Ticket]] = {}
        self.waiting: dict[str, list[Ticket]] = {}
        self.refusals: list[tuple[str, str]] = []

    def _granted(self, tickets: list[Ticket]) -> None:
        for ticket in tickets:
            self.waiting[ticket.subject].remove(ticket)
            self.held.setdefault(ticket.subject, []).append(ticket)

    def _demand(self) -> dict[str, float]:
        return {s: float(len(self.held.get(s, [])) + len(self.waiting.get(s, [])))
                for s in {*self.held, *self.waiting}}

    def _share(self, subject: str, demand: dict[str, float]) -> float:
        """The oracle: the subject's share by water_fill over the model's own count of who asks."""
        asking = {s: d for s, d in demand.items() if d > 0}
        return water_fill(self.capacity, asking, {s: self.WEIGHTS[s] for s in asking},
                          {s: self.priorities.get(s, 0) for s in asking}).get(subject, 0.0)

    def request(self, subject: str) -> str:
        fs = self.fs
        before = fs.in_flight
        demand = self._demand()
        mine = demand.get(subject, 0.0)
        share = self._share(subject, {**demand, subject: mine + 1})
        decision = fs.request(subject, self.WEIGHTS[subject], self.priorities.get(subject, 0))
        outcome = decision.outcome
        if outcome in ("admitted", "borrowed"):
            self.held.setdefault(subject, []).append(decision.ticket)
        elif outcome == "wait":
            self.waiting.setdefault(subject, []).append(decision.ticket)
        else:
            self.refusals.append((subject, decision.reason))
        if outcome == "admitted":
            assert before < self.capacity
        else:
            assert before >= self.capacity, "refused, borrowed or queued while a slot was free"
        if abs(mine - share) > 1e-6 and outcome != "admitted":
            if fs.policy == "first_come":
                assert (outcome, decision.reason) == ("refused", "at_capacity")
            elif mine > share:  # at or over its share: refused at once, never a slot above capacity
                assert (outcome, decision.reason) == ("refused", "over_share")
            else:  # below it: a slot above capacity while the burst lasts, else a place in the queue
                assert outcome == ("borrowed" if before < self.capacity + self.burst else "wait")
        self.check()
        return outcome

    def end(self, subject: str) -> None:
        if self.held.get(subject):
            ticket = self.held[subject].pop(0)
            best = self._best_waiter()
            granted = self.fs.release(ticket)
            if granted:
                assert granted[0].subject == best, "a freed slot went to someone but the furthest below its share"
                if self.fs.in_flight > self.capacity:  # a slot above capacity: only below its share
                    demand = self._demand()
                    assert demand[best] - 1 < self._share(best, demand) + 1e-6
            self._granted(granted)
        self.check()

    def give_up(self, subject: str) -> None:
        if self.waiting.get(subject):
            self._granted(self.fs.withdraw(self.waiting[subject].pop(0)))
        self.check()

    def _best_waiter(self) -> str | None:
        asking = [s for s, w in self.waiting.items() if w]
        if not asking:
            return None
        return min(asking, key=lambda s: (-self.priorities.get(s, 0), len(self.held.get(s, [])) / self.WEIGHTS[s],
                                          self.waiting[s][0].seq))

    def check(self) -> None:
        fs = self.fs
        held = sum(len(t) for t in self.held.values())
        waiting = sum(len(t) for t in self.waiting.values())
        assert fs.in_flight == held <= self.capacity + self.burst
        assert fs.waiting == waiting
        assert not waiting or fs.in_flight >= self.capacity, "someone waits while a slot is free (not work-conserving)"
        if fs.policy == "first_come":
            assert not waiting and fs.in_flight <= self.capacity
        assert fs.active_subjects == len({s for s in (*self.held, *self.waiting) if self.held.get(s) or self.waiting.get(s)})
        for subject, tickets in self.held.items():
            assert fs.in_flight_of(subject) == len(tickets)


OPS = [(kind, s) for kind in ("request", "end", "give_up") for s in "abc"]


@pytest.mark.parametrize("capacity, burst, longest", [(1, 0, 4), (2, 0, 5), (2, 1, 5), (3, 1, 4)])
def test_every_interleaving_keeps_the_invariants(capacity, burst, longest):
    for length in range(1, longest + 1):
        for ops in itertools.product(OPS, repeat=length):
            model = Model(capacity, burst)
            for kind, subject in ops:
                getattr(model, kind)(subject)


@given(st.lists(st.sampled_from(OPS), max_size=60), st.integers(1, 5), st.integers(0, 2),
       st.sampled_from(["fair", "first_come"]), st.dictionaries(st.sampled_from("abc"), st.integers(-1, 1)))
@settings(derandomize=True, max_examples=200)
def test_long_interleavings_keep_the_invariants(ops, capacity, burst, policy, priorities):
    model = Model(capacity, burst, policy, priorities)
    for kind, subject in ops:
        getattr(model, kind)(subject)
    for subject in "abc":  # everyone stops asking: everything drains, nobody is left waiting
        while model.waiting.get(subject):
            model.give_up(subject)
    for subject in "abc":
        while model.held.get(subject):
            model.end(subject)
    assert model.fs.in_flight == model.fs.waiting == model.fs.active_subjects == 0


# -- what it is for ------------------------------------------------------------------------------


def flood(fs: FairShare, subject: str, times: int, **kw) -> list:
    return [fs.request(subject, **kw) for _ in range(times)]


def test_a_flooder_alone_gets_everything_then_is_held_to_its_share():
    fs = FairShare(8, burst=0)
    got = flood(fs, "a", 20)
    assert [d.outcome for d in got[:8]] == ["admitted"] * 8  # work-conserving: nobody else asks
    assert {(d.outcome, d.reason) for d in got[8:]} == {("refused", "over_share")}
    b = fs.request("b")
    assert b.outcome == "wait"  # below its share: waits for the next free slot
    assert fs.request("a").reason == "over_share"
    granted = fs.release(got[0].ticket)
    assert granted == [b.ticket] and b.ticket.granted  # the freed slot goes to b, not to a's retries
    assert fs.request("a").reason == "over_share"
    fs.release(got[1].ticket)  # b has 1 in flight, a 6: a's next one gets the slot
    assert fs.request("a").outcome == "admitted"


def test_burst_lets_a_subject_below_its_share_start_at_once_and_the_flooder_repays_it():
    fs = FairShare(4, burst=1)
    a = [d.ticket for d in flood(fs, "a", 4)]
    b = fs.request("b")
    assert b.outcome == "borrowed" and fs.in_flight == 5
    assert fs.request("c").outcome == "wait"  # the one burst slot is taken: c waits
    fs.release(a[0])
    assert fs.in_flight == 5 and fs.in_flight_of("c") == 1  # c is below its share: the slot is c's
    fs.release(a[1])
    fs.release(a[2])
    assert fs.in_flight == 3 and fs.request("a").outcome == "admitted"  # back below capacity: a again
    assert fs.request("a").reason == "over_share"


def test_weights_divide_the_capacity_in_proportion():
    fs = FairShare(6, burst=0)
    a = [d.ticket for d in flood(fs, "a", 6)]
    waiting = [fs.request("b", weight=2.0) for _ in range(6)]
    assert [d.outcome for d in waiting[:4]] == ["wait"] * 4 and waiting[4].reason == "over_share"
    for ticket in a:
        fs.release(ticket)
        fs.request("a")  # a keeps asking
    assert fs.in_flight_of("b") == 4 and fs.in_flight_of("a") == 2


def test_a_higher_band_is_served_first():
    fs = FairShare(4, burst=0)
    batch = [d.ticket for d in flood(fs, "batch", 4, priority=-1)]
    interactive = [fs.request("chat", priority=1) for _ in range(4)]
    assert all(d.outcome == "wait" for d in interactive)  # its band's share is the whole capacity
    assert fs.request("batch", priority=-1).reason == "over_share"
    for ticket in batch:
        fs.release(ticket)
    assert fs.in_flight_of("chat") == 4 and fs.in_flight_of("batch") == 0


def test_first_come_is_todays_behaviour():
    fs = FairShare(2, policy="first_come", burst=4)
    flood(fs, "a", 2)
    assert fs.request("b").reason == "at_capacity" and fs.in_flight == 2


# -- on the event loop ---------------------------------------------------------------------------


async def until(predicate, turns: int = 1000) -> None:
    """Lets the loop run other tasks (no clock) until `predicate()` holds."""
    for _ in range(turns):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition not reached")


async def test_admission_waits_for_a_slot_and_hands_it_over():
    admission = Admission(2, wait_s=30, burst=0)
    held = [await admission.acquire("a") for _ in range(2)]
    b = asyncio.create_task(admission.acquire("b"))
    await until(lambda: admission.policy.waiting == 1)
    with pytest.raises(Refused) as refused:
        await admission.acquire("a")
    assert refused.value.reason == "over_share"
    admission.release(held[0])
    ticket = await b
    assert ticket.granted and admission.policy.in_flight_of("b") == 1
    admission.release(ticket)
    admission.release(held[1])
    assert admission.policy.in_flight == admission.policy.active_subjects == 0


async def test_a_wait_is_bounded_by_wait_s_and_by_the_calls_time_left():
    admission = Admission(1, wait_s=0.05, burst=0)
    held = await admission.acquire("a")
    with pytest.raises(Refused) as refused:
        await admission.acquire("b")  # nobody frees the slot
    assert refused.value.reason == "wait_timeout" and admission.policy.waiting == 0
    admission.wait_s = 30
    with pytest.raises(Refused) as refused:
        await admission.acquire("b", time_left_s=0.01)  # the call's deadline is nearer than wait_s
    assert refused.value.reason == "wait_timeout" and admission.policy.active_subjects == 1
    admission.release(held)


async def test_a_cancelled_waiter_leaves_the_queue_and_a_granted_one_passes_its_slot_on():
    admission = Admission(1, wait_s=30, burst=0)
    held = await admission.acquire("a")
    b = asyncio.create_task(admission.acquire("b"))
    c = asyncio.create_task(admission.acquire("c"))
    await until(lambda: admission.policy.waiting == 2)
    b.cancel()
    with pytest.raises(asyncio.CancelledError):
        await b
    assert admission.policy.waiting == 1
    d = asyncio.create_task(admission.acquire("d"))
    await until(lambda: admission.policy.waiting == 2)
    admission.release(held)  # granted to c, which is cancelled before it runs again
    c.cancel()
    with pytest.raises(asyncio.CancelledError):
        await c
    ticket = await d  # c's slot went on to d
    assert admission.policy.in_flight == 1 and admission.policy.in_flight_of("d") == 1
    admission.release(ticket)
    assert admission.policy.in_flight == admission.policy.waiting == 0


# -- every generation, however it arrives (its own call or a GenerateMany link) ------------------


async def test_generations_on_a_link_are_admitted_by_subject():
    """Two subjects' generations on one GenerateMany link: the flooder holding both slots gets
    AT_CAPACITY for a third, the other subject waits and is served when one of the flooder's ends;
    a direct GenerateStream call of the flooder is refused the same."""
    def request(prompt: str, subject: str) -> pb.GenerateRequest:
        return pb.GenerateRequest(model=MODEL, prompt=prompt, caller=common_pb.Caller(subject=subject))

    admission = AdmissionInterceptor(2, "fair", wait_s=30, burst=0)
    servicer = TextGenerationServicer(ScriptedBackend(), CATALOG)

    def register(server: grpc.aio.Server) -> None:
        pb_grpc.add_TextGenerationServicer_to_server(servicer, server)

    async with serving(register, [MetricsInterceptor(), admission]) as target, grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.TextGenerationStub(channel)
        streams = TextStreams(stub, (), links=1)
        try:
            held = [streams.open(request("hang", "a"), 10.0) for _ in range(2)]
            for stream in held:
                assert (await stream.read()).deltas[0].text == "first"
            waiting = asyncio.create_task(read_all(streams.open(request("words:served", "b"), 10.0)))
            await until_polled(lambda: admission.admission.policy.waiting == 1)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await read_all(streams.open(request("words:more", "a"), 10.0))
            assert reason_and_field(err.value)[0] == "AT_CAPACITY" and "fair share" in err.value.details()
            with pytest.raises(grpc.aio.AioRpcError) as err:  # its own call: the same policy
                await read_all(stub.GenerateStream(request("words:more", "a")))
            assert reason_and_field(err.value)[0] == "AT_CAPACITY"
            assert not waiting.done()
            held[0].cancel()
            messages = await asyncio.wait_for(waiting, 10)
            assert messages[0].deltas[0].text == "served"
            held[1].cancel()
        finally:
            await streams.close()


async def until_polled(predicate, timeout_s: float = 10.0) -> None:
    """Until `predicate()` holds (the server's state, read while gRPC's threads move the calls)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.005)
