"""The limiter's footprint and cost (issue 18): 100k distinct subjects through the in-process store
and through a real Redis (a private redis-server), each with an rpm log, a tpm bucket and a daily
budget, as a request with every kind of limit touches them.

Reports, per store: memory after 100k and after 200k subjects (the in-process store is capped at
HUBMESH_LIMITS_LOCAL_MAX_KEYS counters, LRU; Redis keys expire with their window or period), the
longest TTL left on a key, and the cost of one request's admission + reservation + settlement.
`python -m bench.limits` prints it; `make bench` includes it.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

from facade.limits.policy import Limits, request_specs, token_specs
from facade.limits.stores import LocalStore, RedisStore
from local.redis import RedisServer

LIMITS = Limits(rpm=60, tpm=100_000, tokens_per_day=1_000_000)
SUBJECTS = 100_000


async def _one_request(store, subject: str, now: float) -> None:
    await store.hit(request_specs(subject, LIMITS), "m")
    specs = token_specs(subject, LIMITS, now=now)
    granted, _, _ = await store.reserve(specs, 500)
    await store.adjust(specs, granted - 120)


async def _drive(store, start: int, count: int) -> float:
    """Seconds per request over `count` new subjects (in batches of 64 concurrent ones)."""
    now = time.time()
    began = time.perf_counter()
    for base in range(start, start + count, 64):
        await asyncio.gather(*(_one_request(store, f"jwt:user-{i}", now) for i in range(base, min(base + 64, start + count))))
        if (base - start) % 25_600 == 0:
            print(f"  {store.name}: {base - start} subjects", file=sys.stderr, flush=True)
    return (time.perf_counter() - began) / count


async def local(max_keys: int = 100_000) -> dict:
    per_request = await _drive(LocalStore(max_keys=max_keys), 0, SUBJECTS)  # timed without tracemalloc
    store = LocalStore(max_keys=max_keys)
    tracemalloc.start()
    try:
        await _drive(store, 0, SUBJECTS)
        after_100k = tracemalloc.get_traced_memory()[0]
        await _drive(store, SUBJECTS, SUBJECTS)
        after_200k = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    return {"max_keys": max_keys, "keys": len(store), "mib_after_100k": round(after_100k / 2**20, 1),
            "mib_after_200k": round(after_200k / 2**20, 1), "us_per_request": round(per_request * 1e6, 1)}


async def redis_store() -> dict:
    import redis.asyncio

    with tempfile.TemporaryDirectory() as tmp, RedisServer(Path(tmp) / "redis.log") as server:
        client = redis.asyncio.Redis.from_url(server.url)
        try:
            base = (await client.info("memory"))["used_memory"]
            store = RedisStore(client)
            per_request = await _drive(store, 0, SUBJECTS)
            info = await client.info("memory")
            keys = await client.dbsize()
            ttls = [await client.pttl(k) async for k in client.scan_iter(count=1000, match="hm:lim:*")][:2000]
            return {
                "keys": keys, "mib_after_100k": round((info["used_memory"] - base) / 2**20, 1),
                "bytes_per_subject": round((info["used_memory"] - base) / SUBJECTS),
                "every_key_expires": all(t > 0 for t in ttls), "longest_ttl_h": round(max(ttls) / 3.6e6, 1),
                "us_per_request": round(per_request * 1e6, 1),
            }
        finally:
            await client.aclose()


def measure() -> dict:
    return {"local": asyncio.run(local()), "redis": asyncio.run(redis_store())}


if __name__ == "__main__":
    print(json.dumps(measure(), indent=2))
