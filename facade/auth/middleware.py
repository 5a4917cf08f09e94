"""The auth middleware: Bearer credential -> Principal (on the Call) -> scope check.

401 (with `WWW-Authenticate: Bearer`) when the credential is missing or not acceptable, 403 when a
verified caller lacks the endpoint family's scope (the model it may use: Call.use_model, at intake).
Messages never contain the credential. The caller's limits come next (facade/limits/middleware.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from facade.auth.principal import FAMILIES
from facade.auth.tokens import InvalidToken, KeySet, TokenVerifier
from facade.call import call_of
from facade.errors import OpenAIError

VERIFIER = web.AppKey("token_verifier", TokenVerifier)


def _unauthorized(message: str, code: str) -> OpenAIError:
    return OpenAIError(
        401, message, type="authentication_error", code=code, headers={"WWW-Authenticate": 'Bearer realm="hubmesh"'}
    )


def auth_middleware(allow: Callable[[web.Request], bool] = lambda request: False):
    """Authenticates every request but those on public routes (unknown URLs too); `allow(request)`
    lets through requests that carry their own permission (signed image links)."""

    @web.middleware
    async def middleware(request: web.Request, handler):
        call = call_of(request)
        route = call.route
        if (route is not None and route.public) or allow(request):
            return await handler(request)
        header = request.headers.get("Authorization", "")
        scheme, _, credential = header.partition(" ")
        api_key = request.headers.get("x-api-key", "")  # Anthropic's SDKs send the key here
        if not header and api_key:
            scheme, credential = "bearer", api_key
        elif not header:
            raise _unauthorized(
                "You didn't provide an API key. Send it in the Authorization header as 'Bearer YOUR_KEY' "
                "(or in x-api-key).",
                "missing_api_key",
            )
        if scheme.lower() != "bearer" or not credential.strip():
            raise _unauthorized("The Authorization header must use the Bearer scheme.", "invalid_api_key")
        try:
            principal = await request.app[VERIFIER].authenticate(credential.strip())
        except InvalidToken as err:
            raise _unauthorized(str(err), "invalid_api_key") from None
        call.principal = principal  # from here on, the ledger knows whom a refusal was for
        family = route.family if route is not None else None
        if family is not None and not principal.may_use(family):
            hint = "" if principal.scopes else (
                f" Its scopes name none of hubmesh's ({', '.join(FAMILIES)}); the"
                " operator can grant such tokens default scopes with HUBMESH_JWT_DEFAULT_SCOPES."
            )
            raise OpenAIError(
                403, f"This credential lacks the '{family}' scope.{hint}", type="permission_error",
                code="insufficient_scope",
            )
        return await handler(request)

    return middleware


def jwks_refresher(interval_s: float):
    """cleanup_ctx: reloads the JWKS every interval_s (off the event loop) while the app runs."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        keyset = app[VERIFIER].keyset

        async def loop(keyset: KeySet) -> None:
            while True:
                await asyncio.sleep(interval_s)
                await asyncio.to_thread(keyset.refresh)

        task = asyncio.create_task(loop(keyset)) if keyset is not None else None
        yield
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    return ctx
