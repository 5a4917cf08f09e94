"""A flooding subject cannot starve another (issue 31), on the real stack: the engine simulator in a
real tritonserver, the text service admitting 2 generations with the fair share (no burst slots, a
long wait), the façade; two tenants, each a JWT of its own subject.

Tenant A holds both slots with long streams; B's request waits for a slot instead of being refused
(its share is one of the two) and is served as soon as one of A's streams ends, while A's further
requests are refused at once (429, Retry-After: A has its share). Every step waits on the state it
needs (the service's admission gauges, the streams' first events), never on time.
"""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest

from facade.auth.tokens import issue_local_token
from local.prometheus import metric_sum
from local.stack import ROOT, LocalStack, StackConfig
from tests.e2e.migration_support import TEXT_ONLY

pytestmark = pytest.mark.e2e
SIM = "hubmesh/sim-llama-3-8b"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    config = StackConfig.with_free_ports(api_key="fair-share-key", run_dir=tmp_path_factory.mktemp("fair"),
                                         models={"text": ("sim",)})
    config.extra_env["HUBMESH_TEXT_CATALOG"] = str(ROOT / "services" / "text" / "catalog.sim.toml")
    stack = LocalStack(config, modalities=TEXT_ONLY)
    try:
        stack.start_tritons(wait_s=300)
        stack.start_service("text", env={
            "HUBMESH_MAX_IN_FLIGHT": "2", "HUBMESH_ADMISSION": "fair", "HUBMESH_ADMISSION_BURST": "0",
            "HUBMESH_ADMISSION_WAIT_S": "120",
        })
        stack.start_facade()
        yield stack
    finally:
        stack.stop()


def admission(stack: LocalStack, name: str, **labels: str) -> float:
    return metric_sum(f"http://127.0.0.1:{stack.config.ports['text']['metrics']}/metrics", name, **labels)


async def until(predicate, what: str, timeout_s: float = 60.0) -> None:
    """Polls `predicate` (the stack's state) until it holds."""
    deadline = time.monotonic() + timeout_s
    while not await asyncio.to_thread(predicate):
        assert time.monotonic() < deadline, f"{what} not reached in {timeout_s} s"
        await asyncio.sleep(0.05)


def chat(max_tokens: int, stream: bool = True) -> dict:
    return {"model": SIM, "stream": stream, "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": "tell me about the mesh"}]}


async def first_content(response: aiohttp.ClientResponse) -> str:
    async for raw in response.content:
        line = raw.decode().strip()
        if line.startswith("data: ") and line != "data: [DONE]":
            event = json.loads(line[6:])
            text = "".join(c.get("delta", {}).get("content") or "" for c in event.get("choices", ()))
            if text:
                return text
    raise AssertionError("the stream ended without content")


async def test_a_flooding_subject_cannot_starve_another(stack):
    url = f"{stack.config.base_url}/chat/completions"
    a = {"Authorization": f"Bearer {issue_local_token(stack.config.jwt_secret, subject='tenant-a')}"}
    b = {"Authorization": f"Bearer {issue_local_token(stack.config.jwt_secret, subject='tenant-b')}"}
    refused_before = admission(stack, "hubmesh_admission_refused_total", reason="over_share")
    waited_before = admission(stack, "hubmesh_admission_admitted_total", how="after_wait")
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as http:
        # A alone gets the whole service (work-conserving): both slots, long generations
        held = [await http.post(url, json=chat(6000), headers=a) for _ in range(2)]
        for response in held:
            assert response.status == 200
            assert await first_content(response)
        await until(lambda: admission(stack, "hubmesh_requests_in_flight", endpoint="GenerateStream") == 2,
                    "A holding both slots")

        # B asks: below its share (one of two), it waits for a slot rather than being refused
        served = asyncio.create_task(http.post(url, json=chat(8, stream=False), headers=b))
        await until(lambda: admission(stack, "hubmesh_admission_waiting") == 1, "B waiting for a slot")

        # A asks for more: it has its share, so it is refused at once
        for _ in range(3):
            async with http.post(url, json=chat(8, stream=False), headers=a) as refused:
                assert refused.status == 429 and refused.headers["Retry-After"]
                error = (await refused.json())["error"]
                assert error["code"] == "rate_limit_exceeded" and "fair share" in error["message"]
        assert not served.done()

        held[0].close()  # one of A's streams ends: its slot goes to B, not to A's retries
        response = await asyncio.wait_for(served, 120)
        async with response:
            assert response.status == 200
            body = await response.json()
        assert body["choices"][0]["message"]["content"] and body["usage"]["completion_tokens"] == 8
        held[1].close()

    assert admission(stack, "hubmesh_admission_refused_total", reason="over_share") - refused_before == 3
    assert admission(stack, "hubmesh_admission_admitted_total", how="after_wait") - waited_before == 1
    await until(lambda: admission(stack, "hubmesh_admission_active_subjects") == 0, "every slot given back")
