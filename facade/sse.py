"""The one SSE helper: OpenAI-style `data:` events, keep-alive comments, in-band errors, [DONE]."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web
from aiohttp_sse import EventSourceResponse

from facade import jsonio
from facade.api.responses import ChatCompletionChunk, Completion, ErrorResponse
from facade.errors import OpenAIError

SSE_PING_S = web.AppKey("sse_ping_s", float)
EVENT_STREAM = web.RequestKey("event_stream", object)  # the request's open stream, if any

SHUTDOWN_ERROR = OpenAIError(
    503, "The server is shutting down; the stream was ended early. Retry the request.",
    type="server_error", code="server_shutdown",
)


class EventStream:
    """An SSE response: `text/event-stream`, `X-Accel-Buffering: no`, a `: ping` comment every ping_s."""

    def __init__(self, request: web.Request) -> None:
        self._request = request
        self._response = EventSourceResponse(
            sep="\n", allow_all_methods=True, ping_interval=request.app[SSE_PING_S]
        )
        self._ended = False

    async def open(self) -> None:
        await self._response.prepare(self._request)
        self._request[EVENT_STREAM] = self

    async def send(self, payload: ChatCompletionChunk | Completion | ErrorResponse | Mapping[str, Any],
                   event: str | None = None) -> None:
        # written as is: JSON has no raw newlines to split into several `data:` lines. A stalled
        # client is still cut off: the ping task's writes time out and abort the connection.
        # `event` names the event (`event:` line), as the Responses API's typed events do.
        if not self._ended:
            head = b"event: " + event.encode() + b"\n" if event else b""
            try:
                await self._response.write(head + b"data: " + jsonio.dumps(payload) + b"\n\n")
            except ConnectionResetError:
                self._response.stop_streaming()
                raise

    async def send_error(self, err: OpenAIError) -> None:
        """After the first byte the status line is gone: errors travel in-band, as OpenAI does."""
        await self.send(err.body())

    async def close(self) -> web.StreamResponse:
        """Sends `data: [DONE]` and ends the response (once, whoever asks first)."""
        if not self._ended:
            self._ended = True
            await self._response.send("[DONE]")
            self._response.stop_streaming()
            await self._response.write_eof()
        return self._response

    async def interrupt(self, err: OpenAIError = SHUTDOWN_ERROR) -> web.StreamResponse:
        """Ends a stream that may not finish in time: a final error event, then [DONE]."""
        try:
            await self.send_error(err)
            await self.close()
        except (ConnectionError, RuntimeError):
            self._ended = True  # the client is gone already
        return self._response
