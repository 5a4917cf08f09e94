"""Mesh CPU per streamed token at GPU-like token rates: many streams of the engine simulator.

The simulator (`sim`, model_repository/sim) paces its tokens as vLLM serving Llama-3-8B on one
H200 would: every stream of the batch gets its next token at the end of each engine step. Here
`streams` concurrent chat streams (short prompt, `tokens` tokens each) go through the façade while the
CPU time of the façade and of the text service is read from /proc (bench/cpu.py): their sum over the
tokens delivered is the **mesh CPU µs per streamed token**; one mesh core carries 1e6 / that many
tokens/s, and an H200 producing the calibrated engine's tokens/s (decode at max_num_seqs with 1 k tokens
of context each, worked out by the simulator's own timing model) needs that many tokens/s × µs / 1e6
mesh cores.

On this project's 2-core machine the simulator itself costs ~160 µs of CPU a response (its README,
"Limits"), so the bench reloads it with a `time_scale` that keeps it within its timeline: the
inter-token time is the GPU's times `time_scale` (measured, and reported, as is the time the
simulator ran late). CPU per token falls as the rate rises: each token is one message from Triton,
but the tokens the text service has ready together share one GenerateMany message to the façade, and
at higher rates more of them share a wakeup, so these figures err high. What a GPU node would see is
the rate times `time_scale`.

    .venv/bin/python -m bench.token_rate [--runs 64x4,128x8] [--echo 64]

alone starts its own stack (the text modality only: echo and sim) and also measures echo streams
(tokens as fast as Triton carries them) the same way.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import aiohttp

from bench.cpu import CpuMeter, thread_cpu_s, thread_us_per_unit
from bench.stats import percentile
from local.stack import MODALITIES, ROOT, LocalStack, StackConfig

SIM = "hubmesh/sim-llama-3-8b"
ECHO = "hubmesh/echo-benchmark"
PROMPT = "Tell me a long story about a lighthouse keeper."
MESH = ("facade", "text")  # the processes the mesh adds between the client and Triton
LATE = "hubmesh_sim_late_seconds_total"


def _engine_module():
    sim_dir = ROOT / "services" / "text" / "model_repository" / "sim" / "1"
    if str(sim_dir) not in sys.path:
        sys.path.insert(0, str(sim_dir))  # engine.py imports simtext.py beside it
    spec = importlib.util.spec_from_file_location("bench_sim_engine", sim_dir / "engine.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def calibrated_engine(context_tokens: int = 1024) -> dict:
    """The simulator's default engine (Llama-3-8B on one H200) decoding a full batch
    (max_num_seqs sequences of `context_tokens` each): step time and tokens/s, by its own timing model."""
    config = _engine_module().EngineConfig()
    batch = config.max_num_seqs
    step_s = config.step_duration(batch, batch * context_tokens)
    return {"batch": batch, "context_tokens": context_tokens, "step_ms": round(step_s * 1000, 2),
            "tokens_per_s": round(batch / step_s)}


def _sim_late_s(stack: LocalStack) -> float:
    try:
        return stack.triton_metric(LATE, model="sim")
    except OSError:
        return 0.0


async def _streams(stack: LocalStack, model: str, streams: int, tokens: int) -> dict:
    """`streams` concurrent streamed chats of `tokens` tokens through the façade: tokens delivered,
    wall time, per-stream inter-token gaps (client side) and time to first token."""
    headers = {"Authorization": f"Bearer {stack.config.api_key}"}
    body = {"model": model, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": tokens,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    gaps: list[float] = []
    ttfts: list[float] = []
    delivered = 0
    connector = aiohttp.TCPConnector(limit=streams + 8)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as http:

        async def one() -> None:
            nonlocal delivered
            last = time.perf_counter()  # the first gap is the time to first token
            first = True
            async with http.post(stack.config.base_url + "/chat/completions", json=body) as response:
                response.raise_for_status()
                async for line in response.content:
                    if line.startswith(b'data: {') and b'"content":"' in line and b'"content":""' not in line:
                        now = time.perf_counter()
                        (ttfts if first else gaps).append(now - last)
                        first, last = False, now
                    elif line.startswith(b'data: {') and b'"usage":{' in line:
                        delivered += json.loads(line[6:])["usage"]["completion_tokens"]

        start = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(streams)))
        wall = time.perf_counter() - start
    return {"tokens": delivered, "wall_s": wall, "gaps": gaps, "ttfts": ttfts}


async def _run(stack: LocalStack, model: str, streams: int, tokens: int, rounds: int) -> dict:
    meter = CpuMeter(stack)
    await _streams(stack, model, min(streams, 8), 16)  # warm
    results, cpu_s = [], {}
    late_before = _sim_late_s(stack) if model == SIM else 0.0
    pids = {name: (stack.facade if name == "facade" else stack.services[name]).pid for name in MESH}
    threads_before = {name: thread_cpu_s(pid) for name, pid in pids.items()}
    for _ in range(rounds):
        before = meter.snapshot()
        result = await _streams(stack, model, streams, tokens)
        after = meter.snapshot()
        result["cpu_s"] = {k: after[k] - before[k] for k in after}
        results.append(result)
    threads_after = {name: thread_cpu_s(pid) for name, pid in pids.items()}
    tokens_done = sum(r["tokens"] for r in results)
    assert tokens_done == streams * tokens * rounds, f"{model}: {tokens_done} tokens"
    per_round_us = [1e6 * sum(r["cpu_s"].get(k, 0.0) for k in MESH) / r["tokens"] for r in results]
    for r in results:
        for k, v in r["cpu_s"].items():
            cpu_s[k] = cpu_s.get(k, 0.0) + v
    us = {k: round(1e6 * v / tokens_done, 1) for k, v in sorted(cpu_s.items()) if v > 0}
    mesh_us = sum(us.get(k, 0.0) for k in MESH)
    gaps = sorted(g for r in results for g in r["gaps"])
    wall = sum(r["wall_s"] for r in results)
    out = {
        "streams": streams, "tokens_per_stream": tokens, "rounds": rounds,
        "tokens_per_s": round(tokens_done / wall, 1),
        "inter_token_ms_p50": round(1000 * percentile(gaps, 50), 2) if gaps else None,
        "inter_token_ms_p99": round(1000 * percentile(gaps, 99), 2) if gaps else None,
        "ttft_ms_p50": round(1000 * statistics.median(t for r in results for t in r["ttfts"]), 1),
        "cpu_us_per_token": us,
        "mesh_cpu_us_per_token": round(mesh_us, 1),
        "mesh_cpu_us_per_token_rounds": [round(v, 1) for v in per_round_us],
        "tokens_per_s_per_mesh_core": round(1e6 / mesh_us) if mesh_us else None,
        # where each mesh process's CPU per token goes: its event loop's thread or gRPC's own threads
        "cpu_us_per_token_by_thread": {
            name: thread_us_per_unit(threads_before[name], threads_after[name], tokens_done) for name in pids
        },
    }
    if model == SIM:
        out["sim_late_s"] = round(_sim_late_s(stack) - late_before, 2)
    return out


# (concurrent streams, time_scale): 64 streams 4x slower than the H200 (~22 ms between a stream's
# tokens, what a real H200 takes per step at batch 256) and 128 streams 8x slower: the rates this
# machine's two cores carry with the simulator's own CPU (~160 us a response) in the same budget
RUNS = ((64, 4.0), (128, 8.0))


def reload_sim(stack: LocalStack, time_scale: float, timeout_s: float = 60.0) -> None:
    """Every text replica loads `sim` again with `time_scale`; returns once the façade serves it
    (the text service's probe sees the reloaded model ready)."""
    from bench.routing import reload_sim as reload

    reload(stack, {"time_scale": time_scale})
    body = {"model": SIM, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    request = urllib.request.Request(f"{stack.config.base_url}/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Authorization": f"Bearer {stack.config.api_key}",
                                              "Content-Type": "application/json"})
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                response.read()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


async def measure(stack: LocalStack, runs: tuple[tuple[int, float], ...] = RUNS, tokens: int = 256,
                  rounds: int = 2, echo: tuple[int, ...] = ()) -> dict:
    """The simulator with each (streams, time_scale) of `runs` (reloaded on the stack's text
    Tritons), then echo (as fast as Triton carries it) at each of `echo` streams."""
    calibrated = calibrated_engine()
    report: dict = {"calibrated_engine": calibrated, "sim": {}, "echo": {}}
    try:
        for count, scale in runs:
            reload_sim(stack, scale)
            run = await _run(stack, SIM, count, tokens, rounds)
            run["time_scale"] = scale
            us = run["mesh_cpu_us_per_token"]
            run["mesh_cores_per_h200"] = round(calibrated["tokens_per_s"] * us / 1e6, 2)
            report["sim"][f"{count}_streams"] = run
    finally:
        reload_sim(stack, 1.0)  # as the stack started
    for count in echo:
        report["echo"][f"{count}_streams"] = await _run(stack, ECHO, count, tokens, rounds)
    return report


def text_only_config() -> StackConfig:
    """A stack with the text modality only, its Triton serving echo and sim (no SmolLM2)."""
    run_dir = Path(tempfile.mkdtemp(prefix="hubmesh-token-rate-"))
    templates = ROOT / "services" / "text" / "templates"
    catalog = run_dir / "catalog.toml"
    catalog.write_text("".join(
        f'[[models]]\nid = "{model_id}"\ntriton_model = "{triton}"\nchat_template = "{templates / "plain.jinja"}"\n'
        f'context_length = 8192\nowned_by = "hubmesh"\ncreated = 1795564800\n\n'
        for model_id, triton in ((ECHO, "echo"), (SIM, "sim"))
    ))
    config = StackConfig.with_free_ports(api_key="token-rate", run_dir=run_dir)
    config.models = {"text": ("echo", "sim")}
    config.extra_env["HUBMESH_TEXT_CATALOG"] = str(catalog)
    config.extra_env["HUBMESH_MAX_IN_FLIGHT"] = "1024"  # 128 streams and more: above the services' 64
    return config


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.token_rate", description=__doc__.split("\n")[0])
    parser.add_argument("--runs", default=",".join(f"{n}x{scale:g}" for n, scale in RUNS),
                        help="sim runs as STREAMSxTIME_SCALE, comma-separated (default %(default)s)")
    parser.add_argument("--echo", default="64", help="concurrent echo streams, comma-separated ('' for none)")
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    runs = tuple((int(n), float(scale)) for n, scale in (r.split("x") for r in args.runs.split(",") if r))
    echo = tuple(int(s) for s in args.echo.split(",") if s)
    with LocalStack(text_only_config(), modalities=tuple(m for m in MODALITIES if m.name == "text")) as stack:
        results = asyncio.run(measure(stack, runs, args.tokens, args.rounds, echo))
    text = json.dumps(results, indent=2)
    print(text)
    from bench.report import token_rate_rows

    print("\n".join(["", *token_rate_rows({"token_rate": results})]))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text)


if __name__ == "__main__":
    main()
