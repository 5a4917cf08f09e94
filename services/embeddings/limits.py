"""The embeddings service's limits on a request (OpenAI's): checked by services/embeddings/servicer.py,
shown by the façade in /openapi.json (DOCUMENTED, as JSON-schema keywords)."""

from __future__ import annotations

MAX_INPUTS = 2048

DOCUMENTED: dict[str, dict[str, object]] = {
    # a string or a list of inputs: never empty, at most MAX_INPUTS of them
    "input": {"minLength": 1, "minItems": 1, "maxItems": MAX_INPUTS},
    "dimensions": {"minimum": 1},
}
