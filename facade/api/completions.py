"""POST /v1/completions.

`logprobs` (0-5, checked by the text service) gives each choice OpenAI's legacy logprobs: `tokens`,
`token_logprobs`, `top_logprobs` (the best `logprobs` tokens and the sampled one, keyed by text) and
`text_offset` (each token's first character in the choice's text); each stream chunk carries those of
its own tokens, offsets counted from the start of the choice. With `echo` OpenAI adds the prompt's
tokens, but the model servers here (and Triton's vLLM backend) return no logprobs for the prompt, so
echo with logprobs is a 400 rather than an answer that silently lacks them.
"""

from __future__ import annotations

import asyncio

from aiohttp import web
from hubmesh.text.v1 import text_generation_pb2 as pb
from pydantic import Field, StrictBool, StrictInt, StrictStr, field_validator

from facade.api import text_common as tc
from facade.api.responses import Completion, CompletionChoice, CompletionLogprobs
from facade.api.validation import UInt32, parse_body
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
    logprobs: UInt32 | None = tc.shows_limit("completion_logprobs")

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
        if self.logprobs is not None and self.echo:
            # OpenAI would add the prompt's tokens; the model servers here return no prompt logprobs,
            # and leaving them out silently would mislead (echo + logprobs scores a text)
            raise invalid("echo with logprobs is not supported: this server returns no log probabilities for "
                          "prompt tokens. Send logprobs without echo.", param="echo")
        if self.best_of is not None and self.best_of != (self.n or 1):
            raise invalid("best_of other than n is not supported by this server.", param="best_of")
        sampling = self.sampling_proto(tc.max_tokens_of(self, None, default=DEFAULT_MAX_TOKENS))
        if self.logprobs is not None:
            sampling.logprobs = self.logprobs
        return [
            pb.GenerateRequest(model=self.model, prompt=p, sampling=sampling, caller=caller) for p in self.prompts
        ]


def logprobs_json(tokens, start: int = 0) -> tuple[CompletionLogprobs, int]:
    """The legacy logprobs of `tokens` (pb.TokenLogprob) whose text starts at character `start` of
    the choice's text, and where the text after them starts. top_logprobs holds the best `logprobs`
    tokens and the sampled one (OpenAI's "up to logprobs + 1"), keyed by their text."""
    texts, values, tops, offsets = [], [], [], []
    for t in tokens:
        texts.append(t.token)
        values.append(t.logprob)
        top = {e.token: e.logprob for e in t.top_logprobs}
        top.setdefault(t.token, t.logprob)
        tops.append(top)
        offsets.append(start)
        start += len(t.token)
    return {"tokens": texts, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets}, start


def _text_choice(index: int, text: str) -> CompletionChoice:
    """A streamed choice with text only: what render() makes of a delta with nothing but text when
    there is neither echo nor logprobs."""
    return {"index": index, "text": text, "logprobs": None, "finish_reason": None}


async def create_completion(request: web.Request) -> web.StreamResponse:
    """Creates a completion for the provided prompt(s) (JSON or SSE)."""
    body = await parse_body(request, CompletionRequest)
    protos = body.to_protos(caller(request, body.user))
    n = body.n or 1
    base = {"id": tc.new_id("cmpl"), "object": "text_completion", "created": tc.now(), "model": body.model}
    prompts = body.prompts
    for proto in protos:  # every reservation before any call starts: a refusal leaves nothing running
        await tc.reserve_budget(request, proto)
    if body.stream:
        upstreams = [(i * n, tc.GenerationStream(request, p, input_param="prompt")) for i, p in enumerate(protos)]

        echoed: set[int] = set()  # with echo, each choice's first chunk starts with its prompt
        offsets: dict[int, int] = {}  # with logprobs: where each choice's next token starts in its text
        with_logprobs = body.logprobs is not None

        def render(delta: pb.ChoiceDelta, offset: int) -> list[CompletionChoice]:
            reason = tc.FINISH_REASONS.get(delta.finish_reason) if delta.finish_reason else None
            index, text = offset + delta.index, delta.text
            if body.echo and index not in echoed:
                echoed.add(index)
                text = prompts[offset // n] + text
            logprobs = None
            if with_logprobs:
                logprobs, offsets[index] = logprobs_json(delta.logprobs, offsets.get(index, 0))
            return [{"index": index, "text": text, "logprobs": logprobs, "finish_reason": reason}]

        # without echo and logprobs, a text delta is a fixed choice around its text: encoded from a template
        plain = None if body.echo or with_logprobs else _text_choice
        return await tc.respond_with_stream(request, upstreams, base, body.include_usage, render, text_choice=plain)

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
                    "logprobs": logprobs_json(choice.logprobs)[0] if body.logprobs is not None else None,
                    "finish_reason": tc.FINISH_REASONS.get(choice.finish_reason, "stop"),
                }
            )
    completion: Completion = {
        **base, "system_fingerprint": tc.SYSTEM_FINGERPRINT, "choices": choices, "usage": tc.usage_json(usage)
    }
    return json_response(completion)
