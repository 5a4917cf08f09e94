"""The usage ledger in the app: exactly one record per request on an API route, whatever its outcome,
written at the latest when the app stops (on SQLite and on a real PostgreSQL); GET /v1/usage (the
admin scope) and its 400s, 403 and 503; the bounded per-subject Prometheus counters.

In front of in-process services over fake backends (tests/fakes.py), as test_responses_api.py is.
The flush interval is an hour: whatever reaches the database was written by the shutdown or by
GET /v1/usage itself, never by a timer the test would wait for."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections import Counter
from contextlib import AsyncExitStack

import jwt
import pytest
from prometheus_client import REGISTRY

from facade.app import create_app
from facade.auth.tokens import issue_local_token
from facade.settings import Settings
from facade.store.database import open_database
from facade.store.usage import USAGE_LEDGER, UsageRecord, utc_day
from facade.usage_metrics import OTHER, SubjectMetrics
from services.images.storage import LocalDirectoryStore
from tests.fakes import FakeEmbeddingsBackend, FakeImagesBackend, FakeTextBackend, chunk
from tests.unit import test_embeddings, test_images
from tests.unit.openapi_check import Conformance
from tests.unit.test_responses_store import database_url  # noqa: F401 (the fixture: each kind of database)
from tests.unit.text_service_fixture import MODEL, running_text_service

KEY = "usage-key"
SECRET = "usage-secret-usage-secret-usage-secret-usage"
AUTH = {"Authorization": f"Bearer {KEY}"}


def bearer(subject: str, scope: str = "chat") -> dict:
    now = int(time.time())
    token = jwt.encode({"sub": subject, "scope": scope, "iat": now, "exp": now + 600}, SECRET, algorithm="HS256")
    return {"Authorization": f"Bearer {token}"}


def admin() -> dict:
    """The operator's token, made when used: one made at import would expire in a long test run."""
    return bearer("ops", "admin")


class Scripted(FakeTextBackend):
    """Answers "Hello" (7 prompt tokens, 4 of them cached, 3 completion tokens); a prompt asking
    to "hang up" stops after its first chunk, as a slow model would."""

    def __init__(self) -> None:
        super().__init__()
        self.gate: asyncio.Event | None = None  # when set: each generation waits for it
        self.arrived: asyncio.Queue[str] = asyncio.Queue()  # the prompts of generations waiting at the gate

    async def generate(self, model, prompt, sampling, stream, resume=None):
        if self.gate is not None:
            self.arrived.put_nowait(prompt)
            await self.gate.wait()
        self.chunks = [dataclasses.replace(chunk(["Hel"], n_in=7, n_out=[1]), num_cached_tokens=4),
                       dataclasses.replace(chunk(["lo"], ["stop"], n_in=7, n_out=[2]), num_cached_tokens=4)]
        self.hang_after = 1 if "hang up" in prompt else None
        async for piece in super().generate(model, prompt, sampling, stream):
            yield piece


@pytest.fixture
async def stack(aiohttp_client, tmp_path):
    """start(database_url, **settings) -> the test client of an app in front of fake text, embeddings
    and images services; its text backend is `stack.backend`."""
    async with AsyncExitStack() as contexts:
        backend = Scripted()
        text = await contexts.enter_async_context(running_text_service(backend))
        emb = await contexts.enter_async_context(test_embeddings.embeddings_service(FakeEmbeddingsBackend()))
        img = await contexts.enter_async_context(
            test_images.images_service(FakeImagesBackend(), LocalDirectoryStore(tmp_path / "images")))

        async def start(url: str, **overrides):
            settings = {"api_keys": (KEY,), "jwt_secret": SECRET, "text_target": text, "embeddings_target": emb,
                        "images_target": img, "database_url": url, "usage_flush_interval_s": 3600.0, **overrides}
            return await aiohttp_client(create_app(Settings(**settings)),
                                        server_kwargs={"handler_cancellation": True})  # as facade/__main__.py

        start.backend = backend
        yield start


def chat(content: str = "Hi", **extra) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], **extra}


async def records(url: str) -> list[dict]:
    db = await open_database(url)
    try:
        rows = await db.fetch("SELECT subject, user_id, model, endpoint, method, status, prompt_tokens, "
                              "completion_tokens, cached_tokens, images, request_id, day, created_at, latency_ms "
                              "FROM usage_records")
    finally:
        await db.close()
    names = ("subject", "user", "model", "endpoint", "method", "status", "prompt_tokens", "completion_tokens",
             "cached_tokens", "images", "request_id", "day", "created_at", "latency_ms")
    return [dict(zip(names, row)) for row in rows]


# -- one record per request ------------------------------------------------------------------------


async def test_every_request_is_one_record_written_when_the_app_stops(stack, database_url):  # noqa: F811
    client = await stack(database_url)
    alice = bearer("alice", "chat completions responses")
    sent = [  # (method, path, body, headers, the status it gets)
        ("GET", "/v1/models", None, AUTH, 200),
        ("GET", "/v1/models", None, {}, 401),
        ("GET", f"/v1/models/{MODEL}", None, AUTH, 200),
        ("POST", "/v1/embeddings", {"model": test_embeddings.MODEL, "input": "x"}, alice, 403),
        ("POST", "/v1/chat/completions", {"model": MODEL, "messages": "not a list"}, alice, 400),
        ("POST", "/v1/chat/completions", chat(model="nope"), alice, 404),
        ("POST", "/v1/chat/completions", chat(user="ann"), alice, 200),
        ("POST", "/v1/chat/completions", chat(stream=True, stream_options={"include_usage": True}), alice, 200),
        ("POST", "/v1/completions", {"model": MODEL, "prompt": ["a", "b"], "user": "bea"}, alice, 200),
        ("POST", "/v1/embeddings", {"model": test_embeddings.MODEL, "input": ["a b", "c"]}, AUTH, 200),
        ("POST", "/v1/images/generations", {"model": test_images.MODEL, "prompt": "p", "n": 2, "size": "256x256"},
         AUTH, 200),
        ("POST", "/v1/responses", {"model": MODEL, "input": "Hi"}, alice, 200),
    ]
    ids = []
    for method, path, body, headers, status in sent:
        reply = await client.request(method, path, json=body, headers=headers)
        assert reply.status == status, (path, await reply.text())
        await reply.read()
        ids.append(reply.headers["X-Request-ID"])
    # not API routes: never in the ledger
    for path in ("/health", "/metrics", "/openapi.json", "/v1/nothing"):
        await (await client.get(path, headers=AUTH)).read()
    # a stream the client leaves mid-way: 499
    reply = await client.post("/v1/chat/completions", json=chat("hang up", stream=True), headers=alice)
    await reply.content.readuntil(b'"Hel"')
    reply.close()
    await asyncio.wait_for(stack.backend.closed_early.wait(), 10)

    ledger = client.app[USAGE_LEDGER]
    assert ledger.pending == len(sent) + 1 and await records(database_url) == []  # nothing written yet
    await client.close()  # a graceful stop: the last write, then the database closes

    found = await records(database_url)
    assert len(found) == len(sent) + 1 and ledger.dropped == 0
    assert Counter((r["endpoint"], r["status"]) for r in found) == Counter([
        ("/v1/models", 200), ("/v1/models", 401), ("/v1/models/{model}", 200), ("/v1/embeddings", 403),
        ("/v1/chat/completions", 400), ("/v1/chat/completions", 404), ("/v1/chat/completions", 200),
        ("/v1/chat/completions", 200), ("/v1/completions", 200), ("/v1/embeddings", 200),
        ("/v1/images/generations", 200), ("/v1/responses", 200), ("/v1/chat/completions", 499)])
    by_id = {r["request_id"]: r for r in found}
    assert set(ids) <= set(by_id)
    key_subject = by_id[ids[0]]["subject"]
    assert key_subject.startswith("key:") and KEY not in key_subject
    assert by_id[ids[1]]["subject"] == ""  # 401: no verified caller
    assert [by_id[i]["model"] for i in ids[4:6]] == ["", "nope"]
    tokens = {i: (by_id[i]["prompt_tokens"], by_id[i]["completion_tokens"], by_id[i]["cached_tokens"], by_id[i]["images"])
              for i in ids}
    assert tokens[ids[6]] == tokens[ids[7]] == tokens[ids[11]] == (7, 3, 4, 0)  # chat, its stream, responses
    assert tokens[ids[8]] == (14, 6, 8, 0)  # two prompts: both counted
    assert tokens[ids[9]] == (3, 0, 0, 0)  # embeddings: a word a token, in the fake
    assert tokens[ids[10]] == (0, 0, 0, 2)  # two images
    assert all(tokens[i] == (0, 0, 0, 0) for i in ids[:6])
    assert (by_id[ids[6]]["subject"], by_id[ids[6]]["user"], by_id[ids[6]]["model"]) == ("jwt:alice", "ann", MODEL)
    assert by_id[ids[8]]["user"] == "bea" and by_id[ids[8]]["method"] == "POST" and by_id[ids[0]]["method"] == "GET"
    cut = next(r for r in found if r["status"] == 499)
    assert cut["subject"] == "jwt:alice" and cut["endpoint"] == "/v1/chat/completions"
    assert all(r["day"] == utc_day(r["created_at"]) and r["latency_ms"] >= 0 for r in found)


async def test_a_stop_with_requests_in_flight_keeps_theirs(stack, database_url):  # noqa: F811
    """A stop while requests are in flight: aiohttp lets them end before the cleanup contexts run,
    so the ledger's last write holds their records too."""
    client = await stack(database_url)
    backend = stack.backend
    backend.gate = asyncio.Event()
    replies = [asyncio.ensure_future(client.post("/v1/chat/completions", json=chat(), headers=AUTH))
               for _ in range(5)]
    for _ in replies:  # all five are at the model
        await asyncio.wait_for(backend.arrived.get(), 10)
    stopping = asyncio.ensure_future(client.server.close())  # no new connections; waits for the five
    await asyncio.sleep(0.05)
    assert not stopping.done() and await records(database_url) == []
    backend.gate.set()
    await asyncio.wait_for(stopping, 30)
    assert [reply.status for reply in await asyncio.gather(*replies)] == [200] * 5
    found = await records(database_url)
    assert [(r["status"], r["prompt_tokens"], r["completion_tokens"]) for r in found] == [(200, 7, 3)] * 5


async def test_get_usage_reads_its_own_writes(stack, tmp_path):
    client = await stack(f"sqlite:///{tmp_path / 'hubmesh.db'}")
    for subject in ("alice", "alice", "bob"):
        assert (await client.post("/v1/chat/completions", json=chat(user=f"{subject}-user"),
                                  headers=bearer(subject))).status == 200
    reply = await client.get("/v1/usage", headers=admin())  # default: per subject, the last 30 days
    assert reply.status == 200, await reply.text()
    usage = await reply.json()
    assert usage["object"] == "list" and usage["has_more"] is False
    assert abs(usage["end"] - usage["start"] - 30 * 24 * 3600) < 1e-3 and abs(usage["end"] - time.time()) < 60
    assert usage["data"] == [
        {"subject": "jwt:alice", "requests": 2, "prompt_tokens": 14, "completion_tokens": 6, "cached_tokens": 8,
         "total_tokens": 20, "images": 0, "errors": 0},
        {"subject": "jwt:bob", "requests": 1, "prompt_tokens": 7, "completion_tokens": 3, "cached_tokens": 4,
         "total_tokens": 10, "images": 0, "errors": 0},
    ]


# -- GET /v1/usage ---------------------------------------------------------------------------------


@pytest.fixture
async def ledger_client(stack, tmp_path):
    """A client whose ledger holds known records: alice and bob on two days, and a refused call."""
    client = await stack(f"sqlite:///{tmp_path / 'hubmesh.db'}")
    ledger = client.app[USAGE_LEDGER]
    day1 = 1_717_200_000.0  # 2024-06-01 00:00 UTC
    for record in (
        UsageRecord(day1 + 10, "jwt:alice", "ann", MODEL, "/v1/chat/completions", "POST", 200, 7, 3, 4),
        UsageRecord(day1 + 20, "jwt:alice", "", MODEL, "/v1/chat/completions", "POST", 400),
        UsageRecord(day1 + 86_400, "jwt:alice", "ann", "m2", "/v1/completions", "POST", 200, 5, 5),
        UsageRecord(day1 + 86_500, "jwt:bob", "", "img", "/v1/images/generations", "POST", 200, images=2),
        UsageRecord(day1 + 86_600, "", "", "", "/v1/models", "GET", 401),
    ):
        ledger.record(record)
    return client


async def usage(client, query: str, headers=None) -> list[dict]:
    """The groups GET /v1/usage answers, over the records' two days unless `query` names its own."""
    window = "" if "start=" in query else "start=2024-06-01&end=2024-06-03&"
    reply = await client.get(f"/v1/usage?{window}{query}", headers=headers or admin())
    assert reply.status == 200, await reply.text()
    return (await reply.json())["data"]


async def test_group_by_and_filters(ledger_client):
    client = ledger_client
    by_day = await usage(client, "group_by=day")
    assert [(r["day"], r["requests"], r["total_tokens"], r["images"], r["errors"]) for r in by_day] == [
        ("2024-06-01", 2, 10, 0, 1), ("2024-06-02", 3, 10, 2, 1)]
    by_user_model = await usage(client, "group_by=subject,user,model&subject=jwt:alice")
    assert [(r["subject"], r["user"], r["model"], r["requests"]) for r in by_user_model] == [
        ("jwt:alice", "", MODEL, 1), ("jwt:alice", "ann", MODEL, 1), ("jwt:alice", "ann", "m2", 1)]
    assert set(by_user_model[0]) == {"subject", "user", "model", "requests", "prompt_tokens", "completion_tokens",
                                     "cached_tokens", "total_tokens", "images", "errors"}
    assert [r["status"] for r in await usage(client, "group_by=status")] == [200, 400, 401]
    assert [r["endpoint"] for r in await usage(client, "group_by=endpoint&user=ann")] == [
        "/v1/chat/completions", "/v1/completions"]
    assert [r["requests"] for r in await usage(client, "group_by=model&model=m2")] == [1]
    unix = await usage(client, "group_by=day,day&start=1717200000&end=1717286400")  # day 1, given as seconds
    assert [r["day"] for r in unix] == ["2024-06-01"]
    reply = await client.get("/v1/usage?start=2024-06-01&end=2024-06-03&group_by=subject&limit=2", headers=admin())
    page = await reply.json()
    assert [r["subject"] for r in page["data"]] == ["", "jwt:alice"] and page["has_more"] is True
    assert (page["start"], page["end"]) == (1_717_200_000, 1_717_372_800)


async def test_the_answers_are_what_openapi_json_documents(ledger_client):
    client = ledger_client
    doc = Conformance(await (await client.get("/openapi.json")).json())
    parameters = {p["name"] for p in doc.document["paths"]["/v1/usage"]["get"]["parameters"]}
    assert parameters == {"group_by", "start", "end", "subject", "user", "model", "limit"}
    for query in ("group_by=subject,user,model,day,endpoint,status", "group_by=day"):
        body = await doc.check(await client.get(f"/v1/usage?{query}&start=2024-06-01", headers=admin()), "GET", "/v1/usage")
        assert body["data"]
    for reply in (await client.get("/v1/usage?limit=0", headers=admin()),
                  await client.get("/v1/usage", headers=bearer("carol", "chat"))):
        await doc.check(reply, "GET", "/v1/usage")


@pytest.mark.parametrize("query, param", [
    ("group_by=nothing", "group_by"), ("group_by=", "group_by"), ("group_by=subject,,day", "group_by"),
    ("start=yesterday", "start"), ("start=-5", "start"), ("start=2024-02-30", "start"), ("end=nan", "end"),
    ("end=1e400", "end"), ("end=99999-01-01", "end"), ("start=200&end=100", "start"), ("start=100&end=100", "start"),
    ("limit=0", "limit"), ("limit=10001", "limit"), ("limit=x", "limit"), ("limit=1.5", "limit"),
])
async def test_bad_parameters_are_400_naming_them(ledger_client, query, param):
    reply = await ledger_client.get(f"/v1/usage?{query}", headers=admin())
    assert reply.status == 400, await reply.text()
    error = (await reply.json())["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param and error["message"]


async def test_the_admin_reads_every_subjects_usage_anyone_else_its_own_and_its_keys(ledger_client):
    client = ledger_client

    async def subjects(headers: dict, query: str = "") -> list[str]:
        reply = await client.get(f"/v1/usage?group_by=subject&start=2024-06-01{query}", headers=headers)
        assert reply.status == 200, await reply.text()
        return [row["subject"] for row in (await reply.json())["data"]]

    assert (await client.get("/v1/usage")).status == 401
    local = {"Authorization": f"Bearer {issue_local_token(SECRET)}"}  # make run's token: every family
    for headers in (admin(), AUTH, local, bearer("ops", "hubmesh:admin")):  # an API key: the operator's
        assert await subjects(headers) == ["", "jwt:alice", "jwt:bob"]
    assert await subjects(bearer("alice", "chat")) == ["jwt:alice"]
    assert await subjects(bearer("carol", "models chat completions embeddings images responses")) == []
    assert await subjects(bearer("alice", "chat"), "&subject=jwt:alice") == ["jwt:alice"]
    reply = await client.get("/v1/usage?subject=jwt:bob", headers=bearer("alice", "chat"))
    error = (await reply.json())["error"]
    assert reply.status == 403 and "'admin' scope" in error["message"] and error["param"] == "subject"
    # a key alice issues: its use is hers to read, and the key reads its owner's too
    reply = await client.post("/v1/keys", json={"name": "ci", "scopes": ["chat"]}, headers=bearer("alice", "chat keys"))
    assert reply.status == 200, await reply.text()
    key = await reply.json()
    client.app[USAGE_LEDGER].record(UsageRecord(1_717_300_000.0, f"hubkey:{key['id']}", "", MODEL,
                                                "/v1/chat/completions", "POST", 200, 2, 1))
    mine = ["jwt:alice", f"hubkey:{key['id']}"]
    assert sorted(await subjects(bearer("alice", "chat"))) == sorted(mine)
    assert sorted(await subjects({"Authorization": f"Bearer {key['key']}"})) == sorted(mine)
    assert await subjects(bearer("bob", "chat")) == ["jwt:bob"]


async def test_an_unreachable_database_is_503_and_the_records_wait(stack):
    from local.processes import free_port

    client = await stack(f"postgresql://u:pw@127.0.0.1:{free_port()}/x")
    assert (await client.post("/v1/chat/completions", json=chat(), headers=AUTH)).status == 200
    reply = await client.get("/v1/usage", headers=admin())
    assert reply.status == 503 and reply.headers["Retry-After"]
    error = (await reply.json())["error"]
    assert error["code"] == "store_unavailable" and "pw" not in error["message"]
    assert client.app[USAGE_LEDGER].pending == 1  # the chat, kept for later (reading the ledger is not billed)


# -- Prometheus ------------------------------------------------------------------------------------


def sample(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_the_subject_label_set_is_bounded():
    metrics = SubjectMetrics(limit=2)
    assert [metrics.label(s) for s in ("jwt:a", "jwt:b", "jwt:c", "jwt:a", "jwt:d", "jwt:b")] == [
        "jwt:a", "jwt:b", OTHER, "jwt:a", OTHER, "jwt:b"]
    assert SubjectMetrics(limit=0).label("jwt:a") == OTHER


async def test_per_subject_counters_with_bounded_labels(stack, tmp_path):
    client = await stack(f"sqlite:///{tmp_path / 'hubmesh.db'}", usage_metric_subjects=2)
    run = uuid.uuid4().hex[:8]
    subjects = [f"{run}-{i}" for i in range(4)]
    other_before = sample("hubmesh_subject_requests_total", subject=OTHER)
    other_prompt_before = sample("hubmesh_subject_tokens_total", subject=OTHER, kind="prompt")
    for subject in subjects:
        assert (await client.post("/v1/chat/completions", json=chat(), headers=bearer(subject))).status == 200
    assert (await client.get("/v1/models")).status == 401  # no subject: not a per-subject count
    first, second, third, fourth = (f"jwt:{s}" for s in subjects)
    assert sample("hubmesh_subject_requests_total", subject=first) == 1
    assert sample("hubmesh_subject_requests_total", subject=second) == 1
    assert sample("hubmesh_subject_requests_total", subject=third) == 0
    assert sample("hubmesh_subject_requests_total", subject=fourth) == 0
    assert sample("hubmesh_subject_requests_total", subject=OTHER) == other_before + 2
    assert sample("hubmesh_subject_tokens_total", subject=OTHER, kind="prompt") == other_prompt_before + 14
    assert [sample("hubmesh_subject_tokens_total", subject=first, kind=kind)
            for kind in ("prompt", "completion", "cached")] == [7, 3, 4]
    exposition = await (await client.get("/metrics")).text()
    assert f'hubmesh_subject_tokens_total{{kind="cached",subject="{first}"}} 4.0' in exposition
    assert "hubmesh_usage_records_dropped_total" in exposition
