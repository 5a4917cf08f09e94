"""The images service's limits on a request (OpenAI's dall-e-3 ones): checked by
services/images/servicer.py, shown by the façade in /openapi.json (DOCUMENTED, as JSON-schema
keywords). Which sizes a model draws is its catalogue entry's."""

from __future__ import annotations

MAX_IMAGES = 10
MAX_PROMPT_CHARS = 4000
QUALITIES = ("standard", "hd", "low", "medium", "high", "auto")
STYLES = ("vivid", "natural")

DOCUMENTED: dict[str, dict[str, object]] = {
    "prompt": {"minLength": 1, "maxLength": MAX_PROMPT_CHARS},
    "n": {"minimum": 1, "maximum": MAX_IMAGES},
    "quality": {"enum": [*QUALITIES, None]},
    "style": {"enum": [*STYLES, None]},
}
