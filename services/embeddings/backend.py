"""The embeddings service's only door to Triton (tritonclient.grpc.aio).

Contract of an embedding model in Triton: batched (max_batch_size > 0) with input `text`
(STRING [1] per item) or `token_ids` (INT32 [-1] per item), outputs `embedding` (FP32 [-1],
L2-normalised) and `num_tokens` (UINT32 [1]).
"""

from __future__ import annotations

from typing import Protocol

import grpc
import numpy as np
import tritonclient.grpc.aio as triton
from tritonclient.utils import InferenceServerException

from services.common.channels import TritonBackend
from services.common.triton_errors import from_triton_exception


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
    """EmbeddingsBackend over one tritonclient.grpc.aio client per process."""

    async def _infer(self, model: str, tensor: triton.InferInput) -> tuple[np.ndarray, list[int]]:
        try:
            result = await self._client.infer(model, [tensor], client_timeout=self._call_timeout())
        except (InferenceServerException, grpc.aio.AioRpcError) as err:
            raise from_triton_exception(err) from err
        vectors = result.as_numpy("embedding").astype(np.float32, copy=False)
        tokens = [int(t) for t in result.as_numpy("num_tokens").reshape(-1)]
        return vectors, tokens

    async def embed_texts(self, model: str, texts: list[str]) -> tuple[np.ndarray, list[int]]:
        tensor = triton.InferInput("text", [len(texts), 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[t.encode("utf-8")] for t in texts], dtype=np.object_))
        return await self._infer(model, tensor)

    async def embed_tokens(self, model: str, ids: list[int]) -> tuple[np.ndarray, list[int]]:
        tensor = triton.InferInput("token_ids", [1, len(ids)], "INT32")
        tensor.set_data_from_numpy(np.array([ids], dtype=np.int32))
        return await self._infer(model, tensor)
