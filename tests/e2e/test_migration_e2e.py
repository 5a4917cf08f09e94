"""A Triton replica dies mid-stream and the client's stream goes on, token for token (real servers).

1. Two SmolLM2 Tritons: a stream is cut by SIGKILL to the replica serving it, halfway; the text the
   client assembles equals that of the same request run without a kill, byte for byte, and so does
   usage — greedy, seeded at temperature 1, a tool call and a json_schema answer.
2. Chaos on the engine simulator: three replicas, 64 concurrent streams, one replica SIGKILLed and
   restarted every few seconds: no client-visible error, every text as expected, every kill migrated.
3. One replica only: a kill mid-stream still ends the stream with an error event and [DONE].
Figures go to build/migration.json.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time

import aiohttp
import pytest

from bench.routing import reload_sim
from local.stack import MODALITIES, ROOT, LocalStack, StackConfig, prometheus_sum
from tests.e2e.conftest import wait_for

pytestmark = pytest.mark.e2e
SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"
SIM = "hubmesh/sim-llama-3-8b"
KEY = "migration-key"
NO_END = {"0": -100, "2": -100}  # SmolLM2's end tokens: the stream runs to max_tokens
REPORT = ROOT / "build" / "migration.json"
TEXT_ONLY = tuple(m for m in MODALITIES if m.name == "text")


def record(name: str, figures: dict) -> None:
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    report = json.loads(REPORT.read_text()) if REPORT.exists() else {}
    report[name] = figures
    REPORT.write_text(json.dumps(report, indent=2))


def text_stack(tmp_path_factory, name: str, replicas: int, sim: bool) -> LocalStack:
    config = StackConfig.with_free_ports(
        api_key=KEY, run_dir=tmp_path_factory.mktemp(name), replicas={"text": replicas},
        **({"models": {"text": ("sim",)}} if sim else {}),
    )
    config.extra_env["HUBMESH_TEXT_TRITON_PROBE_INTERVAL_S"] = "0.5"
    if sim:
        config.extra_env["HUBMESH_TEXT_CATALOG"] = str(ROOT / "services" / "text" / "catalog.sim.toml")
    stack = LocalStack(config, modalities=TEXT_ONLY)
    stack.start()
    return stack


def service_metric(stack: LocalStack, name: str, **labels: str) -> float:
    return prometheus_sum(f"http://127.0.0.1:{stack.config.ports['text']['metrics']}/metrics", name, **labels)


def migration_ms(stack: LocalStack) -> list[float]:
    """From losing a replica to the next one's first token, per migration (the access log says)."""
    values = []
    for line in (stack.logs / "text.log").read_text().splitlines():
        if line.startswith("{") and '"migration_ms"' in line:
            values += json.loads(line)["migration_ms"]
    return values


def percentiles(values: list[float]) -> dict:
    if not values:
        return {}
    values = sorted(values)
    return {"p50_ms": values[len(values) // 2], "p99_ms": values[min(len(values) - 1, int(len(values) * 0.99))]}


def serving_replica(stack: LocalStack) -> int:
    """The replica the one stream in flight runs on."""
    for index, ports in enumerate(stack.config.triton_ports("text")):
        if service_metric(stack, "hubmesh_replica_in_flight", replica=f"127.0.0.1:{ports['triton_grpc']}") > 0:
            return index
    raise AssertionError("no replica has the stream")


async def sse(http: aiohttp.ClientSession, stack: LocalStack, path: str, body: dict, on_event=None) -> list[dict]:
    """The data events of one stream (parsed; [DONE] last as the string), `on_event(count)` after each."""
    events: list = []
    async with http.post(f"{stack.config.base_url}{path}", json={**body, "stream": True},
                         headers={"Authorization": f"Bearer {KEY}"}) as response:
        assert response.status == 200, await response.text()
        async for line in response.content:
            line = line.decode().strip()
            if not line.startswith("data: "):
                continue
            events.append("[DONE]" if line == "data: [DONE]" else json.loads(line[6:]))
            if on_event is not None:
                await on_event(len(events))
    return events


def assembled(events: list) -> dict:
    """What a client makes of a chat stream: content, tool calls, finish reasons, usage, errors."""
    content, calls, finish, usage, errors = "", {}, None, None, []
    for event in events:
        if event == "[DONE]":
            continue
        if "error" in event:
            errors.append(event["error"])
            continue
        usage = event.get("usage") or usage
        for choice in event["choices"]:
            delta = choice.get("delta", {})
            content += delta.get("content") or ""
            for call in delta.get("tool_calls") or []:
                slot = calls.setdefault(call["index"], {"name": "", "arguments": ""})
                function = call.get("function", {})
                slot["name"] += function.get("name") or ""
                slot["arguments"] += function.get("arguments") or ""
            finish = choice.get("finish_reason") or finish
    return {"content": content, "tool_calls": calls, "finish_reason": finish, "usage": usage, "errors": errors}


# -- 1. exact, on the CPU model ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def smollm2_pair(tmp_path_factory):
    stack = text_stack(tmp_path_factory, "migration-smollm2", 2, sim=False)
    try:
        yield stack
    finally:
        stack.stop()


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather of a city, with a long explanation of why it is asked",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "reason": {"type": "string"}},
                   "required": ["city", "reason"]},
}}
STORY = {"type": "json_schema", "json_schema": {"name": "story", "strict": True, "schema": {
    "type": "object", "properties": {"title": {"type": "string"}, "story": {"type": "string"}},
    "required": ["title", "story"], "additionalProperties": False,
}}}
CASES = {
    "greedy": {"temperature": 0, "max_tokens": 200, "logit_bias": NO_END},
    "seeded": {"temperature": 1.0, "seed": 1234, "max_tokens": 200, "logit_bias": NO_END},
    "tool_call": {"temperature": 0, "max_tokens": 120, "tools": [WEATHER], "tool_choice": "required"},
    "json_schema": {"temperature": 0, "max_tokens": 160, "response_format": STORY},
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_stream_cut_by_a_kill_goes_on_byte_for_byte(smollm2_pair, case):
    stack = smollm2_pair
    body = {"model": SMOLLM2, "messages": [{"role": "user", "content": "Tell me a long story about Paris."}],
            "stream_options": {"include_usage": True}, **CASES[case]}
    moved_before = service_metric(stack, "hubmesh_text_migrations_total", outcome="moved")
    earlier = len(migration_ms(stack))
    killed: dict = {}

    async def run():
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as http:
            reference = assembled(await sse(http, stack, "/chat/completions", body))
            half = max(4, reference["usage"]["completion_tokens"] // 2)

            async def kill_halfway(count: int) -> None:
                if count == half and not killed:
                    killed["replica"] = serving_replica(stack)
                    killed["at"] = time.monotonic()
                    stack.crash_triton("text", killed["replica"])

            moved = assembled(await sse(http, stack, "/chat/completions", body, kill_halfway))
            killed["resumed_s"] = time.monotonic() - killed["at"]
            return reference, moved

    reference, moved = asyncio.run(run())
    assert killed, "the stream ended before the kill"
    assert moved["errors"] == [] and moved == reference  # content, tool calls, finish reason, usage
    if case == "json_schema":
        assert set(json.loads(moved["content"])) == {"title", "story"}
    if case == "tool_call":
        assert moved["tool_calls"][0]["name"] == "get_weather" and json.loads(moved["tool_calls"][0]["arguments"])
    assert service_metric(stack, "hubmesh_text_migrations_total", outcome="moved") == moved_before + 1
    record(f"smollm2_{case}", {"completion_tokens": reference["usage"]["completion_tokens"],
                               "killed_after_events": max(4, reference["usage"]["completion_tokens"] // 2),
                               "rest_of_stream_s": round(killed["resumed_s"], 2),
                               "migration_added_ms": migration_ms(stack)[earlier:]})
    stack.restart_triton("text", killed["replica"])
    address = f"127.0.0.1:{stack.config.triton_ports('text')[killed['replica']]['triton_grpc']}"
    wait_for(lambda: service_metric(stack, "hubmesh_replica_ready", replica=address) == 1, 60, "replica back")


def test_the_access_log_says_the_request_moved(smollm2_pair):
    lines = [json.loads(line) for line in (smollm2_pair.logs / "text.log").read_text().splitlines()
             if line.startswith("{") and '"hubmesh.access"' in line]
    assert any(line.get("migrations") == 1 and line["endpoint"] == "GenerateStream" for line in lines)


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
    text, errors = "", []
    for event in events:
        if event == "[DONE]":
            continue
        if "error" in event:
            errors.append(event["error"])
            continue
        text += "".join(choice["text"] for choice in event["choices"])
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
        return texts, next(e["usage"] for e in reversed(events) if e != "[DONE]" and e.get("usage"))

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
