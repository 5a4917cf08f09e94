"""The one stream relay: generation streams out as server-sent events, whatever the endpoint.

relay() reads the first stream's first message (or error) before any HTTP byte, so that errors such
as an unknown model keep their own HTTP status; then opens the SSE response and hands every message
to the endpoint's Renderer, which writes its own events: chat completion chunks (ChunkRenderer here,
for chat completions and completions), or the Responses API's typed events
(facade/api/responses/events.py). A failure mid-stream goes to the renderer too (it travels in-band:
the status line is gone). What the streams used is recorded on the Call however the response ends,
and every upstream call is cancelled when it ends, the client going away included.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from aiohttp import web

from facade.api.response_bodies import ChatCompletionChunkChoice, CompletionChoice
from facade.api.text.generation import GenerationStream, StreamUsage, usage_json
from facade.call import call_of
from facade.errors import OpenAIError
from facade.sse import ChunkEncoder, EventStream
from hubmesh.text.v1 import text_generation_pb2 as pb
from services.common.metrics import StreamTimer

ChunkChoice = ChatCompletionChunkChoice | CompletionChoice


class Renderer(Protocol):
    """An endpoint's events for the messages of its generation streams. A renderer whose dialect
    ends its streams without `data: [DONE]` (Anthropic's) says so with `done_marker = False`."""

    async def open(self, events: EventStream) -> None:
        """The response has started: the opening events, if any."""

    async def message(self, message: pb.GenerateStreamResponse, offset: int) -> bool:
        """One message of a stream (`offset`: what that stream adds to its choice indices); True
        when it wrote tokens (for time to first token and inter-token latency)."""

    async def finished(self, usage: pb.Usage) -> None:
        """Every stream has ended well; `usage`: what they used in all."""

    async def failed(self, err: OpenAIError, usage: pb.Usage) -> None:
        """A stream failed after the response started."""


async def relay(request: web.Request, upstreams: Sequence[tuple[int, GenerationStream]],
                renderer: Renderer) -> web.StreamResponse:
    """Relays `upstreams` (each with the offset added to its choice indices; completions with several
    prompts have several) in order through `renderer`; the first stream's errors keep their HTTP status."""
    call = call_of(request)
    try:
        await upstreams[0][1].start()
        events = EventStream(request, done_marker=getattr(renderer, "done_marker", True))
        await events.open()
        await renderer.open(events)
        timer = StreamTimer(call.model)
        used = StreamUsage()
        try:
            for position, (offset, upstream) in enumerate(upstreams):
                if position:
                    await upstream.start()
                async for message in upstream.messages():
                    used.see(message)
                    if await renderer.message(message, offset):
                        timer.chunk()
            used.record(call)
            await renderer.finished(used.total)
        except OpenAIError as err:
            await renderer.failed(err, used.total)
        finally:
            used.record(call)  # a stream cut short: what it had shown
        return await events.close()
    finally:
        for _, upstream in upstreams:
            upstream.cancel()


class ChunkRenderer:
    """OpenAI's chunk events (chat completion chunks, or completions): `{**base, "choices": [...]}`
    (`base`: every field but choices), `opening` choices first where given, a usage chunk last with
    `include_usage`, an in-band error event on a failure.

    `render(delta, offset)` turns one delta into chunk choices. `text_choice(index, text)`, where given,
    is what `render` makes of a delta with nothing but text (at index `offset + delta.index`):
    messages of such deltas, most of a stream, are encoded from templates (sse.ChunkEncoder), the
    same bytes."""

    def __init__(self, base: Mapping[str, Any], include_usage: bool,
                 render: Callable[[pb.ChoiceDelta, int], Sequence[ChunkChoice]],
                 opening: list[ChatCompletionChunkChoice] | None = None,
                 text_choice: Callable[[int, str], ChunkChoice] | None = None) -> None:
        self._base = {**base, "usage": None} if include_usage else base
        self._include_usage = include_usage
        self._render = render
        self._opening = opening
        self._text_choice = text_choice
        self._encoder = ChunkEncoder(self._base, text_choice)
        self._events: EventStream | None = None

    async def open(self, events: EventStream) -> None:
        self._events = events
        if self._opening:
            await events.send({**self._base, "choices": self._opening})

    async def message(self, message: pb.GenerateStreamResponse, offset: int) -> bool:
        assert self._events is not None
        deltas = message.deltas
        texts = _texts_only(deltas, offset) if self._text_choice is not None else None
        event = self._encoder.texts(texts) if texts else None
        if event is None:
            choices = [c for delta in deltas for c in self._render(delta, offset)]
            event = self._encoder.chunk(choices) if choices else None
        if event is None:
            return False
        await self._events.send_bytes(event)
        return True

    async def finished(self, usage: pb.Usage) -> None:
        if self._include_usage and self._events is not None:
            await self._events.send({**self._base, "choices": [], "usage": usage_json(usage)})

    async def failed(self, err: OpenAIError, usage: pb.Usage) -> None:
        if self._events is not None:
            await self._events.send_error(err)


def _texts_only(deltas: Sequence[pb.ChoiceDelta], offset: int) -> list[tuple[int, str]] | None:
    """(index, text) of each delta when every one carries text and nothing else; else None."""
    items = []
    for delta in deltas:
        text = delta.text
        if not text or delta.finish_reason or delta.tool_calls or delta.logprobs:
            return None
        items.append((offset + delta.index, text))
    return items
