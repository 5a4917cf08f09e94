"""POST /v1/messages and POST /v1/messages/count_tokens: Anthropic's Messages API on the chat path
(the request runs as a chat request: facade/api/messages/protocol.py), its answers, stream and errors
in Anthropic's shapes (message.py, events.py; errors: facade/errors.py, the route's dialect)."""

from __future__ import annotations

from aiohttp import web

from facade.aliases import resolve
from facade.api.intake import accept
from facade.api.messages.events import MessageEvents
from facade.api.messages.message import content_blocks, new_message, stop_reason
from facade.api.messages.protocol import CountTokensRequest, MessagesRequest, renamed
from facade.api.response_bodies import AnthropicTokenCount
from facade.api.text.generation import GenerationStream, generate_served, open_streams
from facade.api.text.relay import relay
from facade.errors import OpenAIError
from facade.jsonio import json_response
from hubmesh.text.v1 import text_generation_pb2 as pb


async def create_message(request: web.Request) -> web.StreamResponse:
    """Creates a message (JSON, or with `stream: true` Anthropic's event stream)."""
    call, body = await accept(request, MessagesRequest)
    proto = body.to_proto(call.caller())
    try:  # on the model named, or the first of an alias's chain that serves it (facade/aliases.py)
        if body.stream:
            (upstream,) = await open_streams(request, [proto], input_param="messages")
            return await relay(request, [(0, upstream)], MessageEvents(proto.model, call.request_id))
        (result,) = await generate_served(request, [proto], input_param="messages")
    except OpenAIError as err:  # before the first byte: its own status, the Messages request's params
        raise renamed(err) from None
    choice = result.choices[0] if result.choices else pb.Choice(finish_reason=pb.FINISH_REASON_STOP)
    return json_response(new_message(result.model or body.model, content_blocks(choice),
                                     stop_reason(choice.finish_reason), result.usage))


async def count_tokens(request: web.Request) -> web.Response:
    """The tokens the messages (with the system prompt and tools) would put in the model's prompt: the
    prompt's own count, from a one-token generation's first answer (the count, not the token, is kept;
    nothing is billed)."""
    call, body = await accept(request, CountTokensRequest)
    proto = body.to_proto(call.caller())
    proto.model = resolve(request, body.model)  # an alias: its first model's prompt
    upstream = GenerationStream(request, proto, input_param="messages")
    try:
        await upstream.start()
        async for message in upstream.messages():
            if message.HasField("prompt_tokens") or message.HasField("usage"):
                tokens = message.prompt_tokens if message.HasField("prompt_tokens") else message.usage.prompt_tokens
                count: AnthropicTokenCount = {"input_tokens": tokens}
                return json_response(count)
    except OpenAIError as err:
        raise renamed(err) from None
    finally:
        upstream.cancel()
    raise OpenAIError(502, "The model server did not report the prompt's size.", type="server_error")
