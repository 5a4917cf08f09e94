"""OpenAI's sampling fields, shared by chat completions, completions and (through chat) the Responses
API, and how they travel to the text service: one request model, one mapping to the proto."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, StrictBool, StrictStr, field_validator

from facade.api import validation
from facade.api.response_bodies import FinishReason
from facade.api.validation import Int64, UInt32
from facade.errors import invalid
from hubmesh.text.v1 import text_generation_pb2 as pb
from services.text import limits

FINISH_REASONS: dict[int, FinishReason] = {
    pb.FINISH_REASON_STOP: "stop", pb.FINISH_REASON_LENGTH: "length", pb.FINISH_REASON_TOOL_CALLS: "tool_calls",
}
SYSTEM_FINGERPRINT = "fp_hubmesh_0_1"


def shows_limit(field: str, default: Any = None) -> Any:
    """A field whose limit the text service checks (services/text/limits.py), shown in the document."""
    return validation.shows_limit(limits.DOCUMENTED, field, default)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    include_usage: StrictBool = False


class SamplingFields(BaseModel):
    """OpenAI's sampling fields, as types; their limits are the text service's (services/text/servicer.py)."""

    model_config = ConfigDict(extra="ignore", strict=True)

    model: StrictStr
    temperature: float | None = shows_limit("temperature")
    top_p: float | None = shows_limit("top_p")
    n: UInt32 | None = shows_limit("n")
    stream: StrictBool | None = False
    stream_options: StreamOptions | None = None
    stop: StrictStr | list[StrictStr] | None = shows_limit("stop")
    max_tokens: UInt32 | None = shows_limit("max_tokens")
    presence_penalty: float | None = shows_limit("presence_penalty")
    frequency_penalty: float | None = shows_limit("frequency_penalty")
    logit_bias: dict[StrictStr, float] | None = None
    seed: Int64 | None = None
    user: StrictStr | None = None

    @field_validator("logit_bias")
    @classmethod
    def _logit_bias(cls, value):
        for token in value or {}:  # JSON keys are strings: each must spell a token id
            if not (token.isascii() and token.isdigit() and int(token) < 2**31):
                raise ValueError(f"keys must be token ids, got {token[:40]!r}")
        return value

    def sampling_proto(self, max_tokens: int | None) -> pb.SamplingParameters:
        stops = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        sampling = pb.SamplingParameters(
            stop=stops,
            logit_bias={int(k): v for k, v in (self.logit_bias or {}).items()},
        )
        for name in ("n", "temperature", "top_p", "presence_penalty", "frequency_penalty", "seed"):
            value = getattr(self, name)
            if value is not None:
                setattr(sampling, name, value)
        if max_tokens is not None:
            sampling.max_tokens = max_tokens
        return sampling

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def check_stream_options(self) -> None:
        if self.stream_options is not None and not self.stream:
            raise invalid("stream_options is only allowed when stream is true.", param="stream_options")


def max_tokens_of(body: SamplingFields, max_completion_tokens: int | None, default: int | None) -> int | None:
    """max_completion_tokens wins over the deprecated max_tokens."""
    if max_completion_tokens is not None:
        return max_completion_tokens
    if body.max_tokens is not None:
        return body.max_tokens
    return default
