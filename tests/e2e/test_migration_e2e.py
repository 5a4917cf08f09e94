"""A Triton replica dies mid-stream and the client's stream goes on, token for token (real servers):
two SmolLM2 Tritons, a stream cut by SIGKILL to the replica serving it, halfway; the text the client
assembles equals that of the same request run without a kill, byte for byte, and so does usage —
greedy, seeded at temperature 1, a tool call and a json_schema answer. Figures: build/migration.json.
(Chaos under load on the engine simulator: test_migration_chaos_e2e.py.)
"""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest

from tests.e2e.conftest import wait_for
from tests.e2e.migration_support import (
    assembled, migration_ms, record, service_metric, serving_replica, sse, text_stack,
)

pytestmark = pytest.mark.e2e
SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"
NO_END = {"0": -100, "2": -100}  # SmolLM2's end tokens: the stream runs to max_tokens


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


