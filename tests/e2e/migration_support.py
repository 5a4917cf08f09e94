"""What the migration tests share: a text-only stack on free ports, SSE streams read event by event,
the text service's metrics and access log."""

from __future__ import annotations

import json

import aiohttp

from bench.stats import percentile
from local.prometheus import metric_sum
from local.stack import MODALITIES, ROOT, LocalStack, StackConfig
from tests.e2e.figures import record as figures_record

KEY = "migration-key"
REPORT = ROOT / "build" / "migration.json"
TEXT_ONLY = tuple(m for m in MODALITIES if m.name == "text")


def record(name: str, figures: dict) -> None:
    figures_record(REPORT, name, figures)


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
    return metric_sum(f"http://127.0.0.1:{stack.config.ports['text']['metrics']}/metrics", name, **labels)


def migration_ms(stack: LocalStack) -> list[float]:
    """From losing a replica to the next one's first token, per migration (the access log says)."""
    values = []
    for line in (stack.logs / "text.log").read_text().splitlines():
        if line.startswith("{") and '"migration_ms"' in line:
            values += json.loads(line)["migration_ms"]
    return values


def percentiles(values_ms: list[float]) -> dict:
    """p50/p99 of values already in milliseconds."""
    return {f"p{q}_ms": percentile(values_ms, q) for q in (50, 99)} if values_ms else {}


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


def completion_outcome(events: list) -> tuple[str, dict | None, list, bool]:
    """What a client makes of a completions stream: (text, usage, error events, ended with [DONE])."""
    text, usage, errors = "", None, []
    for event in events:
        if event == "[DONE]":
            continue
        if "error" in event:
            errors.append(event["error"])
            continue
        usage = event.get("usage") or usage
        text += "".join(choice["text"] for choice in event["choices"])
    return text, usage, errors, bool(events) and events[-1] == "[DONE]"


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


