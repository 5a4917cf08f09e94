"""The text service's only door to Triton: the vLLM-backend tensor contract over Triton's gRPC stream.

Any Triton model that speaks this contract can serve text: the CPU default (a python-backend
SmolLM2 model in ./model_repository) or, on GPU nodes, Triton's official vLLM backend.
Inputs: text_input, stream, sampling_parameters (JSON), exclude_input_in_output,
return_finish_reason, return_num_input_tokens, return_num_output_tokens.
Outputs: text_output[n] (deltas when streaming), finish_reason[n], num_input_tokens,
num_output_tokens[n] (deltas), and where the model has it num_cached_tokens (the prompt tokens its
prefix cache served: the engine simulator reports it; hubmesh passes it on as OpenAI's
usage.prompt_tokens_details.cached_tokens).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc

from services.common import triton_tensors
from services.common.channels import TritonBackend
from services.common.triton_errors import classify_triton_error, from_triton_exception


@dataclass
class GenerationChunk:
    """One response of the model: per-choice text deltas and finish reasons, token counts."""

    texts: list[str]
    finish_reasons: list[str | None]
    num_input_tokens: int | None = None
    num_output_tokens: list[int] = field(default_factory=list)
    num_cached_tokens: int | None = None  # prompt tokens served from the prefix cache, where reported


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


def parse_response(response) -> GenerationChunk:
    """One ModelInferResponse of the contract as a chunk."""
    values = triton_tensors.outputs(response)
    texts = values.get("text_output", [])
    reasons = [None if r in ("None", "") else r for r in values.get("finish_reason", [])]
    num_in = values.get("num_input_tokens")
    num_out = values.get("num_output_tokens")
    num_cached = values.get("num_cached_tokens")
    return GenerationChunk(
        texts=texts,
        finish_reasons=reasons or [None] * len(texts),
        num_input_tokens=int(num_in.reshape(-1)[0]) if num_in is not None and num_in.size else None,
        num_output_tokens=num_out.reshape(-1).tolist() if num_out is not None else [],
        num_cached_tokens=int(num_cached.reshape(-1)[0]) if num_cached is not None and num_cached.size else None,
    )


class TritonTextBackend(TritonBackend):
    """TextBackend over Triton's gRPC streaming endpoint, on the replica the picker chooses for the
    prompt; a replica that is gone before the first response is replaced by another (see TritonBackend)."""

    async def generate(
        self, model: str, prompt: str, sampling: dict[str, Any], stream: bool
    ) -> AsyncIterator[GenerationChunk]:
        request = triton_tensors.new_request(model)
        for name, value in (("text_input", prompt), ("sampling_parameters", json.dumps(sampling))):
            triton_tensors.add_bytes(request, name, [value.encode("utf-8")], [1])
        for name, flag in (
            ("stream", stream), ("exclude_input_in_output", True), ("return_finish_reason", True),
            ("return_num_input_tokens", True), ("return_num_output_tokens", True),
        ):
            triton_tensors.add_flag(request, name, flag)
        tried: list = []
        while True:
            decision = self.pick(model, prompt, tried)
            reported: tuple[int | None, int | None] = (None, None)
            answered = False
            try:
                with decision.replica.busy():
                    async for chunk in self._stream(decision.replica, request):
                        if not answered:
                            answered = True
                            reported = (chunk.num_input_tokens, chunk.num_cached_tokens)
                            self.picker.started(decision)
                        yield chunk
                return
            except _Gone as gone:
                if answered or not self.may_retry(decision, gone.err, tried):
                    raise from_triton_exception(gone.err) from gone.err
            finally:
                self.picker.done(decision, *reported)

    async def _stream(self, replica, request) -> AsyncIterator[GenerationChunk]:
        """The responses of one ModelStreamInfer call on `replica`; _Gone when the call fails."""
        call = replica.stub.ModelStreamInfer(iter((request,)), timeout=self._call_timeout())
        exhausted = False
        try:
            while True:
                try:
                    response = await call.read()
                except grpc.aio.AioRpcError as err:
                    exhausted = True
                    raise _Gone(err) from err
                if response is grpc.aio.EOF:
                    exhausted = True  # Triton closes the stream once the final response is out
                    break
                if response.error_message:
                    raise classify_triton_error(response.error_message)
                chunk = parse_response(response.infer_response)
                if chunk.texts or chunk.num_input_tokens is not None:
                    yield chunk
        finally:
            if not exhausted:
                # The consumer went away (client disconnect, deadline) or the model failed: stop the
                # model too, then read once more so the call (and its trace span) really ends.
                call.cancel()
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await call.read()


class _Gone(Exception):
    """A Triton call that failed at the gRPC level (the replica may be gone)."""

    def __init__(self, err: grpc.aio.AioRpcError) -> None:
        super().__init__(err.details())
        self.err = err
