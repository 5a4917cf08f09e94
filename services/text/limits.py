"""The text service's limits on a request (OpenAI's): the one table of them. The servicer checks
them (services/text/servicer.py, structured.py); the façade only shows them in /openapi.json
(DOCUMENTED, as JSON-schema keywords), so its document tells clients what the service refuses."""

from __future__ import annotations

MAX_CHOICES = 128  # n
MAX_STOP_SEQUENCES = 4
MAX_TOOLS = 128
# closed ranges of the float sampling fields; top_p must also be above 0
RANGES: dict[str, tuple[float, float]] = {
    "temperature": (0.0, 2.0),
    "top_p": (0.0, 1.0),
    "presence_penalty": (-2.0, 2.0),
    "frequency_penalty": (-2.0, 2.0),
}
LOGIT_BIAS_RANGE = (-100.0, 100.0)
# alternatives per token with log probabilities: chat's top_logprobs (vLLM's max_logprobs default),
# the legacy completions' logprobs
MAX_TOP_LOGPROBS = 20
MAX_COMPLETION_LOGPROBS = 5

# each limit as JSON-schema keywords, by request field
DOCUMENTED: dict[str, dict[str, object]] = {
    **{name: {"minimum": low, "maximum": high} for name, (low, high) in RANGES.items()},
    "top_p": {"exclusiveMinimum": RANGES["top_p"][0], "maximum": RANGES["top_p"][1]},
    "n": {"minimum": 1, "maximum": MAX_CHOICES},
    "max_tokens": {"minimum": 1},
    "stop": {"maxItems": MAX_STOP_SEQUENCES},
    "messages": {"minItems": 1},
    "tools": {"maxItems": MAX_TOOLS},
    "top_logprobs": {"minimum": 0, "maximum": MAX_TOP_LOGPROBS},
    "completion_logprobs": {"minimum": 0, "maximum": MAX_COMPLETION_LOGPROBS},
}
