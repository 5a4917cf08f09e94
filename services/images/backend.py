"""The images service's only door to Triton (tritonclient.grpc.aio).

Contract of an image model in Triton (model_repository/tiny_sd): inputs prompt (STRING [1]),
width, height, num_images (INT32 [1]), optional seed (INT64 [1]), quality and style (STRING [1]);
output images (UINT8 [n, height, width, 3], RGB).
"""

from __future__ import annotations

from typing import Protocol

import grpc
import numpy as np
import tritonclient.grpc.aio as triton
from tritonclient.utils import InferenceServerException

from services.common.channels import TritonBackend
from services.common.triton_errors import from_triton_exception


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


def _tensor(name: str, value, datatype: str) -> triton.InferInput:
    tensor = triton.InferInput(name, [1], datatype)
    dtype = {"BYTES": np.object_, "INT32": np.int32, "INT64": np.int64}[datatype]
    tensor.set_data_from_numpy(np.array([value.encode("utf-8") if datatype == "BYTES" else value], dtype=dtype))
    return tensor


class TritonImagesBackend(TritonBackend):
    """ImagesBackend over one tritonclient.grpc.aio client per process."""

    async def generate(
        self, model: str, prompt: str, width: int, height: int, n: int, seed: int | None, quality: str, style: str
    ) -> np.ndarray:
        inputs = [
            _tensor("prompt", prompt, "BYTES"),
            _tensor("width", width, "INT32"),
            _tensor("height", height, "INT32"),
            _tensor("num_images", n, "INT32"),
            _tensor("quality", quality, "BYTES"),
            _tensor("style", style, "BYTES"),
        ]
        if seed is not None:
            inputs.append(_tensor("seed", seed, "INT64"))
        try:
            result = await self._client.infer(model, inputs, client_timeout=self._call_timeout())
        except (InferenceServerException, grpc.aio.AioRpcError) as err:
            raise from_triton_exception(err) from err
        return result.as_numpy("images")
