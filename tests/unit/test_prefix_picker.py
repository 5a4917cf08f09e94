"""Replica sets, pickers and the prefix index (services.common.replicas/pickers, services.text.prefix_picker)."""

from __future__ import annotations

import asyncio
import random

import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from services.common.triton_backend import TritonBackend
from services.common.errors import BackendUnavailable
from services.common.metrics import REPLICA_READY
from services.common.pickers import LeastRequest, RoundRobin
from services.common.replicas import EngineLoad, Replica, ReplicaSet, Target, parse_engine_load, parse_targets
from services.common.settings import SettingsError
from services.text.prefix_picker import PrefixIndex, PrefixPicker, make_picker, picker_cost_us
from services.text.settings import Settings
from tests.unit.text_service_fixture import serving

# -- targets -----------------------------------------------------------------------------------------


def test_targets_static_dns_and_metrics_ports():
    assert parse_targets("127.0.0.1:8001", 8002) == (Target("127.0.0.1", 8001, 8002),)
    assert parse_targets(" a:1:2 , b:3 ,dns:///triton-text.ns.svc:8001", 9) == (
        Target("a", 1, 2), Target("b", 3, 9), Target("triton-text.ns.svc", 8001, 9, discover=True),
    )
    assert parse_targets("[::1]:8001:8002") == (Target("::1", 8001, 8002),)


@pytest.mark.parametrize("value", ["", " , ", "host", "host:x", "host:0", "host:1:2:3", "dns:///h:1:2", ":80"])
def test_bad_targets_are_refused(value):
    with pytest.raises(ValueError):
        parse_targets(value)


def test_settings_name_the_bad_target():
    with pytest.raises(SettingsError, match="HUBMESH_TEXT_TRITON_URL"):
        Settings.from_env({"HUBMESH_TEXT_TRITON_URL": "a:1,b"})
    settings = Settings.from_env({"HUBMESH_TEXT_TRITON_URL": "a:1:2,b:3", "HUBMESH_TEXT_ROUTING": "least_request"})
    assert settings.routing == "least_request" and settings.replica_options()["scrape"] is False
    with pytest.raises(SettingsError, match="HUBMESH_TEXT_ROUTING"):
        Settings.from_env({"HUBMESH_TEXT_ROUTING": "random"})


def test_engine_load_from_a_vllm_exposition():
    text = """# HELP vllm:num_requests_running Number of requests currently running on GPU.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model="sim",version="1"} 3
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model="sim",version="1"} 2
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{model="sim",version="1"} 0.25
# TYPE vllm:cache_config_info gauge
vllm:cache_config_info{block_size="16",model="sim",num_gpu_blocks="1000"} 1
# TYPE nv_inference_count counter
nv_inference_count{model="sim",version="1"} 7
"""
    load = parse_engine_load(text)["sim"]
    assert (load.running, load.waiting, load.kv_usage, load.kv_capacity_tokens) == (3, 2, 0.25, 16000)
    assert parse_engine_load("garbage {{{") == {}


# -- pickers -------------------------------------------------------------------------------------------


def replicas(n: int) -> list[Replica]:
    return [Replica("127.0.0.1", 21000 + i, 0, []) for i in range(n)]


def test_round_robin_takes_each_in_turn():
    pool, picker = replicas(3), RoundRobin(random.Random(1))
    picked = [picker.pick("m", pool).replica for _ in range(6)]
    assert picked[:3] == picked[3:] and set(picked) == set(pool)


def test_least_request_counts_ours_and_the_engines_queue():
    pool, picker = replicas(3), LeastRequest(random.Random(1))
    pool[0].in_flight, pool[1].in_flight, pool[2].in_flight = 2, 1, 3
    assert picker.pick("m", pool).replica is pool[1]
    pool[1].load["m"] = EngineLoad(running=4, waiting=1, ours=1)  # other pickers' requests are there
    assert picker.pick("m", pool).replica is pool[0]
    pool[1].load["m"] = EngineLoad(running=1, ours=1)  # as last read, only a call of ours: no one else's
    assert picker.pick("m", pool).replica is pool[1]


def test_ties_are_broken_at_random():
    pool = replicas(4)
    picked = {LeastRequest(random.Random(seed)).pick("m", pool).replica for seed in range(20)}
    assert len(picked) == 4  # several pickers with the same view don't all choose the same one


def tenant_prompt(tenant: int, question: int) -> str:
    return f"System prompt of tenant {tenant}. " * 120 + f"Question {question}?"


def test_prefix_picker_keeps_a_tenant_where_its_prefix_is():
    pool, picker = replicas(4), PrefixPicker(rng=random.Random(3))
    homes = {}
    for tenant in range(8):
        decision = picker.pick("m", pool, tenant_prompt(tenant, 0))
        homes[tenant] = decision.replica
        assert decision.reason == "load"
        picker.done(decision)
    for question in range(1, 4):
        for tenant in range(8):
            decision = picker.pick("m", pool, tenant_prompt(tenant, question))
            assert decision.replica is homes[tenant] and decision.reason == "prefix"
            picker.done(decision)
    assert len(set(homes.values())) == 4  # first requests spread by load


def test_prefix_picker_spreads_a_hot_prefix_under_load():
    pool, picker = replicas(4), PrefixPicker(rng=random.Random(3))
    decisions = [picker.pick("m", pool, tenant_prompt(0, q)) for q in range(12)]  # none done yet
    used = {d.replica for d in decisions}
    assert len(used) == 4
    counts = [sum(d.replica is r for d in decisions) for r in pool]
    assert max(counts) <= 1.5 * (12 / 4)


def test_prefix_picker_without_shared_prefixes_balances_like_least_request():
    pool, picker = replicas(4), PrefixPicker(rng=random.Random(5))
    rng = random.Random(9)
    decisions = [picker.pick("m", pool, "".join(rng.choice("abcdefgh ") for _ in range(2000))) for _ in range(16)]
    assert all(d.reason == "load" for d in decisions)
    counts = [sum(d.replica is r for d in decisions) for r in pool]
    assert max(counts) - min(counts) <= 1


def test_prefix_picker_correction_shrinks_a_replica_that_evicted():
    pool, picker = replicas(1), PrefixPicker(index_blocks=1000)
    address = pool[0].address
    for tenant in range(10):
        picker.done(picker.pick("m", pool, tenant_prompt(tenant, 0)), prompt_tokens=900, cached_tokens=0)
    held = picker.index.size(address)
    decision = picker.pick("m", pool, tenant_prompt(0, 1))
    assert decision.reason == "prefix"
    picker.done(decision, prompt_tokens=900, cached_tokens=0)  # expected a hit: the replica had evicted it
    assert picker.index.capacity[address] == int(held * 0.8)
    picker.forget(pool[0])
    assert picker.index.size(address) == 0


def test_prefix_picker_sizes_its_index_from_the_replicas_report():
    pool, picker = replicas(1), PrefixPicker(block_chars=64)
    pool[0].load["m"] = EngineLoad(kv_capacity_tokens=16_000)
    picker.done(picker.pick("m", pool, "x" * 640))
    assert picker.index.capacity[pool[0].address] == 16_000 * 4 // 64


def test_prefix_index_chains_and_evicts_oldest():
    index = PrefixIndex(block_chars=4, capacity_blocks=4)
    a, b = index.hashes("m", "abcdefgh"), index.hashes("m", "abcdXXXX")
    assert a[0] == b[0] and a[1] != b[1] and len(index.hashes("m", "abcdefg")) == 1  # full blocks only
    assert index.hashes("other", "abcd") != index.hashes("m", "abcd")
    index.insert("r1", a)
    index.insert("r2", b)
    assert index.matches(a) == {"r1": 2, "r2": 1}
    index.insert("r1", index.hashes("m", "zzzzyyyyxxxx"))  # 3 new blocks: the oldest two go
    assert index.matches(a) == {"r2": 1}


def test_make_picker_and_its_cost():
    assert isinstance(make_picker("prefix", prefix_weight=2.0), PrefixPicker)
    assert make_picker("round_robin").name == "round_robin"
    cost = picker_cost_us("prefix", [tenant_prompt(t % 4, t) for t in range(50)])
    assert cost["requests"] == 50 and 0 < cost["p50_us"] <= cost["p99_us"]


# -- replica sets against real gRPC servers ------------------------------------------------------------


class TritonLike(service_pb2_grpc.GRPCInferenceServiceServicer):
    """Answers readiness and ModelInfer like a Triton that has `models` loaded."""

    def __init__(self, models=("m",)) -> None:
        self.models = set(models)
        self.infers = 0

    async def ServerReady(self, request, context):
        return service_pb2.ServerReadyResponse(ready=True)

    async def ModelReady(self, request, context):
        return service_pb2.ModelReadyResponse(ready=request.name in self.models)

    async def ModelInfer(self, request, context):
        self.infers += 1
        return service_pb2.ModelInferResponse(model_name=request.model_name, id=request.id)


def triton_like(servicer):
    return serving(lambda server: service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server))


def dead_address() -> str:
    from local.processes import free_ports

    return f"127.0.0.1:{free_ports(1)[0]}"


async def test_candidates_follow_readiness_and_ejection():
    live = TritonLike(models=("m",))
    async with triton_like(live) as address, triton_like(TritonLike(models=("other",))) as elsewhere:
        dead = dead_address()
        pool = ReplicaSet.from_url(f"{address},{elsewhere},{dead}", models=["m", "other"])
        try:
            assert len(pool.candidates("m")) == 3  # never probed: every replica is worth a try
            await pool.refresh()
            assert [r.address for r in pool.candidates("m")] == [address]
            assert [r.address for r in pool.candidates("other")] == [elsewhere]
            assert await pool.is_ready("m") and not await pool.is_ready("missing")
            replica = pool.candidates("m")[0]
            events = []
            pool.listeners.append(lambda r, e: events.append(e))
            pool.eject(replica, "test")
            assert pool.candidates("m") == [] and not await pool.is_ready("m")
            await pool.refresh()  # ready again: admitted
            assert pool.candidates("m") == [replica] and events == ["ejected", "admitted"]
            assert REPLICA_READY.labels(address, "m")._value.get() == 1
        finally:
            await pool.close()


async def test_a_gone_replica_is_ejected_and_the_call_made_elsewhere():
    live = TritonLike()
    async with triton_like(live) as address:
        dead = dead_address()
        backend = TritonBackend(f"{dead},{address}", 5.0, picker=RoundRobin(random.Random(0)))
        backend.picker._turn = iter(range(10))  # the dead one first
        try:
            reply = await backend._model_infer(service_pb2.ModelInferRequest(model_name="m", id="1"))
            assert reply.id == "1" and live.infers == 1
            assert [r.address for r in backend.replicas.candidates("m")] == [address]
            backend.replicas.eject(backend.replicas.candidates("m")[0], "test")
            with pytest.raises(BackendUnavailable, match="no Triton replica"):
                await backend._model_infer(service_pb2.ModelInferRequest(model_name="m", id="2"))
        finally:
            await backend.close()


async def test_dns_targets_resolve_to_every_address():
    live = TritonLike()
    async with triton_like(live) as address:
        port = int(address.rsplit(":", 1)[1])
        pool = ReplicaSet.from_url(f"dns:///localhost:{port}", models=["m"])
        try:
            assert pool.candidates("m") == []
            await pool.refresh()
            found = {r.address for r in pool.candidates("m")}
            assert f"127.0.0.1:{port}" in found
        finally:
            await pool.close()


async def test_run_keeps_probing():
    live = TritonLike()
    async with triton_like(live) as address:
        pool = ReplicaSet.from_url(address, models=["m"], probe_interval_s=0.05)
        task = asyncio.create_task(pool.run())
        try:
            await pool.is_ready("m")
            replica = pool.candidates("m")[0]
            pool.eject(replica, "test")
            for _ in range(100):
                if pool.candidates("m"):
                    break
                await asyncio.sleep(0.02)
            assert pool.candidates("m") == [replica]
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await pool.close()


def test_cold_pickers_agree_where_a_new_prefix_goes():
    """Two text-service replicas that have never seen a tenant send it to the same Triton."""
    pool = replicas(4)
    first, second = PrefixPicker(rng=random.Random(1)), PrefixPicker(rng=random.Random(2))
    homes = []
    for tenant in range(12):
        a, b = first.pick("m", pool, tenant_prompt(tenant, 0)), second.pick("m", pool, tenant_prompt(tenant, 1))
        assert a.replica is b.replica
        homes.append(a.replica)
        first.done(a)
        second.done(b)
    assert len(set(homes)) > 1  # rendezvous hashing spreads tenants


def test_a_prefilled_tenant_stays_home_until_its_batch_there_outweighs_a_miss():
    pool, picker = replicas(2), PrefixPicker(rng=random.Random(4))
    first = picker.pick("m", pool, tenant_prompt(0, 0))
    picker.started(first)
    placed = [picker.pick("m", pool, tenant_prompt(0, q)) for q in range(1, 6)]
    for decision in placed:
        picker.started(decision)
    assert all(d.replica is first.replica and d.reason == "prefix" for d in placed)
    while (decision := picker.pick("m", pool, tenant_prompt(0, 99))).replica is first.replica:
        picker.started(decision)  # each adds its context to the decode batch there
    # it moves once its home costs more than a miss elsewhere: 1 × (1 + k) + 0.1 × k × blocks > blocks
    blocks = decision.state.blocks
    k = picker._calls[first.replica.address]
    assert decision.reason == "load" and 1 + k + 0.1 * k * blocks > blocks >= 1 + (k - 1) + 0.1 * (k - 1) * blocks
