"""Anthropic's streamed message: a Renderer (facade/api/text/relay.py) that writes its event sequence —
message_start, then per content block content_block_start, content_block_delta (text_delta, or
input_json_delta for a tool_use block's input) and content_block_stop, a ping after the start,
message_delta with the stop reason and the usage, message_stop; on a failure mid-stream an `error`
event. No `[DONE]`: Anthropic's streams end with message_stop."""

from __future__ import annotations

from typing import Any

from facade.api.messages.message import new_message, stop_reason, usage_json
from facade.errors import OpenAIError, anthropic_body
from facade.sse import EventStream
from hubmesh.text.v1 import text_generation_pb2 as pb


class MessageEvents:
    """The events of one streamed message for `model`."""

    done_marker = False

    def __init__(self, model: str, request_id: str) -> None:
        self._model = model
        self._request_id = request_id
        self._events: EventStream | None = None
        self._started = False
        self._index = -1  # the open content block's, if any
        self._open: str | None = None  # its type: "text" or "tool_use"
        self._finish = pb.FINISH_REASON_UNSPECIFIED
        self._prompt_tokens = 0

    async def _send(self, kind: str, **fields: Any) -> None:
        assert self._events is not None
        await self._events.send({"type": kind, **fields}, event=kind)

    async def open(self, events: EventStream) -> None:
        self._events = events

    async def _start(self) -> None:
        if not self._started:
            self._started = True
            usage = pb.Usage(prompt_tokens=self._prompt_tokens)
            await self._send("message_start", message=new_message(self._model, [], None, usage))
            await self._send("ping")

    async def _block(self, kind: str, block: dict) -> None:
        await self._close_block()
        self._index += 1
        self._open = kind
        await self._send("content_block_start", index=self._index, content_block=block)

    async def _close_block(self) -> None:
        if self._open is not None:
            self._open = None
            await self._send("content_block_stop", index=self._index)

    async def message(self, message: pb.GenerateStreamResponse, offset: int) -> bool:
        if message.HasField("prompt_tokens"):
            self._prompt_tokens = message.prompt_tokens
        self._model = message.model or self._model
        await self._start()
        wrote = False
        for delta in message.deltas:
            if delta.index != 0:  # one choice: Anthropic's API has no n
                continue
            if delta.text:
                if self._open != "text":
                    await self._block("text", {"type": "text", "text": "", "citations": None})
                await self._send("content_block_delta", index=self._index,
                                 delta={"type": "text_delta", "text": delta.text})
                wrote = True
            for call in delta.tool_calls:
                if call.HasField("id"):
                    await self._block("tool_use", {"type": "tool_use", "id": call.id, "name": call.name, "input": {}})
                if call.arguments and self._open == "tool_use":
                    await self._send("content_block_delta", index=self._index,
                                     delta={"type": "input_json_delta", "partial_json": call.arguments})
                    wrote = True
            if delta.finish_reason:
                self._finish = delta.finish_reason
        return wrote

    async def finished(self, usage: pb.Usage) -> None:
        await self._start()
        await self._close_block()
        await self._send("message_delta", delta={"stop_reason": stop_reason(self._finish), "stop_sequence": None,
                                                 "stop_details": None},
                         usage=usage_json(usage))
        await self._send("message_stop")

    async def failed(self, err: OpenAIError, usage: pb.Usage) -> None:
        assert self._events is not None
        await self._events.send(anthropic_body(err, self._request_id), event="error")
