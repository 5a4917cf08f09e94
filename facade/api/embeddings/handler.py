"""POST /v1/embeddings."""

from __future__ import annotations

import base64

import numpy as np
from aiohttp import web

from facade.aliases import serve
from facade.api.embeddings.protocol import EmbeddingRequest
from facade.api.intake import accept
from facade.api.response_bodies import Embedding, EmbeddingList
from facade.clients import CLIENTS, unary
from facade.jsonio import json_response
from hubmesh.embeddings.v1 import embeddings_pb2 as embeddings_pb


def _encode(vector_f32le: bytes, encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(vector_f32le).decode("ascii")  # what the openai SDK decodes by default
    return np.frombuffer(vector_f32le, dtype="<f4").tolist()


async def create_embeddings(request: web.Request) -> web.Response:
    """Creates an embedding vector for each input."""
    call, body = await accept(request, EmbeddingRequest)
    clients = request.app[CLIENTS]
    proto = body.to_proto(call.caller())

    async def attempt(model: str) -> embeddings_pb.EmbedResponse:
        proto.model = model
        # input tokens never exceed the bytes of the input; what is used is settled when the call ends
        await call.reserve_tokens(model, proto.ByteSize())
        embed = clients.embeddings.Embed(proto, timeout=clients.timeout_s, metadata=clients.metadata)
        return await unary(embed, "embeddings", default_param="input")

    result = await serve(request, body.model, attempt)  # an alias: the first model of its chain that serves it
    call.record_usage(result.prompt_tokens)
    data: list[Embedding] = [
        {"object": "embedding", "index": e.index, "embedding": _encode(e.vector_f32le, body.encoding_format)}
        for e in result.embeddings
    ]
    embeddings: EmbeddingList = {
        "object": "list",
        "data": data,
        "model": result.model,
        "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens},
    }
    return json_response(embeddings)
