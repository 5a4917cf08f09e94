"""The auth middleware: Bearer credential -> Principal -> scope check -> limits (facade/limits).

401 (with `WWW-Authenticate: Bearer`) when the credential is missing or not acceptable, 403 when a
verified caller lacks the endpoint family's scope or the model, 429 (with `Retry-After`) over the
caller's limits or budgets. Messages never contain the credential. Every request it admits is
settled with the limiter when it ends, however it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from facade.auth.principal import FAMILIES, PRINCIPAL, Principal
from facade.auth.tokens import InvalidToken, TokenVerifier
from facade.errors import OpenAIError
from facade.limits.meter import Meter, Metering
from facade.routing import route_of

METERING = web.AppKey("metering", Metering)
METER = web.RequestKey("meter", Meter)  # the request's limits, from admission to settlement
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
        route = route_of(request)
        if (route is not None and route.public) or allow(request):
            return await handler(request)
        header = request.headers.get("Authorization", "")
        scheme, _, credential = header.partition(" ")
        if not header:
            raise _unauthorized(
                "You didn't provide an API key. Send it in the Authorization header as 'Bearer YOUR_KEY'.",
                "missing_api_key",
            )
        if scheme.lower() != "bearer" or not credential.strip():
            raise _unauthorized("The Authorization header must use the Bearer scheme.", "invalid_api_key")
        try:
            principal = await request.app[VERIFIER].authenticate(credential.strip())
        except InvalidToken as err:
            raise _unauthorized(str(err), "invalid_api_key") from None
        request[PRINCIPAL] = principal  # from here on, the ledger knows whom a refusal was for
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
        meter = request[METER] = request.app[METERING].meter(
            principal.subject, principal.limits, dict(principal.model_limits))
        await meter.admit()
        try:
            return await handler(request)
        except OpenAIError as err:
            if err.code == "token_budget_exceeded":
                raise meter.refused_for_budget(err) from None
            raise
        finally:
            if meter.grants:  # shielded: a client that goes away cancels the handler, not the settlement
                await asyncio.shield(meter.settle())

    return middleware


def require_model(request: web.Request, model: str) -> None:
    """403 when the caller's credential does not allow `model`."""
    principal = request.get(PRINCIPAL)
    if principal is not None and not principal.may_use_model(model):
        message = (f"This credential may not use the model '{model}'." if model
                   else "This credential may use only the models it names: name one in 'model'.")
        raise OpenAIError(403, message, type="permission_error", param="model", code="model_not_allowed")


def allowed_models(request: web.Request, ids: list[str]) -> list[str]:
    principal: Principal | None = request.get(PRINCIPAL)
    return [i for i in ids if principal is None or principal.may_use_model(i)]


def charge_tokens(request: web.Request, count: int) -> None:
    """What a request used in all, settled against its reservations when it ends."""
    meter = request.get(METER)
    if meter is not None:
        meter.use(count)


async def admit_model(request: web.Request, model: str) -> None:
    """The caller's limits for `model` (its request log), once the body names it."""
    meter = request.get(METER)
    if meter is not None:
        await meter.admit_model(model)


async def reserve_tokens(request: web.Request, model: str, input_bytes: int, choices: int = 0,
                         max_tokens: int | None = None) -> int | None:
    """Reserves what a model call can cost (Meter.cost_bound) against the caller's token limits:
    the tokens granted, or None when no token limit applies."""
    meter = request.get(METER)
    if meter is None or not meter.counts_tokens(model):
        return None
    return await meter.reserve(model, meter.cost_bound(input_bytes, choices, max_tokens))


def subject_of(request: web.Request) -> str:
    principal = request.get(PRINCIPAL)
    return principal.subject if principal is not None else ""


def jwks_refresher(interval_s: float):
    """cleanup_ctx: reloads the JWKS every interval_s (off the event loop) while the app runs."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        keyset = app[VERIFIER].keyset

        async def loop() -> None:
            while True:
                await asyncio.sleep(interval_s)
                await asyncio.to_thread(keyset.refresh)

        task = asyncio.create_task(loop()) if keyset is not None else None
        yield
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    return ctx
