"""POST /v1/completions.

`logprobs` (0-5, checked by the text service) gives each choice OpenAI's legacy logprobs: `tokens`,
`token_logprobs`, `top_logprobs` (the best `logprobs` tokens and the sampled one, keyed by text) and
`text_offset` (each token's first character in the choice's text); each stream chunk carries those of
its own tokens, offsets counted from the start of the choice. With `echo` OpenAI adds the prompt's
tokens, but the model servers here (and Triton's vLLM backend) return no logprobs for the prompt, so
echo with logprobs is a 400 rather than an answer that silently lacks them.
"""

from __future__ import annotations

from aiohttp import web

from facade.api.completions.protocol import CompletionRequest
from facade.api.intake import accept
from facade.api.response_bodies import Completion, CompletionChoice, CompletionLogprobs
from facade.api.text.generation import add_usage, generate_served, new_id, now, open_streams, usage_json
from facade.api.text.relay import ChunkRenderer, relay
from facade.api.text.sampling import FINISH_REASONS, SYSTEM_FINGERPRINT
from facade.jsonio import json_response
from hubmesh.text.v1 import text_generation_pb2 as pb


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
    call, body = await accept(request, CompletionRequest)
    protos = body.to_protos(call.caller())
    n = body.n or 1
    completion_id, created = new_id("cmpl"), now()
    prompts = body.prompts
    if body.stream:
        streams = await open_streams(request, protos, input_param="prompt")  # on the model that serves them
        upstreams = [(i * n, stream) for i, stream in enumerate(streams)]
        base = {"id": completion_id, "object": "text_completion", "created": created, "model": protos[0].model}

        echoed: set[int] = set()  # with echo, each choice's first chunk starts with its prompt
        offsets: dict[int, int] = {}  # with logprobs: where each choice's next token starts in its text
        with_logprobs = body.logprobs is not None

        def render(delta: pb.ChoiceDelta, offset: int) -> list[CompletionChoice]:
            reason = FINISH_REASONS.get(delta.finish_reason) if delta.finish_reason else None
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
        return await relay(request, upstreams, ChunkRenderer(base, body.include_usage, render, text_choice=plain))

    results = await generate_served(request, protos, input_param="prompt")  # on the model that serves them
    choices: list[CompletionChoice] = []
    usage = pb.Usage()
    for i, result in enumerate(results):
        add_usage(usage, result.usage)
        for choice in result.choices:
            choices.append(
                {
                    "index": i * n + choice.index,
                    "text": (prompts[i] if body.echo else "") + choice.text,
                    "logprobs": logprobs_json(choice.logprobs)[0] if body.logprobs is not None else None,
                    "finish_reason": FINISH_REASONS.get(choice.finish_reason, "stop"),
                }
            )
    completion: Completion = {
        "id": completion_id, "object": "text_completion", "created": created, "model": protos[0].model,
        "system_fingerprint": SYSTEM_FINGERPRINT, "choices": choices, "usage": usage_json(usage),
    }
    return json_response(completion)
