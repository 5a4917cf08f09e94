"""The images service's only door to Triton (its gRPC API, protobuf in and out).

Contract of an image model in Triton (model_repository/tiny_sd): inputs prompt (STRING [1]),
width, height, num_images (INT32 [1]), optional seed (INT64 [1]), quality and style (STRING [1]);
output images (UINT8 [n, height, width, 3], RGB).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from services.common import triton_tensors
from services.common.triton_backend import TritonBackend


class ImagesBackend(Protocol):
    """What the servicer needs from a model server."""

    async def is_ready(self, model: str) -> bool:
        """True when `model` can take requests now."""
        ...

    async def generate(
        self, model: str, prompt: str, width: int, height: int, n: int, seed: int | None, quality: str, style: str
    ) -> np.ndarray:
        """RGB pixels, uint8 [n, height, width, 3]."""
        ...

    async def close(self) -> None:
        """Releases connections."""
        ...


class TritonImagesBackend(TritonBackend):
    """ImagesBackend over Triton's gRPC ModelInfer."""

    async def generate(
        self, model: str, prompt: str, width: int, height: int, n: int, seed: int | None, quality: str, style: str
    ) -> np.ndarray:
        request = triton_tensors.new_request(model)
        for name, text in (("prompt", prompt), ("quality", quality), ("style", style)):
            triton_tensors.add_bytes(request, name, [text.encode("utf-8")], [1])
        for name, number in (("width", width), ("height", height), ("num_images", n)):
            triton_tensors.add_array(request, name, np.array([number], dtype=np.int32))
        if seed is not None:
            triton_tensors.add_array(request, "seed", np.array([seed], dtype=np.int64))
        return triton_tensors.numeric(triton_tensors.outputs(await self._model_infer(request)), "images")
