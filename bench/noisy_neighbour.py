"""Noisy neighbour (issue 31): one tenant flooding the text service at several times its capacity,
another asking at a modest rate, with today's admission (`first_come`) and with the fair share (`fair`).

The stack: one engine-simulator Triton (`sim`, `time_scale` 5: ~24 ms a step, the engine batching
every sequence it is given), the text service admitting `CAPACITY` generations
(HUBMESH_MAX_IN_FLIGHT; HUBMESH_ADMISSION switches the policy, the service and the façade restarted
between the two), the façade; everything through the façade's SSE as the SDKs see it. Two tenants,
each a JWT of its own subject (facade/auth/tokens.py issue_local_token):

- **B**, interactive: short chats (`B_TOKENS` tokens ± 50%) on an open-loop Poisson schedule at `B_RATE`/s,
  about one generation in flight: far below its share;
- **A**, batch: longer chats (`A_TOKENS` ± 50%, not streamed), open loop at `FLOOD` × the service's capacity in
  requests/s (capacity ÷ the generation time measured while A is alone).

Per policy, three phases: B alone; A alone (the capacity in tokens/s A gets with nobody else: what the
service gives); A flooding with B at the same rate as alone (A starts first, B's schedule is measured
once A holds the service). Figures: B's success rate and time to first token (first content delta)
p50/p99, A's goodput (its streamed tokens/s inside B's window, each request's tokens spread over its
streaming time) against what B leaves (A-alone tokens/s − B's tokens/s), the statuses each tenant got
and the service's admission counters. The targets (issue 31): B 100% served, B's TTFT p99 ≤ 1.5 ×
alone, A ≥ 90% of what B leaves.

    .venv/bin/python -m bench.noisy_neighbour [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from bench import SIM_CATALOG
from bench.cpu import CpuMeter
from bench.stalls import TRITON_MODEL, reload_sim
from bench.stats import percentile
from facade.auth.tokens import issue_local_token
from local import processes
from local.prometheus import metric_sum
from local.stack import MODALITIES, LocalStack, StackConfig

MODEL = "hubmesh/sim-llama-3-8b"
TEXT_ONLY = tuple(m for m in MODALITIES if m.name == "text")
CAPACITY = 16  # the text service's HUBMESH_MAX_IN_FLIGHT
PACE = {"time_scale": 5}  # ~24 ms a step: what two cores carry at CAPACITY streams with a flood beside
B_RATE = 2.0  # requests/s
B_TOKENS = 16
A_TOKENS = 64
FLOOD = 5.0  # A's offered requests/s, in multiples of the service's capacity in requests/s
POLICIES = ("first_come", "fair")
TARGETS = {"b_success": 1.0, "b_ttft_p99_over_alone": 1.5, "a_goodput_of_left": 0.9}


@dataclass
class Outcome:
    tenant: str
    sent: float
    status: int = 0
    ttft_s: float | None = None
    first: float | None = None
    ended: float | None = None
    tokens: int = 0
    error: str = ""


def chat(tenant: str, i: int, tokens: int) -> dict:
    """B streams (its TTFT is what it feels); A, batch traffic, asks for whole answers. Lengths vary
    by ±50% around `tokens` (seeded by i), as real ones do: equal lengths would start and end the
    flood's generations in lockstep waves."""
    tokens = max(1, round(tokens * (0.5 + random.Random(f"{tenant}{i}").random())))
    body = {"model": MODEL, "max_tokens": tokens, "temperature": 0,
            "messages": [{"role": "user", "content": f"{tenant} {i}: tell me about the mesh"}]}
    if tenant == "B":
        body.update({"stream": True, "stream_options": {"include_usage": True}})
    return body


async def one(http: aiohttp.ClientSession, url: str, token: str, tenant: str, i: int, tokens: int) -> Outcome:
    out = Outcome(tenant, time.monotonic())
    try:
        async with http.post(url, json=chat(tenant, i, tokens), headers={"Authorization": f"Bearer {token}"}) as r:
            out.status = r.status
            if r.status != 200:
                out.error = (await r.text())[:200]
                out.ended = time.monotonic()
                return out
            if tenant != "B":  # a whole answer: its tokens are spread over the request's time
                body = await r.json()
                out.first, out.tokens = out.sent, body["usage"]["completion_tokens"]
                out.ended = time.monotonic()
                return out
            async for raw in r.content:
                line = raw.decode().strip()
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                if "error" in event:
                    out.error = str(event["error"])[:200]
                    continue
                if event.get("usage"):
                    out.tokens = event["usage"]["completion_tokens"]
                if out.first is None and any(c.get("delta", {}).get("content") for c in event.get("choices", ())):
                    out.first = time.monotonic()
                    out.ttft_s = out.first - out.sent
    except (aiohttp.ClientError, TimeoutError) as err:
        out.error = f"{type(err).__name__}: {err}"
    out.ended = time.monotonic()
    return out


def poisson(rate: float, seconds: float, seed: int) -> list[float]:
    rng, t, times = random.Random(seed), 0.0, []
    while True:
        t += rng.expovariate(rate)
        if t >= seconds:
            return times
        times.append(t)


async def drive(http, url, token, tenant, rate, seconds, tokens, seed, stop: asyncio.Event | None = None) -> list:
    """Open loop: requests at Poisson times for `seconds` (or until `stop`), each its own task."""
    tasks, start = [], time.monotonic()
    for i, at in enumerate(poisson(rate, seconds, seed)):
        delay = start + at - time.monotonic()
        if stop is not None:
            try:
                await asyncio.wait_for(stop.wait(), max(delay, 0))
                break
            except TimeoutError:
                pass
        elif delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(http, url, token, tenant, i, tokens)))
    return list(await asyncio.gather(*tasks))


def tokens_in(outcomes: list[Outcome], start: float, end: float) -> float:
    """Tokens streamed inside [start, end]: each request's spread evenly over its first..last token."""
    total = 0.0
    for o in outcomes:
        if o.status != 200 or o.error or o.first is None or o.ended is None or not o.tokens:
            continue
        span = max(o.ended - o.first, 1e-6)
        overlap = max(0.0, min(end, o.ended) - max(start, o.first))
        total += o.tokens * overlap / span
    return total


def b_figures(outcomes: list[Outcome]) -> dict:
    ok = [o for o in outcomes if o.status == 200 and not o.error and o.ttft_s is not None]
    ttft = [o.ttft_s for o in ok]
    statuses: dict[str, int] = {}
    for o in outcomes:
        key = str(o.status) if not o.error or o.status != 200 else "200+error"
        statuses[key] = statuses.get(key, 0) + 1
    return {
        "requests": len(outcomes), "success_rate": round(len(ok) / len(outcomes), 4) if outcomes else None,
        "ttft_p50_ms": _ms(percentile(ttft, 50)), "ttft_p99_ms": _ms(percentile(ttft, 99)),
        "statuses": statuses, "errors": sorted({o.error for o in outcomes if o.error})[:3],
    }


def _ms(value: float | None) -> float | None:
    return None if value is None else round(1000 * value, 1)


def a_figures(outcomes: list[Outcome], start: float, end: float) -> dict:
    statuses: dict[str, int] = {}
    for o in outcomes:
        statuses[str(o.status)] = statuses.get(str(o.status), 0) + 1
    return {"requests": len(outcomes), "statuses": statuses,
            "tokens_per_s": round(tokens_in(outcomes, start, end) / (end - start), 1)}


class Stack:
    """One sim Triton, the text service (restarted per policy) and the façade."""

    def __init__(self, run_dir: Path) -> None:
        config = StackConfig.with_free_ports(api_key="noisy", run_dir=run_dir, models={"text": (TRITON_MODEL,)})
        config.extra_env.update({"HUBMESH_TEXT_CATALOG": str(SIM_CATALOG), "HUBMESH_GRACE_S": "0"})
        self.stack = LocalStack(config, modalities=TEXT_ONLY)
        self.tokens = {t: issue_local_token(config.jwt_secret, subject=f"tenant-{t.lower()}") for t in "AB"}
        self.url = f"{config.base_url}/chat/completions"

    def start(self) -> None:
        self.stack.start_tritons(wait_s=300)
        reload_sim(self.stack.replicas["text"], PACE)

    def serve(self, policy: str) -> None:
        """The text service (and a fresh façade in front of it) admitting CAPACITY with `policy`."""
        if self.stack.facade is not None:
            processes.stop(self.stack.facade)
            self.stack.facade = None
        self.stack.stop_service("text")
        self.stack.start_service("text", env={"HUBMESH_MAX_IN_FLIGHT": str(CAPACITY), "HUBMESH_ADMISSION": policy})
        self.stack.start_facade()

    def admission_counters(self) -> dict[str, float]:
        url = f"http://127.0.0.1:{self.stack.config.ports['text']['metrics']}/metrics"
        counters = {f"admitted_{how}": metric_sum(url, "hubmesh_admission_admitted_total", how=how)
                    for how in ("at_once", "borrowed", "after_wait")}
        counters.update({f"refused_{reason}": metric_sum(url, "hubmesh_admission_refused_total", reason=reason)
                         for reason in ("at_capacity", "over_share", "wait_timeout")})
        return {k: int(v) for k, v in counters.items()}

    def stop(self) -> None:
        self.stack.stop()


async def run_policy(stack: Stack, seed: int, b_seconds: float, a_seconds: float, ramp_s: float) -> dict:
    url, tokens = stack.url, stack.tokens
    meter = CpuMeter(stack.stack)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as http:
        await asyncio.gather(*(one(http, url, tokens[t], t, -i, 8) for t in "AB" for i in range(4)))  # warm
        b_alone = await drive(http, url, tokens["B"], "B", B_RATE, b_seconds, B_TOKENS, seed)
        # A alone: a probe of the generation time gives the capacity in requests/s, then the flood
        probe = await asyncio.gather(*(one(http, url, tokens["A"], "A", -100 - i, A_TOKENS) for i in range(4)))
        gen_s = sum(o.ended - o.sent for o in probe if o.ended) / len(probe)
        a_rate = FLOOD * CAPACITY / gen_s
        started = time.monotonic()
        a_alone = await drive(http, url, tokens["A"], "A", a_rate, a_seconds, A_TOKENS, seed + 1)
        window = (started + ramp_s, started + a_seconds)
        capacity_tps = tokens_in(a_alone, *window) / (window[1] - window[0])
        # A floods; B at the same rate as alone once A holds the service
        stop = asyncio.Event()
        flood = asyncio.create_task(drive(http, url, tokens["A"], "A", a_rate, 3600, A_TOKENS, seed + 2, stop))
        await asyncio.sleep(ramp_s)  # (the load's ramp, not a synchronisation)
        cpu_before, b_start = meter.snapshot(), time.monotonic()
        b_flood = await drive(http, url, tokens["B"], "B", B_RATE, b_seconds, B_TOKENS, seed)
        b_end, cpu_after = time.monotonic(), meter.snapshot()
        stop.set()
        a_flood = await flood
    b_tps = tokens_in(b_flood, b_start, b_end) / (b_end - b_start)
    a_during = a_figures(a_flood, b_start, b_end)
    left = capacity_tps - b_tps
    alone, with_flood = b_figures(b_alone), b_figures(b_flood)
    ratio = (with_flood["ttft_p99_ms"] / alone["ttft_p99_ms"]
             if with_flood["ttft_p99_ms"] and alone["ttft_p99_ms"] else None)
    return {
        "b_alone": alone,
        "a_alone": {**a_figures(a_alone, *window), "offered_per_s": round(a_rate, 1),
                    "generation_s": round(gen_s, 3)},
        "b_with_flood": {**with_flood, "tokens_per_s": round(b_tps, 1)},
        "a_with_b": {**a_during, "offered_per_s": round(a_rate, 1), "left_by_b_tokens_per_s": round(left, 1),
                     "goodput_of_left": round(a_during["tokens_per_s"] / left, 3) if left > 0 else None},
        "b_ttft_p99_over_alone": round(ratio, 2) if ratio is not None else None,
        "admission": stack.admission_counters(),
        "cpu_cores_while_flooded": {name: round((cpu_after[name] - cpu_before[name]) / (b_end - b_start), 2)
                                    for name in cpu_after},
    }


def measure(quick: bool = False, seed: int = 31) -> dict:
    b_seconds, a_seconds, ramp_s = (15.0, 8.0, 3.0) if quick else (40.0, 12.0, 3.0)
    with tempfile.TemporaryDirectory(prefix="hubmesh-noisy-") as tmp:
        stack = Stack(Path(tmp))
        print(f"noisy_neighbour: starting a sim Triton, the text service and the façade (logs in {tmp}/logs)",
              flush=True)
        results: dict = {
            "capacity": CAPACITY, "sim": PACE, "b_rate_per_s": B_RATE, "b_tokens": B_TOKENS, "a_tokens": A_TOKENS,
            "flood_x_capacity": FLOOD, "b_seconds": b_seconds, "targets": TARGETS,
        }
        try:
            stack.start()
            for policy in POLICIES:
                stack.serve(policy)
                figures = asyncio.run(run_policy(stack, seed, b_seconds, a_seconds, ramp_s))
                figures["targets_met"] = {
                    "b_success": figures["b_with_flood"]["success_rate"] == 1.0,
                    "b_ttft_p99_over_alone": (figures["b_ttft_p99_over_alone"] or 99) <= TARGETS["b_ttft_p99_over_alone"],
                    "a_goodput_of_left": (figures["a_with_b"]["goodput_of_left"] or 0) >= TARGETS["a_goodput_of_left"],
                }
                results[policy] = figures
                print(f"noisy_neighbour {policy}: {json.dumps(figures)}", flush=True)
        finally:
            stack.stop()
    return results


def rows(results: dict) -> list[str]:
    """The report's section (bench/report.py): B alone and beside A's flood, per policy; A's goodput."""
    if "error" in results:
        return [f"Not measured: {results['error']}"]
    lines = [
        f"The text service admitting {results['capacity']} generations (one `sim` Triton, {results['sim']}); "
        f"tenant B streams ~{results['b_tokens']} tokens at {results['b_rate_per_s']} requests/s (Poisson), "
        f"tenant A asks for ~{results['a_tokens']} at {results['flood_x_capacity']}x the service's capacity "
        f"in requests/s; each a JWT subject of its own, through the façade; {results['b_seconds']} s of B "
        "per phase. Targets: B 100% served, TTFT p99 <= 1.5x alone, A >= 90% of what B leaves.", "",
        "| admission | B alone: TTFT p50 / p99 | B beside A: served | B beside A: TTFT p50 / p99 | p99 vs alone "
        "| A's tokens/s / what B leaves | A's 429s |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for policy in POLICIES:
        f = results.get(policy)
        if not f:
            continue
        alone, flood, a = f["b_alone"], f["b_with_flood"], f["a_with_b"]
        met = f.get("targets_met", {})
        lines.append(
            f"| `{policy}` | {alone['ttft_p50_ms']} / {alone['ttft_p99_ms']} ms | "
            f"{100 * (flood['success_rate'] or 0):.1f}% ({flood['requests']}) | "
            f"{flood['ttft_p50_ms']} / {flood['ttft_p99_ms']} ms | {f['b_ttft_p99_over_alone']}x | "
            f"{a['tokens_per_s']} / {a['left_by_b_tokens_per_s']} ({a['goodput_of_left']}) | "
            f"{a['statuses'].get('429', 0)} of {a['requests']} |")
        lines.append(f"| | targets met: {', '.join(k for k, v in met.items() if v) or 'none'} | | | | | |")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    text = json.dumps(measure(args.quick), indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
