"""The façade's metrics for the alerts and dashboards of components/monitoring:

- hubmesh_requests_refused_total{endpoint, model, reason}: every 429 by why, one table
  (facade/refusals.py) for every source of one, counted one for one with hubmesh_requests_total;
- hubmesh_dependency_up / _last_success_timestamp_seconds{dependency}: the probe of the database
  (SQLite included) and of the limits' Redis (only where one is configured), driven round by round
  here, and through the app against a real redis-server that stops answering;
- hubmesh_budget_tokens_per_day / _per_month: the configured budgets.
"""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import grpc
import jwt
import pytest
from aiohttp import web
from prometheus_client import REGISTRY

from facade.app import create_app
from facade.auth.hub_keys import KeyRegistry
from facade.auth.principal import Principal
from facade.capacity import IN_FLIGHT
from facade.dependencies import DATABASE, REDIS, DependencyProbe, app_checks, dependencies_ctx
from facade.errors import OpenAIError, from_grpc
from facade.limits.limiter import Limiter
from facade.limits.meter import Metering, limit_error
from facade.limits.middleware import METERING
from facade.limits.policy import Policy, Spec
from facade.limits.stores import LocalStore
from facade.refusals import OTHER, REASON_NAMES, REASONS, refusal_reason
from facade.settings import Settings
from facade.store import RESPONSES_STORE
from hubmesh.common.v1 import common_pb2 as common_pb
from local.redis import RedisServer
from services.common.errors import status_of
from tests.fakes import FakeTextBackend

SECRET = "monitoring-metrics-test-secret-0123456789"


def bearer(**claims) -> dict[str, str]:
    now = int(time.time())
    body = {"sub": "mia", "scope": "models chat", "iat": now, "exp": now + 600, **claims}
    return {"Authorization": "Bearer " + jwt.encode(body, SECRET, algorithm="HS256")}


def sample(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def count(name: str, **labels: str) -> float:
    return sample(name, **labels) or 0.0


# -- 429s by reason ---------------------------------------------------------------------------------


def _grpc_error(reason: str) -> grpc.aio.AioRpcError:
    status = status_of(grpc.StatusCode.RESOURCE_EXHAUSTED, "busy", common_pb.ErrorReason.Value(reason))
    return grpc.aio.AioRpcError(status.code, grpc.aio.Metadata(), grpc.aio.Metadata(*status.trailing_metadata),
                                details=status.details)


def _parallel_refusal() -> OpenAIError:
    registry = KeyRegistry(lambda: None)  # never asked: parallel() counts in memory
    principal = Principal(subject="hubkey:k1", scopes=frozenset(), key_id="k1", max_parallel_requests=1)
    with registry.parallel(principal), pytest.raises(OpenAIError) as refused, registry.parallel(principal):
        pass
    return refused.value


def _spec(kind: str) -> Spec:
    return Spec("hm:lim:x", kind, 10, 60.0 if kind != "quota" else 86400.0, "all models")


def test_every_source_of_a_429_has_its_reason():
    made = {
        "rate_limit_requests": limit_error(_spec("requests"), "jwt:mia", 1.0),
        "rate_limit_tokens": limit_error(_spec("rate"), "jwt:mia", 1.0),
        "budget": limit_error(_spec("quota"), "jwt:mia", 0.0),
        "max_parallel": _parallel_refusal(),
        "service_capacity": from_grpc(_grpc_error("AT_CAPACITY"), "text"),
    }
    for reason, err in made.items():
        assert err.status == 429 and refusal_reason(err) == reason, (reason, err.type, err.code)
    # a service's grant too small (the meter names the limit; when none bound it, the service's word stands)
    assert refusal_reason(from_grpc(_grpc_error("TOKEN_BUDGET_EXCEEDED"), "text")) == "budget"
    assert refusal_reason(OpenAIError(429, "?", type="something_new")) == OTHER
    # the label's values: the table's, and "other"; no two sources share a (type, code) but budgets
    assert set(REASON_NAMES) == {*made, "capacity", OTHER}
    assert len(REASONS) == len(set(REASONS))


async def test_each_429_is_counted_with_its_reason_one_for_one(aiohttp_client, services):
    target = await services(FakeTextBackend())
    app = create_app(Settings(jwt_secret=SECRET, text_target=target, database_url="sqlite:///:memory:",
                              max_in_flight=4))
    client = await aiohttp_client(app)

    def refused(reason: str) -> float:
        return count("hubmesh_requests_refused_total", endpoint="/v1/models", model="", reason=reason)

    def answered_429() -> float:
        return count("hubmesh_requests_total", endpoint="/v1/models", model="", status="429")

    before = {reason: refused(reason) for reason in REASON_NAMES}
    total_before = answered_429()
    headers = bearer(rpm=1)
    assert (await client.get("/v1/models", headers=headers)).status == 200
    assert (await client.get("/v1/models", headers=headers)).status == 429  # its rpm
    for _ in range(4):
        app[IN_FLIGHT].enter()  # the worker is full
    try:
        assert (await client.get("/v1/models", headers=bearer())).status == 429
    finally:
        for _ in range(4):
            app[IN_FLIGHT].leave()
    after = {reason: refused(reason) - before[reason] for reason in REASON_NAMES}
    assert after == {**dict.fromkeys(REASON_NAMES, 0.0), "rate_limit_requests": 1.0, "capacity": 1.0}
    assert answered_429() - total_before == 2.0


# -- the dependencies' probe ------------------------------------------------------------------------------


def up(dependency: str) -> float | None:
    return sample("hubmesh_dependency_up", dependency=dependency)


def last_success(dependency: str) -> float | None:
    return sample("hubmesh_dependency_last_success_timestamp_seconds", dependency=dependency)


async def test_a_probe_round_sets_the_gauges():
    answers = {"database": True, "redis": True}

    def check(name: str):
        async def answer() -> None:
            if not answers[name]:
                raise ConnectionRefusedError(f"{name} is down")
        return answer

    now = [1_000.0]
    probe = DependencyProbe({"database": check("database"), "redis": check("redis")}, clock=lambda: now[0])
    try:
        assert await probe.probe() == {"database": True, "redis": True}
        assert (up("database"), up("redis")) == (1.0, 1.0)
        assert (last_success("database"), last_success("redis")) == (1_000.0, 1_000.0)
        answers["redis"], now[0] = False, 1_005.0
        assert await probe.probe() == {"database": True, "redis": False}
        assert (up("database"), up("redis")) == (1.0, 0.0)
        assert (last_success("database"), last_success("redis")) == (1_005.0, 1_000.0)  # when it last answered
        answers["redis"], now[0] = True, 1_010.0
        await probe.probe()
        assert up("redis") == 1.0 and last_success("redis") == 1_010.0
    finally:
        probe.forget()
    assert up("database") is None and up("redis") is None and last_success("redis") is None


async def test_a_dependency_that_does_not_answer_in_time_is_down():
    never = asyncio.Event()

    async def hangs() -> None:
        await never.wait()

    probe = DependencyProbe({"database": hangs}, timeout_s=0.05)
    try:
        assert await probe.probe() == {"database": False}
        assert up("database") == 0.0 and last_success("database") is None  # it never answered
    finally:
        probe.forget()


def _app(redis_client=None, database=None) -> web.Application:
    app = web.Application()
    shared = SimpleNamespace(client=redis_client) if redis_client is not None else None
    app[METERING] = Metering(Limiter(LocalStore(), shared), Policy(), 100)  # type: ignore[arg-type]
    app[RESPONSES_STORE] = database  # type: ignore[assignment]
    return app


async def test_the_apps_dependencies_are_its_database_and_redis_only_where_configured():
    class Database:
        queries: list[str] = []

        async def database(self):
            return self

        async def fetch(self, sql: str):
            self.queries.append(sql)
            return [(1,)]

    class Redis:
        pings = 0

        async def ping(self) -> bool:
            Redis.pings += 1
            return True

    database = Database()
    assert set(app_checks(_app(database=database))) == {DATABASE}  # no Redis configured: none probed
    checks = app_checks(_app(Redis(), database))
    assert set(checks) == {DATABASE, REDIS}
    probe = DependencyProbe(checks)
    try:
        assert await probe.probe() == {DATABASE: True, REDIS: True}
    finally:
        probe.forget()
    assert database.queries == ["SELECT 1"] and Redis.pings == 1


async def _until(condition, what: str, timeout_s: float = 10.0) -> None:
    """Polls `condition` (the probe runs every interval) until it holds, at most `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"{what} within {timeout_s} s"
        await asyncio.sleep(0.02)


async def test_the_app_probes_its_sqlite_and_exports_nothing_for_redis(aiohttp_client, services, tmp_path):
    target = await services(FakeTextBackend())
    client = await aiohttp_client(create_app(Settings(jwt_secret=SECRET, text_target=target,
                                                      database_url=f"sqlite:///{tmp_path / 'h.db'}")))
    await _until(lambda: up(DATABASE) == 1.0, "the database probed up")
    assert last_success(DATABASE) == pytest.approx(time.time(), abs=30)
    assert up(REDIS) is None  # no HUBMESH_REDIS_URL: no series
    text = await (await client.get("/metrics")).text()
    assert 'hubmesh_dependency_up{dependency="database"} 1.0' in text and 'dependency="redis"' not in text
    await client.close()
    assert up(DATABASE) is None  # the app is gone, and its series with it


async def test_the_app_sees_its_redis_stop_answering_and_come_back(services, tmp_path):
    target = await services(FakeTextBackend())
    with RedisServer(tmp_path / "redis.log") as redis:
        app = create_app(Settings(jwt_secret=SECRET, text_target=target, database_url="sqlite:///:memory:",
                                  redis_url=redis.url, redis_timeout_s=0.2))
        # the app's own probe, driven round by round (its database and metering opened as the app does)
        for ctx in app.cleanup_ctx:
            if ctx.__qualname__.startswith("dependencies_ctx"):
                app.cleanup_ctx.remove(ctx)  # type: ignore[arg-type]
                break
        runner = web.AppRunner(app)
        await runner.setup()
        probe = DependencyProbe(app_checks(app))
        try:
            assert await probe.probe() == {DATABASE: True, REDIS: True}
            redis.pause()  # hangs: connections open, nothing answers
            try:
                assert await probe.probe() == {DATABASE: True, REDIS: False}
                assert up(REDIS) == 0.0
            finally:
                redis.resume()
            assert await probe.probe() == {DATABASE: True, REDIS: True}
            assert up(REDIS) == 1.0
        finally:
            probe.forget()
            await runner.cleanup()


def test_the_probe_runs_in_the_app():
    app = create_app(Settings(jwt_secret=SECRET, database_url="sqlite:///:memory:"))
    names = [ctx.__qualname__.split(".")[0] for ctx in app.cleanup_ctx]
    # after the database is opened (store_ctx) and the limits are set up (metering_ctx)
    assert names.index("dependencies_ctx") > names.index("store_ctx") and "metering_ctx" in names
    assert dependencies_ctx().__qualname__.startswith("dependencies_ctx")


# -- the configured budgets -------------------------------------------------------------------------------


async def test_the_configured_budgets_are_gauges(aiohttp_client, services):
    target = await services(FakeTextBackend())
    await aiohttp_client(create_app(Settings(jwt_secret=SECRET, text_target=target, database_url="sqlite:///:memory:",
                                             budget_tokens_per_day=250_000)))
    assert sample("hubmesh_budget_tokens_per_day") == 250_000.0
    assert sample("hubmesh_budget_tokens_per_month") == 0.0  # unlimited
