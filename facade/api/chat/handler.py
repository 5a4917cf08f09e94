"""POST /v1/chat/completions, with tools and structured output.

Tools, tool_choice, parallel_tool_calls and response_format go to the text service as they are;
it renders the tools into the prompt and has the model held to a grammar, so a tool call's
arguments and a JSON answer always parse and match their schema (services/text/structured.py).

`logprobs: true` (with `top_logprobs`, 0-20, checked by the text service; `top_logprobs` without
`logprobs: true` is a 400, as OpenAI's) gives each choice `logprobs.content`: every generated token in
order (those that wrote tool calls too), with its UTF-8 bytes and the best `top_logprobs` tokens of its
position. Streamed, each chunk choice carries the tokens of its delta (content [] on one that has none,
null on the opening role chunk), so the chunks' lists concatenate to every token once. Without it,
`logprobs` stays null everywhere.
"""

from __future__ import annotations

from aiohttp import web

from facade.api.chat.protocol import ChatCompletionRequest
from facade.api.intake import accept
from facade.api.response_bodies import (
    ChatCompletion,
    ChatCompletionChoice,
    ChatCompletionChoiceLogprobs,
    ChatCompletionChunkChoice,
    ChatCompletionMessage,
    ChatCompletionMessageToolCall,
    ChatCompletionToolCallDelta,
)
from facade.api.text.generation import generate_served, new_id, now, open_streams, usage_json
from facade.api.text.relay import ChunkRenderer, relay
from facade.api.text.sampling import FINISH_REASONS, SYSTEM_FINGERPRINT
from facade.jsonio import json_response
from hubmesh.text.v1 import text_generation_pb2 as pb


def tool_calls_json(calls) -> list[ChatCompletionMessageToolCall]:
    return [
        {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}} for c in calls
    ]


def logprobs_json(tokens) -> ChatCompletionChoiceLogprobs:
    """OpenAI's choice logprobs of `tokens` (pb.TokenLogprob)."""
    return {
        "content": [
            {"token": t.token, "logprob": t.logprob, "bytes": list(t.bytes),
             "top_logprobs": [{"token": e.token, "logprob": e.logprob, "bytes": list(e.bytes)} for e in t.top_logprobs]}
            for t in tokens
        ],
        "refusal": None,
    }


def _choice_json(choice: pb.Choice, with_logprobs: bool) -> ChatCompletionChoice:
    message: ChatCompletionMessage = {
        "role": "assistant",
        "content": choice.text if choice.text or not choice.tool_calls else None,
        "refusal": None,
    }
    if choice.tool_calls:
        message["tool_calls"] = tool_calls_json(choice.tool_calls)
    return {
        "index": choice.index,
        "message": message,
        "logprobs": logprobs_json(choice.logprobs) if with_logprobs else None,
        "finish_reason": FINISH_REASONS.get(choice.finish_reason, "stop"),
    }


async def create_chat_completion(request: web.Request) -> web.StreamResponse:
    """Creates a model response for the given chat conversation (JSON or SSE)."""
    call, body = await accept(request, ChatCompletionRequest)
    proto = body.to_proto(call.caller())
    if body.stream:
        return await _stream(request, body, proto)
    result, = await generate_served(request, [proto], input_param="messages")  # on the model that serves it
    completion: ChatCompletion = {
        "id": new_id("chatcmpl"),
        "object": "chat.completion",
        "created": now(),
        "model": result.model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": [_choice_json(c, bool(body.logprobs)) for c in result.choices],
        "usage": usage_json(result.usage),
    }
    return json_response(completion)


async def _stream(request: web.Request, body: ChatCompletionRequest, proto: pb.GenerateRequest) -> web.StreamResponse:
    upstream, = await open_streams(request, [proto], input_param="messages")  # on the model that serves it
    base = {  # every chunk's fields but choices
        "id": new_id("chatcmpl"),
        "object": "chat.completion.chunk",
        "created": now(),
        "model": proto.model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
    }
    content = None if body.forces_tool_calls else ""  # as OpenAI: no content when only calls can follow
    opening: list[ChatCompletionChunkChoice] = [
        {"index": i, "delta": {"role": "assistant", "content": content}, "logprobs": None, "finish_reason": None}
        for i in range(body.n or 1)
    ]
    render = _render_with_logprobs if body.logprobs else _render
    renderer = ChunkRenderer(base, body.include_usage, render, opening,
                             text_choice=None if body.logprobs else _text_choice)
    return await relay(request, [(0, upstream)], renderer)


def _tool_call_delta(call: pb.ToolCallDelta) -> ChatCompletionToolCallDelta:
    """OpenAI's streamed tool call: id, type and name (arguments "") first, then argument fragments."""
    if call.HasField("id"):
        return {"index": call.index, "id": call.id, "type": "function",
                "function": {"name": call.name, "arguments": call.arguments}}
    return {"index": call.index, "function": {"arguments": call.arguments}}


def _text_choice(index: int, text: str) -> ChatCompletionChunkChoice:
    """The chunk choice of a delta with text only (also the template of the relay's
    encoded text chunks)."""
    return {"index": index, "delta": {"content": text}, "logprobs": None, "finish_reason": None}


def _render(delta: pb.ChoiceDelta, offset: int) -> list[ChatCompletionChunkChoice]:
    choices: list[ChatCompletionChunkChoice] = []
    if delta.text:
        choices.append(_text_choice(delta.index, delta.text))
    if delta.tool_calls:
        choices.append({"index": delta.index, "delta": {"tool_calls": [_tool_call_delta(c) for c in delta.tool_calls]},
                        "logprobs": None, "finish_reason": None})
    if delta.finish_reason:
        reason = FINISH_REASONS.get(delta.finish_reason, "stop")
        choices.append({"index": delta.index, "delta": {}, "logprobs": None, "finish_reason": reason})
    return choices


def _render_with_logprobs(delta: pb.ChoiceDelta, offset: int) -> list[ChatCompletionChunkChoice]:
    """_render with logprobs: true: the delta's tokens on its first chunk choice, an empty list on the
    others (a delta with tokens only, which a model that never finished a choice leaves, has a choice
    with an empty delta)."""
    choices = _render(delta, offset)
    if not choices:
        if not delta.logprobs:
            return choices
        choices = [{"index": delta.index, "delta": {}, "logprobs": None, "finish_reason": None}]
    choices[0]["logprobs"] = logprobs_json(delta.logprobs)
    for choice in choices[1:]:
        choice["logprobs"] = {"content": [], "refusal": None}
    return choices
