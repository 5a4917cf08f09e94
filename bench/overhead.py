"""What the mesh adds: the same minimal requests through the façade and straight to Triton over gRPC.

- latency p50/p99 of a tiny embedding and of a 1-token chat (the `echo` benchmark model) at
  concurrency 1 and 64, with requests/s at 64 (saturation on these cores);
- aggregate streamed tokens/s at 1, 16 and 64 concurrent streams (echo, 256 tokens each) and time to
  first token.
"Direct" is exactly the call the service makes (its own backend class), so the difference is the
façade, the service and the two extra hops. Rounds alternate façade and direct.
"""

from __future__ import annotations

import asyncio
import statistics
import time

import aiohttp

from bench.cpu import CpuMeter
from bench.stats import percentiles_ms
from local.stack import LocalStack
from services.embeddings.backend import TritonEmbeddingsBackend
from services.text.backend import TritonTextBackend

ECHO = "hubmesh/echo-benchmark"
BLOCKS = 4  # latency runs alternate façade and direct blocks
EMBEDDER = "sentence-transformers/all-MiniLM-L6-v2"


async def _run(concurrency: int, count: int, call) -> tuple[list[float], float]:
    """Latencies of `count` calls made by `concurrency` workers, and the calls per second overall."""
    latencies: list[float] = []
    remaining = iter(range(count))

    async def worker():
        for _ in remaining:
            start = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, count / (time.perf_counter() - start)


async def measure(stack: LocalStack, quick: bool = False) -> dict:
    ports = stack.config.ports
    text = TritonTextBackend(f"127.0.0.1:{ports['text']['triton_grpc']}", 60)
    embed = TritonEmbeddingsBackend(f"127.0.0.1:{ports['embeddings']['triton_grpc']}", 60)
    headers = {"Authorization": f"Bearer {stack.config.api_key}"}
    connector = aiohttp.TCPConnector(limit=128)
    report: dict = {"latency": {}, "streaming": {}}
    meter = CpuMeter(stack)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as http:

        async def post(path, body):
            async with http.post(stack.config.base_url + path, json=body) as r:
                r.raise_for_status()
                return await r.read()

        async def chat_facade():
            await post("/chat/completions", {"model": ECHO, "messages": [{"role": "user", "content": "hi"}],
                                             "max_tokens": 1})

        async def chat_direct():
            async for _ in text.generate("echo", "hi", {"n": 1, "max_tokens": 1}, stream=False):
                pass

        async def embed_facade():
            await post("/embeddings", {"model": EMBEDDER, "input": "hi", "encoding_format": "base64"})

        async def embed_direct():
            await embed.embed_texts("minilm", ["hi"])

        cases = {"chat_1_token": (chat_facade, chat_direct), "embedding_tiny": (embed_facade, embed_direct)}
        for name, (facade, direct) in cases.items():
            for concurrency, count in ((1, 60 if quick else 300), (64, 256 if quick else 1280)):
                await _run(concurrency, 32, facade)  # warm
                await _run(concurrency, 32, direct)
                # alternating blocks, so that the machine's drifts hit both paths alike
                samples = {"facade": ([], 0.0, {}), "direct": ([], 0.0, {})}
                for block in range(BLOCKS):
                    order = (("facade", facade), ("direct", direct))
                    for path, call in order if block % 2 == 0 else reversed(order):
                        latencies, elapsed, cpu = samples[path]
                        before = meter.snapshot()
                        lat, rps = await _run(concurrency, count // BLOCKS, call)
                        used = meter.per_unit(before, meter.snapshot(), 1)
                        samples[path] = (latencies + lat, elapsed + len(lat) / rps,
                                         {k: cpu.get(k, 0) + used.get(k, 0) for k in {*cpu, *used}})
                f_lat, d_lat = samples["facade"][0], samples["direct"][0]
                f_rps, d_rps = len(f_lat) / samples["facade"][1], len(d_lat) / samples["direct"][1]
                f, d = percentiles_ms(f_lat), percentiles_ms(d_lat)
                report["latency"][f"{name}@{concurrency}"] = {
                    "facade": {**f, "rps": round(f_rps, 1)},
                    "direct": {**d, "rps": round(d_rps, 1)},
                    "added_p50_ms": round(f["p50_ms"] - d["p50_ms"], 3),
                    "added_p99_ms": round(f["p99_ms"] - d["p99_ms"], 3),
                    "p50_ratio": round(f["p50_ms"] / d["p50_ms"], 2),
                    "rps_ratio": round(f_rps / d_rps, 3),
                    "cpu_ms_per_request": {
                        path: {k: round(v / len(samples[path][0]), 3) for k, v in sorted(samples[path][2].items())}
                        for path in ("facade", "direct")
                    },
                }

        tokens = 256

        async def stream_facade():
            first = None
            start = time.perf_counter()
            body = {"model": ECHO, "messages": [{"role": "user", "content": "one two three"}], "max_tokens": tokens,
                    "stream": True}
            async with http.post(stack.config.base_url + "/chat/completions", json=body) as r:
                async for line in r.content:
                    if first is None and line.startswith(b"data: {") and b'"content":"' in line and b'"content":""' not in line:
                        first = time.perf_counter() - start
            return first or 0.0

        async def stream_direct():
            first = None
            start = time.perf_counter()
            async for chunk in text.generate("echo", "one two three", {"n": 1, "max_tokens": tokens}, stream=True):
                if first is None and chunk.texts and chunk.texts[0]:
                    first = time.perf_counter() - start
            return first or 0.0

        for streams in (1, 16, 64):
            result = {}
            for label, fn in (("facade", stream_facade), ("direct", stream_direct)):
                rounds = []
                before = meter.snapshot()
                for _ in range(1 if quick else 2):
                    start = time.perf_counter()
                    ttfts = await asyncio.gather(*(fn() for _ in range(streams)))
                    rounds.append((streams * tokens / (time.perf_counter() - start), statistics.median(ttfts)))
                cpu = meter.per_unit(before, meter.snapshot(), streams * tokens * len(rounds) / 1000)
                best = max(rounds)
                result[label] = {"tokens_per_s": round(best[0], 1), "ttft_ms": round(best[1] * 1000, 2),
                                 "cpu_ms_per_1000_tokens": cpu}
            result["ratio"] = round(result["facade"]["tokens_per_s"] / result["direct"]["tokens_per_s"], 3)
            result["added_ttft_ms"] = round(result["facade"]["ttft_ms"] - result["direct"]["ttft_ms"], 2)
            report["streaming"][f"{streams}_streams"] = result
    await text.close()
    await embed.close()
    return report
