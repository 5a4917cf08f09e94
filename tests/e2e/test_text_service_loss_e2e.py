"""A text service lost mid-stream costs no stream: two text services in front of two simulated
Tritons (real tritonserver), a dozen seeded streams through the façade, and one text service
SIGKILLed — or frozen with SIGSTOP, which only the façade's keepalive notices — while they run. Every
stream ends with [DONE], no error event, and the very text and usage an undisturbed run gives: the
façade resumes each one through the other service from what it had relayed, and the model continues
it token-exactly (facade/resumable.py, services/text/migration.py)."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import aiohttp
import grpc
import pytest

from bench.routing import reload_sim
from local.prometheus import metric_sum
from local.stack import ROOT, LocalStack, StackConfig
from tests.e2e.conftest import wait_for
from tests.e2e.migration_support import KEY, TEXT_ONLY, completion_outcome, record, sse

pytestmark = pytest.mark.e2e
SIM = "hubmesh/sim-llama-3-8b"
STREAMS = 12
SERVICES = 2
SLOW = {"time_scale": 10}  # each stream lasts seconds: the fault lands mid-stream


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    config = StackConfig.with_free_ports(
        api_key=KEY, run_dir=tmp_path_factory.mktemp("service-loss"), replicas={"text": 2},
        models={"text": ("sim",)}, text_services=SERVICES, routing_bus="private",
    )
    config.extra_env.update({
        "HUBMESH_TEXT_CATALOG": str(ROOT / "services" / "text" / "catalog.sim.toml"),
        "HUBMESH_TEXT_TRITON_PROBE_INTERVAL_S": "0.5",
    })
    stack = LocalStack(config, modalities=TEXT_ONLY)
    stack.start()
    try:
        reload_sim(stack, SLOW)
        yield stack
    finally:
        stack.stop()


def body(i: int) -> dict:
    """Sampled (not greedy), seeded: a continuation that were not token-exact would show."""
    return {"model": SIM, "prompt": f"Stream {i}: " + "tell me about the sea " * (10 + i % 5),
            "max_tokens": 50 + i % 20, "temperature": 0.8, "seed": 100 + i,
            "stream_options": {"include_usage": True}}


def resumes(stack: LocalStack, outcome_label: str) -> float:
    return metric_sum(f"http://127.0.0.1:{stack.config.http_port}/metrics",
                          "hubmesh_text_stream_resumes_total", outcome=outcome_label)


def serving(stack: LocalStack, index: int) -> bool:
    try:
        return stack.services[stack.text_instance(index)].poll() is None and stack.service_ready(
            "text", stack.config.text_ports()[index][0])
    except grpc.RpcError:
        return False


def busiest_service(stack: LocalStack) -> int:
    """The text service with the most generations in flight."""
    in_flight = [metric_sum(f"http://127.0.0.1:{metrics}/metrics", "hubmesh_requests_in_flight")
                 for _, metrics in stack.config.text_ports()]
    return max(range(SERVICES), key=lambda i: in_flight[i])


async def streams_with_fault(stack: LocalStack, fault) -> tuple[list, list, float]:
    """The reference texts (undisturbed), then the same streams with `fault()` applied once every
    stream has shown a few tokens; (reference, disturbed, seconds from the fault to the last end)."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as http:
        reference = await asyncio.gather(*(sse(http, stack, "/completions", body(i)) for i in range(STREAMS)))
        shown = [0] * STREAMS
        all_going = asyncio.Event()

        def counter(i: int):
            async def on_event(count: int) -> None:
                shown[i] = count
                if min(shown) >= 3:
                    all_going.set()
            return on_event

        runs = [asyncio.ensure_future(sse(http, stack, "/completions", body(i), counter(i))) for i in range(STREAMS)]
        await asyncio.wait_for(all_going.wait(), 120)
        fault()
        faulted = time.monotonic()
        disturbed = await asyncio.gather(*runs)
        return reference, disturbed, time.monotonic() - faulted


def assert_same(reference: list, disturbed: list) -> None:
    for i, (ref, got) in enumerate(zip(reference, disturbed, strict=True)):
        ref_text, ref_usage, ref_errors, ref_done = completion_outcome(ref)
        text, usage, errors, done = completion_outcome(got)
        assert ref_done and not ref_errors, (i, ref_errors)
        assert done and not errors, (i, errors)
        assert text == ref_text, (i, text, ref_text)
        assert usage["completion_tokens"] == ref_usage["completion_tokens"], (i, usage, ref_usage)
        assert usage["prompt_tokens"] == ref_usage["prompt_tokens"], (i, usage, ref_usage)


def test_a_frozen_text_service_loses_no_stream(stack):
    """SIGSTOP: the process keeps its sockets open and answers nothing; the façade's keepalive
    (5 s, unanswered for 5 s: services/common/grpc_options.py) gives the connection up."""
    before = resumes(stack, "resumed")
    frozen: list[int] = []

    def freeze() -> None:
        frozen.append(busiest_service(stack))
        os.killpg(stack.services[stack.text_instance(frozen[0])].pid, signal.SIGSTOP)

    try:
        reference, disturbed, seconds = asyncio.run(streams_with_fault(stack, freeze))
    finally:
        for index in frozen:
            os.killpg(stack.services[stack.text_instance(index)].pid, signal.SIGCONT)
    assert_same(reference, disturbed)
    resumed = resumes(stack, "resumed") - before
    assert resumed >= 1, "no stream was on the frozen service"
    assert resumes(stack, "failed") == 0
    record("text_service_frozen", {"streams": STREAMS, "resumed": resumed, "last_end_after_freeze_s": round(seconds, 2)})
    wait_for(lambda: serving(stack, frozen[0]), 60, "the frozen text service serving again once thawed")


def test_a_killed_text_service_loses_no_stream(stack):
    before = resumes(stack, "resumed")
    killed: list[int] = []

    def kill() -> None:
        killed.append(busiest_service(stack))
        os.killpg(stack.services[stack.text_instance(killed[0])].pid, signal.SIGKILL)

    reference, disturbed, seconds = asyncio.run(streams_with_fault(stack, kill))
    victim = stack.text_instance(killed[0])
    stack.services[victim].wait(timeout=10)
    assert_same(reference, disturbed)
    resumed = resumes(stack, "resumed") - before
    assert resumed >= 1, "no stream was on the killed service"
    assert resumes(stack, "failed") == 0
    record("text_service_killed", {"streams": STREAMS, "resumed": resumed, "last_end_after_kill_s": round(seconds, 2)})
    stack.spawn_text_service(killed[0])
    wait_for(lambda: serving(stack, killed[0]), 60, f"{victim} serving again")
