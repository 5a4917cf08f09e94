"""Three simulated Tritons behind the text service (prefix routing): a tenant's requests land where its
prefix is cached; a replica killed with SIGKILL is ejected with no 5xx; it is used again after restart."""

from __future__ import annotations

import asyncio
import urllib.request

import aiohttp
import pytest

from local.prometheus import metric_sum
from local.stack import MODALITIES, ROOT, LocalStack, StackConfig
from tests.e2e.conftest import wait_for

pytestmark = pytest.mark.e2e
MODEL = "hubmesh/sim-llama-3-8b"
KEY = "routing-key"
REPLICAS = 3
TENANTS = 6


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    config = StackConfig.with_free_ports(
        api_key=KEY, run_dir=tmp_path_factory.mktemp("routing"), replicas={"text": REPLICAS}, models={"text": ("sim",)},
    )
    config.extra_env.update({
        "HUBMESH_TEXT_CATALOG": str(ROOT / "services" / "text" / "catalog.sim.toml"),
        "HUBMESH_TEXT_ROUTING": "prefix",
        "HUBMESH_TEXT_TRITON_PROBE_INTERVAL_S": "0.5",
    })
    stack = LocalStack(config, modalities=tuple(m for m in MODALITIES if m.name == "text"))
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


def system_prompt(tenant: int) -> str:
    return f"You are the assistant of tenant {tenant}. " * 200  # ~2,000 simulated tokens


def body(tenant: int, question: int, max_tokens: int = 8) -> dict:
    return {"model": MODEL, "max_tokens": max_tokens, "temperature": 0,
            "messages": [{"role": "system", "content": system_prompt(tenant)},
                         {"role": "user", "content": f"Question {question}?"}]}


def service_metric(stack: LocalStack, name: str, **labels: str) -> float:
    return metric_sum(f"http://127.0.0.1:{stack.config.ports['text']['metrics']}/metrics", name, **labels)


def replica_address(stack: LocalStack, index: int) -> str:
    return f"127.0.0.1:{stack.config.triton_ports('text')[index]['triton_grpc']}"


def picks(stack: LocalStack, index: int) -> float:
    return service_metric(stack, "hubmesh_route_decisions_total", replica=replica_address(stack, index))


async def chat(http: aiohttp.ClientSession, stack: LocalStack, payload: dict) -> tuple[int, dict]:
    async with http.post(f"{stack.config.base_url}/chat/completions", json=payload,
                         headers={"Authorization": f"Bearer {KEY}"}) as response:
        return response.status, await response.json()


def run(coro):
    return asyncio.run(coro)


def test_a_tenants_requests_land_where_its_prefix_is_cached(stack):
    async def scenario():
        async with aiohttp.ClientSession() as http:
            first = [await chat(http, stack, body(t, 0)) for t in range(TENANTS)]
            later = [await chat(http, stack, body(t, q)) for q in (1, 2) for t in range(TENANTS)]
            return first, later

    first, later = run(scenario())
    assert all(status == 200 for status, _ in first + later)
    for _, reply in first:
        assert reply["usage"]["prompt_tokens_details"]["cached_tokens"] < 0.1 * reply["usage"]["prompt_tokens"]
    for _, reply in later:  # the whole system prompt came from the cache: the replica that holds it
        usage = reply["usage"]
        assert usage["prompt_tokens_details"]["cached_tokens"] >= 0.9 * usage["prompt_tokens"], usage
    assert service_metric(stack, "hubmesh_route_decisions_total", reason="prefix") >= 2 * TENANTS


def test_a_killed_replica_is_ejected_and_used_again_after_restart(stack):
    address = replica_address(stack, 0)
    stack.crash_triton("text", 0)

    async def load(tenants: range, concurrently: bool):
        async with aiohttp.ClientSession() as http:
            if concurrently:
                return await asyncio.gather(*(chat(http, stack, body(t, 9, max_tokens=64)) for t in tenants))
            return [await chat(http, stack, body(t, 5)) for t in tenants]

    # every tenant again, the dead replica's included: none gets an error (a call that finds the
    # replica gone before its first token is made on another one)
    replies = run(load(range(TENANTS), concurrently=False))
    assert [status for status, _ in replies] == [200] * TENANTS, replies
    wait_for(lambda: service_metric(stack, "hubmesh_replica_ready", replica=address, model="sim") == 0,
             10, "the killed replica marked not ready")
    before = picks(stack, 0)
    replies = run(load(range(100, 106), concurrently=True))
    assert [status for status, _ in replies] == [200] * 6
    assert picks(stack, 0) == before  # nothing goes to it while it is down

    stack.restart_triton("text", 0)
    wait_for(lambda: service_metric(stack, "hubmesh_replica_ready", replica=address, model="sim") == 1,
             30, "the restarted replica admitted again")
    replies = run(load(range(200, 200 + 2 * REPLICAS), concurrently=True))  # new tenants: spread by load
    assert [status for status, _ in replies] == [200] * (2 * REPLICAS)
    assert picks(stack, 0) > before


def test_the_engines_load_is_exported_the_vllm_way(stack):
    with urllib.request.urlopen(f"http://127.0.0.1:{stack.config.triton_ports('text')[1]['triton_metrics']}/metrics",
                                timeout=5) as response:
        text = response.read().decode()
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc"):
        assert f'{name}{{model="sim"' in text, name
