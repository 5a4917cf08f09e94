"""The façade's one JSON codec (orjson): request bodies in, JSON responses and SSE payloads out."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web

JSONDecodeError = orjson.JSONDecodeError  # a json.JSONDecodeError: .pos says where


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON (non-ASCII kept as is, as OpenAI sends it)."""
    return orjson.dumps(value)


def loads(raw: bytes | str) -> Any:
    return orjson.loads(raw)


def json_response(value: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(value), status=status, headers=headers, content_type="application/json")
