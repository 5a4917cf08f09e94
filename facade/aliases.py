"""Model aliases with fallback chains: one model name for clients, an ordered list of models behind it.

HUBMESH_MODEL_ALIASES (JSON) names them: `{"chat-default": ["meta-llama/Meta-Llama-3-8B-Instruct",
"HuggingFaceTB/SmolLM2-135M-Instruct"]}`. A request naming an alias is served by the first model of
its chain that answers: a model whose service answers AT_CAPACITY, BACKEND_UNAVAILABLE or
MODEL_NOT_FOUND (or that cannot be reached) before anything of its answer reached the client moves the
request on to the next model. Once the answer has started (a stream's first message) it never moves.
The response says which model served it (its `model`, and the `x-hubmesh-model` header); the Call's
model is the serving one, so limits, budgets, metrics and the usage ledger count that model.

What each endpoint calls:
- intake (facade/api/intake.py) names the alias on the Call (Call.name_alias: the credential may
  use the alias, which lets it use every model of the chain);
- the handler runs its model call through serve(http, model, attempt): `attempt(model)` makes the call
  for one model of the chain (its token reservation included) and returns once the answer has started
  (a unary answer, or a stream whose first message was read: GenerationStream.start); serve() gives
  back what a refused attempt reserved and tries the next model. A model that was not an alias is
  simply attempted (serve() costs nothing then).

A model refused within the last HUBMESH_MODEL_ALIAS_COOLDOWN_S is skipped (in this façade process),
except when it is the chain's last: that one is always tried. The caller's own limits (a 429 from the
façade's meter) never move a request along the chain: aliases spread the operator's capacity, they do
not lift a caller's per-model limits.

Aliases do not nest (a chain names models, never aliases), a chain is never empty and names each model
once: Settings refuses anything else (aliases_from). An alias that is also a model a service serves is
a configuration error too, found when the services first list their models (check_catalogues): it is
logged as an error and the alias is ignored (the model keeps its id).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import grpc
from aiohttp import web
from prometheus_client import Counter

from facade.call import call_of
from facade.errors import OpenAIError
from services.common.errors import reason_and_field

log = logging.getLogger(__name__)
T = TypeVar("T")

OWNED_BY = "hubmesh-alias"
MODEL_HEADER = "x-hubmesh-model"
# what moves a request to the chain's next model: the reasons a service gives for not serving it now
FALLBACK_REASONS = frozenset({"AT_CAPACITY", "BACKEND_UNAVAILABLE", "MODEL_NOT_FOUND"})

FALLBACKS = Counter("hubmesh_alias_fallbacks", "Requests to an alias moved past one of its models, and why",
                    ["alias", "model", "reason"])


def aliases_from(value: Any, where: str = "HUBMESH_MODEL_ALIASES") -> dict[str, tuple[str, ...]]:
    """{"alias": ["model", ...]} (or its JSON text) -> {alias: chain}; ValueError naming `where` and
    the alias at fault for anything else: an empty chain, a model named twice, an alias in a chain."""
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else {}
        except json.JSONDecodeError as err:
            raise ValueError(f"{where} is not JSON: {err}") from None
    if not isinstance(value, Mapping):
        raise ValueError(f"{where} must map alias names to lists of model ids")
    table: dict[str, tuple[str, ...]] = {}
    for name, chain in value.items():
        if not isinstance(name, str) or not name.strip() or name != name.strip():
            raise ValueError(f"{where}: alias names must be non-empty, without surrounding spaces: {name!r}")
        if not isinstance(chain, list | tuple) or not chain:
            raise ValueError(f"{where}[{name!r}] must be a non-empty list of model ids (its fallback chain)")
        for model in chain:
            if not isinstance(model, str) or not model.strip():
                raise ValueError(f"{where}[{name!r}]: every entry must be a model id, not {model!r}")
        if len(set(chain)) != len(chain):
            raise ValueError(f"{where}[{name!r}] names a model twice: {list(chain)}")
        table[name] = tuple(chain)
    for name, chain in table.items():
        nested = [model for model in chain if model in table]
        if nested:
            raise ValueError(f"{where}[{name!r}] names the alias {nested[0]!r}: a chain names models; aliases do "
                             "not nest (list that alias's models instead)")
    return table


def fallback_reason(err: OpenAIError) -> str | None:
    """Why a failed attempt may move on to the chain's next model (None: it may not). Read from the
    gRPC status the error was made from: the service's reason, or UNAVAILABLE when the service itself
    could not be reached."""
    cause = err.__cause__
    if not isinstance(cause, grpc.aio.AioRpcError):
        return None
    reason, _ = reason_and_field(cause)
    if reason in FALLBACK_REASONS:
        return reason
    if not reason and cause.code() == grpc.StatusCode.UNAVAILABLE:
        return "SERVICE_UNAVAILABLE"
    return None


class Aliases:
    """The deployment's aliases and which of their models were refused lately (per process)."""

    def __init__(self, table: Mapping[str, Sequence[str]] | None = None, cooldown_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._chains = {name: tuple(chain) for name, chain in (table or {}).items()}
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._refused_until: dict[str, float] = {}

    def chain(self, name: str) -> tuple[str, ...] | None:
        """The models behind an alias; None when `name` is not one."""
        return self._chains.get(name)

    def items(self) -> list[tuple[str, tuple[str, ...]]]:
        return list(self._chains.items())

    def candidates(self, chain: Sequence[str]) -> list[str]:
        """The models of `chain` to try, in order: those not refused lately, and always the last."""
        now = self._clock()
        return [m for i, m in enumerate(chain)
                if i == len(chain) - 1 or self._refused_until.get(m, 0.0) <= now]

    def first(self, name: str) -> str:
        """The model a request to `name` would try first (`name` itself when it is not an alias)."""
        chain = self.chain(name)
        return self.candidates(chain)[0] if chain else name

    def refused(self, model: str) -> None:
        self._refused_until[model] = self._clock() + self.cooldown_s

    def served(self, model: str) -> None:
        self._refused_until.pop(model, None)

    def check(self, models: Iterable[str], source: str) -> list[str]:
        """Drops the aliases that are also ids of `models` (those of `source`: "the text service"),
        each logged as the configuration error it is; the names dropped."""
        shadowing = sorted(set(models) & set(self._chains))
        for name in shadowing:
            log.error("HUBMESH_MODEL_ALIASES: the alias %r is also the id of a model of %s: the alias is "
                      "ignored (the model keeps its id); rename the alias", name, source)
            del self._chains[name]
        return shadowing


ALIASES = web.AppKey("aliases", Aliases)


def aliases_of(app: web.Application) -> Aliases:
    aliases = app.get(ALIASES)
    return aliases if aliases is not None else Aliases()


def resolve(http: web.Request, model: str) -> str:
    """The model a request naming `model` would try first, without calling it (e.g. whose tokenizer
    counts a prompt); `model` itself when it is not an alias."""
    return aliases_of(http.app).first(model)


async def serve(http: web.Request, model: str, attempt: Callable[[str], Awaitable[T]]) -> T:
    """`attempt(model)`, or for an alias the attempts of its chain's models in order until one is
    served: the first that does not fail for a fallback reason (fallback_reason). Before each attempt
    the Call names that model (Call.try_model: its limits, the model the ledger records); after a
    refused one, what it reserved goes back (Call.release_tokens). All refused: the last one's error."""
    call = call_of(http)
    aliases = aliases_of(http.app)
    chain = aliases.chain(model)
    if chain is None:
        return await attempt(model)
    if call.alias != model:  # intake named another model, or none
        call.name_alias(model)
    error: OpenAIError | None = None
    for candidate in aliases.candidates(chain):
        await call.try_model(candidate)
        mark = call.reservations()
        try:
            result = await attempt(candidate)
        except OpenAIError as err:
            reason = fallback_reason(err)
            if reason is None:
                raise
            await call.release_tokens(mark)
            aliases.refused(candidate)
            FALLBACKS.labels(model, candidate, reason).inc()
            log.info("alias %r: %s refused (%s), trying the next model", model, candidate, reason)
            error = err
            continue
        aliases.served(candidate)
        return result
    assert error is not None, "a chain is never empty"
    raise error


async def add_model_header(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: `x-hubmesh-model`, the model that served a request to an alias."""
    call = call_of(request)
    if call.alias and call.model != call.alias and response.status < 400:
        response.headers[MODEL_HEADER] = call.model


def check_catalogues_ctx(retry_s: float = 2.0):
    """cleanup_ctx: asks each service for its models (again every `retry_s` until it answers once)
    and drops the aliases that shadow one of them (Aliases.check)."""

    async def ctx(app: web.Application) -> Any:
        aliases = aliases_of(app)
        task = asyncio.create_task(_check_catalogues(app, aliases, retry_s)) if aliases.items() else None
        yield
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    return ctx


async def _check_catalogues(app: web.Application, aliases: Aliases, retry_s: float) -> None:
    from facade.clients import CLIENTS  # facade.clients imports the settings, which import this module
    from hubmesh.common.v1 import common_pb2 as common_pb

    clients = app[CLIENTS]
    pending = {"text": clients.text.ListModels, "embeddings": clients.embeddings.ListModels,
               "images": clients.images.ListModels}
    while pending:
        for service, list_models in list(pending.items()):
            try:
                reply = await list_models(common_pb.ListModelsRequest(), timeout=5.0, metadata=clients.metadata)
            except grpc.aio.AioRpcError:
                continue
            aliases.check((m.id for m in reply.models), f"the {service} service")
            del pending[service]
        if pending:
            await asyncio.sleep(retry_s)  # a service not up yet: asked again
