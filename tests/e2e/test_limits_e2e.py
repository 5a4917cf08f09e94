"""Limits that hold across façade replicas (issue 18), on the real stack: the engine simulator in a
real tritonserver, the text service, three façade processes sharing one real Redis (a private
redis-server the tests kill and restart) and one database for the usage ledger.

- rpm: 30 per minute is exactly 30 successes however the requests are spread over the replicas;
- token budgets with 32 concurrent streams: never overspent, the stream that reaches the end of the
  budget ends with finish_reason "length" and the usage it consumed, the rest get 429;
- Redis killed mid-load and restarted: no 500, fail_open replicas serve, a fail_closed one answers
  503 limits_unavailable, and both count in Redis again within seconds;
- the ledger holds exactly one record per request after a graceful stop, on SQLite and PostgreSQL.
Figures: build/limits.json.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sqlite3
import time
import uuid

import aiohttp
import asyncpg
import jwt
import pytest

from facade.api.chat.protocol import ChatCompletionRequest
from facade.limits.meter import completion_bound, prompt_bound
from hubmesh.common.v1 import common_pb2 as common_pb
from local import processes
from local.redis import RedisServer
from local.stack import ROOT, LocalStack, StackConfig
from tests.e2e.figures import record as figures_record
from tests.e2e.migration_support import TEXT_ONLY

pytestmark = pytest.mark.e2e
SIM = "hubmesh/sim-llama-3-8b"
KEY = "limits-key"
REPORT = ROOT / "build" / "limits.json"
RESET = re.compile(r"(\d+h)?(\d+m)?\d+(\.\d+)?s|\d+ms")  # OpenAI's durations: 20ms, 1s, 6m0s
POSTGRES_URL = os.environ.get("HUBMESH_TEST_POSTGRES_URL", "postgresql://127.0.0.1:5432/test")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """Triton with the simulator and the text service; no façade (the tests start their own)."""
    config = StackConfig.with_free_ports(api_key=KEY, run_dir=tmp_path_factory.mktemp("limits"),
                                         models={"text": ("sim",)})
    config.extra_env["HUBMESH_TEXT_CATALOG"] = str(ROOT / "services" / "text" / "catalog.sim.toml")
    stack = LocalStack(config, modalities=TEXT_ONLY)
    try:
        stack.start(facade=False)
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def redis_server(stack):
    server = RedisServer(stack.logs / "redis.log").start()
    yield server
    server.stop()


def record(name: str, figures: dict) -> None:
    figures_record(REPORT, name, figures)


class Facades:
    """Façade processes behind one client that spreads requests over them (round robin), and the
    client's own tally of every request it sent."""

    def __init__(self, stack: LocalStack, procs: list, ports: list[int]) -> None:
        self.stack, self.procs, self.ports = stack, procs, ports
        self.sent = 0
        self._next = 0

    def url(self, path: str, replica: int | None = None) -> str:
        if replica is None:
            replica, self._next = self._next % len(self.ports), self._next + 1
        return f"http://127.0.0.1:{self.ports[replica]}{path}"

    async def request(self, http: aiohttp.ClientSession, method: str, path: str, token: str,
                      body: dict | None = None, replica: int | None = None) -> tuple[int, dict | list]:
        """(status, JSON body; for a stream the list of its data events)."""
        self.sent += 1
        async with http.request(method, self.url(path, replica), json=body,
                                headers={"Authorization": f"Bearer {token}"}) as response:
            if response.content_type == "text/event-stream":
                events = []
                async for line in response.content:
                    line = line.decode().strip()
                    if line.startswith("data: ") and line != "data: [DONE]":
                        events.append(json.loads(line[6:]))
                return response.status, events
            return response.status, await response.json()

    def stop(self) -> None:
        """A graceful stop (SIGTERM) of every replica, all at once."""
        for proc in self.procs:
            processes.stop(proc)


def start_facades(stack: LocalStack, count: int, name: str, **env: str) -> Facades:
    ports = processes.free_ports(count)
    procs = []
    try:
        for i, port in enumerate(ports):
            replica_env = {k: (v[i] if isinstance(v, list) else v) for k, v in env.items()}
            procs.append(stack.spawn_facade(port, f"{name}-{i}", **replica_env))
    except BaseException:
        for proc in procs:
            processes.stop(proc)
        raise
    return Facades(stack, procs, ports)


@pytest.fixture(scope="module")
def trio(stack, redis_server):
    """Three replicas, one Redis, one SQLite ledger."""
    db = stack.config.run_dir / "ledger.db"
    facades = start_facades(stack, 3, "facade", HUBMESH_REDIS_URL=redis_server.url,
                            HUBMESH_DATABASE_URL=f"sqlite:///{db}", HUBMESH_USAGE_FLUSH_INTERVAL_S="0.2")
    facades.db = db
    yield facades
    facades.stop()


def token(stack: LocalStack, **claims) -> str:
    now = int(time.time())
    body = {"sub": f"user-{uuid.uuid4().hex[:8]}", "scope": "chat completions models", "iat": now,
            "exp": now + 3600, **claims}
    return jwt.encode(body, stack.config.jwt_secret, algorithm="HS256")


def subject(tok: str) -> str:
    return "jwt:" + jwt.decode(tok, options={"verify_signature": False})["sub"]


def chat(i: int, max_tokens: int, stream: bool = True) -> dict:
    body = {"model": SIM, "messages": [{"role": "user", "content": f"Count to ten, please ({i:02d})."}],
            "max_tokens": max_tokens, "temperature": 0, "seed": i}
    if stream:
        body.update(stream=True, stream_options={"include_usage": True})
    return body


def reservation(body: dict, tok: str, cap: int = 4096) -> int:
    """What the façade reserves for `body` (facade/api/text/generation.py reserve_budget)."""
    parsed = ChatCompletionRequest.model_validate(body)
    proto = parsed.to_proto(common_pb.Caller(subject=subject(tok), user=""))
    return prompt_bound(proto.ByteSize()) + completion_bound(1, parsed.max_tokens, cap)


def usage_of(events: list) -> dict:
    return next(e["usage"] for e in events if e.get("usage"))


def finish_of(events: list) -> str | None:
    reasons = [c["finish_reason"] for e in events for c in e.get("choices", []) if c.get("finish_reason")]
    return reasons[-1] if reasons else None


# -- rpm across replicas --------------------------------------------------------------------------------


async def test_requests_per_minute_hold_across_three_replicas(trio):
    tok = token(trio.stack, rpm=30)
    async with aiohttp.ClientSession() as http:
        results = await asyncio.gather(*(trio.request(http, "GET", "/v1/models", tok) for _ in range(90)))
    statuses = [s for s, _ in results]
    assert statuses.count(200) == 30 and statuses.count(429) == 60, statuses
    refused = next(body for s, body in results if s == 429)["error"]
    assert (refused["type"], refused["code"]) == ("requests", "rate_limit_exceeded")
    record("rpm", {"limit": 30, "sent": 90, "replicas": 3, "succeeded": statuses.count(200)})


async def test_per_model_requests_limit(trio):
    tok = token(trio.stack, model_limits={SIM: {"rpm": 4}})
    async with aiohttp.ClientSession() as http:
        results = [await trio.request(http, "POST", "/v1/chat/completions", tok, chat(i, 1, stream=False))
                   for i in range(7)]
        assert [s for s, _ in results] == [200] * 4 + [429] * 3
        assert "model" in results[-1][1]["error"]["message"]
        # the model limit leaves the subject's other requests alone
        assert (await trio.request(http, "GET", "/v1/models", tok))[0] == 200


# -- the x-ratelimit-* headers across replicas ----------------------------------------------------------------


async def _get_headers(trio: Facades, http: aiohttp.ClientSession, path: str, tok: str,
                       replica: int | None = None, body: dict | None = None) -> tuple[int, dict, dict]:
    """(status, headers, JSON body) of one request, on `replica` (else the next in turn)."""
    trio.sent += 1
    method = "POST" if body is not None else "GET"
    async with http.request(method, trio.url(path, replica), json=body,
                            headers={"Authorization": f"Bearer {tok}"}) as response:
        return response.status, dict(response.headers), await response.json()


async def test_remaining_requests_are_exact_across_three_replicas(trio):
    """Each request's x-ratelimit-remaining-requests is the count the Lua script that admitted it
    left, whichever replica answered: in turn 29, 28, ... 0, and 30 concurrent requests get each of
    0..29 exactly once."""
    in_turn, together = token(trio.stack, rpm=30), token(trio.stack, rpm=30)
    async with aiohttp.ClientSession() as http:
        seen = [await _get_headers(trio, http, "/v1/models", in_turn, replica=i % 3) for i in range(30)]
        burst = await asyncio.gather(*(_get_headers(trio, http, "/v1/models", together) for _ in range(30)))
        refused = [await _get_headers(trio, http, "/v1/models", tok, replica=r) for r in range(3)
                   for tok in (in_turn, together)]
    assert [s for s, _, _ in seen + burst] == [200] * 60
    assert [int(h["x-ratelimit-remaining-requests"]) for _, h, _ in seen] == list(range(29, -1, -1))
    assert sorted(int(h["x-ratelimit-remaining-requests"]) for _, h, _ in burst) == list(range(30))
    assert {(h["x-ratelimit-limit-requests"], h["x-ratelimit-reset-requests"]) for _, h, _ in seen + burst} == {
        ("30", "1m0s")}
    for status, headers, body in refused:
        assert status == 429 and body["error"]["code"] == "rate_limit_exceeded"
        assert headers["x-ratelimit-remaining-requests"] == "0" and headers["x-ratelimit-limit-requests"] == "30"
        assert 1 <= int(headers["Retry-After"]) <= 60
        assert not any(name.startswith("x-ratelimit-") and name.endswith("-tokens") for name in headers)
    record("ratelimit_headers", {"replicas": 3, "rpm": 30, "in_turn": [int(h["x-ratelimit-remaining-requests"])
                                                                      for _, h, _ in seen]})


async def test_remaining_tokens_agree_across_replicas(trio):
    budget = 5000
    tok = token(trio.stack, tokens_per_day=budget, rpm=100)
    async with aiohttp.ClientSession() as http:
        status, headers, body = await _get_headers(trio, http, "/v1/chat/completions", tok, replica=0,
                                                   body=chat(1, 5, stream=False))
        assert status == 200, body
        left = budget - body["usage"]["total_tokens"]
        assert (headers["x-ratelimit-limit-tokens"], headers["x-ratelimit-remaining-tokens"]) == (str(budget), str(left))
        for replica in (1, 2):  # reserved nothing: each replica reads the shared counters
            _, read, _ = await _get_headers(trio, http, "/v1/models", tok, replica=replica)
            assert (read["x-ratelimit-limit-tokens"], read["x-ratelimit-remaining-tokens"]) == (str(budget), str(left))
            assert RESET.fullmatch(read["x-ratelimit-reset-tokens"])  # the UTC day's end, in OpenAI's format


async def test_the_openai_sdk_reads_the_headers(trio):
    from openai import AsyncOpenAI, RateLimitError

    tok = token(trio.stack, rpm=3, tokens_per_day=10_000)
    sdk = AsyncOpenAI(base_url=f"http://127.0.0.1:{trio.ports[1]}/v1", api_key=tok, max_retries=0)
    try:
        raw = await sdk.chat.completions.with_raw_response.create(
            model=SIM, messages=[{"role": "user", "content": "Say hello."}], max_tokens=4, temperature=0)
        completion = raw.parse()
        assert raw.headers.get("x-ratelimit-limit-requests") == "3"
        assert raw.headers.get("x-ratelimit-remaining-requests") == "2"
        assert raw.headers.get("x-ratelimit-reset-requests") == "1m0s"
        assert raw.headers.get("x-ratelimit-limit-tokens") == "10000"
        assert raw.headers.get("x-ratelimit-remaining-tokens") == str(10_000 - completion.usage.total_tokens)
        stream = await sdk.chat.completions.with_raw_response.create(
            model=SIM, messages=[{"role": "user", "content": "Say hello."}], max_tokens=4, stream=True)
        assert stream.headers.get("x-ratelimit-remaining-requests") == "1"  # sent before the first event
        assert int(stream.headers.get("x-ratelimit-remaining-tokens")) < 10_000 - completion.usage.total_tokens
        async for _ in stream.parse():  # to its end
            pass
        await sdk.models.list()  # the third
        with pytest.raises(RateLimitError) as refused:
            await sdk.models.with_raw_response.list()
        assert refused.value.response.headers.get("x-ratelimit-remaining-requests") == "0"
        assert int(refused.value.response.headers.get("retry-after")) >= 1
    finally:
        await sdk.close()


# -- token budgets while generating ----------------------------------------------------------------------


async def _budget_run(trio: Facades, claim: str) -> dict:
    max_tokens = 300
    bodies = [chat(i, max_tokens) for i in range(32)]
    tok = token(trio.stack)
    want = reservation(bodies[0], tok)  # the same for all 32 (same sizes, same subject)
    budget = int(want * 2.5)  # two full reservations and half of a third
    tok = jwt.encode({**jwt.decode(tok, options={"verify_signature": False}), claim: budget},
                     trio.stack.config.jwt_secret, algorithm="HS256")
    assert reservation(bodies[0], tok) == want
    async with aiohttp.ClientSession() as http:
        results = await asyncio.gather(*(trio.request(http, "POST", "/v1/chat/completions", tok, b) for b in bodies))
    served = [events for status, events in results if status == 200]
    refused = [body["error"] for status, body in results if status != 200]
    assert all(s in (200, 429) for s, _ in results), [s for s, _ in results]
    used = [usage_of(events) for events in served]
    spent = sum(u["total_tokens"] for u in used)
    cut = [(u, finish_of(e)) for u, e in zip(used, served, strict=True) if u["completion_tokens"] < max_tokens]
    assert not any("error" in e for events in served for e in events)
    return {"budget": budget, "reservation": want, "spent": spent, "served": len(served),
            "refused": len(refused), "cut": cut, "errors": refused}


async def test_a_daily_budget_is_never_overspent_by_32_concurrent_streams(trio):
    run = await _budget_run(trio, "tokens_per_day")
    assert run["spent"] <= run["budget"]
    # two full reservations and a partial one: at least three served (a stream that ended early gives
    # back what it did not use, which a late request may get), every other one refused
    assert run["served"] >= 3 and run["served"] + run["refused"] == 32
    assert run["cut"] and all(reason == "length" for _, reason in run["cut"])  # ...ended at the budget
    assert {(e["type"], e["code"]) for e in run["errors"]} == {("insufficient_quota", "insufficient_quota")}
    record("tokens_per_day", {k: v for k, v in run.items() if k != "errors"})


async def test_a_tpm_limit_is_never_overspent_by_32_concurrent_streams(trio):
    started = time.monotonic()
    run = await _budget_run(trio, "tpm")
    refill = run["budget"] * (time.monotonic() - started) / 60
    # never more than the bucket held plus what it refilled meanwhile (each cut is exact on the simulator)
    assert run["spent"] <= run["budget"] + refill
    assert run["refused"] >= 20
    assert any(reason == "length" for _, reason in run["cut"])
    assert {(e["type"], e["code"]) for e in run["errors"]} == {("tokens", "rate_limit_exceeded")}
    record("tpm", {k: v for k, v in run.items() if k != "errors"} | {"refill_allowance": refill})


# -- Redis faults -------------------------------------------------------------------------------------------


async def test_redis_killed_mid_load_and_restarted(stack, tmp_path):
    server = RedisServer(stack.logs / "redis-chaos.log").start()
    modes = ["fail_open", "fail_open", "fail_closed"]
    facades = start_facades(stack, 3, "chaos", HUBMESH_REDIS_URL=server.url, HUBMESH_LIMITS_FAIL_MODE=modes,
                            HUBMESH_REDIS_RETRY_S="0.5", HUBMESH_DATABASE_URL=f"sqlite:///{tmp_path / 'l.db'}")
    tok = token(stack, rpm=1_000_000, tpm=100_000_000)
    seen: list[tuple[float, int, int, str | None]] = []  # (time, replica, status, error code)
    done = asyncio.Event()
    t0 = time.monotonic()

    async def load(http: aiohttp.ClientSession, replica: int) -> None:
        i = 0
        while not done.is_set() and time.monotonic() - t0 < 60:  # bounded however recovery goes
            i += 1
            if i % 4:
                status, body = await facades.request(http, "GET", "/v1/models", tok, replica=replica)
            else:
                status, body = await facades.request(http, "POST", "/v1/chat/completions", tok,
                                                     chat(i, 2, stream=False), replica=replica)
            code = body.get("error", {}).get("code") if isinstance(body, dict) else None
            seen.append((time.monotonic(), replica, status, code))

    def after(t: float, replica: int, status: int) -> bool:
        return any(when > t and r == replica and s == status for when, r, s, _ in seen)

    try:
        async with aiohttp.ClientSession() as http:
            workers = [asyncio.create_task(load(http, r)) for r in range(3) for _ in range(2)]
            while len(seen) < 30:
                await asyncio.sleep(0.05)
            killed = time.monotonic()
            server.kill()
            while not (after(killed + 0.5, 0, 200) and after(killed + 0.5, 2, 503)):  # the outage, seen
                assert time.monotonic() - killed < 20, "the outage was not seen"
                await asyncio.sleep(0.05)
            await asyncio.to_thread(server.start)
            back = time.monotonic()
            while not after(back, 2, 200):  # fail_closed serves again once Redis answers
                assert time.monotonic() - back < 20, "no recovery"
                await asyncio.sleep(0.05)
            recovered = time.monotonic() - back
            done.set()
            await asyncio.gather(*workers)
            counters = await _redis_keys(server.url)
    finally:
        facades.stop()
        server.stop()
    statuses = [s for _, _, s, _ in seen]
    assert 500 not in statuses and all(s in (200, 503) for s in statuses), sorted(set(statuses))
    assert all(s == 200 for _, r, s, _ in seen if r < 2)  # fail_open: served throughout
    outage = [code for when, r, s, code in seen if r == 2 and s == 503]
    assert outage and set(outage) == {"limits_unavailable"}
    assert counters > 0  # counting in Redis again
    assert recovered < 5
    record("redis_outage", {"requests": len(seen), "fail_closed_503": len(outage), "recovery_s": round(recovered, 2)})


async def _redis_keys(url: str) -> int:
    import redis.asyncio

    client = redis.asyncio.Redis.from_url(url)
    try:
        return await client.dbsize()
    finally:
        await client.aclose()


# -- the usage ledger ---------------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
async def ledger_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'ledger.db'}"
        return
    admin = await asyncpg.connect(POSTGRES_URL, timeout=10)
    schema = f"hm_ledger_{uuid.uuid4().hex[:12]}"
    await admin.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield f"{POSTGRES_URL}{'&' if '?' in POSTGRES_URL else '?'}search_path={schema}"
    finally:
        await admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await admin.close()


async def _ledger(url: str) -> list[tuple]:
    sql = "SELECT status, subject, prompt_tokens, completion_tokens FROM usage_records"
    if url.startswith("sqlite"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
            return conn.execute(sql).fetchall()
    conn = await asyncpg.connect(url, timeout=10)
    try:
        return [tuple(r) for r in await conn.fetch(sql)]
    finally:
        await conn.close()


async def test_the_ledger_holds_one_record_per_request(stack, redis_server, ledger_url):
    facades = start_facades(stack, 3, "ledger", HUBMESH_REDIS_URL=redis_server.url, HUBMESH_DATABASE_URL=ledger_url)
    tally: dict[int, int] = {}
    tokens = 0
    try:
        limited = token(stack, rpm=10)
        plenty = token(stack)
        wrong = jwt.encode({"sub": "x", "exp": int(time.time()) + 60}, "not-the-secret-of-this-stack-0123456789", algorithm="HS256")
        async with aiohttp.ClientSession() as http:
            calls = [facades.request(http, "POST", "/v1/chat/completions", plenty, chat(i, 8)) for i in range(96)]
            calls += [facades.request(http, "POST", "/v1/chat/completions", plenty, chat(i, 3, stream=False))
                      for i in range(48)]
            calls += [facades.request(http, "GET", "/v1/models", limited) for _ in range(16)]  # 6 are 429
            calls += [facades.request(http, "POST", "/v1/chat/completions", plenty, {"model": SIM}) for _ in range(5)]
            calls += [facades.request(http, "GET", "/v1/models", wrong) for _ in range(3)]
            gate = asyncio.Semaphore(48)  # within the text service's in-flight limit (64): no 429 from it

            async def gated(call):
                async with gate:
                    return await call

            results = await asyncio.gather(*(gated(c) for c in calls))
        for status, body in results:
            tally[status] = tally.get(status, 0) + 1
            if status == 200:
                usage = usage_of(body) if isinstance(body, list) else body.get("usage")
                tokens += usage["total_tokens"] if usage else 0
    finally:
        facades.stop()  # graceful: every replica flushes its ledger before it exits
    # every request but the readiness checks start_facades made with the stack's static key
    rows = [r for r in await _ledger(ledger_url) if not r[1].startswith("key:")]
    assert len(rows) == facades.sent == sum(tally.values()) == 168
    assert tally == {200: 154, 429: 6, 400: 5, 401: 3}
    by_status: dict[int, int] = {}
    for status, *_ in rows:
        by_status[status] = by_status.get(status, 0) + 1
    assert by_status == tally
    assert sum(r[2] + r[3] for r in rows) == tokens
    assert {r[1] for r in rows if r[0] == 401} == {""}
    record(f"ledger_{ledger_url.split(':')[0]}", {"requests": len(rows), "statuses": tally, "tokens": tokens})
