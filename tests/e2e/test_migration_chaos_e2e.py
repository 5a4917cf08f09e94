"""Migration under chaos, on the engine simulator (real tritonserver, real services):
three replicas, 64 concurrent streams, one replica SIGKILLed and restarted every few seconds: no
client-visible error, every text as expected, every kill migrated; n choices each continue once; and
with one replica only, a kill mid-stream still ends the stream with an error event and [DONE].
Figures: build/migration.json.
"""

from __future__ import annotations

import asyncio
import threading
import time

import aiohttp
import pytest

from bench.routing import reload_sim
from local.stack import LocalStack
from tests.e2e.migration_support import (
    completion_outcome, migration_ms, percentiles, record, service_metric, serving_replica, sse, text_stack,
)

pytestmark = pytest.mark.e2e
SIM = "hubmesh/sim-llama-3-8b"


# -- 2. chaos on the simulator -------------------------------------------------------------------------

STREAMS = 64
KILLS = 4
KILL_EVERY_S = 4  # between a replica's restart and the next kill (a restart takes a few seconds)
SLOW = {"time_scale": 10}  # 64 streams at a simulated H200's pace would need more than two cores


@pytest.fixture(scope="module")
def sim_trio(tmp_path_factory):
    stack = text_stack(tmp_path_factory, "migration-sim", 3, sim=True)
    try:
        reload_sim(stack, SLOW)
        yield stack
    finally:
        stack.stop()


def completion(i: int) -> dict:
    return {"model": SIM, "prompt": f"Stream {i}: " + "tell me everything " * (20 + i % 7), "max_tokens": 40 + i % 30,
            "temperature": 0, "seed": i}


def completion_text(events: list) -> tuple[str, list]:
    text, _, errors, _ = completion_outcome(events)
    return text, errors


def test_every_choice_of_n_goes_on_once(sim_trio):
    """n = 3 sampled choices, all cut at once: each continues from its own tokens, none twice."""
    stack = sim_trio
    body = {**completion(5), "n": 3, "temperature": 1.0, "max_tokens": 60, "stream_options": {"include_usage": True}}

    def by_choice(events: list) -> tuple[dict, dict]:
        texts: dict[int, str] = {}
        for event in events:
            if event != "[DONE]" and "error" not in event:
                for choice in event["choices"]:
                    texts[choice["index"]] = texts.get(choice["index"], "") + choice["text"]
        usage = next(e["usage"] for e in reversed(events) if e != "[DONE]" and e.get("usage"))
        # tokens, not cache hits: the second run may find the first one's prefix cached, or not, as the
        # picker places it (it reports what the replica it started on had)
        return texts, {k: v for k, v in usage.items() if k != "prompt_tokens_details"}

    async def run():
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as http:
            reference = await sse(http, stack, "/completions", body)
            killed = []

            async def kill(count: int) -> None:
                if count == 30:
                    killed.append(serving_replica(stack))
                    stack.crash_triton("text", killed[0])

            return reference, await sse(http, stack, "/completions", body, kill), killed

    reference, moved, killed = asyncio.run(run())
    assert killed and by_choice(moved) == by_choice(reference)
    assert not [e for e in moved if e != "[DONE]" and "error" in e]
    stack.restart_triton("text", killed[0])
    reload_sim_one(stack, killed[0])


def test_chaos_under_load_no_client_sees_an_error(sim_trio):
    stack = sim_trio
    prompts = list(range(STREAMS))

    async def references():
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as http:
            texts = await asyncio.gather(*(sse(http, stack, "/completions", completion(i)) for i in prompts))
            return [completion_text(events)[0] for events in texts]

    expected = asyncio.run(references())
    moved_before = service_metric(stack, "hubmesh_text_migrations_total", outcome="moved")
    outcome = {"streams": 0, "errors": [], "wrong": 0}
    stop = threading.Event()

    async def load():
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as http:
            async def worker(i: int):
                while not stop.is_set():
                    text, errors = completion_text(await sse(http, stack, "/completions", completion(i)))
                    outcome["streams"] += 1
                    outcome["errors"] += errors
                    outcome["wrong"] += text != expected[i]

            await asyncio.gather(*(worker(i) for i in prompts))

    # the load runs in a thread; kills and restarts from this one (children die with the thread that
    # started them)
    loader = threading.Thread(target=lambda: asyncio.run(load()))
    loader.start()
    kills, moved_per_kill = 0, []
    started = time.monotonic()
    try:
        for kill in range(KILLS):
            time.sleep(KILL_EVERY_S)
            replica = kill % 3
            before = service_metric(stack, "hubmesh_text_migrations_total", outcome="moved")
            stack.crash_triton("text", replica)
            kills += 1
            stack.restart_triton("text", replica)
            reload_sim_one(stack, replica)
            moved_per_kill.append(service_metric(stack, "hubmesh_text_migrations_total", outcome="moved") - before)
    finally:
        stop.set()
        loader.join(timeout=300)
    assert not loader.is_alive()
    moved = service_metric(stack, "hubmesh_text_migrations_total", outcome="moved") - moved_before
    failed = service_metric(stack, "hubmesh_text_migrations_total", outcome="failed")
    record("sim_chaos", {"replicas": 3, "concurrent_streams": STREAMS, "seconds": round(time.monotonic() - started, 1),
                         "streams_completed": outcome["streams"], "kills": kills, "migrations": moved,
                         "migrations_per_kill": moved_per_kill, "failed_migrations": failed,
                         "client_errors": len(outcome["errors"]), "wrong_texts": outcome["wrong"],
                         "migration_added_latency": percentiles(migration_ms(stack))})
    assert outcome["errors"] == [] and outcome["wrong"] == 0, outcome
    assert kills == KILLS and all(m > 0 for m in moved_per_kill), moved_per_kill  # every kill cut streams, all moved
    assert failed == 0


def reload_sim_one(stack: LocalStack, replica: int) -> None:
    """A restarted replica loads config.pbtxt's defaults: give it the test's pace again."""
    only = LocalStack.__new__(LocalStack)
    only.replicas = {"text": [stack.replicas["text"][replica]]}
    reload_sim(only, SLOW)


# -- 3. with one replica, the error stands ----------------------------------------------------------------

@pytest.fixture(scope="module")
def sim_single(tmp_path_factory):
    stack = text_stack(tmp_path_factory, "migration-single", 1, sim=True)
    try:
        reload_sim(stack, SLOW)
        yield stack
    finally:
        stack.stop()


def test_with_one_replica_a_kill_ends_the_stream_with_an_error_event(sim_single):
    stack = sim_single

    async def run():
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
            async def kill(count: int) -> None:
                if count == 5:
                    stack.crash_triton("text", 0)

            return await sse(http, stack, "/completions", {**completion(1), "max_tokens": 200}, kill)

    events = asyncio.run(run())
    text, errors = completion_text(events)
    assert events[-1] == "[DONE]" and len(errors) == 1 and errors[0]["code"] == "service_unavailable", errors
    assert text
    stack.restart_triton("text", 0)
