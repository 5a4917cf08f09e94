"""The limits middleware: after auth, the subject's request logs (rpm) admit the request (429 with
`Retry-After` over them), and whatever happens next, the request is settled with the limiter when
it ends. In between, the request's Call drives its meter: the model's limits at intake
(Call.use_model), a reservation before each model call (Call.reserve_tokens), what it used
(Call.record_usage).
"""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import web

from facade.auth.hub_keys import KEY_REGISTRY
from facade.call import call_of
from facade.errors import OpenAIError
from facade.limits.meter import Metering

METERING = web.AppKey("metering", Metering)


@web.middleware
async def limits_middleware(request: web.Request, handler) -> web.StreamResponse:
    call = call_of(request)
    principal = call.principal
    if principal is None:  # public routes, signed links: no subject to count
        return await handler(request)
    meter = call.meter = request.app[METERING].meter(principal.subject, principal.limits, dict(principal.model_limits))
    keys = request.app.get(KEY_REGISTRY)
    with keys.parallel(principal) if keys is not None else contextlib.nullcontext():  # a hub key's own cap
        await meter.admit()
        try:
            return await handler(request)
        except OpenAIError as err:
            if err.code == "token_budget_exceeded":  # a service found the grant too small: say which limit
                raise meter.refused_for_budget(err) from None
            raise
        finally:
            if meter.grants:  # shielded: a client that goes away cancels the handler, not the settlement
                await asyncio.shield(meter.settle())
