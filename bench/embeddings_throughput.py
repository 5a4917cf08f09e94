"""Sentences/s through the façade at concurrency 32 vs the same model in-process in batches of 32.

The façade side sends one sentence per request from 32 concurrent clients (Triton's dynamic batcher
has to merge them); the baseline calls the model's own encoder (encoder.py) in this process.
Rounds alternate between the two so machine noise hits both alike.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time

import aiohttp

from local.stack import ROOT, LocalStack

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
sys.path.insert(0, str(ROOT / "services" / "embeddings" / "model_repository" / "minilm" / "1"))
from encoder import SentenceEncoder, packaged_model_path  # noqa: E402


def sentences(n: int) -> list[str]:
    return [f"Sentence {i}: the quick brown fox jumps over the lazy dog number {i % 13}." for i in range(n)]


async def via_facade(stack: LocalStack, texts: list[str], concurrency: int) -> float:
    queue: asyncio.Queue[str] = asyncio.Queue()
    for text in texts:
        queue.put_nowait(text)
    headers = {"Authorization": f"Bearer {stack.config.api_key}"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as http:

        async def worker():
            while not queue.empty():
                text = queue.get_nowait()
                body = {"model": MODEL, "input": text, "encoding_format": "base64"}
                async with http.post(f"{stack.config.base_url}/embeddings", headers=headers, json=body) as r:
                    r.raise_for_status()
                    await r.read()

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return len(texts) / (time.perf_counter() - start)


def in_process(encoder: SentenceEncoder, texts: list[str], batch: int) -> float:
    start = time.perf_counter()
    for i in range(0, len(texts), batch):
        encoder.embed(encoder.token_ids(texts[i : i + batch]))
    return len(texts) / (time.perf_counter() - start)


def measure(stack: LocalStack, n: int, rounds: int, concurrency: int = 32) -> dict:
    import torch

    torch.set_num_threads(os.cpu_count())
    encoder = SentenceEncoder(packaged_model_path(), max_seq_length=256)
    texts = sentences(n)
    asyncio.run(via_facade(stack, texts[:64], concurrency))  # warm up both
    in_process(encoder, texts[:64], concurrency)
    facade, direct = [], []
    for _ in range(rounds):
        facade.append(asyncio.run(via_facade(stack, texts, concurrency)))
        direct.append(in_process(encoder, texts, concurrency))
    result = {
        "facade_sentences_per_s": statistics.median(facade),
        "in_process_sentences_per_s": statistics.median(direct),
        "concurrency": concurrency,
        "sentences_per_round": n,
        "rounds": rounds,
    }
    result["ratio_facade_vs_in_process"] = result["facade_sentences_per_s"] / result["in_process_sentences_per_s"]
    return result
