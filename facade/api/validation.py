"""Reading a JSON body (or a query string) into a request model; every failure is a 400 that names
the param.

Unknown fields are accepted and ignored (as vLLM does), everywhere: OpenAI adds fields often,
and an SDK sending a newer one should not break. Types are strict (no "1" for 1).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Annotated, Any, TypeVar, cast

import pydantic
from aiohttp import web
from pydantic import StrictInt
from pydantic.json_schema import JsonDict
from pydantic_core import ErrorDetails

from facade import jsonio
from facade.errors import OpenAIError, invalid

log = logging.getLogger(__name__)
Model = TypeVar("Model", bound=pydantic.BaseModel)

# JSON integers as the protobuf field types they travel in: the façade checks only that a value has
# the type and shape its field needs (a count that fits uint32, a seed that fits int64); what the
# values may be (n 1-128, max_tokens within the context, ...) is the service's rule, checked there.
UInt32 = Annotated[StrictInt, pydantic.Field(ge=0, le=2**32 - 1)]
Int64 = Annotated[StrictInt, pydantic.Field(ge=-(2**63), le=2**63 - 1)]
TokenId = Annotated[StrictInt, pydantic.Field(ge=0, le=2**31 - 1)]  # int32 token ids, never negative


def shows_limit(documented: Mapping[str, Mapping[str, object]], field: str, default: Any = None) -> Any:
    """A field whose limit a service checks, shown in /openapi.json from that service's one table
    (its limits module's DOCUMENTED keywords); the façade itself does not check it."""
    # the services' tables hold JSON-schema keywords with JSON values, typed `object` there: the
    # services do not import pydantic for its JsonDict
    return pydantic.Field(default=default, json_schema_extra=cast(JsonDict, dict(documented[field])))

MAX_JSON_DEPTH = 64


def _too_deep(value, limit: int) -> bool:
    """Whether any value sits deeper than `limit` levels (the body itself is level 1); only
    containers are walked, so long lists of strings or token ids cost one pass over the list."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        if children and depth >= limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


_BUILTIN_LABELS = {"str", "int", "float", "list", "dict", "bool"}


def param_path(loc: tuple, through_unions: bool = False) -> str | None:
    """('messages', 0, 'role') -> 'messages[0].role'. A union's member label or tag ends the path, or
    with `through_unions` is skipped: ('messages', 0, 'content', 'list[...]', 1, 'block:image', 'type')
    -> 'messages[0].content' / 'messages[0].content[1].type'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and part.isidentifier() and part not in _BUILTIN_LABELS:
            out += f".{part}" if out else part
        elif not through_unions:
            break
    return out or None


def _message(error: ErrorDetails, param: str | None) -> str:
    kind = error["type"]
    if kind == "missing":
        return f"Missing required parameter: '{param}'."
    text = error["msg"].removeprefix("Value error, ")
    return f"Invalid value for '{param}': {text}." if param else f"{text}."


def _invalid(exc: pydantic.ValidationError, model: type[pydantic.BaseModel] | None = None) -> OpenAIError:
    """The 400 of a failed validation: its first error, naming the param; for a model that asks for
    it (`precise_errors = True`: its unions are tagged), the deepest error, named through its unions."""
    errors = exc.errors(include_url=False)
    if getattr(model, "precise_errors", False):
        first = max(errors, key=lambda e: len(param_path(e["loc"], through_unions=True) or ""))  # first of equals
        param = param_path(first["loc"], through_unions=True)
    else:
        first = errors[0]
        param = param_path(first["loc"])
    return invalid(_message(first, param), param=param)


def parse_query(request: web.Request, model: type[Model]) -> Model:
    """The validated query parameters (the first value of each; unknown ones ignored), or a 400
    naming the param. The model's fields take the strings of the URL (lax types)."""
    try:
        return model.model_validate({name: request.query[name] for name in request.query})
    except pydantic.ValidationError as exc:
        raise _invalid(exc) from exc


async def parse_body(request: web.Request, model: type[Model]) -> Model:
    """The validated request model, or an OpenAIError (400/413).

    The body limit is the app's client_max_size: aiohttp stops reading at the limit and raises 413,
    which error_middleware turns into OpenAI's shape.
    """
    raw = await request.read()
    try:
        data = jsonio.loads(raw)
    except jsonio.JSONDecodeError as exc:
        raise invalid(
            "We could not parse the JSON body of your request. The body must be a JSON object "
            f"(error: {exc.__class__.__name__} at position {getattr(exc, 'pos', 0)})."
        ) from exc
    if not isinstance(data, dict):
        raise invalid("The request body must be a JSON object.")
    if _too_deep(data, MAX_JSON_DEPTH):
        raise invalid("The JSON body is nested too deeply.")
    try:
        parsed = model.model_validate(data)
    except pydantic.ValidationError as exc:
        raise _invalid(exc, model) from exc
    if log.isEnabledFor(logging.DEBUG) and (ignored := set(data) - set(model.model_fields)):
        log.debug("ignoring unknown fields %s", sorted(ignored))
    return parsed
