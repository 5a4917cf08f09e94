"""POST /v1/embeddings."""

from __future__ import annotations

import base64
from typing import Literal

import numpy as np
from aiohttp import web
from hubmesh.embeddings.v1 import embeddings_pb2 as pb
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, field_validator

from facade.api.validation import parse_body
from facade.auth.middleware import subject_of
from facade.clients import CLIENTS, unary
from facade.jsonio import json_response
from facade.observability import record_usage

MAX_INPUTS = 2048


class EmbeddingRequest(BaseModel):
    """OpenAI's CreateEmbeddingRequest."""

    model_config = ConfigDict(extra="ignore", strict=True)

    model: StrictStr = Field(min_length=1)
    input: StrictStr | list[StrictStr] | list[StrictInt] | list[list[StrictInt]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: StrictInt | None = Field(default=None, ge=1)
    user: StrictStr | None = None

    @field_validator("input")
    @classmethod
    def _input(cls, value):
        items = [value] if isinstance(value, str) else value
        if not items:
            raise ValueError("must not be empty")
        if len(items) > MAX_INPUTS and not all(isinstance(i, int) for i in items):
            raise ValueError(f"at most {MAX_INPUTS} inputs are allowed, got {len(items)}")
        for index, item in enumerate(items):
            if item == "" or item == []:
                raise ValueError(f"input {index} is empty; inputs must not be empty")
            if isinstance(item, list) and any(t < 0 for t in item):
                raise ValueError(f"input {index} has a negative token id")
        if isinstance(items[0], int) and any(t < 0 for t in items):
            raise ValueError("token ids must not be negative")
        return value

    def to_proto(self) -> pb.EmbedRequest:
        value = self.input
        if isinstance(value, str):
            inputs = [pb.EmbedInput(text=value)]
        elif isinstance(value[0], int):  # one input given as token ids
            inputs = [pb.EmbedInput(tokens=pb.TokenIds(ids=value))]
        elif isinstance(value[0], list):
            inputs = [pb.EmbedInput(tokens=pb.TokenIds(ids=ids)) for ids in value]
        else:
            inputs = [pb.EmbedInput(text=text) for text in value]
        request = pb.EmbedRequest(model=self.model, inputs=inputs, user=self.user or "")
        if self.dimensions is not None:
            request.dimensions = self.dimensions
        return request


def _encode(vector_f32le: bytes, encoding_format: str):
    if encoding_format == "base64":
        return base64.b64encode(vector_f32le).decode("ascii")  # what the openai SDK decodes by default
    return np.frombuffer(vector_f32le, dtype="<f4").tolist()


async def create_embeddings(request: web.Request) -> web.Response:
    """Creates an embedding vector for each input."""
    body = await parse_body(request, EmbeddingRequest)
    clients = request.app[CLIENTS]
    call = clients.embeddings.Embed(
        body.to_proto(), timeout=clients.timeout_s, metadata=clients.metadata(subject_of(request), body.user)
    )
    result = await unary(call, "embeddings", default_param="input")
    record_usage(request, result.prompt_tokens)
    return json_response(
        {
            "object": "list",
            "data": [
                {"object": "embedding", "index": e.index, "embedding": _encode(e.vector_f32le, body.encoding_format)}
                for e in result.embeddings
            ],
            "model": result.model,
            "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens},
        }
    )
