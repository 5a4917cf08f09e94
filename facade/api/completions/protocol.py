"""The request model of POST /v1/completions (OpenAI's CreateCompletionRequest, the fields this
server honours) and its mapping to the text service's GenerateRequests (one per prompt)."""

from __future__ import annotations

from typing import cast

from pydantic import Field, StrictBool, StrictInt, StrictStr, field_validator

from facade.api.text.sampling import SamplingFields, max_tokens_of, shows_limit
from facade.api.validation import UInt32
from facade.errors import invalid
from hubmesh.common.v1 import common_pb2 as common_pb
from hubmesh.text.v1 import text_generation_pb2 as pb

DEFAULT_MAX_TOKENS = 16  # OpenAI's and the seed's default for completions


class CompletionRequest(SamplingFields):
    """OpenAI's CreateCompletionRequest (the fields this server honours)."""

    # null is OpenAI's default prompt: generate from the start of a document (an empty prompt)
    prompt: StrictStr | list[StrictStr] | list[StrictInt] | list[list[StrictInt]] | None = None
    echo: StrictBool | None = False
    suffix: StrictStr | None = None
    best_of: StrictInt | None = Field(default=None, ge=1, le=20)
    logprobs: UInt32 | None = shows_limit("completion_logprobs")

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value):
        if isinstance(value, list):
            if not value:
                raise ValueError("must not be an empty list")
            if not all(isinstance(p, str) for p in value):
                raise ValueError("token-id prompts are not supported by this server; send text")
        return value

    @property
    def prompts(self) -> list[str]:
        if self.prompt is None:
            return [""]
        if isinstance(self.prompt, str):
            return [self.prompt]
        return list(cast("list[str]", self.prompt))  # _prompt refuses lists of token ids

    def to_protos(self, caller: common_pb.Caller | None = None) -> list[pb.GenerateRequest]:
        self.check_stream_options()
        if self.suffix:
            raise invalid("suffix is not supported by this model.", param="suffix")
        if self.logprobs is not None and self.echo:
            # OpenAI would add the prompt's tokens; the model servers here return no prompt logprobs,
            # and leaving them out silently would mislead (echo + logprobs scores a text)
            raise invalid("echo with logprobs is not supported: this server returns no log probabilities for "
                          "prompt tokens. Send logprobs without echo.", param="echo")
        if self.best_of is not None and self.best_of != (self.n or 1):
            raise invalid("best_of other than n is not supported by this server.", param="best_of")
        sampling = self.sampling_proto(max_tokens_of(self, None, default=DEFAULT_MAX_TOKENS))
        if self.logprobs is not None:
            sampling.logprobs = self.logprobs
        return [
            pb.GenerateRequest(model=self.model, prompt=p, sampling=sampling, caller=caller) for p in self.prompts
        ]
