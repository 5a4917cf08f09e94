"""Token selection and stop-sequence handling for the CPU text model (pure numpy, no Triton).

Semantics follow OpenAI's and vLLM's: logit_bias is added to the logits (-100 bans a token,
+100 forces it), presence/frequency penalties apply to tokens already generated, temperature 0
is greedy, top_p keeps the smallest set of tokens whose probability reaches top_p, and a seed
makes sampling reproducible. The randomness of token k of choice c is a function of (seed, c, k)
alone, not of a generator's state, so a generation resumed after k tokens (a continuation, on
another replica) draws exactly what the uninterrupted one would have. A structured-output
constraint (constraint.py) narrows each step to the tokens its grammar allows; the grammar wins
over logit_bias where the two disagree.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field

import numpy as np

GREEDY_BELOW = 1e-5  # temperatures under this are treated as 0 (greedy), as vLLM does
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


@dataclass
class SamplingConfig:
    """The vLLM SamplingParams fields this model honours."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int | None = None
    stop: list[str] = field(default_factory=list)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    seed: int | None = None
    # vLLM's StructuredOutputsParams, reduced to its one constraint ({"json": {...}}, ...); None = free
    constraint: dict | None = None

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
            max_tokens=None if max_tokens is None else int(max_tokens),
            stop=[s for s in stop if s],
            presence_penalty=float(raw.get("presence_penalty", 0.0)),
            frequency_penalty=float(raw.get("frequency_penalty", 0.0)),
            logit_bias=bias,
            seed=None if raw.get("seed") is None else int(raw["seed"]),
            constraint=requested_constraint(raw),
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

    def choose(self, logits: np.ndarray, allowed: np.ndarray | None = None) -> int:
        """The next token, among `allowed` (a boolean mask) when given; remembers it for the penalties.

        Where logit_bias bans every allowed token, the allowed tokens are chosen from without the
        bias: the constraint is what the caller asked to be guaranteed.
        """
        out = self.adjusted_logits(logits)
        if allowed is not None:
            out[~allowed] = -np.inf
            if not np.isfinite(out).any():
                out = logits.astype(np.float64, copy=True)
                out[~allowed] = -np.inf
        cfg = self.config
        if cfg.temperature < GREEDY_BELOW:
            token = int(np.argmax(out))
        else:
            out = out / cfg.temperature
            out -= out.max()
            probs = np.exp(out)
            probs /= probs.sum()
            u = self.uniform(self.position)
            if cfg.top_p < 1.0:
                order = np.argsort(-probs, kind="stable")
                cumulative = np.cumsum(probs[order])
                kept = order[: int(np.searchsorted(cumulative, cfg.top_p)) + 1]
                token = int(kept[_inverse_cdf(probs[kept], u)])
            else:
                token = _inverse_cdf(probs, u)
        self.replay(token)
        return token


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
