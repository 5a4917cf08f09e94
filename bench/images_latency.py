"""Seconds per image through the façade vs the same Triton model called directly, by size.

The target for the CPU test pipeline: one 1024x1024 image in under ~10 s on 2 cores.
"""

from __future__ import annotations

import statistics
import time

import aiohttp

from local.stack import LocalStack
from services.images.backend import TritonImagesBackend

MODEL = "hubmesh/tiny-sd-noise-test"
SIZES = ((1024, 1024), (1792, 1024))
PROMPT = "A beautiful sunset over the ocean"


async def via_facade(stack: LocalStack, width: int, height: int) -> float:
    body = {"model": MODEL, "prompt": PROMPT, "size": f"{width}x{height}", "seed": 1}
    headers = {"Authorization": f"Bearer {stack.config.api_key}"}
    async with aiohttp.ClientSession() as http:
        start = time.perf_counter()
        async with http.post(f"{stack.config.base_url}/images/generations", json=body, headers=headers) as r:
            r.raise_for_status()
            await r.read()
        return time.perf_counter() - start


async def direct(stack: LocalStack, width: int, height: int) -> float:
    """The same image straight from Triton: exactly the call the images service makes."""
    backend = TritonImagesBackend(f"127.0.0.1:{stack.config.ports['images']['triton_grpc']}", 300)
    try:
        start = time.perf_counter()
        await backend.generate("tiny_sd", PROMPT, width, height, 1, 1, "standard", "vivid")
        return time.perf_counter() - start
    finally:
        await backend.close()


async def measure(stack: LocalStack, rounds: int = 3) -> dict:
    await via_facade(stack, 256, 256)  # warm up
    result = {}
    for width, height in SIZES:
        facade, raw = [], []
        for _ in range(rounds):
            facade.append(await via_facade(stack, width, height))
            raw.append(await direct(stack, width, height))
        result[f"{width}x{height}"] = {
            "facade_s": statistics.median(facade),
            "direct_triton_s": statistics.median(raw),
            "ratio_direct_vs_facade": statistics.median(raw) / statistics.median(facade),
        }
    return result


