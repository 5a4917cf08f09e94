"""The vLLM-backend tensor contract, as the text service speaks it to Triton: the request of a
generation, and each response read back as a GenerationChunk.

Inputs: text_input, stream, sampling_parameters (JSON), exclude_input_in_output,
return_finish_reason, return_num_input_tokens, return_num_output_tokens — what Triton's vLLM backend
takes — and, only to continue a generation on a model that reports token ids (services.text.migration),
continuation_token_ids and choice_index. Only when a request asks for log probabilities
(`sampling_parameters.logprobs` = k, the number of alternatives), return_logprobs too: requests that do
not ask stay exactly as they were.
Outputs: text_output[n] (deltas when streaming), finish_reason[n], num_input_tokens,
num_output_tokens[n] (deltas), and where the model has them num_cached_tokens (the prompt tokens its
prefix cache served; hubmesh passes it on as OpenAI's usage.prompt_tokens_details.cached_tokens) and
output_token_ids[n, k] (each choice's tokens in this response, -1 padded: the CPU model and the
engine simulator). With return_logprobs, logprobs[n]: per choice the JSON text of a list with one
object per new token of the choice in this response, `{"<token id>": {"logprob", "rank",
"decoded_token"}, ...}` (vLLM's Logprob dicts, rank 1 the most likely), or `null`.

Which entry of a position's object is the sampled token: the one whose id is the token id
`output_token_ids` reports at that position where the model reports them (our models); otherwise
(Triton's vLLM backend) the first entry — vLLM builds each object with the sampled token first and
then the k most likely (both its V0 sampler and V1's logprobs processor), so the object has k
entries when the sampled token is among the best k and k + 1 when it is not. The alternatives are
every entry, ordered by rank; the servicer keeps those of rank <= k (so a sampled token outside the
best k is not among them, as OpenAI's `top_logprobs`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tritonclient.grpc import service_pb2

from services.common import triton_tensors

UNLIKELY = -9999.0  # OpenAI's logprob for a token the model gives (next to) no probability


@dataclass(slots=True)
class TopLogprob:
    """One entry of a position's logprobs: a token the model ranked there."""

    token: str
    logprob: float
    rank: int  # 1: the most likely


@dataclass(slots=True)
class TokenLogprob:
    """A generated token: its text and log probability, and every entry the model returned for its
    position, by rank (the sampled token's own entry included, whatever its rank)."""

    token: str
    logprob: float
    top: list[TopLogprob]


@dataclass
class GenerationChunk:
    """One response of the model: per-choice text deltas and finish reasons, token counts."""

    texts: list[str]
    finish_reasons: list[str | None]
    num_input_tokens: int | None = None
    num_output_tokens: list[int] = field(default_factory=list)
    num_cached_tokens: int | None = None  # prompt tokens served from the prefix cache, where reported
    token_ids: list[list[int]] | None = None  # each choice's token ids in this response, where reported
    # with return_logprobs: each choice's new tokens in this response (None for a choice the model
    # sent `null` for); None when the response has no logprobs output, or only nulls
    logprobs: list[list[TokenLogprob] | None] | None = None


def generation_request(model: str, prompt: str, sampling: Mapping[str, Any], stream: bool) -> service_pb2.ModelInferRequest:
    """The Triton request of one generation."""
    request = triton_tensors.new_request(model)
    for name, value in (("text_input", prompt), ("sampling_parameters", json.dumps(dict(sampling)))):
        triton_tensors.add_bytes(request, name, [value.encode("utf-8")], [1])
    for name, flag in (
        ("stream", stream), ("exclude_input_in_output", True), ("return_finish_reason", True),
        ("return_num_input_tokens", True), ("return_num_output_tokens", True),
    ):
        triton_tensors.add_flag(request, name, flag)
    if sampling.get("logprobs") is not None:  # only when asked: other requests stay as they were
        triton_tensors.add_flag(request, "return_logprobs", True)
    return request


def parse_response(response) -> GenerationChunk:
    """One ModelInferResponse of the contract as a chunk (once per streamed token: plain lists, no numpy)."""
    values = triton_tensors.flat_outputs(response)
    texts = values.get("text_output", [])
    reasons = [None if r in ("None", "") else r for r in values.get("finish_reason", ())]
    num_in = values.get("num_input_tokens")
    num_cached = values.get("num_cached_tokens")
    ids = values.get("output_token_ids")
    token_ids = None
    if ids is not None:
        width = len(ids) // len(texts) if texts else 0
        token_ids = [[t for t in ids[i * width:(i + 1) * width] if t >= 0] for i in range(len(texts))]
    logprobs = values.get("logprobs")  # where a model always sends it, `null`s unless the request asked
    if logprobs is not None and all(text == "null" for text in logprobs):
        logprobs = None
    return GenerationChunk(
        texts=texts,
        finish_reasons=reasons or [None] * len(texts),
        num_input_tokens=int(num_in[0]) if num_in else None,
        num_output_tokens=values.get("num_output_tokens", []),
        num_cached_tokens=int(num_cached[0]) if num_cached else None,
        token_ids=token_ids,
        logprobs=None if logprobs is None else [
            parse_logprobs(text, None if token_ids is None or i >= len(token_ids) else token_ids[i])
            for i, text in enumerate(logprobs)
        ],
    )


def parse_logprobs(text: str, token_ids: list[int] | None = None) -> list[TokenLogprob] | None:
    """One choice's `logprobs` element (JSON text) as its tokens; `token_ids` are the choice's
    sampled tokens in the same response, where the model reports them (see the module's rule)."""
    try:
        positions = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return None
    if not isinstance(positions, list):
        return None
    tokens = []
    for at, entries in enumerate(positions):
        if not isinstance(entries, dict) or not entries:
            tokens.append(TokenLogprob("", UNLIKELY, []))
            continue
        top = []
        sampled_entry = None
        sampled_id = str(token_ids[at]) if token_ids is not None and at < len(token_ids) else None
        for key, entry in entries.items():
            if not isinstance(entry, dict):
                continue
            item = TopLogprob(_text(entry.get("decoded_token")), _logprob(entry.get("logprob")), _rank(entry.get("rank")))
            top.append(item)
            if sampled_entry is None and (key == sampled_id if sampled_id is not None else True):
                sampled_entry = item
        top.sort(key=lambda e: e.rank)
        if sampled_entry is None:  # the reported id has no entry: its text and probability are unknown
            tokens.append(TokenLogprob("", UNLIKELY, top))
        else:
            tokens.append(TokenLogprob(sampled_entry.token, sampled_entry.logprob, top))
    return tokens


def _text(value) -> str:
    """A decoded token as text that encodes to UTF-8 (JSON may spell a lone surrogate)."""
    if not isinstance(value, str):
        return ""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-8", "replace").decode("utf-8")
    return value


def _logprob(value) -> float:
    """A finite logprob, at least OpenAI's -9999 (a masked token's -inf, or a missing value, is -9999)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return UNLIKELY
    return max(float(value), UNLIKELY) if value <= 0 else 0.0


def _rank(value) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 1 << 30
