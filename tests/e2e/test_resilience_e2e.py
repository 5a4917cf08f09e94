"""Overload, a crashed Triton and SIGTERM on a real stack (text and embeddings), bounded in count and time.

The figures (requests sent, succeeded, rejected, failed, recovery time) go to build/resilience.json.
"""

import asyncio
import json
import os
import re
import signal
import threading
import time
from pathlib import Path

import aiohttp
import pytest

from local.stack import MODALITIES, ROOT, LocalStack, StackConfig
from tests.e2e.conftest import wait_for
from tests.e2e.figures import record as figures_record

pytestmark = pytest.mark.e2e
MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
EMBEDDER = "sentence-transformers/all-MiniLM-L6-v2"
KEY = "resilience-key"
FACADE_LIMIT = 8
REPORT = ROOT / "build" / "resilience.json"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    config = StackConfig.with_free_ports(api_key=KEY, run_dir=tmp_path_factory.mktemp("resilience"))
    config.extra_env.update({"HUBMESH_MAX_IN_FLIGHT": str(FACADE_LIMIT), "HUBMESH_GRACE_S": "3"})
    stack = LocalStack(config, modalities=tuple(m for m in MODALITIES if m.name in ("text", "embeddings")))
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


def record(name: str, figures: dict) -> None:
    figures_record(REPORT, name, figures)


def requests_mix(i: int) -> tuple[str, dict]:
    kind = i % 4
    if kind == 0:
        return "/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": f"Hi {i}"}], "max_tokens": 4}
    if kind == 1:
        return "/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": f"Hi {i}"}],
                                     "max_tokens": 4, "stream": True}
    if kind == 2:
        return "/completions", {"model": MODEL, "prompt": f"Count to {i}:", "max_tokens": 4}
    return "/embeddings", {"model": EMBEDDER, "input": [f"sentence {i}", "another one"]}


async def one(http: aiohttp.ClientSession, stack: LocalStack, i: int, log: list | None = None) -> str:
    """The outcome of one request: 'ok', 'rejected' (429), 'http-<status>' or 'stream-error'."""
    path, body = requests_mix(i)
    try:
        async with http.post(stack.config.base_url + path, json=body,
                             headers={"Authorization": f"Bearer {KEY}"}) as response:
            text = await response.text()
            if response.status == 429:
                assert response.headers["Retry-After"]
                return "rejected"
            if response.status != 200:
                assert set(json.loads(text)["error"]) == {"message", "type", "param", "code"}
                return f"http-{response.status}"
            if body.get("stream"):
                events = [e for e in text.split("\n\n") if e.startswith("data: ")]
                assert events[-1] == "data: [DONE]", text[-200:]
                if any('"error"' in e for e in events):
                    return "stream-error"
                assert any('"finish_reason":"' in e for e in events)
            if log is not None and path != "/embeddings":
                log.append(time.monotonic())  # when text requests succeed
            return "ok"
    except asyncio.TimeoutError:
        return "hang"


async def load(stack: LocalStack, seconds: float, concurrency: int, text_ok=None) -> dict:
    counts: dict[str, int] = {}
    deadline = time.monotonic() + seconds
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=concurrency)) as http:
        next_id = iter(range(10**6))

        async def worker():
            while time.monotonic() < deadline:
                outcome = await one(http, stack, next(next_id), text_ok)
                counts[outcome] = counts.get(outcome, 0) + 1
                if outcome == "rejected":
                    await asyncio.sleep(0.5)  # what Retry-After asks for, shortened

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return counts


def facade_resources(stack: LocalStack) -> dict:
    pid = stack.facade.pid
    rss = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
               if line.startswith("VmRSS:"))
    import urllib.request

    metrics = urllib.request.urlopen(f"http://127.0.0.1:{stack.config.http_port}/metrics").read().decode()
    tasks = int(float(re.search(r"^hubmesh_asyncio_tasks (\S+)", metrics, re.M).group(1)))
    return {"rss_mib": rss / 1024, "fds": len(os.listdir(f"/proc/{pid}/fd")), "tasks": tasks}


def test_overload_gets_only_successes_and_429s_and_resources_return(stack):
    asyncio.run(load(stack, 3, 4))  # warm up: connections, caches, first allocations
    before = facade_resources(stack)
    counts = asyncio.run(load(stack, 15, 4 * FACADE_LIMIT))
    after = facade_resources(stack)
    sent = sum(counts.values())
    record("overload", {"concurrency": 4 * FACADE_LIMIT, "facade_limit": FACADE_LIMIT, "seconds": 15,
                        "sent": sent, "outcomes": counts, "facade_before": before, "facade_after": after})
    assert set(counts) <= {"ok", "rejected"}, counts  # no 5xx, no stream error, no hang
    assert counts.get("ok", 0) > 0 and counts.get("rejected", 0) > 0, counts
    assert after["tasks"] <= before["tasks"] + 2, (before, after)
    assert after["fds"] <= before["fds"] + 4, (before, after)
    assert after["rss_mib"] <= before["rss_mib"] + 64, (before, after)


def test_triton_crash_mid_load_ends_every_request_clearly_and_recovers(stack):
    timeline, text_ok, result = {}, [], {}
    # the load runs in a thread of its own: Triton is restarted from this (main) thread, because a
    # child started with PR_SET_PDEATHSIG dies with the *thread* that started it
    loader = threading.Thread(
        target=lambda: result.update(asyncio.run(load(stack, 25, 2 * FACADE_LIMIT, text_ok=text_ok)))
    )
    loader.start()
    wait_for(lambda: text_ok, 60, "a first text answer under load")
    timeline["crashed"] = time.monotonic()
    stack.crash_triton("text")
    time.sleep(2)
    stack.restart_triton("text")
    timeline["restarted"] = time.monotonic()
    loader.join(timeout=120)
    assert not loader.is_alive()
    counts = result
    recovered = [t for t in text_ok if t > timeline["restarted"]]
    figures = {"sent": sum(counts.values()), "outcomes": counts,
               "triton_down_s": round(timeline["restarted"] - timeline["crashed"], 2)}
    if recovered:
        # the service was not restarted: its channel to Triton reconnected by itself
        figures["first_text_success_after_restart_s"] = round(recovered[0] - timeline["restarted"], 2)
    record("triton_crash", figures)
    assert recovered, figures
    # every request ended: a success, a 429, a clear 502/503, or an in-band error event — never a hang or 500
    assert set(counts) <= {"ok", "rejected", "http-503", "http-502", "stream-error"}, counts
    assert counts.get("ok", 0) > 0


def test_sigterm_during_streams_ends_each_one_cleanly(stack):
    async def stream(http, i):
        body = {"model": MODEL, "messages": [{"role": "user", "content": f"Tell a long story {i}."}],
                "max_tokens": 400, "logit_bias": {"0": -100, "2": -100}, "stream": True}
        async with http.post(f"{stack.config.base_url}/chat/completions", json=body,
                             headers={"Authorization": f"Bearer {KEY}"}) as response:
            text = await response.text()
            if response.status == 503:  # still waiting for its first token when the grace period ended
                assert json.loads(text)["error"]["code"] == "server_shutdown", text
                return None
            assert response.status == 200, text
            return text

    async def run():
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
            tasks = [asyncio.create_task(stream(http, i)) for i in range(3)]
            await asyncio.sleep(2)  # the streams are open
            stack.facade.send_signal(signal.SIGTERM)
            return await asyncio.gather(*tasks)

    started = time.monotonic()
    bodies = asyncio.run(run())
    ended = {"finished": 0, "error_event": 0, "refused_503": bodies.count(None)}
    for text in filter(None, bodies):
        events = [e for e in text.split("\n\n") if e.startswith("data: ")]
        assert events[-1] == "data: [DONE]"
        last = json.loads(events[-2].removeprefix("data: "))
        if "error" in last:
            assert last["error"]["code"] == "server_shutdown"
            ended["error_event"] += 1
        else:
            assert last["choices"][0]["finish_reason"] in ("stop", "length")
            ended["finished"] += 1
    assert stack.facade.wait(timeout=30) == 0  # it exits by itself once drained
    record("sigterm", {"streams": 3, **ended, "seconds_to_exit": round(time.monotonic() - started, 2)})
    stack.start_facade()  # leave the stack whole
