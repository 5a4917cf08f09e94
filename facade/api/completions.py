"""POST /v1/completions."""

from __future__ import annotations

import asyncio

from aiohttp import web
from hubmesh.text.v1 import text_generation_pb2 as pb
from pydantic import Field, StrictBool, StrictInt, StrictStr, field_validator

from facade.api import text_common as tc
from facade.api.responses import Completion, CompletionChoice
from facade.api.validation import parse_body
from facade.clients import caller
from hubmesh.common.v1 import common_pb2 as common_pb
from facade.errors import invalid
from facade.jsonio import json_response

DEFAULT_MAX_TOKENS = 16  # OpenAI's and the seed's default for completions


class CompletionRequest(tc.SamplingFields):
    """OpenAI's CreateCompletionRequest (the fields this server honours)."""

    # null is OpenAI's default prompt: generate from the start of a document (an empty prompt)
    prompt: StrictStr | list[StrictStr] | list[StrictInt] | list[list[StrictInt]] | None = None
    echo: StrictBool | None = False
    suffix: StrictStr | None = None
    best_of: StrictInt | None = Field(default=None, ge=1, le=20)
    logprobs: StrictInt | None = Field(default=None, ge=0, le=5)

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
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)

    def to_protos(self, caller: common_pb.Caller | None = None) -> list[pb.GenerateRequest]:
        self.check_stream_options()
        if self.suffix:
            raise invalid("suffix is not supported by this model.", param="suffix")
        if self.logprobs:
            raise invalid("logprobs are not supported by this server.", param="logprobs")
        if self.best_of is not None and self.best_of != (self.n or 1):
            raise invalid("best_of other than n is not supported by this server.", param="best_of")
        sampling = self.sampling_proto(tc.max_tokens_of(self, None, default=DEFAULT_MAX_TOKENS))
        return [
            pb.GenerateRequest(model=self.model, prompt=p, sampling=sampling, caller=caller) for p in self.prompts
        ]


async def create_completion(request: web.Request) -> web.StreamResponse:
    """Creates a completion for the provided prompt(s) (JSON or SSE)."""
    body = await parse_body(request, CompletionRequest)
    protos = body.to_protos(caller(request, body.user))
    n = body.n or 1
    base = {"id": tc.new_id("cmpl"), "object": "text_completion", "created": tc.now(), "model": body.model}
    prompts = body.prompts
    if body.stream:
        upstreams = [(i * n, tc.GenerationStream(request, p, input_param="prompt")) for i, p in enumerate(protos)]

        echoed: set[int] = set()  # with echo, each choice's first chunk starts with its prompt

        def render(delta: pb.ChoiceDelta, offset: int) -> list[CompletionChoice]:
            reason = tc.FINISH_REASONS.get(delta.finish_reason) if delta.finish_reason else None
            index, text = offset + delta.index, delta.text
            if body.echo and index not in echoed:
                echoed.add(index)
                text = prompts[offset // n] + text
            return [{"index": index, "text": text, "logprobs": None, "finish_reason": reason}]

        return await tc.respond_with_stream(request, upstreams, base, body.include_usage, render)

    results = await asyncio.gather(*(tc.generate(request, p, input_param="prompt") for p in protos))
    choices: list[CompletionChoice] = []
    usage = pb.Usage()
    for i, result in enumerate(results):
        tc.add_usage(usage, result.usage)
        for choice in result.choices:
            choices.append(
                {
                    "index": i * n + choice.index,
                    "text": (prompts[i] if body.echo else "") + choice.text,
                    "logprobs": None,
                    "finish_reason": tc.FINISH_REASONS.get(choice.finish_reason, "stop"),
                }
            )
    completion: Completion = {
        **base, "system_fingerprint": tc.SYSTEM_FINGERPRINT, "choices": choices, "usage": tc.usage_json(usage)
    }
    return json_response(completion)
