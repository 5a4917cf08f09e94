"""Token selection and stop-sequence handling for the CPU text model (pure numpy, no Triton).

Semantics follow OpenAI's and vLLM's: logit_bias is added to the logits (-100 bans a token,
+100 forces it), presence/frequency penalties apply to tokens already generated, temperature 0
is greedy, top_p keeps the smallest set of tokens whose probability reaches top_p, and a seed
makes sampling reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

GREEDY_BELOW = 1e-5  # temperatures under this are treated as 0 (greedy), as vLLM does


class InvalidSampling(ValueError):
    """Sampling parameters that cannot be applied to this model."""


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
        )


class Sampler:
    """Chooses the next token of one sequence."""

    def __init__(self, config: SamplingConfig, vocab_size: int, choice_index: int = 0) -> None:
        self.config = config
        self.counts = np.zeros(vocab_size, dtype=np.float32)
        seed = None if config.seed is None else [config.seed & 0xFFFFFFFFFFFFFFFF, choice_index]
        self.rng = np.random.default_rng(seed)
        self._bias_tokens = np.array(list(config.logit_bias), dtype=np.int64)
        self._bias_values = np.array(list(config.logit_bias.values()), dtype=np.float32)

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

    def choose(self, logits: np.ndarray) -> int:
        """The next token; remembers it for the penalties."""
        out = self.adjusted_logits(logits)
        cfg = self.config
        if cfg.temperature < GREEDY_BELOW:
            token = int(np.argmax(out))
        else:
            out = out / cfg.temperature
            out -= out.max()
            probs = np.exp(out)
            probs /= probs.sum()
            if cfg.top_p < 1.0:
                order = np.argsort(-probs, kind="stable")
                cumulative = np.cumsum(probs[order])
                cutoff = int(np.searchsorted(cumulative, cfg.top_p)) + 1
                kept = order[:cutoff]
                probs_kept = probs[kept] / probs[kept].sum()
                token = int(kept[self.rng.choice(kept.size, p=probs_kept)])
            else:
                token = int(self.rng.choice(probs.size, p=probs))
        self.counts[token] += 1
        return token


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
