"""Three text services in front of three simulated Tritons, their prefix pickers sharing one routing
view over a private nats-server (services/text/prefix_view.py): a prefix placed through one service is
a cache hit through every other; the bus SIGKILLed costs no client an error (each service routes on
its own index) and the view is live again once the bus is back; a text service that crashes and starts
again learns the placements from the bus's stream."""

from __future__ import annotations

import asyncio

import aiohttp
import grpc
import pytest

from hubmesh.text.v1 import text_generation_pb2 as pb
from hubmesh.text.v1 import text_generation_pb2_grpc as pb_grpc
from local.prometheus import metric_sum
from local.stack import MODALITIES, ROOT, LocalStack, StackConfig
from services.common.internal_auth import SECRET_METADATA_KEY
from tests.e2e.conftest import wait_for

pytestmark = pytest.mark.e2e
MODEL = "hubmesh/sim-llama-3-8b"
KEY = "scale-out-key"
TRITONS = 3
SERVICES = 3
TENANTS = 6


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    config = StackConfig.with_free_ports(
        api_key=KEY, run_dir=tmp_path_factory.mktemp("scale-out"), replicas={"text": TRITONS},
        models={"text": ("sim",)}, text_services=SERVICES, routing_bus="private",
    )
    config.extra_env.update({
        "HUBMESH_TEXT_CATALOG": str(ROOT / "services" / "text" / "catalog.sim.toml"),
        "HUBMESH_TEXT_ROUTING": "prefix",
        "HUBMESH_TEXT_TRITON_PROBE_INTERVAL_S": "0.5",
        "HUBMESH_TEXT_ROUTING_BUS_HEARTBEAT_S": "0.25",
    })
    stack = LocalStack(config, modalities=tuple(m for m in MODALITIES if m.name == "text"))
    assert stack.bus is not None and stack.bus.how == "private"
    stack.start()
    try:
        wait_for(lambda: views_live(stack), 20, "every text service's routing view live, hearing the others")
        yield stack
    finally:
        stack.stop()
        assert stack.bus.server.proc is None


def metric(stack: LocalStack, service: int, name: str, **labels: str) -> float:
    port = stack.config.text_ports()[service][1]
    return metric_sum(f"http://127.0.0.1:{port}/metrics", name, **labels)


def views_live(stack: LocalStack) -> bool:
    return all(metric(stack, i, "hubmesh_prefix_view_live") == 1
               and metric(stack, i, "hubmesh_prefix_view_peers") >= SERVICES - 1 for i in range(SERVICES))


def views_down(stack: LocalStack) -> bool:
    return all(metric(stack, i, "hubmesh_prefix_view_live") == 0 for i in range(SERVICES))


def messages(tenant: int, question: str) -> list[pb.ChatMessage]:
    return [pb.ChatMessage(role="system", content=f"You are the assistant of tenant {tenant}. " * 200),
            pb.ChatMessage(role="user", content=f"{question}?")]


async def generate(stack: LocalStack, service: int, tenant: int, question: str) -> pb.Usage:
    """One generation on text service `service` directly (its gRPC API), its usage."""
    target = f"127.0.0.1:{stack.config.text_ports()[service][0]}"
    async with grpc.aio.insecure_channel(target) as channel:
        request = pb.GenerateRequest(model=MODEL, chat=pb.ChatInput(messages=messages(tenant, question)),
                                     sampling=pb.SamplingParameters(max_tokens=4, temperature=0.0))
        usage = None
        async for message in pb_grpc.TextGenerationStub(channel).GenerateStream(
                request, metadata=((SECRET_METADATA_KEY, stack.config.internal_secret),), timeout=60):
            if message.HasField("usage"):
                usage = message.usage
        return usage


async def chat(http: aiohttp.ClientSession, stack: LocalStack, tenant: int, question: str) -> tuple[int, dict]:
    payload = {"model": MODEL, "max_tokens": 8, "temperature": 0,
               "messages": [{"role": "system", "content": f"You are the assistant of tenant {tenant}. " * 200},
                            {"role": "user", "content": f"{question}?"}]}
    async with http.post(f"{stack.config.base_url}/chat/completions", json=payload,
                         headers={"Authorization": f"Bearer {KEY}"}) as response:
        return response.status, await response.json()


def hit(usage: pb.Usage) -> float:
    return usage.cached_tokens / usage.prompt_tokens


def test_a_prefix_placed_through_one_service_is_a_hit_through_every_other(stack):
    async def scenario():
        first = [await generate(stack, t % SERVICES, t, "first") for t in range(TENANTS)]
        later = [await generate(stack, (t + k) % SERVICES, t, f"question {k}")
                 for k in (1, 2) for t in range(TENANTS)]
        return first, later

    applied = [metric(stack, i, "hubmesh_prefix_view_events_total", direction="in", kind="placed")
               for i in range(SERVICES)]
    first, later = asyncio.run(scenario())
    assert all(hit(u) < 0.1 for u in first)
    hits = [hit(u) for u in later]  # every later request went through a service that had not placed it
    assert min(hits) >= 0.9, hits
    for i in range(SERVICES):  # each applied the others' placements
        assert metric(stack, i, "hubmesh_prefix_view_events_total", direction="in", kind="placed") > applied[i]
    assert sum(metric(stack, i, "hubmesh_route_decisions_total", reason="prefix") for i in range(SERVICES)) \
        >= 2 * TENANTS


def test_the_facade_spreads_over_the_services_and_keeps_the_hits(stack):
    async def scenario():
        async with aiohttp.ClientSession() as http:
            warm = await asyncio.gather(*(chat(http, stack, 50 + t, "warm") for t in range(TENANTS)))
            again = await asyncio.gather(*(chat(http, stack, 50 + t, f"again {k}")
                                           for k in range(3) for t in range(TENANTS)))
            return warm, again

    before = [metric(stack, i, "hubmesh_route_decisions_total") for i in range(SERVICES)]
    warm, again = asyncio.run(scenario())
    assert [s for s, _ in warm + again] == [200] * (len(warm) + len(again))
    cached = [r["usage"]["prompt_tokens_details"]["cached_tokens"] / r["usage"]["prompt_tokens"] for _, r in again]
    assert sum(cached) / len(cached) >= 0.9, cached
    served = [metric(stack, i, "hubmesh_route_decisions_total") - before[i] for i in range(SERVICES)]
    assert sum(1 for s in served if s > 0) >= 2, served  # the façade's links reach several services


def test_a_lost_bus_costs_no_client_an_error_and_the_view_comes_back(stack):
    server = stack.bus.server
    server.kill()
    wait_for(lambda: views_down(stack), 15, "every service notices the lost bus")

    async def through_facade(tenants, question):
        async with aiohttp.ClientSession() as http:
            return await asyncio.gather(*(chat(http, stack, t, question) for t in tenants))

    replies = asyncio.run(through_facade(range(TENANTS), "while the bus is down"))
    assert [s for s, _ in replies] == [200] * TENANTS, replies
    # each service still routes on its own index: a tenant placed through it before still hits there
    usage = asyncio.run(generate(stack, 0, 0, "bus down, same service"))
    assert hit(usage) >= 0.9

    server.start()  # the same port, empty: the services reconnect by themselves
    wait_for(lambda: views_live(stack), 20, "every service's view live again")
    usage = asyncio.run(generate(stack, 0, 300, "after the bus came back"))
    assert hit(usage) < 0.1
    wait_for(lambda: all(metric(stack, i, "hubmesh_prefix_view_peers") >= SERVICES - 1 for i in range(SERVICES)),
             10, "peers heard again")
    later = [asyncio.run(generate(stack, s, 300, f"through service {s}")) for s in (1, 2)]
    assert all(hit(u) >= 0.9 for u in later), later


def test_a_restarted_service_replays_the_placements_and_hits_at_once(stack):
    import os
    import signal

    tenants = range(400, 404)
    for t in tenants:  # placed through service 0
        assert hit(asyncio.run(generate(stack, 0, t, "before the crash"))) < 0.1
    proc = stack.services["text-2"]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    listen = stack.config.text_ports()[2][0]
    restarted = stack.spawn_text_service(2)
    def serving() -> bool:
        try:
            return restarted.poll() is None and stack.service_ready("text", listen)
        except grpc.RpcError:
            return False  # not listening yet

    wait_for(serving, 60, "text-2 serving again")
    wait_for(lambda: metric(stack, 2, "hubmesh_prefix_view_live") == 1, 20, "text-2's view live")
    # everything the others placed since the bus came back, these tenants included, came from the stream
    assert metric(stack, 2, "hubmesh_prefix_view_events_total", direction="replayed", kind="placed") >= len(tenants)
    usages = [asyncio.run(generate(stack, 2, t, "after the restart")) for t in tenants]
    assert all(hit(u) >= 0.9 for u in usages), usages
    assert metric(stack, 2, "hubmesh_route_decisions_total", reason="prefix") >= len(tenants)
