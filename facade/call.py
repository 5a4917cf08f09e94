"""One request's state, from arrival to the access log: the Call.

Every request has one Call, stored under CALL and read with call_of(request). Each middleware and
handler writes only its own part of it, in the order a request meets them:

- the access log (facade/observability.py) opens it: request id, route;
- auth (facade/auth/middleware.py): the principal, once the credential is verified;
- limits (facade/limits/middleware.py): the meter, from admission to settlement;
- intake (facade/api/intake.py): the model and OpenAI's `user`, once the body names them
  (use_model: the credential's model allow-list, the caller's limits for that model; name_alias
  for a model alias, whose chain's models are then tried in turn by facade/aliases.py's serve(),
  each named on the Call by try_model: the model that serves is the Call's model in the end);
- the handler: token reservations (reserve_tokens), usage (record_usage), and the SSE stream it
  opened (facade/sse.py);
- the error middleware (facade/errors.py): the refusal reason of a 429 (facade/refusals.py);

and the access log reads all of it when the request has ended, for its line, its metrics and the
usage ledger's record.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web

from facade.errors import OpenAIError
from facade.route_index import Route, route_of
from hubmesh.common.v1 import common_pb2 as common_pb
from services.common import metrics
from services.common.telemetry import set_genai_attributes

if TYPE_CHECKING:
    from facade.auth.principal import Principal
    from facade.limits.meter import Meter
    from facade.sse import EventStream


@dataclass(frozen=True, slots=True)
class RequestUsage:
    """What a request used, as record_usage() left it."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # of the prompt tokens, those the model server's prefix cache served
    images: int = 0  # images generated

    def plus(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int, images: int) -> RequestUsage:
        return RequestUsage(self.prompt_tokens + prompt_tokens, self.completion_tokens + completion_tokens,
                            self.cached_tokens + cached_tokens, self.images + images)


@dataclass(slots=True)
class Call:
    """What the façade knows about one request (see the module's docstring for who writes what)."""

    request_id: str
    route: Route | None  # None: an unknown URL
    principal: Principal | None = None  # None: not authenticated (a public route, a signed link)
    meter: Meter | None = None  # None: no limits apply (not authenticated)
    model: str = ""  # the model the body names ("" when none); for an alias, the model tried or serving
    alias: str = ""  # the model alias the body names (facade/aliases.py), "" when none
    user: str = ""  # OpenAI's `user` field
    usage: RequestUsage = RequestUsage()
    stream: EventStream | None = None  # the SSE response, once opened
    refusal: str = ""  # why it was answered 429 (facade/refusals.py), set by the error middleware

    @property
    def subject(self) -> str:
        return self.principal.subject if self.principal is not None else ""

    def caller(self) -> common_pb.Caller:
        """Who a service call is for: the verified subject and OpenAI's `user` (never the credential),
        with the subject's weight and priority in a service's fair share."""
        caller = common_pb.Caller(subject=self.subject, user=self.user)
        if self.principal is not None:
            if self.principal.weight:
                caller.weight = self.principal.weight
            if self.principal.priority:
                caller.priority = self.principal.priority
        return caller

    def may_use_model(self, model: str) -> bool:
        return self.principal is None or self.principal.may_use_model(model)

    def require_model(self, model: str) -> None:
        """403 when the credential does not allow `model`."""
        if not self.may_use_model(model):
            message = (f"This credential may not use the model '{model}'." if model
                       else "This credential may use only the models it names: name one in 'model'.")
            raise OpenAIError(403, message, type="permission_error", param="model", code="model_not_allowed")

    async def use_model(self, model: str) -> None:
        """The model the body names ("" when it names none): 403 when the credential does not allow it
        (an omitted model, the images service's default, only to credentials that may use every
        model), 429 over the caller's limits for it (its request log)."""
        self.model = model
        self.require_model(model)
        if self.meter is not None:
            await self.meter.admit_model(model)

    def name_alias(self, alias: str) -> None:
        """The body names a model alias: 403 when the credential does not allow it. A credential that
        may use an alias may use every model of its chain through it (facade/aliases.py)."""
        self.alias = self.model = alias
        self.require_model(alias)

    async def try_model(self, model: str) -> None:
        """A model of the alias's chain is about to be tried: it is the Call's model from now on
        (429 over the caller's limits for it, its request log)."""
        self.model = model
        if self.meter is not None:
            await self.meter.admit_model(model)

    def reservations(self) -> int:
        """How many token reservations the request holds (a mark for release_tokens)."""
        return len(self.meter.grants) if self.meter is not None else 0

    async def release_tokens(self, mark: int) -> None:
        """Gives back in full the reservations made since `mark` (a model call refused before it
        used anything)."""
        if self.meter is not None:
            await self.meter.release(mark)

    async def reserve_tokens(self, model: str, input_bytes: int, choices: int = 0,
                             max_tokens: int | None = None) -> int | None:
        """Reserves what a model call can cost (Meter.cost_bound) against the caller's token limits:
        the tokens granted, or None when no token limit applies. Settled when the request ends."""
        meter = self.meter
        if meter is None or not meter.counts_tokens(model):
            return None
        return await meter.reserve(model, meter.cost_bound(input_bytes, choices, max_tokens))

    def record_usage(self, prompt_tokens: int, completion_tokens: int = 0, *, cached_tokens: int = 0,
                     images: int = 0) -> None:
        """Tokens (and images) the request used: rate limits, metrics, spans, the access log and the
        usage ledger all read them from here. Each call adds to what the request used so far
        (completions with several prompts record each prompt's), so every reader sees its totals."""
        metrics.count_tokens(self.model, prompt_tokens, completion_tokens)  # this call's tokens
        usage = self.usage = self.usage.plus(prompt_tokens, completion_tokens, cached_tokens, images)
        if self.meter is not None:
            self.meter.use(usage.prompt_tokens + usage.completion_tokens)
        set_genai_attributes(usage__input_tokens=usage.prompt_tokens,
                             usage__output_tokens=usage.completion_tokens or None)


CALL = web.RequestKey("call", Call)


def open_call(request: web.Request, request_id: str | None = None) -> Call:
    """The request's Call, made now (the access log does, first thing) with `request_id` or a new one."""
    call = request[CALL] = Call(request_id=request_id or uuid.uuid4().hex, route=route_of(request))
    return call


def call_of(request: web.Request) -> Call:
    """The request's Call (opened here when nothing opened it yet: an app without the access log)."""
    call = request.get(CALL)
    return call if call is not None else open_call(request)
