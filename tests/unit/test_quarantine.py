"""A replica that hangs: its generation moves on token for token, the replica is quarantined and comes
back only after a canary generation succeeds (services.common.replicas, TritonTextBackend), against
in-process gRPC servers that speak the contract and hang on cue. The outcomes do not depend on timing:
each test awaits what it asserts (a generation's end, an admission), never a sleep."""

from __future__ import annotations

import asyncio

import grpc
from tritonclient.grpc import service_pb2

from services.common.metrics import CANARIES, REPLICA_QUARANTINED, STALLS
from services.common.replicas import ReplicaSet, Target
from services.text.stalls import StallPolicy
from tests.unit.test_migration import ContractTriton, backend_for, expected, generate, moved, triton

FAST = StallPolicy(k=8.0, floor_s=0.2, cold_s=0.5, tick_s=0.02)


class HangingTriton(ContractTriton):
    """ContractTriton that, while `hung`, stops answering after `hang_after` tokens of a request (and
    answers nothing to a new one), its connection open, until the call is cancelled."""

    def __init__(self, hang_after: int) -> None:
        super().__init__()
        self.hang_after = hang_after
        self.hung = True
        self.cancelled = 0

    async def ModelStreamInfer(self, request_iterator, context):
        sent = 0
        try:
            async for response in super().ModelStreamInfer(request_iterator, context):
                if self.hung and sent >= self.hang_after:
                    await asyncio.Event().wait()  # frozen
                sent += 1
                yield response
        except asyncio.CancelledError:
            self.cancelled += 1
            raise


def stalls(address: str, phase: str) -> float:
    return STALLS.labels(address, phase)._value.get()


def canaries(address: str, outcome: str) -> float:
    return CANARIES.labels(address, outcome)._value.get()


async def test_a_generation_on_a_hung_replica_moves_on_token_for_token():
    hanging, healthy = HangingTriton(hang_after=5), ContractTriton()
    async with triton(hanging) as a, triton(healthy) as b:
        backend = backend_for(a, b, stall_policy=FAST)
        backend.replicas._probe_interval_s = 3600  # no canary during this test
        before, stalled_before = moved(), stalls(a, "inter_token")
        try:
            texts, counts, reasons = await generate(backend, {"n": 1, "max_tokens": 12, "seed": 3})
            candidates = [r.address for r in backend.replicas.candidates("m")]
        finally:
            await backend.close()
    assert texts == [expected(0, 12)] and counts == [12] and reasons == ["length"]
    assert healthy.requests[0]["continuation_token_ids"] == [0, 1, 2, 3, 4]  # exactly as on UNAVAILABLE
    assert moved() == before + 1 and stalls(a, "inter_token") == stalled_before + 1
    assert hanging.cancelled == 1  # its call was cancelled
    assert candidates == [b]  # quarantined: no new work
    assert REPLICA_QUARANTINED.labels(a)._value.get() == 1


async def test_a_request_that_never_gets_its_first_token_is_retried_elsewhere():
    hanging, healthy = HangingTriton(hang_after=0), ContractTriton()
    async with triton(hanging) as a, triton(healthy) as b:
        backend = backend_for(a, b, stall_policy=FAST)
        backend.replicas._probe_interval_s = 3600
        before = stalls(a, "first_token")
        try:
            texts, _, _ = await generate(backend, {"n": 1, "max_tokens": 6})
        finally:
            await backend.close()
    assert texts == [expected(0, 6)] and "continuation_token_ids" not in healthy.requests[0]  # a plain retry
    assert stalls(a, "first_token") == before + 1


async def test_the_hung_replica_comes_back_only_after_a_canary_generates():
    hanging, healthy = HangingTriton(hang_after=3), ContractTriton()
    async with triton(hanging) as a, triton(healthy) as b:
        backend = backend_for(a, b, stall_policy=FAST, canary_timeout_s=0.3)
        replicas = backend.replicas
        replicas._probe_interval_s = 0.05
        admitted = asyncio.Event()
        replicas.listeners.append(lambda replica, event: admitted.set() if event == "admitted" else None)
        failed_before, ok_before = canaries(a, "failed"), canaries(a, "ok")
        try:
            await generate(backend, {"n": 1, "max_tokens": 8})
            hung = next(r for r in replicas.replicas if r.address == a)
            assert hung.quarantined
            await replicas._probe(hung)  # "model ready" (which the hung server answers) changes nothing
            assert hung.quarantined and a not in [r.address for r in replicas.candidates("m")]
            while canaries(a, "failed") < failed_before + 2:  # canaries time out while it hangs
                await asyncio.sleep(0.05)
            assert not admitted.is_set()
            hanging.hung = False  # SIGCONT
            await asyncio.wait_for(admitted.wait(), 10)
            assert not hung.quarantined and a in [r.address for r in replicas.candidates("m")]
            assert canaries(a, "ok") == ok_before + 1
            assert REPLICA_QUARANTINED.labels(a)._value.get() == 0
            canary = hanging.requests[-1]
            assert canary["text_input"].startswith("Canary") and '"max_tokens": 4' in canary["sampling_parameters"]
        finally:
            await backend.close()


# -- the state machine alone ----------------------------------------------------------------------------

class ReadyStub:
    async def ModelReady(self, request, timeout=None):
        return service_pb2.ModelReadyResponse(ready=True)


def replica_set(*addresses: str, canary=None) -> ReplicaSet:
    targets = [Target("127.0.0.1", int(a), 0) for a in addresses]
    replicas = ReplicaSet(targets, models=["m"], probe_interval_s=0.01, canary=canary, canary_timeout_s=0.05)
    for replica in replicas.replicas:
        replica._stub = ReadyStub()
    return replicas


async def test_canaries_that_fail_or_time_out_keep_it_out():
    outcomes = iter(["fail", "hang", "error", "ok"])
    tried = []

    async def canary(replica):
        outcome = next(outcomes)
        tried.append(outcome)
        if outcome == "hang":
            await asyncio.Event().wait()
        if outcome == "error":
            raise grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, None, None, "connection refused")
        return outcome == "ok"

    replicas = replica_set("20001", "20002", canary=canary)
    first, second = replicas.replicas
    admitted = asyncio.Event()
    replicas.listeners.append(lambda replica, event: admitted.set() if event == "admitted" else None)
    assert replicas.quarantine(first, "stalled") and not replicas.quarantine(first, "again")
    assert replicas.candidates("m") == [second]
    await asyncio.wait_for(admitted.wait(), 10)
    assert tried == ["fail", "hang", "error", "ok"] and replicas.candidates("m") == [first, second]
    await replicas.close()


async def test_a_quarantined_replica_is_not_ejected_nor_admitted_by_probes():
    async def never(replica):
        return False

    replicas = replica_set("20001", "20002", canary=never)
    first, second = replicas.replicas
    replicas.quarantine(first, "stalled")
    replicas.eject(first, "Socket closed")  # its connection closes too: still the canary's to decide
    assert first.quarantined and not first.ejected
    await replicas.refresh()
    assert first.quarantined and replicas.candidates("m") == [second]
    await replicas.close()


async def test_when_every_replica_is_quarantined_they_stay_candidates():
    replicas = replica_set("20001", "20002")
    first, second = replicas.replicas
    replicas.quarantine(first, "stalled")
    replicas.quarantine(second, "stalled")
    assert replicas.candidates("m") == [first, second]  # a false alarm everywhere must not stop the service
    assert replicas.candidates("m", [first]) == [second]
    assert await replicas.is_ready("m")
    await replicas.close()


async def test_readmission_restores_readiness():
    replicas = replica_set("20001")
    (only,) = replicas.replicas
    replicas.quarantine(only, "stalled")
    replicas.readmit(only)
    assert not only.quarantined and only.ready_models == frozenset({"m"}) and replicas.candidates("m") == [only]
    await replicas.close()
