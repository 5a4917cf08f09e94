"""GET /v1/models and GET /v1/models/{model}: the union of every modality service's models, and the
deployment's model aliases (facade/aliases.py: owned_by "hubmesh-alias", the chain in the description).
A credential sees the models and aliases it may use."""

from __future__ import annotations

import asyncio
import logging

import grpc
from aiohttp import web

from facade.aliases import OWNED_BY, Aliases, aliases_of
from facade.api.response_bodies import Model, ModelList
from facade.call import call_of
from facade.clients import CLIENTS, Clients
from facade.errors import OpenAIError, from_grpc
from facade.jsonio import json_response
from hubmesh.common.v1 import common_pb2 as common_pb

log = logging.getLogger(__name__)
LIST_TIMEOUT_S = 10.0


def _model_json(m) -> Model:
    model: Model = {"id": m.id, "object": "model", "created": m.created, "owned_by": m.owned_by}
    if m.description:
        model["description"] = m.description  # e.g. that a test pipeline draws noise
    return model


async def _all_models(clients: Clients) -> list[Model]:
    """Models of every reachable service; 503 only when no service answers."""
    request, metadata = common_pb.ListModelsRequest(), clients.metadata
    calls = {
        name: stub.ListModels(request, timeout=LIST_TIMEOUT_S, metadata=metadata)
        for name, stub in (("text", clients.text), ("embeddings", clients.embeddings), ("images", clients.images))
    }
    replies = await asyncio.gather(*calls.values(), return_exceptions=True)
    models: list[Model] = []
    failures = []
    for service, reply in zip(calls, replies, strict=True):
        if isinstance(reply, grpc.aio.AioRpcError):
            log.warning("%s service did not list its models: %s", service, reply.code().name)
            failures.append((service, reply))
        elif isinstance(reply, BaseException):
            raise reply
        else:
            models.extend(_model_json(m) for m in reply.models)
    if failures and not models:
        service, err = failures[0]
        raise from_grpc(err, service)
    return models


def _with_aliases(models: list[Model], aliases: Aliases) -> list[Model]:
    """The models, then the aliases (each after Aliases.check: one that is also a model's id is dropped)."""
    aliases.check((m["id"] for m in models), "the services' listing")
    created = {m["id"]: m["created"] for m in models}
    listed = list(models)
    for name, chain in aliases.items():
        listed.append({
            "id": name, "object": "model", "created": next((created[m] for m in chain if m in created), 0),
            "owned_by": OWNED_BY,
            "description": f"Alias of {', then '.join(chain)}: served by the first of them that is ready and not "
                           "at capacity (the response's model and its x-hubmesh-model header name it).",
        })
    return listed


async def list_models(request: web.Request) -> web.Response:
    """Lists the models every service can serve, and the aliases."""
    models = _with_aliases(await _all_models(request.app[CLIENTS]), aliases_of(request.app))
    call = call_of(request)
    listing: ModelList = {"object": "list", "data": [m for m in models if call.may_use_model(m["id"])]}
    return json_response(listing)


async def retrieve_model(request: web.Request) -> web.Response:
    """One model (or alias) by id (ids may contain '/', e.g. HuggingFaceTB/SmolLM2-135M-Instruct)."""
    model_id = request.match_info["model"]
    call_of(request).require_model(model_id)
    for model in _with_aliases(await _all_models(request.app[CLIENTS]), aliases_of(request.app)):
        if model["id"] == model_id:
            return json_response(model)
    raise OpenAIError(404, f"The model '{model_id}' does not exist", param="model", code="model_not_found")
