"""The text service's only door to Triton: the vLLM-backend tensor contract over tritonclient.grpc.aio.

Any Triton model that speaks this contract can serve text: the CPU default (a python-backend
SmolLM2 model in ./model_repository) or, on GPU nodes, Triton's official vLLM backend.
Inputs: text_input, stream, sampling_parameters (JSON), exclude_input_in_output,
return_finish_reason, return_num_input_tokens, return_num_output_tokens.
Outputs: text_output[n] (deltas when streaming), finish_reason[n], num_input_tokens,
num_output_tokens[n] (deltas).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import struct
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc
import numpy as np
import tritonclient.grpc.aio as triton
from tritonclient.utils import InferenceServerException, triton_to_np_dtype

from services.common.channels import TritonBackend
from services.common.triton_errors import classify_triton_error, from_triton_exception

log = logging.getLogger(__name__)


@dataclass
class GenerationChunk:
    """One response of the model: per-choice text deltas and finish reasons, token counts."""

    texts: list[str]
    finish_reasons: list[str | None]
    num_input_tokens: int | None = None
    num_output_tokens: list[int] = field(default_factory=list)


class TextBackend(Protocol):
    """What the servicer needs from a model server."""

    async def is_ready(self, model: str) -> bool:
        """True when `model` can take requests now."""
        ...

    def generate(
        self, model: str, prompt: str, sampling: dict[str, Any], stream: bool
    ) -> AsyncIterator[GenerationChunk]:
        """Chunks of one generation; closing the iterator early cancels the work in the model."""
        ...

    async def close(self) -> None:
        """Releases connections."""
        ...


def _bool_input(name: str, value: bool) -> triton.InferInput:
    tensor = triton.InferInput(name, [1], "BOOL")
    tensor.set_data_from_numpy(np.array([value], dtype=bool))
    return tensor


def _string_input(name: str, value: str) -> triton.InferInput:
    tensor = triton.InferInput(name, [1], "BYTES")
    tensor.set_data_from_numpy(np.array([value.encode("utf-8")], dtype=np.object_))
    return tensor


def _bytes_elements(raw: bytes) -> list[str]:
    """A BYTES tensor's elements (each a 4-byte little-endian length, then the bytes), as text."""
    values, offset = [], 0
    while offset < len(raw):
        (size,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        values.append(raw[offset:offset + size].decode("utf-8", errors="replace"))
        offset += size
    return values


def _output_values(output, raw: bytes | None) -> list:
    """An output tensor's elements: from its raw buffer (what Triton's gRPC frontend sends) or from
    its typed contents."""
    if raw is None:
        c = output.contents
        if output.datatype == "BYTES":
            return [v.decode("utf-8", errors="replace") for v in c.bytes_contents]
        return list(c.uint_contents or c.int_contents or c.uint64_contents or c.int64_contents)
    if output.datatype == "BYTES":
        return _bytes_elements(raw)
    return np.frombuffer(raw, dtype=triton_to_np_dtype(output.datatype)).tolist()


def parse_response(response) -> GenerationChunk:
    """One ModelInferResponse of the contract, read straight from the protobuf (this runs for every
    streamed token: no InferResult, no numpy object arrays)."""
    raws = response.raw_output_contents
    values = {
        output.name: _output_values(output, raws[i] if i < len(raws) else None)
        for i, output in enumerate(response.outputs)
    }
    texts = values.get("text_output", [])
    reasons = [None if r in ("None", "") else r for r in values.get("finish_reason", [])]
    num_in = values.get("num_input_tokens")
    return GenerationChunk(
        texts=texts,
        finish_reasons=reasons or [None] * len(texts),
        num_input_tokens=int(num_in[0]) if num_in else None,
        num_output_tokens=[int(v) for v in values.get("num_output_tokens", [])],
    )


class TritonTextBackend(TritonBackend):
    """TextBackend over one tritonclient.grpc.aio client per process."""

    async def generate(
        self, model: str, prompt: str, sampling: dict[str, Any], stream: bool
    ) -> AsyncIterator[GenerationChunk]:
        request = {
            "model_name": model,
            "request_id": uuid.uuid4().hex,
            "inputs": [
                _string_input("text_input", prompt),
                _bool_input("stream", stream),
                _string_input("sampling_parameters", json.dumps(sampling)),
                _bool_input("exclude_input_in_output", True),
                _bool_input("return_finish_reason", True),
                _bool_input("return_num_input_tokens", True),
                _bool_input("return_num_output_tokens", True),
            ],
        }

        async def requests():
            yield request

        responses = self._client.stream_infer(requests(), stream_timeout=self._call_timeout())
        exhausted = False
        try:
            while True:
                try:
                    result, error = await anext(responses)
                except StopAsyncIteration:
                    exhausted = True  # Triton closes the stream once the final response is out
                    break
                except (grpc.aio.AioRpcError, InferenceServerException) as err:
                    exhausted = True
                    raise from_triton_exception(err) from err
                if error is not None:
                    raise classify_triton_error(error.message())
                chunk = parse_response(result.get_response())
                if chunk.texts or chunk.num_input_tokens is not None:
                    yield chunk
        finally:
            if not exhausted:
                # The consumer went away (client disconnect, deadline) or the model failed: stop the
                # model too, then read once more so the call (and its trace span) really ends.
                responses.cancel()
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await anext(responses)
