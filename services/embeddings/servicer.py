"""gRPC methods of hubmesh.embeddings.v1.Embeddings."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping

import numpy as np

from hubmesh.common.v1 import common_pb2 as common_pb
from hubmesh.embeddings.v1 import embeddings_pb2 as pb
from hubmesh.embeddings.v1 import embeddings_pb2_grpc as pb_grpc
from services.common.errors import InvalidArgument
from services.common.grpc_errors import abort_on_service_error
from services.common.metrics import count_tokens
from services.common.servicer import CatalogServicer
from services.common.telemetry import set_genai_attributes
from services.embeddings.backend import EmbeddingsBackend
from services.embeddings.catalog import EmbeddingModel
from services.embeddings.limits import MAX_INPUTS

_INPUT_INDEX = re.compile(r"\binput (\d+)\b")


def _chunks(inputs, chunk_size: int) -> list[tuple[int, str, list]]:
    """(offset, kind, items): runs of texts cut into chunk_size pieces; each token-id input alone."""
    chunks: list[tuple[int, str, list]] = []
    for index, item in enumerate(inputs):
        kind = item.WhichOneof("kind")
        if kind == "text":
            if chunks and chunks[-1][1] == "text" and len(chunks[-1][2]) < chunk_size:
                chunks[-1][2].append(item.text)
            else:
                chunks.append((index, "text", [item.text]))
        elif kind == "tokens":
            chunks.append((index, "tokens", [list(item.tokens.ids)]))
        else:
            raise InvalidArgument(f"input {index} is empty", "input")
    return chunks


class EmbeddingsServicer(CatalogServicer[EmbeddingModel], pb_grpc.EmbeddingsServicer):
    """Embeddings in front of an EmbeddingsBackend (Triton in production)."""

    _backend: EmbeddingsBackend

    def __init__(self, backend: EmbeddingsBackend, catalog: Mapping[str, EmbeddingModel], chunk_size: int = 32) -> None:
        super().__init__(backend, catalog)
        self._chunk_size = chunk_size

    def details(self, entry: EmbeddingModel) -> dict:
        return {"embedding": common_pb.EmbeddingModelDetails(
            dimensions=entry.dimensions, max_input_tokens=entry.max_input_tokens,
            supports_dimensions=entry.supports_dimensions,
        )}

    def _validate(self, request: pb.EmbedRequest) -> EmbeddingModel:
        entry = self.entry(request.model)
        if not request.inputs:
            raise InvalidArgument("input must not be empty", "input")
        if len(request.inputs) > MAX_INPUTS:
            raise InvalidArgument(f"input may hold at most {MAX_INPUTS} items, got {len(request.inputs)}", "input")
        for index, item in enumerate(request.inputs):
            kind = item.WhichOneof("kind")
            if (kind == "text" and not item.text) or (kind == "tokens" and not item.tokens.ids):
                raise InvalidArgument(f"input {index} is empty; inputs must not be empty", "input")
        if request.HasField("dimensions"):
            if not entry.supports_dimensions and request.dimensions != entry.dimensions:
                raise InvalidArgument(
                    f"The model '{entry.id}' does not support the dimensions parameter "
                    f"(its vectors have {entry.dimensions} dimensions)",
                    "dimensions",
                )
            if not 1 <= request.dimensions <= entry.dimensions:
                raise InvalidArgument(f"dimensions must be between 1 and {entry.dimensions}", "dimensions")
        return entry

    async def _run_chunk(self, entry: EmbeddingModel, offset: int, kind: str, items: list):
        try:
            if kind == "text":
                return await self._backend.embed_texts(entry.triton_model, items)
            return await self._backend.embed_tokens(entry.triton_model, items[0])
        except InvalidArgument as err:
            # the model numbers inputs within its request; callers number them within theirs
            message = _INPUT_INDEX.sub(lambda m: f"input {offset + int(m.group(1))}", str(err))
            raise InvalidArgument(message, "input") from err

    @abort_on_service_error
    async def Embed(self, request: pb.EmbedRequest, context) -> pb.EmbedResponse:
        entry = self._validate(request)
        set_genai_attributes(operation__name="embeddings", request__model=entry.id)
        chunks = _chunks(request.inputs, self._chunk_size)
        tasks = [asyncio.create_task(self._run_chunk(entry, *chunk)) for chunk in chunks]
        try:
            results = await asyncio.gather(*tasks)
        finally:
            for task in tasks:  # one failed chunk (or a cancelled call) stops the others
                task.cancel()
        dims = request.dimensions if request.HasField("dimensions") else None
        embeddings, total = [], 0
        for (offset, _, _), (vectors, tokens) in zip(chunks, results, strict=True):
            if dims is not None and dims < vectors.shape[1]:
                vectors = vectors[:, :dims]
                vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True).clip(min=1e-12)
            vectors = vectors.astype("<f4", copy=False)
            for i, (vector, count) in enumerate(zip(vectors, tokens, strict=True)):
                embeddings.append(
                    pb.Embedding(index=offset + i, vector_f32le=vector.tobytes(), tokens=count)
                )
                total += count
        count_tokens(entry.id, total, 0)
        set_genai_attributes(usage__input_tokens=total)
        return pb.EmbedResponse(model=entry.id, embeddings=embeddings, prompt_tokens=total)
