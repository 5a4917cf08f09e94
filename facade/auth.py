"""Bearer API-key authentication (JWTs come with the auth issue)."""

from __future__ import annotations

import hmac
from collections.abc import Iterable

from aiohttp import web

from facade.errors import OpenAIError

PUBLIC_PATHS = frozenset({"/health", "/ready"})


def _unauthorized(message: str, code: str) -> OpenAIError:
    return OpenAIError(
        401,
        message,
        type="authentication_error",
        code=code,
        headers={"WWW-Authenticate": 'Bearer realm="hubmesh"'},
    )


def api_key_middleware(keys: Iterable[str]):
    """Accepts requests whose `Authorization: Bearer <key>` matches one of `keys`; never echoes the key."""
    accepted = [k.encode() for k in keys]
    if not accepted:
        raise ValueError("at least one API key is required")

    @web.middleware
    async def middleware(request: web.Request, handler):
        if request.path in PUBLIC_PATHS:
            return await handler(request)
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if not header:
            raise _unauthorized(
                "You didn't provide an API key. Send it in the Authorization header as 'Bearer YOUR_KEY'.",
                "missing_api_key",
            )
        if scheme.lower() != "bearer" or not token.strip():
            raise _unauthorized("The Authorization header must use the Bearer scheme.", "invalid_api_key")
        presented = token.strip().encode()
        # compare against every key in constant time, so timing says nothing about which matched
        matched = False
        for key in accepted:
            matched |= hmac.compare_digest(presented, key)
        if not matched:
            raise _unauthorized("Incorrect API key provided.", "invalid_api_key")
        return await handler(request)

    return middleware
