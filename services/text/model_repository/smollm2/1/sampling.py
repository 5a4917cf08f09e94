"""Token selection and stop-sequence handling for the CPU text model (pure numpy, no Triton).

Semantics follow OpenAI's and vLLM's: logit_bias is added to the logits (-100 bans a token,
+100 forces it), presence/frequency penalties apply to tokens already generated, temperature 0
is greedy, top_p keeps the smallest set of tokens whose probability reaches top_p, and a seed
makes sampling reproducible. The randomness of token k of choice c is a function of (seed, c, k)
alone, not of a generator's state, so a generation resumed after k tokens (a continuation, on
another replica) draws exactly what the uninterrupted one would have. A structured-output
constraint (constraint.py) narrows each step to the tokens its grammar allows; the grammar wins
over logit_bias where the two disagree.

Logprobs (`logprobs` = k, vLLM's SamplingParams field): each chosen token gets its own logprob and
those of the k most likely tokens of its step (`token_logprobs`). Which logprobs: those of the scores
the sampler draws from, i.e. the model's logits after logit_bias, the presence/frequency penalties
and the structured-output grammar mask, BEFORE temperature and top_p: a log-softmax over the tokens
still allowed (a token the grammar or a -100 bias removes has logprob -inf and is never listed, and
a greedy token is always rank 1 of its step). vLLM offers the choice as `logprobs_mode`: its default,
"raw_logprobs", is the logits before any processing; "processed_logprobs" after penalties,
temperature and top-k/top-p; this model's sits between the two (temperature 1 without top_p makes
it "processed_logprobs").
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field

import numpy as np

GREEDY_BELOW = 1e-5  # temperatures under this are treated as 0 (greedy), as vLLM does
MAX_LOGPROBS = 20  # vLLM's default max_logprobs (the most OpenAI's top_logprobs takes)
CONSTRAINT_KEYS = ("json", "json_object", "regex", "choice", "grammar", "structural_tag")


class InvalidSampling(ValueError):
    """Sampling parameters that cannot be applied to this model."""


def requested_constraint(raw: dict) -> dict | None:
    """The one constraint of vLLM's StructuredOutputsParams in `raw` (None when there is none).

    `structured_outputs` (a JSON string, as Triton's vLLM backend takes it, or an object) wins
    over the older `guided_decoding`; the result has exactly one of CONSTRAINT_KEYS.
    """
    spec = raw.get("structured_outputs")
    if spec is None:
        spec = raw.get("guided_decoding")
    if spec is None:
        return None
    if isinstance(spec, str):
        try:
            spec = json.loads(spec)
        except json.JSONDecodeError as err:
            raise InvalidSampling(f"structured_outputs is not valid JSON: {err}") from err
    if not isinstance(spec, dict):
        raise InvalidSampling("structured_outputs must be a JSON object")
    present = [k for k in CONSTRAINT_KEYS if spec.get(k) not in (None, False, "", [])]
    if len(present) > 1:
        raise InvalidSampling(f"structured_outputs takes one constraint, got {', '.join(present)}")
    return {present[0]: spec[present[0]]} if present else None


def requested_logprobs(raw: dict) -> int | None:
    """vLLM's `logprobs` of `raw`: None (no logprobs), or k in 0..MAX_LOGPROBS top tokens a step."""
    value = raw.get("logprobs")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_LOGPROBS:
        raise InvalidSampling(f"logprobs must be an integer from 0 to {MAX_LOGPROBS}, got {value!r}")
    return value


@dataclass
class SamplingConfig:
    """The vLLM SamplingParams fields this model honours."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 (or vLLM's -1): every token
    max_tokens: int | None = None
    stop: list[str] = field(default_factory=list)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    seed: int | None = None
    # vLLM's StructuredOutputsParams, reduced to its one constraint ({"json": {...}}, ...); None = free
    constraint: dict | None = None
    # top tokens to report a step with each chosen token's logprob; None = no logprobs
    logprobs: int | None = None

    @classmethod
    def from_json_dict(cls, raw: dict, vocab_size: int) -> SamplingConfig:
        """Parses the `sampling_parameters` JSON; unknown keys are ignored as vLLM ignores none it lacks."""
        stop = raw.get("stop") or []
        if isinstance(stop, str):
            stop = [stop]
        bias = {}
        for key, value in (raw.get("logit_bias") or {}).items():
            token = int(key)
            if not 0 <= token < vocab_size:
                raise InvalidSampling(
                    f"logit_bias token id {token} is out of vocabulary range (0..{vocab_size - 1})"
                )
            bias[token] = float(value)
        max_tokens = raw.get("max_tokens")
        return cls(
            n=int(raw.get("n", 1)),
            temperature=float(raw.get("temperature", 1.0)),
            top_p=float(raw.get("top_p", 1.0)),
            top_k=max(0, int(raw.get("top_k", 0) or 0)),
            max_tokens=None if max_tokens is None else int(max_tokens),
            stop=[s for s in stop if s],
            presence_penalty=float(raw.get("presence_penalty", 0.0)),
            frequency_penalty=float(raw.get("frequency_penalty", 0.0)),
            logit_bias=bias,
            seed=None if raw.get("seed") is None else int(raw["seed"]),
            constraint=requested_constraint(raw),
            logprobs=requested_logprobs(raw),
        )


class Sampler:
    """Chooses the next token of one sequence."""

    def __init__(self, config: SamplingConfig, vocab_size: int, choice_index: int = 0) -> None:
        self.config = config
        self.counts = np.zeros(vocab_size, dtype=np.float32)
        # without a seed, a random one: still random, but the same scheme
        self.seed = secrets.randbits(64) if config.seed is None else config.seed & 0xFFFFFFFFFFFFFFFF
        self.choice_index = choice_index
        self.position = 0  # tokens of this choice so far (replayed or chosen)
        self._bias_tokens = np.array(list(config.logit_bias), dtype=np.int64)
        self._bias_values = np.array(list(config.logit_bias.values()), dtype=np.float32)
        self._scratch: np.ndarray | None = None  # token_logprobs' work array, once logprobs are asked

    def replay(self, token: int) -> None:
        """Takes `token` as if chosen here: it counts for the penalties and moves the position on."""
        self.counts[token] += 1
        self.position += 1

    def uniform(self, position: int) -> float:
        """The uniform in [0, 1) that draws token `position` of this choice (~12 µs a draw)."""
        return float(np.random.default_rng([self.seed, self.choice_index, position]).random())

    def adjusted_logits(self, logits: np.ndarray) -> np.ndarray:
        """Logits after bias and penalties (float64, a copy)."""
        out = logits.astype(np.float64, copy=True)
        cfg = self.config
        if cfg.frequency_penalty or cfg.presence_penalty:
            out -= cfg.frequency_penalty * self.counts + cfg.presence_penalty * (self.counts > 0)
        if self._bias_tokens.size:
            out[self._bias_tokens] += self._bias_values
            out[self._bias_tokens[self._bias_values <= -100]] = -np.inf
            forced = self._bias_tokens[self._bias_values >= 100]
            if forced.size:
                keep = out[forced]
                out[:] = -np.inf
                out[forced] = keep
        return out

    def scores(self, logits: np.ndarray, allowed: np.ndarray | None = None) -> np.ndarray:
        """What the next token is drawn from (float64, -inf = impossible), before temperature and top_p:
        the logits after bias and penalties, only `allowed` tokens (a boolean mask) when given.

        Where logit_bias bans every allowed token, the allowed tokens are scored without the bias:
        the constraint is what the caller asked to be guaranteed.
        """
        out = self.adjusted_logits(logits)
        if allowed is not None:
            out[~allowed] = -np.inf
            if not np.isfinite(out).any():
                out = logits.astype(np.float64, copy=True)
                out[~allowed] = -np.inf
        return out

    def choose(self, logits: np.ndarray, allowed: np.ndarray | None = None) -> int:
        """The next token, among `allowed` (a boolean mask) when given; remembers it for the penalties."""
        return self.choose_with_logprobs(logits, allowed)[0]

    def choose_with_logprobs(
        self, logits: np.ndarray, allowed: np.ndarray | None = None, logprobs: int | None = None
    ) -> tuple[int, list[tuple[int, float, int]] | None]:
        """The next token (as `choose`) and, when `logprobs` (k) is not None, its `token_logprobs`."""
        out = self.scores(logits, allowed)
        cfg = self.config
        if cfg.temperature < GREEDY_BELOW:
            token = int(np.argmax(out))
        else:
            scaled = out / cfg.temperature
            scaled -= scaled.max()
            probs = np.exp(scaled)
            probs /= probs.sum()
            u = self.uniform(self.position)
            if cfg.top_p < 1.0 or 0 < cfg.top_k < len(probs):
                order = np.argsort(-probs, kind="stable")
                if 0 < cfg.top_k < len(order):  # top-k first, then top-p over what is left (as vLLM)
                    order = order[: cfg.top_k]
                    probs = probs / probs[order].sum()
                cumulative = np.cumsum(probs[order])
                kept = order[: int(np.searchsorted(cumulative, cfg.top_p)) + 1] if cfg.top_p < 1.0 else order
                token = int(kept[_inverse_cdf(probs[kept], u)])
            else:
                token = _inverse_cdf(probs, u)
        self.replay(token)
        if logprobs is None:
            return token, None
        if self._scratch is None:
            self._scratch = np.empty(out.size, dtype=np.float64)
        return token, token_logprobs(out, token, logprobs, self._scratch)


def token_logprobs(
    scores: np.ndarray, token: int, k: int, scratch: np.ndarray | None = None
) -> list[tuple[int, float, int]]:
    """(token id, logprob, rank) of `token`, then of the k best tokens but it, best first.

    `scores` are what the token was drawn from (Sampler.scores; -inf = impossible), and the logprobs
    their log-softmax. Ranks count from 1 = most likely; the chosen token's is its place in the top
    k when it is there (so a greedy token is 1), else 1 + the number of tokens scored above it
    (vLLM's rule). Ties are ordered by the lower id, as argmax breaks them. Tokens of score -inf are
    never listed, so there may be fewer than k. Entries: 1 + k when the chosen token is not among
    the best k, k when it is, 1 for k = 0.

    Cost (SmolLM2's 49,152 tokens): one log-sum-exp over the vocabulary, in place (~60 µs; the
    listed tokens' own log-sum-exp bounds it from below, so that rounding never makes their
    probabilities sum above 1), and the top k among the few tokens near the best score (~20 µs;
    argpartition over the whole vocabulary would take ~400 µs). `scratch` (float64, the size of
    `scores`) saves allocating a vocabulary-sized array each step (~50 µs of page faults).
    """
    top_score = float(scores.max())
    shifted = np.subtract(scores, top_score, out=scratch)
    lse = top_score + float(np.log(np.exp(shifted, out=shifted).sum()))
    chosen = float(scores[token])
    best = _top(scores, top_score, k) if k > 0 else np.empty(0, dtype=np.int64)
    values = scores[best]
    listed = values if token in best else np.append(values, chosen)
    lse = max(lse, top_score + float(np.log(np.exp(listed - top_score).sum())))
    rank = None
    entries: list[tuple[int, float, int]] = []
    for place, (tid, value) in enumerate(zip(best.tolist(), values.tolist(), strict=True), start=1):
        if tid == token:
            rank = place
        else:
            entries.append((tid, value - lse, place))
    if rank is None:
        rank = int(np.count_nonzero(scores > chosen)) + 1
    return [(token, chosen - lse, rank), *entries]


def _top(scores: np.ndarray, top_score: float, k: int) -> np.ndarray:
    """The ids of the (at most) k best finite scores, best first, ties by the lower id.

    Only the tokens within a margin of the best score are sorted out, the margin widened (x4) until
    they are k at least: a count is ~10 µs a try, and few tokens are near the best."""
    margin = 0.5
    while np.count_nonzero(scores >= top_score - margin) < k:
        if margin >= 32 and np.count_nonzero(np.isfinite(scores)) <= k:
            margin = np.inf  # fewer than k tokens are possible (a grammar, a bias): all of them
            break
        margin *= 4
    if margin == np.inf:
        candidates = np.flatnonzero(np.isfinite(scores))
    else:
        candidates = np.flatnonzero(scores >= top_score - margin)
    values = scores[candidates]
    if candidates.size > k:  # the k best and any tied with the k-th, so that ties go to the lower id
        kth = -np.partition(-values, k - 1)[k - 1]
        keep = values >= kth
        candidates, values = candidates[keep], values[keep]
    return candidates[np.lexsort((candidates, -values))][:k]


def _inverse_cdf(probs: np.ndarray, u: float) -> int:
    """The index i with cumsum(probs)[i-1] <= u * sum < cumsum(probs)[i]: never one of probability 0."""
    cumulative = np.cumsum(probs)
    i = int(np.searchsorted(cumulative, u * cumulative[-1], side="right"))
    return i if i < probs.size else int(np.flatnonzero(probs)[-1])  # u * sum rounded up to the sum


class StopMatcher:
    """Finds stop sequences in growing text and says how much text is safe to emit.

    Text that could still turn into a stop sequence is held back, so a stream never shows
    part of a stop sequence; the matched sequence itself is never returned (as OpenAI does).
    """

    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]

    def find(self, text: str, start: int = 0) -> int | None:
        """Index of the earliest stop sequence in text (searching from `start`), or None."""
        best = None
        for stop in self.stops:
            at = text.find(stop, max(0, start - len(stop) + 1))
            if at != -1 and (best is None or at < best):
                best = at
        return best

    def safe_length(self, text: str) -> int:
        """Length of the prefix of text that cannot be the start of a stop sequence."""
        hold = 0
        for stop in self.stops:
            for k in range(min(len(stop) - 1, len(text)), 0, -1):
                if text.endswith(stop[:k]):
                    hold = max(hold, k)
                    break
        return len(text) - hold
