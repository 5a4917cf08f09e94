"""GET /v1/models and GET /v1/models/{model}: the union of every modality service's models."""

from __future__ import annotations

import grpc
from aiohttp import web

from facade.clients import CLIENTS, Clients
from facade.errors import OpenAIError, from_grpc
from hubmesh.text.v1 import text_generation_pb2 as text_pb


async def _all_models(clients: Clients) -> list[dict]:
    try:
        text = await clients.text.ListModels(text_pb.ListModelsRequest(), timeout=min(clients.timeout_s, 10.0))
    except grpc.aio.AioRpcError as err:
        raise from_grpc(err, "text") from err
    return [{"id": m.id, "object": "model", "created": m.created, "owned_by": m.owned_by} for m in text.models]


async def list_models(request: web.Request) -> web.Response:
    """Lists the models every service can serve."""
    return web.json_response({"object": "list", "data": await _all_models(request.app[CLIENTS])})


async def retrieve_model(request: web.Request) -> web.Response:
    """One model by id (ids may contain '/', e.g. HuggingFaceTB/SmolLM2-135M-Instruct)."""
    model_id = request.match_info["model"]
    for model in await _all_models(request.app[CLIENTS]):
        if model["id"] == model_id:
            return web.json_response(model)
    raise OpenAIError(404, f"The model '{model_id}' does not exist", param="model", code="model_not_found")
