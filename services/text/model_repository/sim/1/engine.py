"""A GPU-free vLLM engine: continuous batching, chunked prefill, a paged KV cache with prefix caching,
and a roofline timing model (pure Python, no Triton; model.py runs it in time, the tests without a clock).

One `Engine.step()` is one forward pass of vLLM V1's scheduler, decided the same way:
  1. running sequences first, in admission order: a decoding one computes 1 token, one still in
     prefill its next chunk, all within the step's token budget `max_num_batched_tokens`. When the KV
     pool has no block for a running sequence, the most recently admitted running sequence is
     preempted (recompute: its blocks are freed and it goes back to the front of the queue);
  2. then, if nothing was preempted, waiting sequences in FCFS order while fewer than `max_num_seqs`
     run, budget is left and the KV pool has blocks for their first chunk. At admission the longest
     chain of cached full blocks of the sequence's tokens is reused and skips prefill (at least the
     last token is always computed, as vLLM does).
A sequence whose tokens are all computed at the end of a step emits one token; so the first token
comes at the end of the step that finishes the prompt, then one token per step.

A continuation (`continuation_token_ids`: the tokens a choice already produced, elsewhere) is a
sequence whose context is the prompt followed by those tokens: they are prefilled like the prompt
(prefix-cached, counted in the KV pool and in the step's tokens), not emitted again nor counted as
output, and generation goes on at position len(continuation), so the text is the uninterrupted one.

Timing (seconds) of a step computing T tokens (prefill chunks + one per decoding sequence) of
sequences whose contexts total C tokens (each sequence's computed tokens plus its new ones):
    gemm      = max(weight_bytes / B, 2 * params * T / (peak_flops * mfu))
    attention = C * kv_bytes_per_token / B
    step      = (gemm + attention + step_overhead_s) * time_scale
with B = hbm_bandwidth * bandwidth_efficiency. The linear layers (GEMMs) run the whole batch at
once: they read the weights once and are memory-bound for small batches (a decode step: weights / B)
and compute-bound for large ones (a prefill chunk: 2 FLOPs per parameter per token); the roofline is
the larger of the two. Attention is a separate kernel per sequence that reads its KV cache: memory-bound
and added on top. So a step that mixes a prefill chunk with decodes costs the chunk's compute plus
the decodes' KV reads: decodes slow down while a long prompt is prefilled, which is what chunked
prefill bounds. Attention FLOPs of prefill (quadratic in the context) are left out: ~5 % of a
3,000-token prefill of Llama-3-8B, ~13 % at 8,192 tokens. README.md has the figures.
"""

from __future__ import annotations

import bisect
import math
from collections import OrderedDict, deque
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from simtext import StopMatcher, block_hash, is_token_id, pieces, prompt_digest, token_id, token_logprobs, token_text

GREEDY_BELOW = 1e-5  # temperatures under this are greedy (vLLM's rule)
MAX_LOGPROBS = 20  # vLLM's default max_logprobs


class InvalidRequest(ValueError):
    """A request the engine cannot serve (the model answers INVALID_ARG)."""


@dataclass(frozen=True)
class EngineConfig:
    """The simulated model, GPU and engine; defaults: Llama-3-8B in BF16 on one H200 (see README.md)."""

    # the model
    params: float = 8.03e9
    weight_bytes: float = 16.06e9  # 2 bytes a parameter
    kv_bytes_per_token: float = 131072  # 32 layers x 8 KV heads x 128 dims x 2 (K, V) x 2 bytes
    max_model_len: int = 8192
    # the GPU
    hbm_bytes: float = 141e9
    hbm_bandwidth: float = 4.8e12
    bandwidth_efficiency: float = 0.8  # what decode kernels reach of the peak bandwidth
    peak_flops: float = 989e12  # dense BF16
    mfu: float = 0.5  # what prefill GEMMs reach of the peak FLOP/s
    # the engine (vLLM's settings)
    gpu_memory_utilization: float = 0.9
    activation_reserve_bytes: float = 2e9  # vLLM's profiled peak activations + CUDA graphs
    kv_cache_tokens: int = 0  # > 0: the KV pool holds this many tokens (else derived from memory)
    block_size: int = 16
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192  # per-step token budget (chunked prefill)
    step_overhead_s: float = 0.0005  # scheduler, sampling, kernel launches of one step
    time_scale: float = 1.0  # multiplies every simulated duration

    def __post_init__(self) -> None:
        if self.block_size < 1 or self.max_num_seqs < 1 or self.max_model_len < 2:
            raise ValueError("block_size, max_num_seqs and max_model_len must be positive")
        if self.max_num_batched_tokens < self.max_num_seqs:
            raise ValueError("max_num_batched_tokens must be at least max_num_seqs (vLLM's rule)")
        if self.time_scale < 0:
            raise ValueError("time_scale must not be negative")
        if self.num_blocks * self.block_size < self.max_model_len:
            # vLLM refuses to start when one sequence of max_model_len cannot fit in the KV cache
            raise ValueError(
                f"the KV cache holds {self.num_blocks * self.block_size} tokens, fewer than "
                f"max_model_len ({self.max_model_len})"
            )

    @classmethod
    def from_parameters(cls, values: Mapping[str, str]) -> EngineConfig:
        """From config.pbtxt `parameters` (strings); unknown keys and empty values are ignored."""
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            raw = str(values.get(f.name, "")).strip()
            if raw:
                kwargs[f.name] = int(float(raw)) if isinstance(f.default, int) else float(raw)
        return cls(**kwargs)

    @property
    def kv_capacity_tokens(self) -> int:
        """Tokens the KV pool holds: what the GPU's share leaves after weights and activations."""
        if self.kv_cache_tokens > 0:
            return self.kv_cache_tokens
        free = self.hbm_bytes * self.gpu_memory_utilization - self.weight_bytes - self.activation_reserve_bytes
        return max(0, int(free // self.kv_bytes_per_token))

    @property
    def num_blocks(self) -> int:
        return self.kv_capacity_tokens // self.block_size

    def step_duration(self, num_tokens: int, context_tokens: int) -> float:
        """Seconds of one forward pass computing `num_tokens` over contexts of `context_tokens` (module doc)."""
        bandwidth = self.hbm_bandwidth * self.bandwidth_efficiency
        gemm = max(self.weight_bytes / bandwidth, 2 * self.params * num_tokens / (self.peak_flops * self.mfu))
        attention = context_tokens * self.kv_bytes_per_token / bandwidth
        return (gemm + attention + self.step_overhead_s) * self.time_scale


class BlockPool:
    """vLLM's paged KV cache with prefix caching.

    A full block is registered under the chained hash of its tokens as soon as it is scheduled. A
    block nobody references goes to the free list (least recently freed first) but keeps its hash, so
    a later prompt can reuse it, until an allocation takes it from the head of the list (eviction).
    """

    def __init__(self, num_blocks: int) -> None:
        self.num_blocks = num_blocks
        self.ref = [0] * num_blocks
        self.hash_of: list[bytes | None] = [None] * num_blocks
        self.by_hash: dict[bytes, int] = {}
        self.free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))  # head: evicted first

    @property
    def num_free(self) -> int:
        return len(self.free)

    def usage(self) -> float:
        """vLLM's kv_cache_usage_perc: the fraction of blocks in use (0..1)."""
        return (self.num_blocks - len(self.free)) / self.num_blocks

    def cached_prefix(self, hashes: list[bytes]) -> list[int]:
        """The blocks of the longest chain of `hashes` that is cached."""
        blocks = []
        for h in hashes:
            block = self.by_hash.get(h)
            if block is None:
                break
            blocks.append(block)
        return blocks

    def take(self, blocks: list[int]) -> None:
        """References cached blocks (taking them off the free list)."""
        for block in blocks:
            if self.ref[block] == 0:
                del self.free[block]
            self.ref[block] += 1

    def allocate(self, count: int) -> list[int] | None:
        """`count` fresh blocks, evicting the least recently freed cached ones; None when too few are free."""
        if count > len(self.free):
            return None
        blocks = []
        for _ in range(count):
            block, _ = self.free.popitem(last=False)
            if self.hash_of[block] is not None:
                del self.by_hash[self.hash_of[block]]
                self.hash_of[block] = None
            self.ref[block] = 1
            blocks.append(block)
        return blocks

    def register(self, block: int, block_hash_: bytes) -> None:
        if block_hash_ not in self.by_hash and self.hash_of[block] is None:
            self.by_hash[block_hash_] = block
            self.hash_of[block] = block_hash_

    def release(self, blocks: list[int]) -> None:
        """Drops one reference to each block; the last blocks of a sequence are freed first, so they
        are evicted before its prefix (which other prompts are likelier to share), as vLLM does."""
        for block in reversed(blocks):
            self.ref[block] -= 1
            if self.ref[block] == 0:
                self.free[block] = None


@dataclass(eq=False)
class Request:
    """One generation request: `n` sequences (choices) of the same prompt."""

    handle: Any  # the caller's (model.py: the Triton request and its response sender)
    prompt_tokens: list[str]
    prompt_hashes: list[bytes]  # chained hashes of the prompt's full blocks
    digest: bytes  # of the prompt text, for the generated text
    n: int
    max_tokens: int
    stops: StopMatcher
    seed: int
    greedy: bool
    stream: bool
    choice_index: int = 0  # with n == 1: the choice this request generates
    continuation: list[int] = field(default_factory=list)  # token ids the choice already produced
    logprobs: int | None = None  # k top words a token to report logprobs with; None: no logprobs
    sequences: list[Sequence] = field(default_factory=list)
    num_cached_tokens: int = 0  # prompt tokens choice 0 found in the prefix cache at its admission
    finished: bool = False

    @property
    def num_input_tokens(self) -> int:
        return len(self.prompt_tokens)


@dataclass(eq=False)
class Sequence:
    """One choice of a request as the scheduler sees it."""

    request: Request
    index: int  # in the request's outputs
    choice: int  # whose text it generates (index, or the request's choice_index when n == 1)
    tokens: list[str]  # the prompt's, the continuation's, then the generated ones
    hashes: list[bytes]  # chained hashes of the full blocks of `tokens` worked out so far
    ids: list[int]  # the choice's token ids: the continuation's, then the generated ones
    ends: list[int]  # ends[j]: the length of `text` after token ids[j]
    text: str  # the choice's text (the continuation's, then the generated), cut at a stop sequence
    base: int = 0  # len(continuation): the position of the first token generated here
    num_computed: int = 0  # tokens whose KV is in the cache
    blocks: list[int] = field(default_factory=list)
    generated: int = 0  # tokens generated here (max_tokens counts these)
    emitted: int = 0  # characters of text sent (the continuation's count as sent)
    sent: int = 0  # token ids sent (the continuation's count as sent)
    finish_reason: str | None = None
    admitted: bool = False  # at least once
    prefilled: bool = False  # its prompt was computed at least once
    logprobs: list[dict] = field(default_factory=list)  # of each generated token (ids[base:]), when asked


@dataclass
class Output:
    """What one request gets at the end of a step: per-choice text deltas (the whole texts when
    not streaming), finish reasons ("None" while running), the token ids of those deltas and their
    counts. Before the last response a choice's ids so far spell exactly its text so far (text held
    back for a stop sequence holds its tokens back too); the last one adds the tokens whose text a
    stop sequence cut. `logprobs`, when the request asks for them: per choice, one dict per token of
    its token_ids (simtext.token_logprobs); else None."""

    request: Request
    texts: list[str]
    finish_reasons: list[str]
    num_output_tokens: list[int]
    finished: bool
    token_ids: list[list[int]] = field(default_factory=list)
    logprobs: list[list[dict]] | None = None


@dataclass
class StepResult:
    duration_s: float  # simulated (time_scale applied)
    outputs: list[Output]
    num_tokens: int  # computed in the step
    num_sequences: int  # scheduled in the step


@dataclass
class Stats:
    """Cumulative counters, as vLLM's metrics count them (tokens, sequences)."""

    prompt_tokens: int = 0
    generation_tokens: int = 0
    request_success: int = 0  # sequences finished with "stop" or "length" (vLLM counts each choice)
    prefix_cache_queries: int = 0  # tokens looked up at admission
    prefix_cache_hits: int = 0  # of those, tokens found cached
    num_preemptions: int = 0


def new_request(
    handle: Any, prompt: str, sampling: Mapping[str, Any], stream: bool, config: EngineConfig,
    choice_index: int = 0, continuation: list[int] | None = None, return_logprobs: bool = False,
) -> Request:
    """A Request from the contract's inputs (sampling: the `sampling_parameters` JSON; choice_index and
    continuation: the optional `choice_index` and `continuation_token_ids`; return_logprobs: whether
    `sampling["logprobs"]` is to be reported); raises InvalidRequest."""
    if sampling.get("structured_outputs") is not None or sampling.get("guided_decoding") is not None:
        raise InvalidRequest("the engine simulator does not enforce structured output")
    prompt_tokens = pieces(prompt)
    if not prompt_tokens:
        raise InvalidRequest("the prompt is empty")
    if len(prompt_tokens) >= config.max_model_len:
        raise InvalidRequest(
            f"Prompt length of {len(prompt_tokens)} tokens is longer than the maximum model length "
            f"of {config.max_model_len} tokens"
        )
    n = int(sampling.get("n", 1))
    if n < 1:
        raise InvalidRequest(f"n must be at least 1, got {n}")
    continuation = [int(t) for t in continuation or []]
    choice_index = int(choice_index)
    if continuation and n != 1:
        raise InvalidRequest("continuation_token_ids needs n = 1")
    if choice_index < 0:
        raise InvalidRequest(f"choice_index must not be negative, got {choice_index}")
    if choice_index and n != 1:
        raise InvalidRequest("choice_index needs n = 1")
    bad = next((t for t in continuation if not is_token_id(t)), None)
    if bad is not None:
        raise InvalidRequest(f"continuation_token_ids: {bad} is not a token id of the engine simulator")
    room = config.max_model_len - len(prompt_tokens) - len(continuation)
    if room < 1:
        raise InvalidRequest(
            f"the prompt ({len(prompt_tokens)} tokens) and continuation_token_ids ({len(continuation)} tokens) "
            f"are longer than the maximum model length of {config.max_model_len} tokens"
        )
    max_tokens = sampling.get("max_tokens")
    if max_tokens is not None and int(max_tokens) < 1:
        raise InvalidRequest(f"max_tokens must be at least 1, got {max_tokens}")
    logprobs = sampling.get("logprobs")
    if logprobs is not None and (isinstance(logprobs, bool) or not isinstance(logprobs, int)
                                 or not 0 <= logprobs <= MAX_LOGPROBS):
        raise InvalidRequest(f"logprobs must be an integer from 0 to {MAX_LOGPROBS}, got {logprobs!r}")
    stop = sampling.get("stop") or []
    seed = sampling.get("seed")
    bs = config.block_size
    hashes, parent = [], b""
    for start in range(0, len(prompt_tokens) - bs + 1, bs):
        parent = block_hash(parent, prompt_tokens[start:start + bs])
        hashes.append(parent)
    request = Request(
        handle=handle,
        prompt_tokens=prompt_tokens,
        prompt_hashes=hashes,
        digest=prompt_digest(prompt),
        n=n,
        max_tokens=room if max_tokens is None else min(int(max_tokens), room),
        stops=StopMatcher([stop] if isinstance(stop, str) else list(stop)),
        seed=0 if seed is None else int(seed),
        greedy=float(sampling.get("temperature", 1.0)) < GREEDY_BELOW,
        stream=stream,
        choice_index=choice_index,
        continuation=continuation,
        logprobs=logprobs if return_logprobs else None,
    )
    done = [token_text(t) for t in continuation]
    ends = [0] * len(done)
    length = 0
    for j, piece in enumerate(done):
        length += len(piece)
        ends[j] = length
    text = "".join(done)
    request.sequences = [
        Sequence(
            request, i, choice_index if n == 1 else i, prompt_tokens + done, list(hashes), list(continuation),
            list(ends), text, base=len(done), emitted=len(text), sent=len(done),
        )
        for i in range(n)
    ]
    return request


class Engine:
    """One simulated vLLM engine (one model instance). Not thread-safe: one thread owns it."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.pool = BlockPool(config.num_blocks)
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # in admission order
        self.live: dict[Request, None] = {}  # requests not finished, in arrival order
        self.stats = Stats()
        self.clock = 0.0  # simulated seconds: the sum of step durations

    # -- the caller's side ------------------------------------------------------------------

    def add(self, request: Request) -> None:
        self.live[request] = None
        self.waiting.extend(request.sequences)

    def cancel(self, request: Request) -> None:
        """Stops every sequence of the request and frees its blocks."""
        for seq in request.sequences:
            if seq in self.running:
                self.running.remove(seq)
            elif seq in self.waiting:
                self.waiting.remove(seq)
            self._free(seq)
        request.finished = True
        self.live.pop(request, None)

    def has_work(self) -> bool:
        return bool(self.running or self.waiting)

    def requests(self) -> list[Request]:
        """The requests not finished yet."""
        return list(self.live)

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    # -- one forward pass -----------------------------------------------------------------------

    def step(self) -> StepResult:
        cfg = self.config
        budget = cfg.max_num_batched_tokens
        scheduled: list[tuple[Sequence, int]] = []
        preempted = False

        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            new = min(len(seq.tokens) - seq.num_computed, budget)
            ok = self._grow(seq, new)
            while not ok and self.running[-1] is not seq:
                self._preempt(self.running.pop())  # the lowest priority: the last admitted
                preempted = True
                ok = self._grow(seq, new)
            if not ok:  # nothing left to take blocks from but itself
                self._preempt(self.running.pop())
                preempted = True
                break
            scheduled.append((seq, new))
            budget -= new
            i += 1

        while not preempted and self.waiting and budget > 0 and len(self.running) < cfg.max_num_seqs:
            seq = self.waiting[0]
            cached = self._cached_blocks(seq)
            num_cached = len(cached) * cfg.block_size
            new = min(len(seq.tokens) - num_cached, budget)
            fresh = math.ceil((num_cached + new) / cfg.block_size) - len(cached)
            if fresh > self.pool.num_free - sum(1 for b in cached if self.pool.ref[b] == 0):
                break  # FCFS: nobody overtakes the head of the queue
            self.waiting.popleft()
            self.pool.take(cached)
            seq.blocks = list(cached)
            seq.num_computed = num_cached
            self.stats.prefix_cache_queries += len(seq.tokens)
            self.stats.prefix_cache_hits += num_cached
            if not seq.admitted:
                seq.admitted = True
                if seq.index == 0:  # the prompt's tokens only (a continuation's cached blocks are not counted)
                    seq.request.num_cached_tokens = min(num_cached, seq.request.num_input_tokens)
            if not self._grow(seq, new):
                raise AssertionError("admission checked the free blocks")
            self.running.append(seq)
            scheduled.append((seq, new))
            budget -= new

        num_tokens = sum(new for _, new in scheduled)
        context = sum(seq.num_computed + new for seq, new in scheduled)
        duration = cfg.step_duration(num_tokens, context) if scheduled else 0.0
        self.clock += duration

        touched: dict[Request, None] = {}
        for seq, new in scheduled:
            seq.num_computed += new
            if seq.num_computed < len(seq.tokens):
                continue  # a prefill chunk: no token yet
            if not seq.prefilled:
                seq.prefilled = True  # the prompt and the continuation: what this engine prefilled
                self.stats.prompt_tokens += len(seq.request.prompt_tokens) + seq.base
            self._emit_token(seq)
            touched[seq.request] = None
            if seq.finish_reason is not None:
                self.running.remove(seq)
                self._free(seq)
                self.stats.request_success += 1
        outputs = [out for out in map(self._output, touched) if out is not None]
        return StepResult(duration, outputs, num_tokens, len(scheduled))

    # -- internals ------------------------------------------------------------------------------

    def _hash(self, seq: Sequence, index: int) -> bytes:
        """The chained hash of full block `index` of the sequence's tokens."""
        bs = self.config.block_size
        while len(seq.hashes) <= index:
            j = len(seq.hashes)
            seq.hashes.append(block_hash(seq.hashes[j - 1] if j else b"", seq.tokens[j * bs:(j + 1) * bs]))
        return seq.hashes[index]

    def _cached_blocks(self, seq: Sequence) -> list[int]:
        """The cached blocks a sequence can start from: full blocks within all but its last token."""
        full = (len(seq.tokens) - 1) // self.config.block_size
        return self.pool.cached_prefix([self._hash(seq, j) for j in range(full)])

    def _grow(self, seq: Sequence, new: int) -> bool:
        """Blocks for `new` more tokens of the sequence (registering the blocks they fill); False when none are free."""
        bs = self.config.block_size
        end = seq.num_computed + new
        missing = math.ceil(end / bs) - len(seq.blocks)
        if missing > 0:
            blocks = self.pool.allocate(missing)
            if blocks is None:
                return False
            seq.blocks.extend(blocks)
        for j in range(seq.num_computed // bs, end // bs):
            self.pool.register(seq.blocks[j], self._hash(seq, j))
        return True

    def _preempt(self, seq: Sequence) -> None:
        self._free(seq)
        seq.num_computed = 0
        self.waiting.appendleft(seq)
        self.stats.num_preemptions += 1

    def _free(self, seq: Sequence) -> None:
        if seq.blocks:
            self.pool.release(seq.blocks)
            seq.blocks = []

    def _emit_token(self, seq: Sequence) -> None:
        request = seq.request
        position = seq.base + seq.generated  # a continuation goes on where the choice was
        seed, choice = (0, 0) if request.greedy else (request.seed, seq.choice)  # greedy: one text per prompt
        tid = token_id(request.digest, seed, choice, position)
        if request.logprobs is not None:
            seq.logprobs.append(
                token_logprobs(request.digest, seed, choice, position, request.logprobs, request.greedy))
        word = token_text(tid)
        seq.tokens.append(word)
        seq.ids.append(tid)
        seq.generated += 1
        self.stats.generation_tokens += 1
        # the first token looks at the whole text (a continuation's too); later ones at stops that end in them
        start = 0 if seq.generated == 1 else len(seq.text)
        seq.text += word
        seq.ends.append(len(seq.text))
        stop_at = request.stops.find(seq.text, start=start)
        if stop_at is not None:
            seq.text = seq.text[:stop_at]
            seq.finish_reason = "stop"
        elif seq.generated >= request.max_tokens:
            seq.finish_reason = "length"

    def _output(self, request: Request) -> Output | None:
        seqs = request.sequences
        finished = all(s.finish_reason is not None for s in seqs)
        reasons = [s.finish_reason or "None" for s in seqs]
        if finished:
            request.finished = True
            self.live.pop(request, None)
        if not request.stream:
            if not finished:
                return None
            ids = [s.ids[s.base:] for s in seqs]
            lps = None if request.logprobs is None else [s.logprobs for s in seqs]
            return Output(request, [s.text[s.emitted:] for s in seqs], reasons, [len(r) for r in ids], True, ids, lps)
        texts, ids, news = [""] * len(seqs), [[] for _ in seqs], False
        lps = None if request.logprobs is None else [[] for _ in seqs]
        for s in seqs:
            if s.finish_reason is not None:  # the rest, with the tokens of a stop sequence it cut
                upto, end = len(s.ids), len(s.text)
            else:  # whole tokens that cannot be the start of a stop sequence
                upto = bisect.bisect_right(s.ends, request.stops.safe_length(s.text))
                end = s.ends[upto - 1] if upto else 0
            if upto > s.sent:
                texts[s.index], ids[s.index] = s.text[s.emitted:end], s.ids[s.sent:upto]
                if lps is not None:
                    lps[s.index] = s.logprobs[s.sent - s.base:upto - s.base]
                s.emitted, s.sent, news = max(s.emitted, end), upto, True
        if not news and not finished:
            return None
        return Output(request, texts, reasons, [len(r) for r in ids], finished, ids, lps)
