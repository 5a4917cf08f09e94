"""POST /v1/embeddings."""

from __future__ import annotations

import base64
from typing import Literal

import numpy as np
from aiohttp import web
from hubmesh.embeddings.v1 import embeddings_pb2 as pb
from pydantic import BaseModel, ConfigDict, StrictStr

from facade.api.responses import Embedding, EmbeddingList
from facade.auth.middleware import reserve_tokens
from facade.api.validation import TokenId, UInt32, parse_body, shows_limit
from services.embeddings import limits
from facade.clients import CLIENTS, caller, unary
from hubmesh.common.v1 import common_pb2 as common_pb
from facade.jsonio import json_response
from facade.observability import record_usage

class EmbeddingRequest(BaseModel):
    """OpenAI's CreateEmbeddingRequest, as types; how many inputs, how long, which dimensions is the
    embeddings service's rule (services/embeddings/servicer.py)."""

    model_config = ConfigDict(extra="ignore", strict=True)

    model: StrictStr
    input: StrictStr | list[StrictStr] | list[TokenId] | list[list[TokenId]] = shows_limit(limits.DOCUMENTED, "input", ...)
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: UInt32 | None = shows_limit(limits.DOCUMENTED, "dimensions")
    user: StrictStr | None = None

    def to_proto(self, caller: common_pb.Caller | None = None) -> pb.EmbedRequest:
        value = self.input
        if isinstance(value, str):
            inputs = [pb.EmbedInput(text=value)]
        elif value and isinstance(value[0], int):  # one input given as token ids
            inputs = [pb.EmbedInput(tokens=pb.TokenIds(ids=value))]
        else:  # texts, or inputs of token ids (an empty list is the service's to refuse)
            inputs = [pb.EmbedInput(tokens=pb.TokenIds(ids=item)) if isinstance(item, list) else pb.EmbedInput(text=item)
                      for item in value]
        request = pb.EmbedRequest(model=self.model, inputs=inputs, caller=caller)
        if self.dimensions is not None:
            request.dimensions = self.dimensions
        return request


def _encode(vector_f32le: bytes, encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(vector_f32le).decode("ascii")  # what the openai SDK decodes by default
    return np.frombuffer(vector_f32le, dtype="<f4").tolist()


async def create_embeddings(request: web.Request) -> web.Response:
    """Creates an embedding vector for each input."""
    body = await parse_body(request, EmbeddingRequest)
    clients = request.app[CLIENTS]
    proto = body.to_proto(caller(request, body.user))
    # input tokens never exceed the bytes of the input; what is used is settled when the call ends
    await reserve_tokens(request, body.model, proto.ByteSize())
    call = clients.embeddings.Embed(proto, timeout=clients.timeout_s, metadata=clients.metadata)
    result = await unary(call, "embeddings", default_param="input")
    record_usage(request, result.prompt_tokens)
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
