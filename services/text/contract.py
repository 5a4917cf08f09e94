"""The vLLM-backend tensor contract, as the text service speaks it to Triton: the request of a
generation, and each response read back as a GenerationChunk.

Inputs: text_input, stream, sampling_parameters (JSON), exclude_input_in_output,
return_finish_reason, return_num_input_tokens, return_num_output_tokens — what Triton's vLLM backend
takes — and, only to continue a generation on a model that reports token ids (services.text.migration),
continuation_token_ids and choice_index.
Outputs: text_output[n] (deltas when streaming), finish_reason[n], num_input_tokens,
num_output_tokens[n] (deltas), and where the model has them num_cached_tokens (the prompt tokens its
prefix cache served; hubmesh passes it on as OpenAI's usage.prompt_tokens_details.cached_tokens) and
output_token_ids[n, k] (each choice's tokens in this response, -1 padded: the CPU model and the
engine simulator).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from tritonclient.grpc import service_pb2

from services.common import triton_tensors


@dataclass
class GenerationChunk:
    """One response of the model: per-choice text deltas and finish reasons, token counts."""

    texts: list[str]
    finish_reasons: list[str | None]
    num_input_tokens: int | None = None
    num_output_tokens: list[int] = field(default_factory=list)
    num_cached_tokens: int | None = None  # prompt tokens served from the prefix cache, where reported
    token_ids: list[list[int]] | None = None  # each choice's token ids in this response, where reported


def generation_request(model: str, prompt: str, sampling: dict[str, Any], stream: bool) -> service_pb2.ModelInferRequest:
    """The Triton request of one generation."""
    request = triton_tensors.new_request(model)
    for name, value in (("text_input", prompt), ("sampling_parameters", json.dumps(sampling))):
        triton_tensors.add_bytes(request, name, [value.encode("utf-8")], [1])
    for name, flag in (
        ("stream", stream), ("exclude_input_in_output", True), ("return_finish_reason", True),
        ("return_num_input_tokens", True), ("return_num_output_tokens", True),
    ):
        triton_tensors.add_flag(request, name, flag)
    return request


def parse_response(response) -> GenerationChunk:
    """One ModelInferResponse of the contract as a chunk."""
    values = triton_tensors.outputs(response)
    texts = values.get("text_output", [])
    reasons = [None if r in ("None", "") else r for r in values.get("finish_reason", [])]
    num_in = values.get("num_input_tokens")
    num_out = values.get("num_output_tokens")
    num_cached = values.get("num_cached_tokens")
    ids = values.get("output_token_ids")
    return GenerationChunk(
        texts=texts,
        finish_reasons=reasons or [None] * len(texts),
        num_input_tokens=int(num_in.reshape(-1)[0]) if num_in is not None and num_in.size else None,
        num_output_tokens=num_out.reshape(-1).tolist() if num_out is not None else [],
        num_cached_tokens=int(num_cached.reshape(-1)[0]) if num_cached is not None and num_cached.size else None,
        token_ids=None if ids is None else [[t for t in row if t >= 0] for row in ids.reshape(len(texts), -1).tolist()],
    )
