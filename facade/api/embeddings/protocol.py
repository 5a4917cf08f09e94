"""The request model of POST /v1/embeddings (OpenAI's CreateEmbeddingRequest) and its proto."""

from __future__ import annotations

from typing import Literal, cast

from pydantic import BaseModel, ConfigDict, StrictStr

from facade.api.validation import TokenId, UInt32, shows_limit
from hubmesh.common.v1 import common_pb2 as common_pb
from hubmesh.embeddings.v1 import embeddings_pb2 as pb
from services.embeddings import limits


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
            # no int first: validation took the list whole as texts or as lists of token ids
            items = cast("list[str] | list[list[int]]", value)
            inputs = [pb.EmbedInput(tokens=pb.TokenIds(ids=item)) if isinstance(item, list) else pb.EmbedInput(text=item)
                      for item in items]
        request = pb.EmbedRequest(model=self.model, inputs=inputs, caller=caller)
        if self.dimensions is not None:
            request.dimensions = self.dimensions
        return request
