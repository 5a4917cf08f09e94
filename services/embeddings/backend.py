"""The embeddings service's only door to Triton (its gRPC API, protobuf in and out).

Contract of an embedding model in Triton: batched (max_batch_size > 0) with input `text`
(STRING [1] per item) or `token_ids` (INT32 [-1] per item), outputs `embedding` (FP32 [-1],
L2-normalised) and `num_tokens` (UINT32 [1]).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
from tritonclient.grpc import service_pb2

from services.common import triton_tensors
from services.common.triton_backend import TritonBackend


class EmbeddingsBackend(Protocol):
    """What the servicer needs from a model server."""

    async def is_ready(self, model: str) -> bool:
        """True when `model` can take requests now."""
        ...

    async def embed_texts(self, model: str, texts: list[str]) -> tuple[np.ndarray, list[int]]:
        """Vectors [len(texts), d] (float32) and token counts, in order."""
        ...

    async def embed_tokens(self, model: str, ids: list[int]) -> tuple[np.ndarray, list[int]]:
        """The vector [1, d] and token count of one token-id input."""
        ...

    async def close(self) -> None:
        """Releases connections."""
        ...


class TritonEmbeddingsBackend(TritonBackend):
    """EmbeddingsBackend over Triton's gRPC ModelInfer."""

    async def _infer(self, request: service_pb2.ModelInferRequest) -> tuple[np.ndarray, list[int]]:
        values = triton_tensors.outputs(await self._model_infer(request))
        vectors = triton_tensors.numeric(values, "embedding").astype(np.float32, copy=False)
        return vectors, triton_tensors.numeric(values, "num_tokens").reshape(-1).tolist()

    async def embed_texts(self, model: str, texts: list[str]) -> tuple[np.ndarray, list[int]]:
        request = triton_tensors.new_request(model)
        triton_tensors.add_bytes(request, "text", [t.encode("utf-8") for t in texts], [len(texts), 1])
        return await self._infer(request)

    async def embed_tokens(self, model: str, ids: list[int]) -> tuple[np.ndarray, list[int]]:
        request = triton_tensors.new_request(model)
        triton_tensors.add_array(request, "token_ids", np.array([ids], dtype=np.int32))
        return await self._infer(request)
