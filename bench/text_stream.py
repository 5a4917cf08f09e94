"""Streamed tokens/s through the façade vs the same model straight from Triton.

Both paths generate the same number of tokens with the same request (greedy, end tokens banned),
alternating façade and direct runs so machine noise hits both alike.
"""

from __future__ import annotations

import json
import statistics
import time

import httpx

from local.stack import LocalStack
from services.text.backend import TritonTextBackend
from services.text.catalog import load_catalog
from services.text.settings import DEFAULT_CATALOG

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
MESSAGES = [{"role": "user", "content": "Tell me a long story about a lighthouse keeper."}]
NO_END = {"0": -100.0, "2": -100.0}  # <|endoftext|>, <|im_end|>: every run makes exactly max_tokens


async def via_facade(stack: LocalStack, tokens: int) -> tuple[float, float, int]:
    """(seconds, time to first token, tokens) for one streamed chat completion through the façade."""
    body = {"model": MODEL, "messages": MESSAGES, "temperature": 0, "max_tokens": tokens, "logit_bias": NO_END,
            "stream": True, "stream_options": {"include_usage": True}}
    headers = {"Authorization": f"Bearer {stack.config.api_key}"}
    async with httpx.AsyncClient(timeout=300) as http:
        start, first, usage = time.perf_counter(), None, 0
        async with http.stream("POST", f"{stack.config.base_url}/chat/completions", json=body, headers=headers) as r:
            async for line in r.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                chunk = json.loads(line[6:])
                if first is None and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                    first = time.perf_counter() - start
                if chunk.get("usage"):
                    usage = chunk["usage"]["completion_tokens"]
        return time.perf_counter() - start, first or 0.0, usage


async def direct(stack: LocalStack, tokens: int) -> tuple[float, float, int]:
    """The same generation straight from Triton's gRPC stream (what the text service itself sends)."""
    entry = load_catalog(DEFAULT_CATALOG)[MODEL]
    prompt = entry.chat_template.render(MESSAGES)
    backend = TritonTextBackend(f"127.0.0.1:{stack.config.ports['text']['triton_grpc']}", 300)
    sampling = {"n": 1, "temperature": 0, "max_tokens": tokens, "logit_bias": NO_END}
    try:
        start, first, count = time.perf_counter(), None, 0
        async for chunk in backend.generate(entry.triton_model, prompt, sampling, stream=True):
            if first is None and chunk.texts[0]:
                first = time.perf_counter() - start
            count += sum(chunk.num_output_tokens)
        return time.perf_counter() - start, first or 0.0, count
    finally:
        await backend.close()


async def measure(stack: LocalStack, tokens: int, rounds: int) -> dict:
    await via_facade(stack, 8)  # warm both paths
    await direct(stack, 8)
    runs = {"facade": [], "direct": []}
    for _ in range(rounds):
        runs["facade"].append(await via_facade(stack, tokens))
        runs["direct"].append(await direct(stack, tokens))
    summary = {}
    for path, results in runs.items():
        assert all(n == tokens for _, _, n in results), f"{path}: {results}"
        summary[path] = {
            "tokens_per_s": statistics.median(tokens / s for s, _, _ in results),
            "ttft_ms": statistics.median(f * 1000 for _, f, _ in results),
        }
    summary["ratio_facade_vs_direct"] = summary["facade"]["tokens_per_s"] / summary["direct"]["tokens_per_s"]
    return summary
