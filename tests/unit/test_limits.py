"""The limits (facade/limits): the same store contract in this process and in a real Redis, the
policy that names the counters, the fail modes against a Redis process the test kills and restarts,
and the memory bound of the in-process store."""

from __future__ import annotations

import asyncio
import contextlib
import time
import tracemalloc
import uuid

import pytest
import redis.asyncio

from facade.errors import OpenAIError
from facade.limits.limiter import Limiter, LimiterUnavailable, create_limiter
from facade.limits.meter import Meter, completion_bound
from facade.limits.policy import LimitClaims, Limits, Policy, Spec, model_limits_from, request_specs, token_specs
from facade.limits.stores import LocalStore, RedisStore
from local import processes
from local.redis import RedisServer


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    with RedisServer(tmp_path_factory.mktemp("redis") / "redis.log") as server:
        yield server


@pytest.fixture(params=["local", "redis"])
async def store(request, redis_server):
    if request.param == "local":
        yield LocalStore()
        return
    client = redis.asyncio.Redis.from_url(redis_server.url)
    yield RedisStore(client)
    await client.aclose()


def key() -> str:
    return "test:" + uuid.uuid4().hex


def log(limit: int) -> Spec:
    return Spec(key(), "requests", limit, 60.0, "all models")


def bucket(limit: int) -> Spec:
    return Spec(key(), "rate", limit, 60.0, "all models")


def budget(limit: int) -> Spec:
    return Spec(key(), "quota", limit, 3600.0, "daily budget (all models)")


# -- the store contract, in both stores --------------------------------------------------------------


async def test_request_log_admits_exactly_its_limit(store):
    spec = log(3)
    assert [await store.hit([spec], f"m{i}") for i in range(3)] == [0, 0, 0]
    wait = await store.hit([spec], "m3")
    assert 59 < wait <= 60  # until the first of the three leaves the window


async def test_request_logs_count_only_when_all_have_room(store):
    wide, narrow = log(10), log(1)
    assert await store.hit([wide, narrow], "a") == 0
    assert await store.hit([wide, narrow], "b") > 0  # refused by the narrow one...
    for i in range(9):  # ...and not counted in the wide one: it still has nine places
        assert await store.hit([wide], f"c{i}") == 0
    assert await store.hit([wide], "d") > 0


async def test_concurrent_hits_never_exceed_the_limit(store):
    spec = log(30)
    waits = await asyncio.gather(*(store.hit([spec], f"m{i}") for i in range(100)))
    assert sum(1 for w in waits if w == 0) == 30


async def test_reserve_grants_what_is_left_and_names_the_binding_counter(store):
    rate, day = bucket(100), budget(150)
    assert await store.reserve([rate, day], 60) == (60, -1, 0.0)
    granted, binding, wait = await store.reserve([rate, day], 60)
    assert (granted, binding, wait) == (40, 0, 0.0)  # the bucket had 40 (and refills very slowly)
    granted, binding, wait = await store.reserve([rate, day], 10)
    assert granted <= 1 and (granted or wait > 0)


async def test_a_budget_refuses_with_the_time_to_its_period_end(store):
    day = budget(10)
    assert (await store.reserve([day], 10))[0] == 10
    granted, binding, wait = await store.reserve([day], 1)
    assert (granted, binding) == (0, 0) and wait == pytest.approx(3600, abs=1)


async def test_adjust_gives_back_and_takes_more(store):
    day = budget(100)
    assert (await store.reserve([day], 80))[0] == 80
    await store.adjust([day], 50)  # used 30 of 80
    assert (await store.reserve([day], 100))[0] == 70
    await store.adjust([day], -5)  # used 5 more than reserved: the budget goes negative...
    assert (await store.reserve([day], 1))[0] == 0
    await store.adjust([day], 1000)  # ...and a refund never takes it below zero used
    assert (await store.reserve([day], 1000))[0] == 100


async def test_concurrent_reservations_never_overspend(store):
    rate, day = bucket(10_000), budget(1000)
    grants = await asyncio.gather(*(store.reserve([rate, day], 64) for _ in range(40)))
    assert sum(g[0] for g in grants) == 1000  # 15 full grants, one of 40, and nothing after


async def test_bucket_refills_continuously():
    now = [0.0]
    store = LocalStore(clock=lambda: now[0])
    rate = bucket(60)  # one token a second
    assert (await store.reserve([rate], 60))[0] == 60
    granted, binding, wait = await store.reserve([rate], 5)
    assert granted == 0 and wait == pytest.approx(1.0)
    now[0] = 10.0
    assert (await store.reserve([rate], 60))[0] == 10


# -- what a request touches ----------------------------------------------------------------------------


def test_claims_override_the_configured_limits_and_models_add_their_own():
    policy = Policy(Limits(rpm=60, tpm=1000), {"m": LimitClaims(rpm=5)})
    assert policy.subject_limits(LimitClaims(tpm=50)) == Limits(rpm=60, tpm=50)
    assert policy.model_limits("m", {}) == Limits(rpm=5)
    assert policy.model_limits("m", {"m": LimitClaims(rpm=2, tokens_per_day=9)}) == Limits(rpm=2, tokens_per_day=9)
    assert policy.model_limits("other", {}) == Limits()


def test_counters_are_per_subject_model_and_period():
    limits = Limits(rpm=1, tpm=2, tokens_per_day=3, tokens_per_month=4)
    now = time.mktime((2026, 12, 31, 23, 0, 0, 0, 0, 0)) - time.timezone  # 23:00 UTC
    specs = token_specs("jwt:alice", limits, now=now)
    assert [s.kind for s in specs] == ["rate", "quota", "quota"]
    assert specs[1].key.endswith(":d20261231") and specs[2].key.endswith(":m202612")
    assert specs[1].ttl_s == pytest.approx(3600 + 3600)  # an hour to midnight, then the grace
    per_model = token_specs("jwt:alice", limits, "m", now=now)
    assert all(s.key.endswith(":m") for s in per_model)
    other = token_specs("jwt:bob", limits, now=now)
    assert {s.key for s in other}.isdisjoint(s.key for s in specs)
    # every counter of a subject shares one Redis Cluster hash slot
    tags = {s.key.split("{")[1].split("}")[0] for s in specs + per_model + request_specs("jwt:alice", limits)}
    assert len(tags) == 1


def test_model_limits_are_checked():
    assert model_limits_from('{"m": {"rpm": 3}}', "X") == {"m": LimitClaims(rpm=3)}
    for bad in ('{"m": {"rpm": -1}}', '{"m": {"qps": 1}}', '{"m": 3}', "[1]"):
        with pytest.raises(ValueError):
            model_limits_from(bad, "X")


def test_completion_bound():
    assert completion_bound(2, 100, 4096) == 200
    assert completion_bound(1, None, 4096) == 4096


# -- a request, admitted, reserved and settled -------------------------------------------------------------


def meter(limiter: Limiter, **claims) -> Meter:
    return Meter(limiter, Policy(), f"jwt:{uuid.uuid4().hex}", LimitClaims(**claims), {}, reserve_cap=4096)


async def test_a_meter_reserves_and_settles():
    limiter = Limiter(LocalStore())
    first = meter(limiter, tokens_per_day=1000)
    assert await first.reserve("m", 600) == 600
    first.use(100)
    await first.settle()
    second = Meter(limiter, Policy(), first.subject, LimitClaims(tokens_per_day=1000), {}, 4096)
    assert await second.reserve("m", 5000) == 900  # what the first gave back is there again
    second.use(900)
    await second.settle()
    third = Meter(limiter, Policy(), first.subject, LimitClaims(tokens_per_day=1000), {}, 4096)
    with pytest.raises(OpenAIError) as refused:
        await third.reserve("m", 1)
    assert (refused.value.status, refused.value.code) == (429, "insufficient_quota")
    assert int(refused.value.headers["Retry-After"]) >= 1


async def test_a_meter_without_token_limits_reserves_nothing():
    assert await meter(Limiter(LocalStore()), rpm=5).reserve("m", 100) is None


async def test_a_prompt_larger_than_its_grant_spends_the_grant():
    limiter = Limiter(LocalStore())
    m = meter(limiter, tpm=60)
    assert await m.reserve("m", 1000) == 60
    err = m.refused_for_budget(OpenAIError(429, "x", code="token_budget_exceeded"))
    assert (err.status, err.type, err.code) == (429, "tokens", "rate_limit_exceeded")
    await m.settle()
    assert (await limiter.local.reserve(token_specs(m.subject, Limits(tpm=60)), 60))[0] <= 1


# -- Redis faults -------------------------------------------------------------------------------------------


async def _until(check, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def private_limiter(tmp_path, mode: str, timeout_s: float = 0.25, retry_s: float = 0.2):
    """A limiter on a private redis-server of its own, which the test may kill, pause or restart."""
    server = RedisServer(tmp_path / "redis.log").start()
    limiter = create_limiter(server.url, mode, timeout_s=timeout_s, retry_s=retry_s)
    try:
        yield server, limiter
    finally:
        server.resume()  # a paused server stops as any other
        await limiter.close()
        server.stop()


@pytest.mark.parametrize("mode", ["fail_open", "fail_closed"])
async def test_redis_down_then_back(tmp_path, mode):
    spec = [log(1000)]
    async with private_limiter(tmp_path, mode, retry_s=0.3) as (server, limiter):
        assert (await limiter.hit(spec, "a")).wait == 0
        assert await limiter.shared.client.zcard(spec[0].key) == 1
        server.kill()
        started = time.monotonic()
        if mode == "fail_open":
            assert (await limiter.hit(spec, "b")).wait == 0  # served, counted here
            assert len(limiter.local) == 1
        else:
            with pytest.raises(LimiterUnavailable):
                await limiter.hit(spec, "b")
            with pytest.raises(LimiterUnavailable):  # at once, while Redis is marked down
                await limiter.hit(spec, "c")
        assert time.monotonic() - started < 1.0  # nobody waits on a dead Redis
        server.start()

        async def counted_in_redis() -> bool:
            try:
                await limiter.hit(spec, uuid.uuid4().hex)
            except LimiterUnavailable:
                return False
            return await limiter.shared.client.zcard(spec[0].key) > 0

        await _until(counted_in_redis)  # recovers by itself (a restarted Redis has lost its counters)


async def test_settlements_owed_to_redis_are_replayed(tmp_path):
    day = budget(1000)
    async with private_limiter(tmp_path, "fail_open") as (server, limiter):
        grant, _ = await limiter.reserve([day], 600)
        server.kill()
        await limiter.settle(grant, 100)  # 500 to give back; Redis is gone
        assert len(limiter._owed) == 1
        server.start()
        await limiter.shared.client.set(day.key, 600)  # as if the counter had survived

        async def repaid() -> bool:
            await limiter.hit([log(1000)], uuid.uuid4().hex)  # the first call that works replays
            return int(await limiter.shared.client.get(day.key)) == 100

        await _until(repaid)


async def test_a_hung_redis_counts_as_down(tmp_path):
    async with private_limiter(tmp_path, "fail_closed", timeout_s=0.1) as (server, limiter):
        assert (await limiter.hit([log(10)], "a")).wait == 0
        server.pause()
        started = time.monotonic()
        with pytest.raises(LimiterUnavailable):
            await limiter.hit([log(10)], "b")
        assert time.monotonic() - started < 0.5  # the call's timeout, not the server's pace
        server.resume()

        async def answers() -> bool:
            try:
                return (await limiter.hit([log(10)], uuid.uuid4().hex)).wait == 0
            except LimiterUnavailable:
                return False

        await _until(answers)


# -- memory ---------------------------------------------------------------------------------------------------


async def test_local_store_memory_is_bounded_with_100k_subjects():
    store = LocalStore(max_keys=20_000)
    limits = Limits(rpm=60, tpm=10_000, tokens_per_day=100_000)
    tracemalloc.start()
    try:
        for i in range(100_000):
            subject = f"jwt:user-{i}"
            await store.hit(request_specs(subject, limits), "m")
            await store.reserve(token_specs(subject, limits, now=1_800_000_000), 100)
            if i == 20_000:
                at_cap, _ = tracemalloc.get_traced_memory()
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(store) == 20_000
    assert after < at_cap * 1.2  # 80,000 more subjects, no more memory
    assert after < 25 * 2**20


async def test_a_redis_that_refuses_writes_is_an_outage_not_a_500(tmp_path):
    async with private_limiter(tmp_path, "fail_open") as (server, limiter):
        admin = redis.asyncio.Redis.from_url(server.url)
        try:
            # a read-only replica (as after a failover that went wrong): every write is refused
            await admin.execute_command("REPLICAOF", "127.0.0.1", str(processes.free_port()))
            assert (await limiter.hit([log(5)], "a")).wait == 0  # served, counted in this process
            assert len(limiter.local) == 1
            await admin.execute_command("REPLICAOF", "NO", "ONE")
        finally:
            await admin.aclose()
