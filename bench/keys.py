"""Keys the hub issues (facade/auth/hub_keys.py): what verifying one costs next to a JWT, and how long a
revocation takes to reach the other façade replicas.

- verification: `TokenVerifier.authenticate` of the same caller's hub key and of an HS256 JWT, in
  one process, alternating blocks; µs p50/p99 of each and the difference;
- revocation: three façades (in this process, each its own aiohttp server and key cache) on one
  database and one private redis-server; a key is blocked through the first, and each of the other
  two is asked with the key until it answers 401: the time from the block's answer to that 401, over
  several rounds (blocked, then unblocked, then blocked again ...), p50/p99/max.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

import aiohttp
import jwt
from aiohttp import web

from bench.stats import percentile
from facade.app import create_app
from facade.auth.hub_keys import KEY_REGISTRY
from facade.auth.tokens import JwtSettings, TokenVerifier
from facade.settings import Settings
from local.processes import free_port
from local.redis import RedisServer

ADMIN = "bench-admin-key"
SECRET = "bench-keys-secret-of-at-least-32-bytes"


async def _verification(samples: int = 20_000, blocks: int = 10) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        app = create_app(Settings(api_keys=(ADMIN,), jwt_secret=SECRET, database_url=f"sqlite:///{tmp}/k.db"))
        runner = web.AppRunner(app)
        await runner.setup()  # runs the cleanup contexts' start: database, key registry
        try:
            port = free_port()
            site = web.TCPSite(runner, "127.0.0.1", port)
            await site.start()
            async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {ADMIN}"}) as http:
                async with http.post(f"http://127.0.0.1:{port}/v1/keys", json={"scopes": ["chat"]}) as reply:
                    key = (await reply.json())["key"]
            verifier = TokenVerifier((), JwtSettings(secret=SECRET))
            verifier.keys = app[KEY_REGISTRY]
            now = int(time.time())
            token = jwt.encode({"sub": "bench", "scope": "chat", "iat": now, "exp": now + 3600}, SECRET, algorithm="HS256")
            times: dict[str, list[float]] = {"jwt": [], "hub_key": []}
            per_block = samples // blocks
            for block in range(blocks):
                for name, credential in (("jwt", token), ("hub_key", key))[:: 1 if block % 2 else -1]:
                    into = times[name]
                    for _ in range(per_block):
                        start = time.perf_counter()
                        await verifier.authenticate(credential)
                        into.append(time.perf_counter() - start)
        finally:
            await runner.cleanup()
    out = {name: {f"p{q}_us": round(1e6 * (percentile(v, q) or 0), 2) for q in (50, 99)} for name, v in times.items()}
    out["hub_key_minus_jwt_p50_us"] = round(out["hub_key"]["p50_us"] - out["jwt"]["p50_us"], 2)
    return out


async def _revocation(rounds: int = 20) -> dict:
    with tempfile.TemporaryDirectory() as tmp, RedisServer(Path(tmp) / "redis.log") as redis:
        settings = Settings(api_keys=(ADMIN,), jwt_secret=SECRET, database_url=f"sqlite:///{tmp}/shared.db",
                            redis_url=redis.url, keys_refresh_s=3600.0)  # only the channel can be in time
        runners, ports = [], []
        try:
            for _ in range(3):
                app = create_app(settings)
                runner = web.AppRunner(app)
                await runner.setup()
                ports.append(free_port())
                await web.TCPSite(runner, "127.0.0.1", ports[-1]).start()
                await app[KEY_REGISTRY].wait_live()
                runners.append(runner)
            async with aiohttp.ClientSession() as http:
                admin = {"Authorization": f"Bearer {ADMIN}"}
                async with http.post(f"http://127.0.0.1:{ports[0]}/v1/keys", json={}, headers=admin) as reply:
                    created = await reply.json()
                key_id, mine = created["id"], {"Authorization": f"Bearer {created['key']}"}

                async def status(port: int) -> int:
                    async with http.get(f"http://127.0.0.1:{port}/v1/keys/{key_id}", headers=mine) as answer:
                        return answer.status

                delays: list[float] = []
                for round_ in range(rounds):
                    blocked = round_ % 2 == 0
                    action = "block" if blocked else "unblock"
                    async with http.post(f"http://127.0.0.1:{ports[0]}/v1/keys/{key_id}/{action}", headers=admin):
                        done = time.perf_counter()
                    want = 401 if blocked else 200
                    for port in ports[1:]:
                        while await status(port) != want:
                            if time.perf_counter() - done > 10:
                                raise RuntimeError(f"the {action} did not reach a replica within 10 s")
                        delays.append(time.perf_counter() - done)
        finally:
            for runner in runners:
                await runner.cleanup()
    return {"replicas": 3, "changes": rounds, "observations": len(delays),
            **{f"p{q}_ms": round(1000 * (percentile(delays, q) or 0), 1) for q in (50, 99)},
            "max_ms": round(1000 * max(delays), 1)}


def measure() -> dict:
    print("keys: verification cost (hub key vs JWT) and revocation across 3 façades sharing Redis", flush=True)
    return {"verification": asyncio.run(_verification()), "revocation": asyncio.run(_revocation())}


def rows(keys: dict) -> list[str]:
    if "error" in keys:
        return [f"Not measured: {keys['error']}"]
    v, r = keys["verification"], keys["revocation"]
    return [
        "| credential | verification p50 / p99 |", "| --- | --- |",
        f"| HS256 JWT | {v['jwt']['p50_us']} / {v['jwt']['p99_us']} µs |",
        f"| hub key (sk-hm-…) | {v['hub_key']['p50_us']} / {v['hub_key']['p99_us']} µs |",
        "",
        f"A key blocked or unblocked through one of {r['replicas']} façades sharing Redis is refused (or "
        f"accepted) by the other two after {r['p50_ms']} ms p50, {r['p99_ms']} ms p99, {r['max_ms']} ms at most "
        f"({r['observations']} observations).",
    ]


if __name__ == "__main__":
    import json

    print(json.dumps(measure(), indent=2))
