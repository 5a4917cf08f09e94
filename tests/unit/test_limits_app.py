"""Limits through the façade and a real text service (the model scripted): a budget that runs out
mid-stream ends the stream with `length` and the usage it consumed; then 429 insufficient_quota;
fail_closed without Redis is a 503, never a 500."""

from __future__ import annotations

import asyncio
import json
import time

import jwt
import pytest

from facade.app import create_app
from facade.limits.middleware import METERING
from facade.limits.policy import Limits, token_specs
from facade.settings import Settings
from local import processes
from tests.fakes import FakeTextBackend, chunk
from tests.unit.text_service_fixture import MODEL, running_text_service

SECRET = "s3cret-for-limit-tests-0123456789abcdef"


def bearer(**claims) -> dict:
    now = int(time.time())
    body = {"sub": "carol", "scope": "chat models", "iat": now, "exp": now + 600, **claims}
    return {"Authorization": "Bearer " + jwt.encode(body, SECRET, algorithm="HS256")}


@pytest.fixture
async def client(aiohttp_client, request):
    # a model that would write 40 one-token chunks for a 10-token prompt
    steps = [chunk([f" w{i}"], [None], n_in=10, n_out=[1]) for i in range(39)] + [chunk([" end"], ["stop"], n_in=10)]
    async with running_text_service(FakeTextBackend(steps)) as text:
        settings = Settings(jwt_secret=SECRET, text_target=text, embeddings_target=text, images_target=text,
                            database_url="sqlite:///:memory:", **getattr(request, "param", {}))
        yield await aiohttp_client(create_app(settings))


def events(raw: str) -> list[dict]:
    return [json.loads(line[6:]) for line in raw.splitlines() if line.startswith("data: {")]


async def test_a_budget_that_runs_out_mid_stream_ends_it_with_length(client):
    headers = bearer(tokens_per_day=25)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100, "stream": True,
            "stream_options": {"include_usage": True}}
    response = await client.post("/v1/chat/completions", json=body, headers=headers)
    assert response.status == 200
    chunks = events(await response.text())
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    reasons = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert reasons == ["length"] and text == "".join(f" w{i}" for i in range(15))
    assert chunks[-1]["usage"] == {"prompt_tokens": 10, "completion_tokens": 15, "total_tokens": 25}
    refused = await client.post("/v1/chat/completions", json=body, headers=headers)
    error = (await refused.json())["error"]
    assert refused.status == 429 and (error["type"], error["code"]) == ("insufficient_quota", "insufficient_quota")
    assert int(refused.headers["Retry-After"]) >= 1


async def test_a_unary_request_is_cut_at_its_budget_too(client):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100}
    response = await client.post("/v1/chat/completions", json=body, headers=bearer(tokens_per_month=20))
    result = await response.json()
    assert response.status == 200, result
    assert result["choices"][0]["finish_reason"] == "length"
    assert result["choices"][0]["message"]["content"] == "".join(f" w{i}" for i in range(10))
    assert result["usage"] == {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20}


async def test_a_prompt_larger_than_what_is_left_is_429(client):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100}
    response = await client.post("/v1/chat/completions", json=body, headers=bearer(tokens_per_day=8))
    error = (await response.json())["error"]
    assert response.status == 429 and error["code"] == "insufficient_quota"


@pytest.mark.parametrize("client", [{"redis_url": f"redis://127.0.0.1:{processes.free_port()}/0",
                                      "limits_fail_mode": "fail_closed", "redis_timeout_s": 0.2}], indirect=True)
async def test_fail_closed_without_redis_is_503_and_unlimited_requests_are_served(client):
    limited = await client.get("/v1/models", headers=bearer(rpm=10))
    error = (await limited.json())["error"]
    assert limited.status == 503 and error["code"] == "limits_unavailable" and limited.headers["Retry-After"]
    assert (await client.get("/v1/models", headers=bearer())).status == 200  # no counter, no Redis needed


@pytest.fixture
async def hanging_client(aiohttp_client):
    # a model that writes 5 one-token chunks for a 10-token prompt, then hangs
    steps = [chunk([f" w{i}"], [None], n_in=10, n_out=[1]) for i in range(40)]
    async with running_text_service(FakeTextBackend(steps, hang_after=5)) as text:
        settings = Settings(jwt_secret=SECRET, text_target=text, embeddings_target=text, images_target=text,
                            database_url="sqlite:///:memory:")
        yield await aiohttp_client(create_app(settings))


async def test_a_stream_the_client_cuts_is_charged_what_it_showed(hanging_client):
    headers = bearer(sub="dave", tokens_per_day=1000)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 30, "stream": True}
    async with hanging_client.post("/v1/chat/completions", json=body, headers=headers) as response:
        seen = 0
        async for line in response.content:
            seen += line.startswith(b"data: {") and b'"content":" w' in line
            if seen == 5:
                break  # ...and the client goes away
    limiter = hanging_client.app[METERING].limiter
    specs = token_specs("jwt:dave", Limits(tokens_per_day=1000))

    async def charged() -> bool:
        granted, _, _ = await limiter.local.reserve(specs, 1000)
        await limiter.local.adjust(specs, granted)  # only looking
        return granted == 1000 - (10 + 5)

    deadline = time.monotonic() + 10
    while not await charged():  # the façade notices the client is gone, then settles
        assert time.monotonic() < deadline, "the cut stream was not charged"
        await asyncio.sleep(0.02)
