"""Routing figures: 4 simulated Tritons behind the text service, every strategy at the same offered load.

The text Tritons load only `sim` (model_repository/sim: Llama-3-8B on one H200 in time, with a
prefix-cached KV pool); the text service serves catalog.sim.toml; no façade, no other modality. The
driver calls the text service's gRPC API (hubmesh.text.v1.TextGeneration/GenerateStream, chat input,
so prompts are rendered by the model's template as in production) on an **open-loop** schedule:
Poisson arrivals, seeded, the same for every strategy. Two workloads:

- *shared prefix*: tenants, each with a long system prompt (2–4 k tokens under the simulator's
  tokenisation rule) and short questions; plus multi-turn sessions of those tenants whose prompt grows
  by the previous answer and a new question each turn. A session's next turn leaves at its scheduled
  time, or when the previous answer is complete if that is later (nobody asks before reading);
- *no shared prefix*: unique prompts of 200–3000 tokens.

Between runs the text service is restarted with `HUBMESH_TEXT_ROUTING=<strategy>` and every Triton
reloads `sim` (Triton's model-control API, with the bench's parameters as a config override), so each
strategy starts from empty KV caches. The KV capacity is set so that all tenants' system prompts fit
in the 4 replicas together but not in one: that is what makes routing matter. "prefix, 2 pickers":
two text-service processes (both `prefix`) against the same 4 Tritons, the driver alternating
requests between them.

*By text-service count* (issue 29): the prefix strategy with 1, 2, 4 and 8 text-service processes
against the same 4 Tritons, the driver spreading requests over them round robin (as the façade's
links do), their pickers sharing one routing view over a private nats-server (services.text.prefix_view;
a fresh subject per run, so nothing is replayed from the run before), and 4 of them each on its own
index (the view off: the issue's failure); the no-shared-prefix workload with 1 and 4. `--chaos`: 4
text services under the shared-prefix workload while the bus is SIGKILLed and restarted and one text
service is stopped, the requests sent as the façade sends them (its links; a stream whose text service
is lost goes on through another: facade/resumable.py); the hit ratio and TTFT second by second.

Per strategy and workload: TTFT (first delta with text) p50/p99, end-to-end p50/p99, output tokens/s,
the prefix-cache hit ratio (the Tritons' counters, or the usage's cached tokens), the busiest replica's
share of requests as max/mean, the picker's own cost per request (µs, in-process), the mesh's CPU.

    .venv/bin/python -m bench.routing [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import re
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from bench import SIM_CATALOG
from bench.cpu import CpuMeter
from facade.resumable import RESUMES, ResumableStream
from facade.text_streams import TextStreams
from hubmesh.text.v1 import text_generation_pb2 as pb
from hubmesh.text.v1 import text_generation_pb2_grpc as pb_grpc
from local import processes
from local.prometheus import metric_sum
from local.stack import MODALITIES, LocalStack, StackConfig
from services.common.grpc_options import CHANNEL_OPTIONS
from services.common.internal_auth import SECRET_METADATA_KEY

MODEL = "hubmesh/sim-llama-3-8b"
TRITON_MODEL = "sim"
STRATEGIES = ("round_robin", "least_request", "prefix")
WORKLOADS = ("shared_prefix", "no_shared_prefix")
REPLICAS = 4
# the simulator's tokenisation rule (model_repository/sim/1/simtext.py): the whitespace before a word
# plus at most 4 of its characters is one token; ~4 characters a token
PIECE = re.compile(r"\s*\S{1,4}|\s+")

# The simulator's parameters for this benchmark (config override of every replica's `sim`):
# - kv_cache_tokens: 32 k tokens a replica. The shared-prefix workload's system prompts add up to
#   ~68 k tokens (24 tenants x 2-4 k) and its sessions to a few k more: they fit in the 4 replicas
#   together (128 k) but not in one, so a strategy that sends every tenant everywhere makes each
#   replica's LRU cache churn, and one that keeps each tenant on a replica or two keeps it cached.
#   (An H200 holds ~830 k tokens of Llama-3-8B KV at 0.9 memory utilisation: this stands for a
#   replica whose cache is shared by far more, or far longer, prefixes, in proportion.)
# - time_scale 2: every simulated duration takes twice as long in wall time, so the offered load
#   (40 simulated requests/s on the shared-prefix workload, 32 on the other) is 20 and 16 requests/s
#   of wall time: few enough for 2 cores to carry with room to spare (each run reports the mesh's CPU,
#   ~0.3-0.5 cores here), many enough for p99s over several hundred requests.
SIM_PARAMETERS = {"kv_cache_tokens": 32_000, "time_scale": 2.0}
TENANTS = 24

WORDS_RNG_ALPHABET = "abcdefghijklmnopqrstuvwxyz"


def tokens(text: str) -> int:
    return len(PIECE.findall(text))


# ---------------------------------------------------------------------------------------------- workloads


@dataclass
class Turn:
    """One request of the schedule. A session's turn is completed with the history when it is sent."""

    at: float  # seconds from the start of the run
    system: str | None
    question: str
    max_tokens: int
    seed: int
    session: int | None = None  # requests of one session go in order, each after the previous answer
    tenant: int | None = None
    measured: bool = True  # False in the warm-up: sent, not counted


@dataclass
class Workload:
    name: str
    duration_s: float
    warmup_s: float
    rate: float  # offered requests/s (in wall time)
    turns: list[Turn]
    description: str


def _words(rng: random.Random, count: int) -> str:
    return " ".join(
        "".join(rng.choice(WORDS_RNG_ALPHABET) for _ in range(rng.choice((2, 3, 4, 4, 5, 6, 7, 8, 9))))
        for _ in range(count)
    )


def _text_of_tokens(rng: random.Random, target: int, head: str = "") -> str:
    """`head` followed by random words until the text is `target` tokens (the simulator's rule)."""
    text = head
    while tokens(text) < target:
        text += " " + _words(rng, max(8, (target - tokens(text)) // 2))
    pieces = PIECE.findall(text)
    return "".join(pieces[:target])


def _poisson(rng: random.Random, rate: float, start: float, end: float) -> list[float]:
    out, t = [], start
    while True:
        t += rng.expovariate(rate)
        if t >= end:
            return out
        out.append(t)


def shared_prefix(seed: int, duration_s: float, rate: float, warmup_s: float, tenants: int = TENANTS,
                  sessions: int = 12, session_share: float = 0.25) -> Workload:
    """Tenants with long system prompts and short questions (Poisson, `1 - session_share` of `rate`),
    plus multi-turn sessions (the rest of the rate, spread over `sessions` conversations)."""
    rng = random.Random(seed)
    systems = [
        _text_of_tokens(rng, rng.randint(2000, 4000), f"You are the assistant of tenant {k}. Rules and documents:")
        for k in range(tenants)
    ]
    turns = [
        Turn(at, systems[t], _words(rng, rng.randint(8, 24)) + "?", rng.randint(16, 64), rng.randrange(1 << 30),
             tenant=t)
        for at in _poisson(rng, rate * (1 - session_share), 0.0, duration_s)
        for t in (rng.randrange(tenants),)
    ]
    # sessions: each starts in the first third of the run, then a turn every ~ sessions / (share x rate) s
    per_session_rate = rate * session_share / sessions
    for s in range(sessions):
        tenant = rng.randrange(tenants)
        start = rng.uniform(0, duration_s / 3)
        times = [start, *_poisson(rng, per_session_rate, start, duration_s)]
        turns += [Turn(at, systems[tenant], _words(rng, rng.randint(8, 24)) + "?", rng.randint(16, 64),
                       rng.randrange(1 << 30), session=s, tenant=tenant) for at in times]
    turns.sort(key=lambda t: t.at)
    for turn in turns:
        turn.measured = turn.at >= warmup_s
    prefix_tokens = sum(tokens(s) for s in systems)
    return Workload(
        "shared_prefix", duration_s, warmup_s, rate, turns,
        f"{tenants} tenants, system prompts of 2-4 k tokens ({prefix_tokens} in all), questions of 8-24 words, "
        f"16-64 output tokens; {sessions} multi-turn sessions ({session_share:.0%} of requests)",
    )


def no_shared_prefix(seed: int, duration_s: float, rate: float, warmup_s: float) -> Workload:
    """Unique prompts of 200-3000 tokens (a single user message each), 16-64 output tokens."""
    rng = random.Random(seed + 1)
    turns = [Turn(at, None, _text_of_tokens(rng, rng.randint(200, 3000), f"Request {i}:"), rng.randint(16, 64),
                  rng.randrange(1 << 30))
             for i, at in enumerate(_poisson(rng, rate, 0.0, duration_s))]
    for turn in turns:
        turn.measured = turn.at >= warmup_s
    return Workload("no_shared_prefix", duration_s, warmup_s, rate, turns,
                    "unique prompts of 200-3000 tokens, 16-64 output tokens")


# ---------------------------------------------------------------------------------------------- driver


@dataclass
class Outcome:
    turn: Turn
    target: int
    sent: float = 0.0
    first: float | None = None
    done: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int | None = None
    error: str | None = None
    late_s: float = 0.0  # a session turn sent after its scheduled time (its previous answer came late)


def _messages(turn: Turn, history: list[tuple[str, str]]) -> list[pb.ChatMessage]:
    out = [pb.ChatMessage(role="system", content=turn.system)] if turn.system else []
    for question, answer in history:
        out += [pb.ChatMessage(role="user", content=question), pb.ChatMessage(role="assistant", content=answer)]
    return [*out, pb.ChatMessage(role="user", content=turn.question)]


def _has_cached_tokens() -> bool:
    return "cached_tokens" in pb.Usage.DESCRIPTOR.fields_by_name


async def drive(targets: list[str], secret: str, workload: Workload, timeout_s: float = 120.0,
                as_facade: bool = False) -> list[Outcome]:
    """Sends the workload's schedule (open loop) to the text services at `targets`, alternating;
    `as_facade`: through the façade's own links instead of a call each, each stream going on through
    another text service when its own is lost (facade/resumable.py)."""
    channels = [grpc.aio.insecure_channel(t, options=CHANNEL_OPTIONS) for t in targets]
    stubs = [pb_grpc.TextGenerationStub(c) for c in channels]
    metadata = ((SECRET_METADATA_KEY, secret),) if secret else ()
    links = [TextStreams(stub, metadata) for stub in stubs] if as_facade else []

    def messages(target: int, request: pb.GenerateRequest):
        if not links:
            return stubs[target].GenerateStream(request, metadata=metadata, timeout=timeout_s)
        stream = ResumableStream(links[target], request, timeout_s)

        async def read():
            while (message := await stream.read()) is not grpc.aio.EOF:
                yield message
        return read()
    cached_field = _has_cached_tokens()
    loop = asyncio.get_running_loop()
    outcomes: list[Outcome] = []
    index = {id(t): i for i, t in enumerate(workload.turns)}

    async def one(turn: Turn, history: list[tuple[str, str]], late: float) -> str:
        i = index[id(turn)]
        outcome = Outcome(turn, i % len(stubs), late_s=late)
        outcomes.append(outcome)
        request = pb.GenerateRequest(
            model=MODEL, chat=pb.ChatInput(messages=_messages(turn, history)),
            sampling=pb.SamplingParameters(max_tokens=turn.max_tokens, seed=turn.seed, temperature=0.0),
        )
        parts: list[str] = []
        outcome.sent = time.perf_counter()
        try:
            async for message in messages(outcome.target, request):
                for delta in message.deltas:
                    if delta.text:
                        if outcome.first is None:
                            outcome.first = time.perf_counter()
                        parts.append(delta.text)
                if message.HasField("usage"):
                    outcome.prompt_tokens = message.usage.prompt_tokens
                    outcome.completion_tokens = message.usage.completion_tokens
                    if cached_field and message.usage.HasField("cached_tokens"):
                        outcome.cached_tokens = message.usage.cached_tokens
            outcome.done = time.perf_counter()
        except grpc.aio.AioRpcError as err:
            outcome.error = err.code().name
        return "".join(parts)

    start = loop.time() + 0.2
    start_perf = time.perf_counter() + 0.2

    async def at(offset: float) -> None:
        delay = start + offset - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)

    async def session(turns: list[Turn]) -> None:
        history: list[tuple[str, str]] = []
        for turn in turns:
            await at(turn.at)
            late = max(0.0, time.perf_counter() - start_perf - turn.at)
            answer = await one(turn, list(history), late)
            history.append((turn.question, answer))

    tasks = []
    sessions: dict[int, list[Turn]] = {}
    for turn in workload.turns:
        if turn.session is not None:
            sessions.setdefault(turn.session, []).append(turn)
    tasks += [asyncio.create_task(session(turns)) for turns in sessions.values()]
    for turn in workload.turns:
        if turn.session is None:
            await at(turn.at)
            tasks.append(asyncio.create_task(one(turn, [], 0.0)))
    await asyncio.gather(*tasks)
    for streams in links:
        await streams.close()
    for channel in channels:
        await channel.close()
    return outcomes


# ---------------------------------------------------------------------------------------------- figures


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(k), math.ceil(k)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 1)


def _prometheus(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus endpoint: (name, sorted labels) -> value; {} if unreachable."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return {}
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def _sum(samples: dict, names: tuple[str, ...], **labels: str) -> float | None:
    """Sum of the first of `names` that is present (with these labels); None when none is."""
    for name in names:
        found = [v for (n, ls), v in samples.items() if n == name and all((k, v2) in ls for k, v2 in labels.items())]
        if found:
            return sum(found)
    return None


HITS = ("vllm:prefix_cache_hits_total", "vllm:prefix_cache_hits")
QUERIES = ("vllm:prefix_cache_queries_total", "vllm:prefix_cache_queries")
SUCCESS = ("vllm:request_success_total", "vllm:request_success")
DECISIONS = ("hubmesh_route_decisions_total", "hubmesh_route_decisions")


def triton_counters(stack: LocalStack) -> list[dict[str, float | None]]:
    """Per text replica: prefix-cache hits and queries (tokens), requests finished."""
    out = []
    for triton in stack.replicas["text"]:
        samples = _prometheus(f"http://127.0.0.1:{triton.metrics_port}/metrics")
        out.append({"hits": _sum(samples, HITS), "queries": _sum(samples, QUERIES),
                    "requests": _sum(samples, SUCCESS) or _sum(samples, ("nv_inference_request_success",),
                                                               model=TRITON_MODEL)})
    return out


def route_decisions(metrics_ports: list[int]) -> dict[str, float]:
    """replica -> calls the text service(s) routed there (hubmesh_route_decisions_total), summed."""
    out: dict[str, float] = {}
    for port in metrics_ports:
        for (name, labels), value in _prometheus(f"http://127.0.0.1:{port}/metrics").items():
            if name in DECISIONS:
                replica = dict(labels).get("replica", "?")
                out[replica] = out.get(replica, 0.0) + value
    return out


def _delta(before: dict, after: dict) -> dict:
    return {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}


def summarise(outcomes: list[Outcome], workload: Workload, tritons: list[dict], routed: dict[str, float],
              cpu: dict[str, float], wall_s: float) -> dict:
    measured = [o for o in outcomes if o.turn.measured]
    ok = [o for o in measured if o.error is None and o.done is not None]
    errors: dict[str, int] = {}
    for o in measured:
        if o.error is not None:
            errors[o.error] = errors.get(o.error, 0) + 1
    ttft = [o.first - o.sent for o in ok if o.first is not None]
    e2e = [o.done - o.sent for o in ok]
    span = (max(o.done for o in ok) - min(o.sent for o in ok)) if ok else 0.0
    out_tokens = sum(o.completion_tokens for o in ok)
    figures: dict = {
        "requests": len(measured), "ok": len(ok), "errors": errors,
        "ttft_p50_ms": _ms(_pct(ttft, 50)), "ttft_p99_ms": _ms(_pct(ttft, 99)),
        "e2e_p50_ms": _ms(_pct(e2e, 50)), "e2e_p99_ms": _ms(_pct(e2e, 99)),
        "output_tokens_per_s": round(out_tokens / span, 1) if span else None,
        "late_session_turns": sum(1 for o in measured if o.late_s > 0.05),
    }
    # prefix-cache hit ratio: the Tritons' counters (every request, warm-up included), else the usage's
    hits = [t["hits"] for t in tritons]
    queries = [t["queries"] for t in tritons]
    if all(h is not None for h in hits) and all(q is not None for q in queries) and sum(queries) > 0:
        figures["prefix_hit_ratio"] = round(sum(hits) / sum(queries), 3)
        figures["prefix_hit_ratio_source"] = "Triton vllm:prefix_cache_hits / _queries (whole run)"
    else:
        cached = [o for o in ok if o.cached_tokens is not None]
        if cached:
            figures["prefix_hit_ratio"] = round(
                sum(o.cached_tokens for o in cached) / max(1, sum(o.prompt_tokens for o in cached)), 3)
            figures["prefix_hit_ratio_source"] = "usage.cached_tokens / prompt_tokens (measured requests)"
        else:
            figures["prefix_hit_ratio"] = None
            figures["prefix_hit_ratio_source"] = "missing (no vllm:prefix_cache_* metric, no usage.cached_tokens)"
    # the busiest replica's share: requests per replica from the Tritons, else the services' decisions
    per_replica = [t["requests"] for t in tritons]
    if all(r is not None for r in per_replica) and sum(per_replica) > 0:
        source = "Triton request counters (whole run)"
    elif routed and sum(routed.values()) > 0:
        per_replica, source = list(routed.values()), "hubmesh_route_decisions_total (whole run)"
    else:
        per_replica, source = [], "missing"
    if per_replica:
        mean = sum(per_replica) / REPLICAS
        figures["requests_per_replica"] = [int(r) for r in per_replica]
        figures["busiest_over_mean"] = round(max(per_replica) / mean, 2) if mean else None
    else:
        figures["busiest_over_mean"] = None
    figures["busiest_source"] = source
    if routed:
        figures["route_decisions"] = {k: int(v) for k, v in sorted(routed.items())}
    mesh_s = sum(v for k, v in cpu.items() if not k.startswith("load generator"))
    figures["mesh_cpu_cores"] = round(mesh_s / wall_s, 2) if wall_s else None
    figures["driver_cpu_cores"] = round(cpu.get("load generator (this process)", 0.0) / wall_s, 2) if wall_s else None
    return figures


# ---------------------------------------------------------------------------------------------- the stack


def routing_config(run_dir: Path | None = None) -> StackConfig:
    """4 text Tritons serving only `sim`, behind a text service with catalog.sim.toml."""
    run_dir = run_dir or Path(tempfile.mkdtemp(prefix="hubmesh-routing-"))
    config = StackConfig.with_free_ports(api_key="routing", run_dir=run_dir, replicas={"text": REPLICAS})
    config.models = {"text": (TRITON_MODEL,)}
    config.extra_env.update({
        "HUBMESH_TEXT_CATALOG": str(SIM_CATALOG),
        "HUBMESH_MAX_IN_FLIGHT": "4096",  # open loop: the admission limit is not what is measured
        "HUBMESH_GRACE_S": "0",
    })
    return config


def _http_json(url: str, body: dict | None = None, timeout_s: float = 60.0) -> dict:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        text = response.read()
    return json.loads(text) if text else {}


def reload_sim(stack: LocalStack, parameters: dict) -> None:
    """Every text replica loads `sim` again (a fresh engine: empty KV cache, zeroed counters) with
    `parameters` over its config.pbtxt's.

    Triton skips a load whose config equals the loaded one (it logs "successfully loaded" without
    initialising the model again), so each load carries a new `bench_reset` parameter, which the
    simulator ignores."""
    nonce = str(time.monotonic_ns())

    def one(triton) -> None:
        base = f"http://127.0.0.1:{triton.http_port}/v2"
        config = _http_json(f"{base}/models/{TRITON_MODEL}/config")
        params = dict(config.get("parameters") or {})
        params.update({k: {"string_value": str(v)} for k, v in {**parameters, "bench_reset": nonce}.items()})
        config["parameters"] = params
        _http_json(f"{base}/repository/models/{TRITON_MODEL}/load", {"parameters": {"config": json.dumps(config)}},
                   timeout_s=120)
    with ThreadPoolExecutor(len(stack.replicas["text"])) as pool:
        for future in [pool.submit(one, t) for t in stack.replicas["text"]]:
            future.result()


def sim_parameters(stack: LocalStack) -> dict[str, str]:
    config = _http_json(f"http://127.0.0.1:{stack.replicas['text'][0].http_port}/v2/models/{TRITON_MODEL}/config")
    return {k: v.get("string_value") for k, v in (config.get("parameters") or {}).items() if k != "bench_reset"}


@dataclass
class Pickers:
    """The text-service processes of one run: (instance name, listen target, metrics port)."""

    instances: list[tuple[str, str, int]] = field(default_factory=list)

    @property
    def targets(self) -> list[str]:
        return [t for _, t, _ in self.instances]

    @property
    def metrics_ports(self) -> list[int]:
        return [p for _, _, p in self.instances]


def start_pickers(stack: LocalStack, strategy: str, count: int, ports: list[tuple[int, int]],
                  env: dict[str, str] | None = None) -> Pickers:
    """`count` text-service processes with HUBMESH_TEXT_ROUTING=strategy against every replica
    (spawned together, each waited for)."""
    pickers = Pickers()
    procs = []
    for i in range(count):
        listen, metrics = ports[i]
        name = "text" if i == 0 else f"text-{i}"
        procs.append(stack.spawn_service("text", instance=name, listen_port=listen, metrics_port=metrics,
                                         env={"HUBMESH_TEXT_ROUTING": strategy, **(env or {})}))
        pickers.instances.append((name, f"127.0.0.1:{listen}", metrics))
    for (name, _, _), (listen, _), proc in zip(pickers.instances, ports, procs, strict=False):
        processes.wait_until(lambda p=listen: stack.service_ready("text", p), 60.0, f"{name} service", proc,
                             stack.logs / f"{name}.log")
    _wait_replicas_admitted(pickers)
    if (env or {}).get("HUBMESH_TEXT_ROUTING_BUS_URL"):
        _wait_views_live(pickers)
    return pickers


def _wait_views_live(pickers: Pickers, timeout_s: float = 15.0) -> None:
    """Until every service's routing view is connected and hears from every other (hubmesh_prefix_view_*)."""
    deadline = time.monotonic() + timeout_s
    for port in pickers.metrics_ports:
        while time.monotonic() < deadline:
            samples = _prometheus(f"http://127.0.0.1:{port}/metrics")
            live = _sum(samples, ("hubmesh_prefix_view_live",))
            peers = _sum(samples, ("hubmesh_prefix_view_peers",))
            if live == 1 and peers is not None and peers >= len(pickers.instances) - 1:
                break
            time.sleep(0.1)
        else:
            raise RuntimeError(f"the text service with metrics on {port} has no live routing view")


def _wait_replicas_admitted(pickers: Pickers, timeout_s: float = 15.0) -> None:
    """Until each service sees every replica ready (hubmesh_replica_ready), where it exports that."""
    deadline = time.monotonic() + timeout_s
    for port in pickers.metrics_ports:
        while time.monotonic() < deadline:
            samples = _prometheus(f"http://127.0.0.1:{port}/metrics")
            ready = _sum(samples, ("hubmesh_replica_ready",))
            if ready is None or ready >= REPLICAS:
                break
            time.sleep(0.2)


def stop_pickers(stack: LocalStack, pickers: Pickers) -> None:
    for name, _, _ in pickers.instances:
        stack.stop_service(name)


def _prompts(workload: Workload) -> list[str]:
    from services.text.catalog import load_catalog

    template = load_catalog(SIM_CATALOG)[MODEL].chat_template
    prompts = []
    for turn in workload.turns[:2000]:
        messages = ([{"role": "system", "content": turn.system}] if turn.system else [])
        prompts.append(template.render([*messages, {"role": "user", "content": turn.question}]))
    return prompts


def view_costs(workload: Workload) -> dict:
    """What the shared routing view adds per decision (publish) and per peer's decision (apply), µs."""
    try:
        from services.text.prefix_picker import view_cost_us

        return view_cost_us(_prompts(workload), replicas=REPLICAS)
    except Exception as err:
        return {"missing": f"{type(err).__name__}: {err}"}


def picker_costs(workload: Workload) -> dict[str, dict]:
    """Each strategy's own cost per request in µs, in this process, on the workload's rendered prompts."""
    try:
        from services.text.prefix_picker import picker_cost_us
    except ImportError as err:
        return {s: {"missing": f"services.text.prefix_picker.picker_cost_us: {err}"} for s in STRATEGIES}
    from services.text.catalog import load_catalog

    template = load_catalog(SIM_CATALOG)[MODEL].chat_template
    prompts = []
    for turn in workload.turns[:2000]:
        messages = ([{"role": "system", "content": turn.system}] if turn.system else [])
        prompts.append(template.render([*messages, {"role": "user", "content": turn.question}]))
    out = {}
    for strategy in STRATEGIES:
        try:
            out[strategy] = picker_cost_us(strategy, prompts, replicas=REPLICAS)
        except Exception as err:
            out[strategy] = {"missing": f"{type(err).__name__}: {err}"}
    return out


# ---------------------------------------------------------------------------------------------- the runs


def run_one(stack: LocalStack, label: str, strategy: str, pickers_count: int, workload: Workload,
            ports: list[tuple[int, int]], parameters: dict, env: dict[str, str] | None = None) -> dict:
    started = time.monotonic()
    reload_sim(stack, parameters)
    pickers = start_pickers(stack, strategy, pickers_count, ports, env)
    try:
        tritons_before = triton_counters(stack)
        routed_before = route_decisions(pickers.metrics_ports)
        meter = CpuMeter(stack)
        cpu_before = meter.snapshot()
        wall = time.perf_counter()
        outcomes = asyncio.run(drive(pickers.targets, stack.config.internal_secret, workload))
        wall = time.perf_counter() - wall
        cpu_after = meter.snapshot()
        cpu = {k: cpu_after[k] - cpu_before.get(k, 0.0) for k in cpu_after}
        time.sleep(0.3)  # the simulator publishes its counters every 0.1 s
        tritons_after = triton_counters(stack)
        tritons = [{k: (None if a[k] is None else a[k] - (b[k] or 0.0)) for k in a}
                   for b, a in zip(tritons_before, tritons_after, strict=True)]
        routed = _delta(routed_before, route_decisions(pickers.metrics_ports))
    finally:
        stop_pickers(stack, pickers)
    figures = summarise(outcomes, workload, tritons, routed, cpu, wall)
    figures["cpu_cores_by_process"] = {k: round(v / wall, 3) for k, v in sorted(cpu.items()) if v > 0}
    figures["strategy"], figures["pickers"] = strategy, pickers_count
    figures["shared_view"] = bool((env or {}).get("HUBMESH_TEXT_ROUTING_BUS_URL"))
    print(f"  {workload.name:<17} {label:<18} TTFT p50 {figures['ttft_p50_ms']} ms, p99 {figures['ttft_p99_ms']} ms; "
          f"e2e p50 {figures['e2e_p50_ms']} ms; {figures['output_tokens_per_s']} tok/s; "
          f"hit {figures['prefix_hit_ratio']}; busiest/mean {figures['busiest_over_mean']}; "
          f"errors {figures['errors'] or 0}; mesh CPU {figures['mesh_cpu_cores']} cores "
          f"({time.monotonic() - started:.0f} s)", flush=True)
    return figures


def _ratio(a, b) -> float | None:
    return round(a / b, 3) if a is not None and b not in (None, 0) else None


def targets(results: dict) -> dict:
    """The issue's targets, as measured ratios (not judged here beyond `met`)."""
    out: dict = {}
    shared = results.get("shared_prefix", {})
    rr, lr, px = (shared.get(s) for s in STRATEGIES)
    if rr and lr and px:
        out["shared_prefix"] = {
            "ttft_p50_round_robin_over_prefix (>= 3)": _ratio(rr["ttft_p50_ms"], px["ttft_p50_ms"]),
            "throughput_prefix_over_round_robin (> 1)": _ratio(px["output_tokens_per_s"], rr["output_tokens_per_s"]),
            "ttft_p99_prefix_over_least_request (<= 1)": _ratio(px["ttft_p99_ms"], lr["ttft_p99_ms"]),
            "busiest_over_mean_prefix (<= 1.5)": px["busiest_over_mean"],
        }
        two = shared.get("prefix, 2 pickers")
        if two:
            out["shared_prefix"]["busiest_over_mean_prefix_2_pickers (<= 1.5)"] = two["busiest_over_mean"]
        r = out["shared_prefix"]
        checks = [
            (r["ttft_p50_round_robin_over_prefix (>= 3)"], lambda v: v >= 3),
            (r["throughput_prefix_over_round_robin (> 1)"], lambda v: v > 1),
            (r["ttft_p99_prefix_over_least_request (<= 1)"], lambda v: v <= 1),
            (r["busiest_over_mean_prefix (<= 1.5)"], lambda v: v <= 1.5),
        ]
        out["shared_prefix"]["met"] = all(v is not None and ok(v) for v, ok in checks)
    scale = results.get("scale_out", {}).get("shared_prefix", {})
    one = scale.get(scale_label(1))
    if one:
        out["scale_out"] = {}
        for n in (2, 4, 8):
            r = scale.get(scale_label(n))
            if not r:
                continue
            figures = {"hit_ratio (>= 0.92)": r["prefix_hit_ratio"],
                       "ttft_p50_over_1_service (<= 1.1)": _ratio(r["ttft_p50_ms"], one["ttft_p50_ms"]),
                       "ttft_p99_over_1_service (<= 1.3)": _ratio(r["ttft_p99_ms"], one["ttft_p99_ms"]),
                       "busiest_over_mean (<= 1.3)": r["busiest_over_mean"]}
            limits = [(0.92, True), (1.1, False), (1.3, False), (1.3, False)]
            figures["met"] = all(v is not None and (v >= lim if at_least else v <= lim)
                                 for v, (lim, at_least) in zip(list(figures.values()), limits, strict=False))
            out["scale_out"][f"{n} services"] = figures
    base = results.get("scale_out", {}).get("no_shared_prefix", {})
    lr1, px4 = base.get("least_request, 1 service"), base.get(scale_label(4))
    if lr1 and px4:
        keys = ("ttft_p50_ms", "ttft_p99_ms", "e2e_p50_ms", "e2e_p99_ms", "output_tokens_per_s")
        ratios = {f"{k}_4_services_over_least_request_1": _ratio(px4[k], lr1[k]) for k in keys}
        out["scale_out_no_shared_prefix"] = {**ratios, "met (each within 5%; lower latency counts as within)": all(
            v is not None and (v <= 1.05 if "tokens" not in k else v >= 0.95) for k, v in ratios.items())}
    none = results.get("no_shared_prefix", {})
    lr, px = none.get("least_request"), none.get("prefix")
    if lr and px:
        figures = ("ttft_p50_ms", "ttft_p99_ms", "e2e_p50_ms", "e2e_p99_ms", "output_tokens_per_s")
        ratios = {f"{f}_prefix_over_least_request": _ratio(px[f], lr[f]) for f in figures}
        out["no_shared_prefix"] = {**ratios, "met (each within 5%; lower latency counts as within)": all(
            v is not None and (v <= 1.05 if "tokens" not in k else v >= 0.95) for k, v in ratios.items())}
    return out


def scale_label(n: int) -> str:
    return f"prefix, {n} service{'s' if n > 1 else ''}" + (", shared view" if n > 1 else "")


def scale_out(stack: LocalStack, made: dict, parameters: dict, services: tuple[int, ...], ports_for) -> dict:
    """The prefix strategy by text-service count (shared view over a private nats-server), one run each."""
    from local.nats import NatsServer

    out: dict = {"shared_prefix": {}, "no_shared_prefix": {}}
    bus = NatsServer(stack.config.run_dir, name="nats-bench").start()
    stack.services["nats (routing bus)"] = bus.proc  # its CPU is the mesh's (bench.cpu reads stack.children())
    try:
        def view_env(tag: str) -> dict[str, str]:
            return {"HUBMESH_TEXT_ROUTING_BUS_URL": bus.url, "HUBMESH_TEXT_ROUTING_BUS_SUBJECT": f"bench.{tag}",
                    "HUBMESH_TEXT_ROUTING_BUS_STREAM": f"BENCH_{tag}"}
        runs = [("shared_prefix", scale_label(n), "prefix", n, view_env(f"s{n}") if n > 1 else {}) for n in services]
        if 4 in services:
            runs.append(("shared_prefix", "prefix, 4 services, own index each", "prefix", 4, {}))
        if "no_shared_prefix" in made:
            runs += [("no_shared_prefix", "least_request, 1 service", "least_request", 1, {}),
                     ("no_shared_prefix", scale_label(1), "prefix", 1, {})]
            if 4 in services:
                runs.append(("no_shared_prefix", scale_label(4), "prefix", 4, view_env("n4")))
        for workload, label, strategy, count, env in runs:
            if workload in made:
                out[workload][label] = run_one(stack, label, strategy, count, made[workload], ports_for(count),
                                               parameters, env)
    finally:
        stack.services.pop("nats (routing bus)", None)
        bus.stop()
    return out


def measure(quick: bool = False, seed: int = 7, parameters: dict | None = None, rates: dict | None = None,
            strategies: tuple[str, ...] = STRATEGIES, workloads: tuple[str, ...] = WORKLOADS,
            two_pickers: bool = True, tenants: int = TENANTS, service_env: dict[str, str] | None = None,
            services: tuple[int, ...] = (1, 2, 4, 8), chaos_run: bool = True) -> dict:
    """Starts its own stack (4 sim Tritons, the text service), runs every strategy on both workloads."""
    parameters = {**SIM_PARAMETERS, **(parameters or {})}
    scale = float(parameters.get("time_scale", 1.0))
    # offered load in simulated requests/s (H200 time), divided by the time scale for wall time
    rates = {"shared_prefix": 40.0, "no_shared_prefix": 32.0, **(rates or {})}
    duration = {"shared_prefix": 15.0 if quick else 30.0, "no_shared_prefix": 12.0 if quick else 20.0}
    warmup = {"shared_prefix": 5.0 if quick else 8.0, "no_shared_prefix": 2.0 if quick else 3.0}
    made = {
        "shared_prefix": shared_prefix(seed, duration["shared_prefix"], rates["shared_prefix"] / scale,
                                       warmup["shared_prefix"], tenants=tenants),
        "no_shared_prefix": no_shared_prefix(seed, duration["no_shared_prefix"], rates["no_shared_prefix"] / scale,
                                             warmup["no_shared_prefix"]),
    }
    started = time.monotonic()
    config = routing_config()
    config.extra_env.update(service_env or {})
    stack = LocalStack(config, modalities=tuple(m for m in MODALITIES if m.name == "text"))
    print(f"routing: starting {REPLICAS} sim Tritons and the text service (logs in {config.run_dir / 'logs'})",
          flush=True)
    taken = set(config._ports_in_use())
    most = max([2, *services])
    spare = [p for p in processes.free_ports(2 * most + len(taken)) if p not in taken][: 2 * (most - 1)]
    ports = [(config.ports["text"]["service"], config.ports["text"]["metrics"])]
    ports += [(spare[2 * i], spare[2 * i + 1]) for i in range(most - 1)]
    results: dict = {
        "replicas": REPLICAS,
        "sim_parameters": {k: str(v) for k, v in parameters.items()},
        "offered_load_requests_per_s": {w: round(made[w].rate, 2) for w in workloads},
        "offered_load_note": (f"latencies and rates are wall-clock; with time_scale {scale:g} the simulated H200 "
                              f"would see latencies / {scale:g} and rates x {scale:g}"),
        "workloads": {w: {"description": made[w].description, "requests": len(made[w].turns),
                          "duration_s": made[w].duration_s, "warmup_s": made[w].warmup_s} for w in workloads},
        "seed": seed,
        "quick": quick,
        "service_env": dict(service_env or {}),
    }
    try:
        stack.start_tritons(wait_s=180)  # each run starts its own text service(s), with its strategy
        results["sim_config_parameters"] = sim_parameters(stack)
        print(f"routing: up in {time.monotonic() - started:.0f} s; sim parameters {parameters}; offered load "
              + ", ".join(f"{w} {made[w].rate:.1f} req/s" for w in workloads), flush=True)
        for w in workloads:
            results[w] = {}
            runs = [(s, s, 1) for s in strategies if s]
            if w == "shared_prefix" and two_pickers and "prefix" in strategies:
                runs.append(("prefix, 2 pickers", "prefix", 2))
            for label, strategy, count in runs:
                results[w][label] = run_one(stack, label, strategy, count, made[w], ports, parameters)
        if services:
            results["scale_out"] = scale_out(stack, made, parameters, services, lambda n: ports[:n])
        # per workload: the prefix picker's cost grows with the prompt's blocks and its index's size
        results["picker_cost_us"] = {w: picker_costs(made[w]) for w in workloads}
        results["view_cost_us"] = {w: view_costs(made[w]) for w in workloads}
    finally:
        stack.stop()
    if chaos_run and services:
        try:
            results["chaos"] = chaos(seed=seed, parameters=parameters)
        except Exception as err:
            results["chaos"] = {"error": f"{type(err).__name__}: {err}"}
    results["targets"] = targets(results)
    results["wall_s"] = round(time.monotonic() - started, 1)
    return results


def chaos(seed: int = 7, services: int = 4, duration_s: float = 45.0, bus_kill_at: float = 10.0,
          bus_back_at: float = 14.0, service_kill_at: float = 24.0, service_back_at: float = 30.0,
          parameters: dict | None = None, signal_name: str = "SIGKILL") -> dict:
    """`services` text services sharing a view over a private nats-server, under the shared-prefix
    workload (one channel over all of them, round robin, as the façade's); at `bus_kill_at` the bus
    is SIGKILLed, at `bus_back_at` started again (same port, empty), at `service_kill_at` the last
    text service gets `signal_name` (SIGKILL: a crash; SIGTERM: a pod deleted, it drains), and at
    `service_back_at` it is started again (it replays the placements from the bus). Per second of send time: requests, errors, hit ratio (usage's cached
    tokens), TTFT p50/p99; and after each event, how long until the hit ratio (2 s window) is back
    within 0.05 of its level before the first event."""
    from local.nats import NatsServer

    parameters = {**SIM_PARAMETERS, **(parameters or {})}
    scale = float(parameters.get("time_scale", 1.0))
    workload = shared_prefix(seed, duration_s, 40.0 / scale, 0.0)
    config = routing_config()
    stack = LocalStack(config, modalities=tuple(m for m in MODALITIES if m.name == "text"))
    taken = set(config._ports_in_use())
    spare = [p for p in processes.free_ports(2 * services + len(taken)) if p not in taken][: 2 * (services - 1)]
    ports = [(config.ports["text"]["service"], config.ports["text"]["metrics"])]
    ports += [(spare[2 * i], spare[2 * i + 1]) for i in range(services - 1)]
    bus = NatsServer(config.run_dir, name="nats-chaos")
    events: list[tuple[str, float]] = []
    moved_before = _resumes()
    try:
        bus.start()
        stack.start_tritons(wait_s=180)
        reload_sim(stack, parameters)
        env = {"HUBMESH_TEXT_ROUTING_BUS_URL": bus.url, "HUBMESH_TEXT_ROUTING_BUS_SUBJECT": "chaos",
               "HUBMESH_TEXT_ROUTING_BUS_STREAM": "CHAOS",
               # SIGTERM: the service drains (NOT_SERVING, its streams finish) as a deleted pod does
               **({"HUBMESH_GRACE_S": "10"} if signal_name == "SIGTERM" else {})}
        pickers = start_pickers(stack, "prefix", services, ports, env)
        target = "ipv4:" + ",".join(t for t in pickers.targets)

        async def run() -> list[Outcome]:
            loop = asyncio.get_running_loop()
            t0 = time.perf_counter() + 0.2

            async def event(at: float, name: str, action) -> None:
                await asyncio.sleep(max(0.0, t0 + at - time.perf_counter()))
                await loop.run_in_executor(None, action)
                events.append((name, round(time.perf_counter() - t0, 2)))

            last = pickers.instances[-1][0]
            listen, metrics = ports[services - 1]

            def restart() -> None:
                proc = stack.spawn_service("text", instance=last, listen_port=listen, metrics_port=metrics,
                                           env={"HUBMESH_TEXT_ROUTING": "prefix", **env})
                processes.wait_until(lambda: stack.service_ready("text", listen), 60.0, last, proc,
                                     stack.logs / f"{last}.log")

            tasks = [asyncio.create_task(event(bus_kill_at, "bus SIGKILLed", bus.kill)),
                     asyncio.create_task(event(bus_back_at, "bus started again", bus.start)),
                     asyncio.create_task(event(service_kill_at, f"text service {last} {signal_name}ed",
                                               lambda: _kill_service(stack, last, signal_name, metrics))),
                     asyncio.create_task(event(service_back_at, f"text service {last} started again", restart))]
            outcomes = await drive([target], stack.config.internal_secret, workload, as_facade=True)
            await asyncio.gather(*tasks)
            return outcomes, t0

        outcomes, t0 = asyncio.run(run())
    finally:
        stack.stop()
        bus.stop()
    moved = {outcome: n - moved_before.get(outcome, 0) for outcome, n in _resumes().items()}
    return {**chaos_curve(outcomes, t0, events, duration_s), "streams_moved": {k: n for k, n in moved.items() if n}}


def _resumes() -> dict[str, int]:
    """The streams this process's façade links have moved to another text service so far, by outcome."""
    moved: dict[str, int] = {}
    for metric in RESUMES.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total") and sample.value:
                outcome = sample.labels["outcome"]
                moved[outcome] = moved.get(outcome, 0) + int(sample.value)
    return moved


def _kill_service(stack: LocalStack, name: str, signal_name: str = "SIGKILL", metrics_port: int | None = None) -> None:
    """Stops text service `name`; with its `metrics_port`, at a moment it has generations in flight
    (within 5 s), so that the streams open on it are part of the run."""
    import os
    import signal

    if metrics_port is not None:
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and not metric_sum(
                f"http://127.0.0.1:{metrics_port}/metrics", "hubmesh_replica_in_flight"):
            time.sleep(0.02)
    proc = stack.services.pop(name)
    os.killpg(proc.pid, getattr(signal, signal_name))
    proc.wait(timeout=30)


def chaos_curve(outcomes: list[Outcome], t0: float, events: list[tuple[str, float]], duration_s: float) -> dict:
    seconds = int(duration_s) + 1
    rows = []
    for second in range(seconds):
        here = [o for o in outcomes if second <= o.sent - t0 < second + 1]
        ok = [o for o in here if o.error is None and o.done is not None]
        cached = [o for o in ok if o.cached_tokens is not None and o.prompt_tokens]
        ttft = [o.first - o.sent for o in ok if o.first is not None]
        rows.append({"second": second, "requests": len(here), "errors": len(here) - len(ok),
                     "hit_ratio": round(sum(o.cached_tokens for o in cached) / sum(o.prompt_tokens for o in cached), 3)
                     if cached else None,
                     "ttft_p50_ms": _ms(_pct(ttft, 50)), "ttft_p99_ms": _ms(_pct(ttft, 99))})

    def window(start: float, end: float) -> float | None:
        cached = [o for o in outcomes if start <= o.sent - t0 < end and o.error is None and o.cached_tokens is not None
                  and o.prompt_tokens]
        return sum(o.cached_tokens for o in cached) / sum(o.prompt_tokens for o in cached) if cached else None

    first_event = min((at for _, at in events), default=duration_s)
    before = window(max(0.0, first_event - 6.0), first_event)
    recovery = {}
    for name, at in events:
        back = None
        if before is not None:
            t = at
            while t + 2.0 <= duration_s:
                level = window(t, t + 2.0)
                if level is not None and level >= before - 0.05:
                    back = round(max(0.0, t - at), 1)
                    break
                t += 0.5
        recovery[name] = back
    errors: dict[str, int] = {}
    for o in outcomes:
        if o.error is not None:
            errors[o.error] = errors.get(o.error, 0) + 1
    return {"events": events, "hit_ratio_before": None if before is None else round(before, 3),
            "back_within_0.05_after_s": recovery, "requests": len(outcomes), "errors": errors,
            "curve": rows}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.routing", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="short runs (~15 s each)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--no-two-pickers", action="store_true")
    parser.add_argument("--tenants", type=int, default=TENANTS)
    parser.add_argument("--sim", action="append", default=[], metavar="NAME=VALUE",
                        help="a sim parameter over the bench's (kv_cache_tokens, time_scale, max_num_seqs, ...)")
    parser.add_argument("--service-env", action="append", default=[], metavar="NAME=VALUE",
                        help="environment of the text service(s), e.g. HUBMESH_TEXT_ROUTING_LOAD_WEIGHT=0.5")
    parser.add_argument("--rate", action="append", default=[], metavar="WORKLOAD=REQ_PER_S",
                        help="offered load in simulated requests/s")
    parser.add_argument("--services", default="1,2,4,8",
                        help="text-service counts of the scale-out table (empty: none)")
    parser.add_argument("--chaos", action="store_true", help="only the chaos run (bus and a text service killed)")
    parser.add_argument("--no-chaos", action="store_true", help="no chaos run after the tables")
    parser.add_argument("--chaos-signal", default="SIGKILL", choices=("SIGKILL", "SIGTERM"),
                        help="how the chaos run stops a text service")
    args = parser.parse_args(argv)
    if args.chaos:
        result = chaos(seed=args.seed, parameters=dict(kv.split("=", 1) for kv in args.sim),
                       signal_name=args.chaos_signal)
        text = json.dumps(result, indent=2)
        print(text)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(text)
        return
    results = measure(
        quick=args.quick, seed=args.seed,
        parameters=dict(kv.split("=", 1) for kv in args.sim),
        rates={k: float(v) for k, v in (kv.split("=", 1) for kv in args.rate)},
        strategies=tuple(args.strategies.split(",")), workloads=tuple(args.workloads.split(",")),
        two_pickers=not args.no_two_pickers, tenants=args.tenants,
        service_env=dict(kv.split("=", 1) for kv in args.service_env),
        services=tuple(int(n) for n in args.services.split(",") if n), chaos_run=not args.no_chaos,
    )
    text = json.dumps(results, indent=2)
    print(text)
    from bench.report import _routing_rows

    print("\n".join(["", *_routing_rows(results)]))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
