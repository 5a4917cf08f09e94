"""The peer gateway: the same Triton and models behind LiteLLM's proxy vs behind hubmesh, same load.

LiteLLM (pinned in the Makefile's `peer-venv`, its own venv .venv-peer) runs as a child process with
a config whose model_list points its `triton/` provider at the stack's own Tritons. Both gateways
get byte-identical OpenAI request bodies from the same aiohttp client, in alternating rounds so
machine noise hits both alike:

  (a) non-streaming chat, max_tokens=1: p50/p99 latency at concurrency 1 and 16, requests/s;
  (b) 4 concurrent streams of 64 tokens: aggregate tokens/s and time to first token; and the same for
      16 streams of 256 tokens of the `echo` benchmark model, where the gateway, not the model, is
      the bottleneck;
  (c) embeddings, one sentence per request at concurrency 32: sentences/s.

What LiteLLM's Triton provider cannot do with our models, and what the config does about it
(each is reported in the result under "peer_setup"):

- chat goes to Triton's generate extension (`v2/models/smollm2/generate[_stream]`) as
  {"text_input", "parameters": {"max_tokens"}, "stream"}. Triton hands "parameters" to the model
  as request parameters, not as the `sampling_parameters` tensor of the vLLM contract, so
  max_tokens is silently ignored (the model generates until it stops) and LiteLLM rejects every
  other sampling field for `triton` (UnsupportedParamsError) unless drop_params is on. The bodies
  therefore carry `extra_body: {"sampling_parameters": "<json>"}`: LiteLLM merges extra_body into
  the top level of Triton's request, where it maps to the tensor; hubmesh ignores the unknown field.
- LiteLLM renders the chat prompt with the Hugging Face template of the model name it sends to
  Triton, fetched from huggingface.co on every request when the fetch fails (no internet here):
  the config preloads our ChatML template (`known_tokenizer_config`) so both render the same prompt.
- its `/infer` route cannot serve the text model at all: Triton's HTTP `infer` refuses decoupled
  models ("HTTP end point doesn't support models with decoupled transaction policy").
- embeddings go to `v2/models/minilm/infer` with a tensor named `input_text` of shape [n]; the
  model's input is `text` with shape [n, 1], so every OpenAI request fails. The only way through is
  a client that sends Triton's own tensors in `extra_body` (LiteLLM merges them over its request):
  measured as "embeddings_passthrough", clearly not the OpenAI surface.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import statistics
import time

import aiohttp

from bench.stats import percentile
from local import processes
from local.processes import http_ok
from local.stack import ROOT, LocalStack

PEER_VENV = ROOT / ".venv-peer"
LITELLM = PEER_VENV / "bin" / "litellm"
TEXT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
EMBED_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
CHAT_TEMPLATE = ROOT / "services" / "text" / "templates" / "smollm2-chatml.jinja"
ECHO_MODEL = "hubmesh/echo-benchmark"
PLAIN_TEMPLATE = ROOT / "services" / "text" / "templates" / "plain.jinja"
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]
STORY = [{"role": "user", "content": "Tell me a long story about a lighthouse keeper."}]
NO_END = {"0": -100.0, "2": -100.0}  # <|endoftext|>, <|im_end|>: every stream makes exactly max_tokens


class Unavailable(Exception):
    """The peer cannot do this part; the message says exactly why."""


# -- the peer process ----------------------------------------------------------------------------


def litellm_config(stack: LocalStack, master_key: str) -> dict:
    """LiteLLM proxy config (JSON is valid YAML) fronting the stack's own Tritons."""
    ports = stack.config.ports
    return {
        "model_list": [
            {
                "model_name": TEXT_MODEL,
                "litellm_params": {
                    "model": "triton/smollm2",
                    "api_base": f"http://127.0.0.1:{ports['text']['triton_http']}/v2/models/smollm2/generate",
                },
            },
            {
                "model_name": ECHO_MODEL,
                "litellm_params": {
                    "model": "triton/echo",
                    "api_base": f"http://127.0.0.1:{ports['text']['triton_http']}/v2/models/echo/generate",
                },
            },
            {
                "model_name": EMBED_MODEL,
                "litellm_params": {
                    "model": "triton/minilm",
                    "api_base": f"http://127.0.0.1:{ports['embeddings']['triton_http']}/v2/models/minilm/infer",
                },
            },
        ],
        "litellm_settings": {
            # temperature, logit_bias, stream_options, encoding_format: not "supported" for triton
            "drop_params": True,
            "num_retries": 0,
            # the prompt template LiteLLM would otherwise try to fetch from huggingface.co per request
            "known_tokenizer_config": {
                "smollm2": {
                    "status": "success",
                    "tokenizer": {
                        "chat_template": CHAT_TEMPLATE.read_text(),
                        "bos_token": "<|im_start|>",
                        "eos_token": "<|im_end|>",
                    },
                },
                "echo": {
                    "status": "success",
                    "tokenizer": {"chat_template": PLAIN_TEMPLATE.read_text(), "bos_token": "", "eos_token": ""},
                },
            },
        },
        "general_settings": {"master_key": master_key},
    }


def litellm_version() -> str:
    for dist in (PEER_VENV / "lib").glob("python*/site-packages/litellm-*.dist-info"):
        return dist.name.removeprefix("litellm-").removesuffix(".dist-info")
    return "unknown"


def start_litellm(stack: LocalStack, master_key: str, workers: int = 1, timeout_s: float = 90.0):
    """The proxy on a free port of 127.0.0.1, in its own process group; returns (process, base URL)."""
    work = stack.config.run_dir / "peer-litellm"
    work.mkdir(parents=True, exist_ok=True)
    config = work / "config.yaml"
    config.write_text(json.dumps(litellm_config(stack, master_key), indent=2))
    port = processes.free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(LITELLM_LOG="ERROR", LITELLM_LOCAL_MODEL_COST_MAP="True", PYTHONUNBUFFERED="1")
    log = stack.logs / "peer-litellm.log"
    cmd = [str(LITELLM), "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
           "--num_workers", str(workers)]
    proc = processes.spawn(cmd, env, log, cwd=work)
    try:
        processes.wait_until(
            lambda: http_ok(f"http://127.0.0.1:{port}/health/readiness"), timeout_s, "LiteLLM proxy", proc, log
        )
    except BaseException:
        processes.stop(proc)
        raise
    return proc, f"http://127.0.0.1:{port}/v1"


# -- load ----------------------------------------------------------------------------------------


class Target:
    """One gateway: its base URL, its credential and one aiohttp session sized for the load."""

    def __init__(self, name: str, base_url: str, key: str) -> None:
        self.name, self.base_url = name, base_url
        self.headers = {"Authorization": f"Bearer {key}"}
        self.http: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Target:
        connector = aiohttp.TCPConnector(limit=64)
        self.http = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120))
        return self

    async def __aexit__(self, *exc) -> None:
        await self.http.close()

    async def post(self, path: str, body: dict) -> dict:
        async with self.http.post(f"{self.base_url}/{path}", json=body, headers=self.headers) as r:
            text = await r.text()
            if r.status != 200:
                raise Unavailable(f"{self.name} POST /v1/{path}: HTTP {r.status}: {text[:600]}")
            return json.loads(text)

    async def stream(self, body: dict) -> tuple[float, float, int, str]:
        """(seconds, time to first content, content chunks, text) of one streamed chat completion."""
        start, first, chunks, text = time.perf_counter(), None, 0, []
        async with self.http.post(f"{self.base_url}/chat/completions", json=body, headers=self.headers) as r:
            if r.status != 200:
                raise Unavailable(f"{self.name} stream: HTTP {r.status}: {(await r.text())[:600]}")
            async for line in r.content:
                if not line.startswith(b"data: {"):
                    continue
                chunk = json.loads(line[6:])
                for choice in chunk.get("choices") or ():
                    content = (choice.get("delta") or {}).get("content")
                    if content:
                        first = first if first is not None else time.perf_counter() - start
                        chunks += 1
                        text.append(content)
        return time.perf_counter() - start, first or 0.0, chunks, "".join(text)


def chat_body(
    max_tokens: int, messages: list, stream: bool = False, logit_bias: dict | None = None, model: str = TEXT_MODEL
) -> dict:
    """The same bytes go to both gateways: OpenAI fields for hubmesh, extra_body for LiteLLM's Triton."""
    sampling = {"max_tokens": max_tokens, "temperature": 0, **({"logit_bias": logit_bias} if logit_bias else {})}
    body = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0,
            "extra_body": {"sampling_parameters": json.dumps(sampling)}}
    if logit_bias:
        body["logit_bias"] = logit_bias
    if stream:
        body.update(stream=True, stream_options={"include_usage": True})
    return body


def embed_body(text: str) -> dict:
    tensors = {"inputs": [{"name": "text", "shape": [1, 1], "datatype": "BYTES", "data": [text]}],
               "outputs": [{"name": "embedding"}]}
    return {"model": EMBED_MODEL, "input": text, "encoding_format": "float", "extra_body": tensors}


async def closed_loop(target: Target, path: str, bodies: list[dict], concurrency: int) -> tuple[list[float], float]:
    """Sends bodies from `concurrency` workers; returns (per-request latencies, wall seconds)."""
    queue = list(reversed(bodies))
    latencies: list[float] = []

    async def worker():
        while queue:
            body = queue.pop()
            start = time.perf_counter()
            await target.post(path, body)
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, time.perf_counter() - start


DEADLINE = [float("inf")]  # time.monotonic() after which no further round starts (measure() sets it)


async def alternate(targets: list[Target], rounds: int, run) -> dict[str, list]:
    """run(target) per round for each target, the order swapped every round; at least one round, and
    no further one once DEADLINE has passed (a busy machine must not stretch `make bench` for ever)."""
    results: dict[str, list] = {t.name: [] for t in targets}
    for i in range(rounds):
        if i and time.monotonic() > DEADLINE[0]:
            break
        for target in targets if i % 2 == 0 else reversed(targets):
            results[target.name].append(await run(target))
    return results


# -- the three parts -----------------------------------------------------------------------------


async def probe_chat(peer: Target, hubmesh: Target) -> dict:
    """One request each: the peer must honour max_tokens=1 and give hubmesh's (greedy) answer."""
    body = chat_body(1, MESSAGES)
    ours, theirs = await hubmesh.post("chat/completions", body), await peer.post("chat/completions", body)
    want, got = ours["choices"][0]["message"]["content"], theirs["choices"][0]["message"]["content"]
    if got != want:
        raise Unavailable(f"LiteLLM answered {got[:200]!r} where hubmesh answered {want!r} to the same request")
    return {"finish_reason": theirs["choices"][0].get("finish_reason"), "usage": theirs.get("usage")}


async def chat_latency(peer: Target, hubmesh: Target, concurrency: int, requests: int, rounds: int) -> dict:
    body = chat_body(1, MESSAGES)
    per_round = max(concurrency, requests // rounds)
    results = await alternate(
        [peer, hubmesh], rounds, lambda t: closed_loop(t, "chat/completions", [body] * per_round, concurrency)
    )
    out = {"concurrency": concurrency, "requests_per_gateway": per_round * len(results["hubmesh"])}
    for name, runs in results.items():
        latencies = [x for lat, _ in runs for x in lat]
        out[name] = {
            "p50_ms": percentile(latencies, 50) * 1000,
            "p99_ms": percentile(latencies, 99) * 1000,
            "requests_per_s": len(latencies) / sum(wall for _, wall in runs),
        }
    out["ratio_hubmesh_vs_peer_requests_per_s"] = out["hubmesh"]["requests_per_s"] / out["litellm"]["requests_per_s"]
    out["ratio_hubmesh_vs_peer_p50"] = out["hubmesh"]["p50_ms"] / out["litellm"]["p50_ms"]
    return out


async def streaming(
    peer: Target, hubmesh: Target, streams: int, tokens: int, rounds: int, model: str = TEXT_MODEL
) -> dict:
    body = chat_body(tokens, STORY, stream=True, logit_bias=NO_END, model=model)
    texts: dict[str, set[str]] = {"litellm": set(), "hubmesh": set()}

    async def run(target: Target):
        start = time.perf_counter()
        results = await asyncio.gather(*(target.stream(body) for _ in range(streams)))
        wall = time.perf_counter() - start
        texts[target.name].update(text for *_, text in results)
        return wall, [first for _, first, _, _ in results], [chunks for _, _, chunks, _ in results]

    for target in (peer, hubmesh):  # the first stream through a fresh proxy pays for its imports
        await target.stream(chat_body(8, STORY, stream=True, logit_bias=NO_END, model=model))
    results = await alternate([peer, hubmesh], rounds, run)
    out = {"streams": streams, "tokens_per_stream": tokens, "rounds": len(results["hubmesh"])}
    for name, runs in results.items():
        out[name] = {
            # the model makes exactly `tokens` per stream (end tokens banned, same request on both)
            "tokens_per_s": statistics.median(streams * tokens / wall for wall, _, _ in runs),
            "ttft_ms": statistics.median(f * 1000 for _, firsts, _ in runs for f in firsts),
            "content_chunks_per_stream": statistics.median(c for _, _, chunks in runs for c in chunks),
        }
    out["same_text"] = len(texts["litellm"] | texts["hubmesh"]) == 1
    out["ratio_hubmesh_vs_peer_tokens_per_s"] = out["hubmesh"]["tokens_per_s"] / out["litellm"]["tokens_per_s"]
    return out


async def embeddings(peer: Target, hubmesh: Target, n: int, concurrency: int, rounds: int) -> dict:
    openai_surface: dict = {}
    for form, value in (("string", "The food was delicious"), ("list", ["The food was delicious"])):
        try:
            await peer.post("embeddings", {"model": EMBED_MODEL, "input": value, "encoding_format": "float"})
            openai_surface[f"input_{form}"] = {"peer": "works"}
        except Unavailable as err:
            openai_surface[f"input_{form}"] = {"peer": "unavailable", "why": str(err)}
    bodies = [embed_body(f"Sentence {i}: the quick brown fox jumps over the lazy dog number {i % 13}.")
              for i in range(n)]
    ours, theirs = await hubmesh.post("embeddings", bodies[0]), await peer.post("embeddings", bodies[0])
    a, b = ours["data"][0]["embedding"], theirs["data"][0]["embedding"]
    if len(theirs["data"]) != 1 or len(a) != len(b) or max(abs(x - y) for x, y in zip(a, b)) > 1e-4:
        raise Unavailable(f"LiteLLM's passthrough vector differs from hubmesh's: {str(theirs)[:300]}")
    await alternate([peer, hubmesh], 2, lambda t: closed_loop(t, "embeddings", bodies[:64], concurrency))  # warm
    results = await alternate([peer, hubmesh], rounds,
                              lambda t: closed_loop(t, "embeddings", bodies, concurrency))
    out = {"openai_surface": openai_surface, "concurrency": concurrency, "sentences_per_round": n,
           "rounds": len(results["hubmesh"]),
           "note": "peer gets Triton's own tensors in extra_body (inputs text [1,1], outputs embedding); "
                   "hubmesh gets the same body and uses its OpenAI fields"}
    for name, runs in results.items():
        out[name] = {"sentences_per_s": statistics.median(n / wall for _, wall in runs)}
    out["ratio_hubmesh_vs_peer_sentences_per_s"] = (
        out["hubmesh"]["sentences_per_s"] / out["litellm"]["sentences_per_s"]
    )
    return out


async def part(name: str, coro) -> dict:
    try:
        return await coro
    except (Unavailable, aiohttp.ClientError, asyncio.TimeoutError, KeyError, IndexError, TypeError) as err:
        return {"peer": "unavailable", "why": f"{name}: {type(err).__name__}: {err}"}


async def run_all(stack: LocalStack, peer_url: str, master_key: str, quick: bool) -> dict:
    scale = 4 if quick else 1
    async with Target("litellm", peer_url, master_key) as peer, \
            Target("hubmesh", stack.config.base_url, stack.config.api_key) as hubmesh:
        out = {}
        fidelity = await part("chat probe", probe_chat(peer, hubmesh))
        if "why" in fidelity:
            out["chat_1_token"] = out["streaming"] = fidelity
        else:
            body = chat_body(1, MESSAGES)
            for target in (peer, hubmesh):  # warm both paths and their connections
                await closed_loop(target, "chat/completions", [body] * 32, 16)
            out["chat_1_token"] = {
                "c1": await part("c1", chat_latency(peer, hubmesh, 1, 100 // scale, 4)),
                "c16": await part("c16", chat_latency(peer, hubmesh, 16, 192 // scale, 4)),
                "peer_response_fidelity": fidelity,
            }
            out["streaming"] = await part("streaming", streaming(peer, hubmesh, 4, 64, 1 if quick else 3))
            out["echo_streaming"] = await part(
                "echo streaming", streaming(peer, hubmesh, 16, 256, 1 if quick else 3, model=ECHO_MODEL)
            )
        out["embeddings_passthrough"] = await part(
            "embeddings", embeddings(peer, hubmesh, 256 // scale, 32, 1 if quick else 3)
        )
        return out


PEER_SETUP = {
    "chat_sampling": "LiteLLM's triton provider sends max_tokens inside Triton's generate 'parameters' "
                     "(request parameters, not the sampling_parameters tensor), so the model ignores it; "
                     "requests carry extra_body.sampling_parameters, merged by LiteLLM into Triton's body",
    "drop_params": "on: LiteLLM rejects temperature/logit_bias/stream_options for triton otherwise",
    "prompt": "known_tokenizer_config preloads our ChatML template (LiteLLM would fetch it from huggingface.co)",
    "infer_route": "unusable: Triton's HTTP infer refuses decoupled models",
    "embeddings": "LiteLLM sends tensor 'input_text' of shape [n]; minilm takes 'text' [n,1]",
    "workers": "1 (the default): --num_workers 2 measured slower on this 2-core machine (fewer requests/s at c16)",
    "fidelity": "LiteLLM's triton responses always say finish_reason 'stop' (even at max_tokens) and usage 0 "
                "when not streamed (it ignores num_input_tokens/num_output_tokens); streamed usage is its own "
                "tokenizer's estimate",
}


def measure(stack: LocalStack, quick: bool = False, budget_s: float = 150.0) -> dict:
    """LiteLLM's proxy vs hubmesh in front of the same Tritons; the proxy is stopped in every case.

    Rounds after the first stop being started once budget_s has passed (~75 s on an idle 2-core machine).
    """
    if not LITELLM.exists():
        return {"peer": "unavailable", "why": f"{LITELLM.relative_to(ROOT)} missing: run `make peer-venv`"}
    master_key = "sk-peer-" + secrets.token_urlsafe(16)
    started = time.perf_counter()
    DEADLINE[0] = time.monotonic() + budget_s
    try:
        proc, peer_url = start_litellm(stack, master_key)
    except (RuntimeError, TimeoutError, OSError) as err:
        return {"peer": "unavailable", "why": f"LiteLLM proxy did not start: {err}"}
    try:
        result = asyncio.run(run_all(stack, peer_url, master_key, quick))
    finally:
        processes.stop(proc)
    return {
        "peer": f"litellm[proxy] {litellm_version()} (1 uvicorn worker) -> same Tritons over HTTP",
        "peer_setup": PEER_SETUP,
        **result,
        "seconds": time.perf_counter() - started,
    }
