"""Reading a JSON body into a request model; every failure is a 400 that names the param.

Unknown fields are accepted and ignored (as vLLM does), everywhere: OpenAI adds fields often,
and an SDK sending a newer one should not break. Types are strict (no "1" for 1).
"""

from __future__ import annotations

import logging
from typing import TypeVar

import pydantic
from aiohttp import web

from facade import jsonio
from facade.auth.middleware import require_model
from facade.errors import OpenAIError, invalid
from facade.observability import MODEL

log = logging.getLogger(__name__)
Model = TypeVar("Model", bound=pydantic.BaseModel)

MAX_JSON_DEPTH = 64


def _depth(value, limit: int) -> int:
    stack, deepest = [(value, 1)], 0
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest > limit:
            return deepest
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return deepest


def param_path(loc: tuple) -> str | None:
    """('messages', 0, 'role') -> 'messages[0].role'; union/type tags in loc are dropped."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and part.isidentifier() and part not in {"str", "int", "float", "list", "dict", "bool"}:
            out += f".{part}" if out else part
        else:
            break
    return out or None


def _message(error: dict, param: str | None) -> str:
    kind = error["type"]
    if kind == "missing":
        return f"Missing required parameter: '{param}'."
    text = error["msg"].removeprefix("Value error, ")
    return f"Invalid value for '{param}': {text}." if param else f"{text}."


async def parse_body(request: web.Request, model: type[Model]) -> Model:
    """The validated request model, or an OpenAIError (400/413).

    The body limit is the app's client_max_size: aiohttp stops reading at the limit.
    """
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise OpenAIError(413, "The request body is too large.", code="request_too_large") from exc
    try:
        data = jsonio.loads(raw)
    except jsonio.JSONDecodeError as exc:
        raise invalid(
            "We could not parse the JSON body of your request. The body must be a JSON object "
            f"(error: {exc.__class__.__name__} at position {getattr(exc, 'pos', 0)})."
        ) from exc
    if not isinstance(data, dict):
        raise invalid("The request body must be a JSON object.")
    if _depth(data, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        raise invalid("The JSON body is nested too deeply.")
    try:
        parsed = model.model_validate(data)
    except pydantic.ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        param = param_path(first["loc"])
        raise invalid(_message(first, param), param=param) from exc
    if isinstance(getattr(parsed, "model", None), str):
        request[MODEL] = parsed.model
        require_model(request, parsed.model)  # the token's model allow-list, for every endpoint family
    ignored = set(data) - set(model.model_fields)
    if ignored:
        log.debug("ignoring unknown fields %s", sorted(ignored))
    return parsed
