"""The x-ratelimit-* headers and Retry-After (facade/limits/headers.py): the levels each store
operation answers with (in this process and in a real Redis, the same numbers), OpenAI's duration
format, the header values through the façade after N requests (one replica, three sharing Redis,
Redis down), and Retry-After on every 429."""

from __future__ import annotations

import json
import time
import uuid

import grpc
import jwt
import pytest
import redis.asyncio
from aiohttp import web

from facade.app import create_app
from facade.errors import from_grpc
from facade.limits.headers import REQUEST_HEADERS, TOKEN_HEADERS, add_rate_limit_headers, duration
from facade.limits.limiter import Limiter
from facade.limits.meter import Meter
from facade.limits.policy import PERIOD_GRACE_S, LimitClaims, Policy, Spec
from facade.limits.stores import Level, LocalStore, RedisStore
from facade.settings import Settings
from hubmesh.common.v1 import common_pb2 as common_pb
from local import processes
from local.redis import RedisServer
from services.common.errors import status_of
from tests.fakes import FakeTextBackend, chunk
from tests.unit.text_service_fixture import MODEL, running_text_service

SECRET = "s3cret-for-header-tests-0123456789abcdef"
ALL_SIX = REQUEST_HEADERS + TOKEN_HEADERS


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    with RedisServer(tmp_path_factory.mktemp("redis-headers") / "redis.log") as server:
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
    return "test:headers:" + uuid.uuid4().hex


def log(limit: int) -> Spec:
    return Spec(key(), "requests", limit, 60.0, "all models")


def bucket(limit: int) -> Spec:
    return Spec(key(), "rate", limit, 60.0, "all models")


def budget(limit: int, period_left_s: float = 7200.0) -> Spec:
    return Spec(key(), "quota", limit, period_left_s + PERIOD_GRACE_S, "daily budget (all models)")


# -- the levels every store operation answers with ------------------------------------------------------


async def test_a_hit_answers_the_count_after_it(store):
    spec = log(3)
    hits = [await store.hit_levels([spec], f"m{i}") for i in range(3)]
    assert [h.wait for h in hits] == [0, 0, 0]
    # after each hit: one fewer left, and the log is full again when that hit leaves the window
    assert [h.levels for h in hits] == [(Level(3, n, 60.0),) for n in (2, 1, 0)]
    refused = await store.hit_levels([spec], "m3")
    (level,) = refused.levels
    assert refused.wait > 0 and level.remaining == 0 and level.limit == 3
    assert 59 < level.reset_s <= 60  # until the newest of the three leaves the window
    assert refused.wait <= level.reset_s  # a place frees (Retry-After) before the log is empty


async def test_a_hit_answers_every_log_it_touched(store):
    wide, narrow = log(10), log(2)
    hit = await store.hit_levels([wide, narrow], "a")
    assert hit.levels == (Level(10, 9, 60.0), Level(2, 1, 60.0))
    await store.hit_levels([narrow], "b")
    refused = await store.hit_levels([wide, narrow], "c")  # the narrow one is full: counted in neither
    assert refused.wait > 0
    assert [(lv.limit, lv.remaining) for lv in refused.levels] == [(10, 9), (2, 0)]


async def test_an_empty_log_is_full_now(store):
    spec = log(1)
    await store.hit_levels([spec], "a")
    other = log(5)
    refused = await store.hit_levels([other, spec], "b")
    assert refused.levels[0] == Level(5, 5, 0.0)


async def test_reserve_adjust_and_read_answer_the_levels_after_them(store):
    rate, day = bucket(6000), budget(1000)  # the bucket refills 100 tokens a second
    granted, binding, wait, (r, d) = await store.reserve_levels([rate, day], 600)
    assert (granted, binding, wait) == (600, -1, 0.0)
    assert (r.limit, r.remaining) == (6000, 5400) and r.reset_s == pytest.approx(6.0, abs=0.01)
    assert d == Level(1000, 400, 7200.0)  # a budget is full again when its period ends
    r, d = await store.adjust_levels([rate, day], 500)  # used 100 of 600
    assert r.remaining >= 5900 and d == Level(1000, 900, 7200.0)
    r2, d2 = await store.levels([rate, day])  # read only: nothing taken
    assert r2.remaining >= r.remaining and d2 == d
    assert (await store.levels([rate, day]))[1] == d
    granted, binding, _, (_, d) = await store.reserve_levels([rate, day], 5000)
    assert (granted, binding, d.remaining) == (900, 1, 0)  # the budget bound it, and is spent


async def test_untouched_token_counters_are_full(store):
    rate, day = bucket(100), budget(50)
    assert await store.levels([rate, day]) == (Level(100, 100, 0.0), Level(50, 50, 0.0))


async def test_a_refused_reservation_answers_the_levels_as_they_stand(store):
    day = budget(10)
    await store.reserve_levels([day], 10)
    granted, binding, wait, (level,) = await store.reserve_levels([day], 1)
    assert (granted, binding) == (0, 0) and level == Level(10, 0, 7200.0) and wait > 0


async def test_an_overdrawn_counter_shows_zero_remaining(store):
    day = budget(100)
    await store.reserve_levels([day], 100)
    (level,) = await store.adjust_levels([day], -30)  # used 30 more than reserved
    assert level.remaining == 0


async def test_the_old_operations_still_answer_without_levels(store):
    spec, day = log(1), budget(10)
    assert await store.hit([spec], "a") == 0
    assert await store.reserve([day], 4) == (4, -1, 0.0)
    assert await store.adjust([day], 4) is None


async def test_both_stores_answer_the_same_levels(redis_server):
    client = redis.asyncio.Redis.from_url(redis_server.url)
    try:
        stores = [LocalStore(), RedisStore(client)]
        answers = []
        for s in stores:
            logs, day = [log(4), log(2)], budget(500)
            seen = [await s.hit_levels(logs, f"m{i}") for i in range(3)]
            seen.append(await s.reserve_levels([day], 120))
            seen.append(await s.adjust_levels([day], 20))
            seen.append(await s.levels([day]))
            answers.append([(h.wait > 0, [(lv.limit, lv.remaining) for lv in h.levels]) for h in seen[:3]]
                           + [seen[3][:2], seen[3].levels, seen[4], seen[5]])
        assert answers[0] == answers[1]
    finally:
        await client.aclose()


# -- OpenAI's duration format ---------------------------------------------------------------------------


@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0s"), (-1, "0s"), (0.0004, "1ms"), (0.02, "20ms"), (0.999, "999ms"), (1, "1s"), (1.5, "1.5s"),
    (1.1, "1.1s"), (59.999, "59.999s"), (60, "1m0s"), (360, "6m0s"), (61.25, "1m1.25s"), (3600, "1h0m0s"),
    (3723.5, "1h2m3.5s"), (86400 * 31, "744h0m0s"),
])
def test_duration(seconds, text):
    assert duration(seconds) == text


# -- the meter: the binding counter --------------------------------------------------------------------


async def test_the_binding_counter_is_the_one_with_least_remaining():
    policy = Policy(per_model={"m": LimitClaims(rpm=3, tokens_per_day=50)})
    meter = Meter(Limiter(LocalStore()), policy, f"jwt:{uuid.uuid4().hex}", LimitClaims(rpm=10, tpm=6000), {}, 4096)
    assert await meter.rate_limits("") == (None, Level(6000, 6000, 0.0))  # read: nothing reserved yet
    await meter.admit()
    requests, _ = await meter.rate_limits("")
    assert (requests.limit, requests.remaining) == (10, 9)
    await meter.admit_model("m")  # the model's log has less left: it binds
    requests, _ = await meter.rate_limits("m")
    assert (requests.limit, requests.remaining) == (3, 2)
    assert await meter.reserve("m", 40) == 40
    _, tokens = await meter.rate_limits("m")
    assert (tokens.limit, tokens.remaining) == (50, 10)  # the model's budget, not the tpm bucket
    meter.use(15)
    await meter.settle()
    _, tokens = await meter.rate_limits("m")
    assert (tokens.limit, tokens.remaining) == (50, 35)  # after the settlement


# -- through the façade -------------------------------------------------------------------------------------


def bearer(sub: str | None = None, **claims) -> dict:
    now = int(time.time())
    body = {"sub": sub or f"u-{uuid.uuid4().hex[:8]}", "scope": "chat models", "iat": now, "exp": now + 600, **claims}
    return {"Authorization": "Bearer " + jwt.encode(body, SECRET, algorithm="HS256")}


def backend() -> FakeTextBackend:
    # 10 prompt tokens, then 40 one-token chunks (20 with max_tokens 20: the service stops at its grant)
    steps = [chunk([f" w{i}"], [None], n_in=10, n_out=[1]) for i in range(39)] + [chunk([" end"], ["stop"], n_in=10)]
    return FakeTextBackend(steps)


def settings(text: str, **extra) -> Settings:
    return Settings(jwt_secret=SECRET, text_target=text, embeddings_target=text, images_target=text,
                    database_url="sqlite:///:memory:", **extra)


@pytest.fixture
async def text():
    async with running_text_service(backend()) as target:
        yield target


@pytest.fixture
async def client(aiohttp_client, text):
    return await aiohttp_client(create_app(settings(text)))


CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100}


def trio(response, names=REQUEST_HEADERS) -> tuple[str | None, ...]:
    return tuple(response.headers.get(name) for name in names)


async def test_request_headers_after_n_requests(client):
    headers = bearer(rpm=5)
    seen = []
    for _ in range(5):
        response = await client.get("/v1/models", headers=headers)
        assert response.status == 200
        seen.append(trio(response))
        assert not any(name in response.headers for name in TOKEN_HEADERS)  # no token limits: no token trio
    assert seen == [("5", str(n), "1m0s") for n in (4, 3, 2, 1, 0)]
    refused = await client.get("/v1/models", headers=headers)
    assert refused.status == 429
    limit, remaining, reset = trio(refused)
    assert (limit, remaining) == ("5", "0") and reset.endswith("s") and reset != "1m0s"
    assert 1 <= int(refused.headers["Retry-After"]) <= 60


async def test_token_headers_read_reserve_and_settle(client):
    headers = bearer(tokens_per_day=1000)
    models = await client.get("/v1/models", headers=headers)  # reserved nothing: the counters are read
    assert trio(models, TOKEN_HEADERS) == ("1000", "1000", "0s")
    assert not any(name in models.headers for name in REQUEST_HEADERS)
    reply = await client.post("/v1/chat/completions", json=CHAT, headers=headers)
    usage = (await reply.json())["usage"]
    assert usage["total_tokens"] == 50
    limit, remaining, reset = trio(reply, TOKEN_HEADERS)  # a unary answer: after its settlement
    assert (limit, remaining) == ("1000", "950") and reset.endswith("s") and reset != "0s"
    assert trio(await client.get("/v1/models", headers=headers), TOKEN_HEADERS)[:2] == ("1000", "950")


async def test_a_stream_carries_the_headers_of_its_reservation(client):
    headers = bearer(rpm=10, tokens_per_day=200)
    body = {**CHAT, "stream": True, "max_tokens": 20, "stream_options": {"include_usage": True}}
    async with client.post("/v1/chat/completions", json=body, headers=headers) as stream:
        assert stream.headers["Content-Type"].startswith("text/event-stream")
        assert trio(stream) == ("10", "9", "1m0s")
        limit, remaining, _ = trio(stream, TOKEN_HEADERS)
        reserved = 200 - int(remaining)
        assert limit == "200" and 20 < reserved < 200  # the prompt's bound and max_tokens, before it generates
        events = [json.loads(line[6:]) for line in (await stream.text()).splitlines() if line.startswith("data: {")]
    used = events[-1]["usage"]["total_tokens"]
    after = await client.get("/v1/models", headers=headers)
    assert trio(after, TOKEN_HEADERS)[1] == str(200 - used)  # settled at what it used
    assert trio(after)[1] == "8"


async def test_a_subject_without_limits_gets_no_headers(client):
    for response in (await client.get("/v1/models", headers=bearer()),
                     await client.post("/v1/chat/completions", json=CHAT, headers=bearer())):
        assert response.status == 200
        assert not any(name in response.headers for name in ALL_SIX)
    public = await client.get("/health")
    assert not any(name in public.headers for name in ALL_SIX)


async def test_a_budget_429_has_both_trios_and_retry_after(client):
    headers = bearer(rpm=100, tokens_per_month=60)
    assert (await client.post("/v1/chat/completions", json=CHAT, headers=headers)).status == 200  # 10 + 40 = 50
    refused = await client.post("/v1/chat/completions", json=CHAT, headers=headers)  # 10 left < the prompt
    assert refused.status == 429
    assert trio(refused)[:2] == ("100", "98")
    assert trio(refused, TOKEN_HEADERS)[:2] == ("60", "0")
    assert int(refused.headers["Retry-After"]) >= 1


async def test_a_validation_error_after_admission_carries_the_headers(client):
    response = await client.post("/v1/chat/completions", json={"model": MODEL}, headers=bearer(rpm=7))
    assert response.status == 400 and trio(response) == ("7", "6", "1m0s")


async def test_three_facades_sharing_redis_show_one_count(aiohttp_client, text, redis_server):
    clients = [await aiohttp_client(create_app(settings(text, redis_url=redis_server.url))) for _ in range(3)]
    headers = bearer(rpm=9, tpm=60_000)
    remaining = []
    for i in range(9):
        response = await clients[i % 3].get("/v1/models", headers=headers)
        assert response.status == 200 and trio(response)[0] == "9"
        remaining.append(int(response.headers["x-ratelimit-remaining-requests"]))
        assert response.headers["x-ratelimit-limit-tokens"] == "60000"
    assert remaining == [8, 7, 6, 5, 4, 3, 2, 1, 0]  # exact, whichever replica answered
    for c in clients:
        refused = await c.get("/v1/models", headers=headers)
        assert refused.status == 429 and trio(refused)[1] == "0" and refused.headers["Retry-After"]


async def test_redis_down_fail_open_headers_come_from_this_process(aiohttp_client, text):
    dead = f"redis://127.0.0.1:{processes.free_port()}/0"
    client = await aiohttp_client(create_app(settings(text, redis_url=dead, redis_timeout_s=0.2)))
    headers = bearer(rpm=4, tokens_per_day=100)
    seen = [trio(await client.get("/v1/models", headers=headers)) for _ in range(2)]
    assert seen == [("4", "3", "1m0s"), ("4", "2", "1m0s")]  # this process's counters
    assert trio(await client.get("/v1/models", headers=headers), TOKEN_HEADERS) == ("100", "100", "0s")


async def test_redis_down_fail_closed_is_503_without_counts(aiohttp_client, text):
    dead = f"redis://127.0.0.1:{processes.free_port()}/0"
    client = await aiohttp_client(create_app(settings(text, redis_url=dead, limits_fail_mode="fail_closed",
                                                      redis_timeout_s=0.2)))
    response = await client.get("/v1/models", headers=bearer(rpm=4, tokens_per_day=100))
    assert response.status == 503 and response.headers["Retry-After"]
    assert not any(name in response.headers for name in ALL_SIX)  # nothing answered: nothing to show


# -- Retry-After on every 429 ----------------------------------------------------------------------------


@pytest.mark.parametrize("reason", ["AT_CAPACITY", "TOKEN_BUDGET_EXCEEDED"])
def test_a_429_from_a_service_says_when_to_retry(reason):
    status = status_of(grpc.StatusCode.RESOURCE_EXHAUSTED, "busy", common_pb.ErrorReason.Value(reason))
    err = grpc.aio.AioRpcError(status.code, grpc.aio.Metadata(), grpc.aio.Metadata(*status.trailing_metadata),
                               details=status.details)
    mapped = from_grpc(err, "text")
    assert mapped.status == 429 and mapped.headers["Retry-After"] == "1"


async def test_the_capacity_429_says_when_to_retry(aiohttp_client, text):
    app = create_app(settings(text, max_in_flight=1))
    client = await aiohttp_client(app)
    from facade.capacity import IN_FLIGHT

    app[IN_FLIGHT].enter()  # one request in flight already
    response = await client.get("/v1/models", headers=bearer(rpm=3))
    assert response.status == 429 and response.headers["Retry-After"] == "1"
    app[IN_FLIGHT].leave()


async def test_any_other_429_gets_retry_after_from_the_hook(aiohttp_client):
    async def handler(request):
        return web.Response(status=429, text="slow down")

    app = web.Application()
    app.router.add_get("/x", handler)
    app.on_response_prepare.append(add_rate_limit_headers)
    response = await (await aiohttp_client(app)).get("/x")
    assert response.status == 429 and response.headers["Retry-After"] == "1"


# -- the contract's check (tests/e2e/contract.py) ------------------------------------------------------------


class _Response:
    def __init__(self, status: int, headers: dict[str, str], error_code: str | None = None) -> None:
        self.status_code, self.headers = status, {k: [v] for k, v in headers.items()}
        self._body = {"error": {"message": "m", "type": "t", "param": None, "code": error_code}}

    def json(self):
        return self._body


def test_the_contract_check_of_the_headers():
    from tests.e2e.contract import rate_limit_problems

    limits = {"requests": 100, "tokens": 5000}
    six = {"x-ratelimit-limit-requests": "100", "x-ratelimit-remaining-requests": "99",
           "x-ratelimit-reset-requests": "1m0s", "x-ratelimit-limit-tokens": "5000",
           "x-ratelimit-remaining-tokens": "4990", "x-ratelimit-reset-tokens": "120ms"}
    assert rate_limit_problems(_Response(200, six), limits, secured=True) == []
    assert rate_limit_problems(_Response(200, {}), limits, secured=False) == []  # a public operation
    assert rate_limit_problems(_Response(200, {}), None, secured=True) == []  # a key without limits
    assert len(rate_limit_problems(_Response(200, {}), limits, secured=True)) == 2
    bad = {**six, "x-ratelimit-remaining-tokens": "-1", "x-ratelimit-reset-requests": "60",
           "x-ratelimit-limit-requests": "7"}
    assert len(rate_limit_problems(_Response(400, bad), limits, secured=True)) == 3
    assert rate_limit_problems(_Response(429, six, "rate_limit_exceeded"), limits, secured=True) == [
        "a 429 with Retry-After None, not a number of seconds >= 1"]
    overloaded = _Response(429, {"Retry-After": "1"}, "server_overloaded")  # refused before the credential
    assert rate_limit_problems(overloaded, limits, secured=True) == []
