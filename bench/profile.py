"""`make profile WORKLOAD=chat|chat1|stream|sim|embeddings`: py-spy samples the façade and the service under load.

Starts the stack (with the `echo` benchmark model), drives one workload from this process for a fixed
time while py-spy records both Python processes, then writes their collapsed stacks to
build/bench/profile-<workload>-<process>.txt (speedscope and flamegraph.pl read them) and prints the
frames with the most samples of their own. Where the time goes before any optimisation is claimed.

py-spy samples only the thread holding the GIL (`--gil`): on these machines its idle detection does
not see a thread waiting in epoll_wait or poll as idle, so without it the event loop's and gRPC's
poller thread's waits look like work (a third to a half of all samples).
"""

from __future__ import annotations

import asyncio
import collections
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from bench import bench_config
from local.stack import MODALITIES, ROOT, LocalStack

SECONDS = 12
ECHO = "hubmesh/echo-benchmark"
EMBEDDER = "sentence-transformers/all-MiniLM-L6-v2"
WORKLOADS = {
    # name: (service profiled, concurrency, path, body, streamed)
    "chat": ("text", 64, "/chat/completions",
             {"model": ECHO, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}, False),
    # one request at a time: where the latency the mesh adds goes
    "chat1": ("text", 1, "/chat/completions",
              {"model": ECHO, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}, False),
    "stream": ("text", 16, "/chat/completions",
               {"model": ECHO, "messages": [{"role": "user", "content": "one two three"}], "max_tokens": 256,
                "stream": True}, True),
    "embeddings": ("embeddings", 64, "/embeddings", {"model": EMBEDDER, "input": "hi", "encoding_format": "base64"},
                   False),
    # the engine simulator at a GPU-like token rate (bench/token_rate.py's first run: ~22 ms between tokens)
    "sim": ("text", 64, "/chat/completions",
            {"model": "hubmesh/sim-llama-3-8b", "messages": [{"role": "user", "content": "one two three"}],
             "max_tokens": 256, "stream": True}, True),
}
SIM_TIME_SCALE = 4.0


async def drive(stack: LocalStack, path: str, body: dict, concurrency: int, streamed: bool, seconds: float) -> int:
    """Closed-loop load for `seconds`; returns the number of responses."""
    headers = {"Authorization": f"Bearer {stack.config.api_key}"}
    done = 0
    stop = time.monotonic() + seconds
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency), headers=headers) as http:

        async def worker():
            nonlocal done
            while time.monotonic() < stop:
                async with http.post(stack.config.base_url + path, json=body) as response:
                    response.raise_for_status()
                    if streamed:
                        async for _ in response.content:
                            pass
                    else:
                        await response.read()
                done += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done


def top_frames(collapsed: Path, count: int = 15) -> list[tuple[float, float, str]]:
    """The frames with the most samples of their own, as (own percent, inclusive percent, frame)."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        frames = stack.split(";")
        own[frames[-1]] += int(samples)
        inclusive.update(dict.fromkeys(frames, int(samples)))
        total += int(samples)
    return [(100 * n / max(total, 1), 100 * inclusive[frame] / max(total, 1), frame)
            for frame, n in own.most_common(count)]


def main(workload: str) -> None:
    service, concurrency, path, body, streamed = WORKLOADS[workload]
    py_spy = Path(sys.executable).with_name("py-spy")
    config = bench_config("profile")
    out = ROOT / "build" / "bench"
    out.mkdir(parents=True, exist_ok=True)
    with LocalStack(config, modalities=tuple(m for m in MODALITIES if m.name == service)) as stack:
        if workload == "sim":
            from bench.token_rate import reload_sim

            reload_sim(stack, SIM_TIME_SCALE)
        asyncio.run(drive(stack, path, body, concurrency, streamed, 2))  # warm
        targets = {"facade": stack.facade.pid, service: stack.services[service].pid}
        files = {name: out / f"profile-{workload}-{name}.txt" for name in targets}
        recorders = [
            subprocess.Popen([str(py_spy), "record", "--pid", str(pid), "--duration", str(SECONDS), "--rate", "200",
                              "--gil", "--format", "raw", "--nonblocking", "-o", str(files[name])],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for name, pid in targets.items()
        ]
        responses = asyncio.run(drive(stack, path, body, concurrency, streamed, SECONDS + 1))
        for recorder in recorders:
            recorder.wait(timeout=60)
    print(f"{workload}: {responses / (SECONDS + 1):.0f} responses/s at concurrency {concurrency}")
    for name, file in files.items():
        print(f"\n{name} ({file.relative_to(ROOT)}), samples holding the GIL: own / inclusive")
        for percent, inclusive, frame in top_frames(file):
            print(f"  {percent:5.1f}% {inclusive:5.1f}%  {frame}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "chat")
