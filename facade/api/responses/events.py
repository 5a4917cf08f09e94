"""The Responses API's typed stream: a Renderer (facade/api/text/relay.py) that writes OpenAI's
response events — response.created and response.in_progress with a snapshot, the output items'
events as the deltas come, response.completed (or incomplete) with the final Response, which is
saved first; on a failure, an error event and response.failed (saved too, unless the store itself
failed)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from facade.api.response_bodies import (
    ItemStatus,
    Response,
    ResponseFunctionToolCall,
    ResponseOutputItem,
    ResponseOutputMessage,
    ResponseOutputText,
)
from facade.api.responses.conversation import renamed
from facade.api.responses.protocol import ResponseRequest, new_id, output_text
from facade.api.responses.response_object import ResponseStatus, failure, response_json, usage_json
from facade.errors import OpenAIError
from facade.sse import EventStream
from hubmesh.text.v1 import text_generation_pb2 as pb


class ResponseEvents:
    """The events of one streamed response `response_id`, created at `created_at`; `save` keeps a
    Response (the store's, or nothing when the request says store: false)."""

    def __init__(self, body: ResponseRequest, response_id: str, created_at: int,
                 save: Callable[[Response], Awaitable[None]]) -> None:
        self._body = body
        self._id = response_id
        self._at = created_at
        self._save = save
        self._model = body.model
        self._events: _Numbered | None = None
        self._output: _StreamedOutput | None = None

    def _response(self, status: ResponseStatus, output: list[ResponseOutputItem], usage: pb.Usage | None,
                  **extra: Any) -> Response:
        return response_json(self._body, self._id, self._at, status=status, output=output,
                             usage=usage_json(usage) if usage is not None else None, model=self._model, **extra)

    async def open(self, stream: EventStream) -> None:
        events = self._events = _Numbered(stream)
        self._output = _StreamedOutput(events)
        snapshot = self._response("in_progress", [], None)
        await events.send("response.created", response=snapshot)
        await events.send("response.in_progress", response=snapshot)

    async def message(self, message: pb.GenerateStreamResponse, offset: int) -> bool:
        assert self._output is not None
        self._model = message.model or self._model
        wrote = False
        for delta in message.deltas:
            if delta.index == 0:  # n is always 1 here
                wrote = await self._output.add(delta) or wrote
        return wrote

    async def finished(self, usage: pb.Usage) -> None:
        assert self._events is not None and self._output is not None
        output = self._output
        await output.finish_items()
        final = self._response(output.status, output.output, usage)
        await self._save(final)
        await self._events.send(f"response.{output.status}", response=final)

    async def failed(self, err: OpenAIError, usage: pb.Usage) -> None:
        assert self._events is not None and self._output is not None
        err = renamed(err)
        failed = self._response("failed", self._output.output, usage, error=failure(err))
        await self._events.send("error", code=err.code, message=err.message, param=err.param)
        await self._events.send("response.failed", response=failed)
        if err.code != "store_unavailable":
            try:
                await self._save(failed)
            except OpenAIError:
                pass  # logged by the store's caller; the stream has said what failed


class _Numbered:
    """The typed events of one stream, numbered from 0 by sequence_number."""

    def __init__(self, stream: EventStream) -> None:
        self.stream = stream
        self.sequence = 0

    async def send(self, kind: str, **fields: Any) -> None:
        event = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        await self.stream.send(event, event=kind)


class _StreamedOutput:
    """Turns one choice's deltas into output items and their events: a message (output_item.added,
    content_part.added, output_text.delta..., output_text.done, content_part.done,
    output_item.done), then each function call (output_item.added, function_call_arguments.delta...,
    function_call_arguments.done, output_item.done)."""

    def __init__(self, events: _Numbered) -> None:
        self.events = events
        self.output: list[ResponseOutputItem] = []
        self.message: ResponseOutputMessage | None = None  # the open message item
        self.text: ResponseOutputText | None = None  # the open message's text: its content[0]
        self.call: ResponseFunctionToolCall | None = None  # the open function call item
        self.finish = pb.FINISH_REASON_UNSPECIFIED

    @property
    def status(self) -> ItemStatus:
        return "incomplete" if self.finish == pb.FINISH_REASON_LENGTH else "completed"

    async def add(self, delta: pb.ChoiceDelta) -> bool:
        """The events of one delta; True when it wrote text or arguments."""
        wrote = False
        if delta.text:
            await self._close_call("completed")
            if self.message is None or self.text is None:
                self.message, self.text = await self._open_message()
            self.text["text"] += delta.text
            wrote = True
            await self.events.send("response.output_text.delta", item_id=self.message["id"],
                                   output_index=len(self.output) - 1, content_index=0, delta=delta.text, logprobs=[])
        for call in delta.tool_calls:
            if call.HasField("id"):
                await self._close_message("completed")
                await self._close_call("completed")
                self.call = {"type": "function_call", "id": new_id("fc"), "call_id": call.id, "name": call.name,
                             "arguments": "", "status": "in_progress"}
                self.output.append(self.call)
                await self.events.send("response.output_item.added", output_index=len(self.output) - 1,
                                       item=self.call)
            if call.arguments and self.call is not None:
                self.call["arguments"] += call.arguments
                wrote = True
                await self.events.send("response.function_call_arguments.delta", item_id=self.call["id"],
                                       output_index=len(self.output) - 1, delta=call.arguments)
        if delta.finish_reason:
            self.finish = delta.finish_reason
        return wrote

    async def finish_items(self) -> None:
        """Closes what is open (incomplete when the token budget ran out); an answer with no text
        and no call is one empty message."""
        if not self.output:
            self.message, self.text = await self._open_message()
        await self._close_message(self.status)
        await self._close_call(self.status)

    async def _open_message(self) -> tuple[ResponseOutputMessage, ResponseOutputText]:
        """A new message item, and its text part (empty)."""
        message: ResponseOutputMessage = {"type": "message", "id": new_id("msg"), "status": "in_progress",
                                          "role": "assistant", "content": []}
        self.output.append(message)
        index = len(self.output) - 1
        await self.events.send("response.output_item.added", output_index=index, item=message)
        part = output_text("")
        message["content"].append(part)
        await self.events.send("response.content_part.added", item_id=message["id"], output_index=index,
                               content_index=0, part=part)
        return message, part

    async def _close_message(self, status: ItemStatus) -> None:
        item, part, self.message, self.text = self.message, self.text, None, None
        if item is None or part is None:
            return
        index = self.output.index(item)
        await self.events.send("response.output_text.done", item_id=item["id"], output_index=index,
                               content_index=0, text=part["text"], logprobs=[])
        await self.events.send("response.content_part.done", item_id=item["id"], output_index=index,
                               content_index=0, part=part)
        item["status"] = status
        await self.events.send("response.output_item.done", output_index=index, item=item)

    async def _close_call(self, status: ItemStatus) -> None:
        item, self.call = self.call, None
        if item is None:
            return
        index = self.output.index(item)
        await self.events.send("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                               name=item["name"], arguments=item["arguments"])
        item["status"] = status
        await self.events.send("response.output_item.done", output_index=index, item=item)
