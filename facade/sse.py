"""The one SSE helper: OpenAI-style `data:` events, keep-alive comments, in-band errors, [DONE]."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import orjson
from aiohttp import web
from aiohttp_sse import EventSourceResponse

from facade import jsonio
from facade.api.response_bodies import ChatCompletionChunk, Completion, ErrorResponse
from facade.call import call_of
from facade.errors import OpenAIError

SSE_PING_S = web.AppKey("sse_ping_s", float)

SHUTDOWN_ERROR = OpenAIError(
    503, "The server is shutting down; the stream was ended early. Retry the request.",
    type="server_error", code="server_shutdown",
)


# Stands for a value while a template is dumped: the bytes around its JSON are the template's.
# Control characters, so that no value a client sends (a model id) can contain it by chance; a
# template where it does not occur exactly once is not used (ChunkEncoder falls back to dumps).
_MARK = "\x00hubmesh\x01mark\x00"
_MARK_JSON = orjson.dumps(_MARK)


def _around(template: Any) -> tuple[bytes, bytes] | None:
    """The JSON of `template` (which holds _MARK once) before and after the mark's own JSON."""
    dumped = jsonio.dumps(template)
    if dumped.count(_MARK_JSON) != 1:
        return None
    head, _, tail = dumped.partition(_MARK_JSON)
    return head, tail


class ChunkEncoder:
    """The `data:` events of one stream, `{**base, "choices": [...]}`, byte for byte as
    `b"data: " + jsonio.dumps(chunk) + b"\n\n"` writes them, without dumping a whole chunk per token.

    Every chunk of a stream has the same fields but `choices`, so the bytes before and after the
    choices are worked out once; a text choice (one string value in a fixed template, such as
    `{"index": i, "delta": {"content": text}, ...}`) is its template's bytes around the text, and only
    the text is escaped per token (orjson, as for the whole chunk). Anything else is dumped."""

    def __init__(self, base: Mapping[str, Any], text_choice: Callable[[int, str], Mapping[str, Any]] | None = None) -> None:
        self._base = base
        frame = _around({**base, "choices": [_MARK]})
        self._head, self._tail = (b"data: " + frame[0], frame[1] + b"\n\n") if frame else (b"", b"")
        self._text_choice = text_choice if frame else None
        self._texts: dict[int, tuple[bytes, bytes] | None] = {}  # choice index -> its text template

    def chunk(self, choices: Sequence[Mapping[str, Any]]) -> bytes:
        """The event of a chunk with these choices."""
        return b"data: " + jsonio.dumps({**self._base, "choices": choices}) + b"\n\n"

    def texts(self, items: Sequence[tuple[int, str]]) -> bytes | None:
        """The event of a chunk whose choices are text choices (index, text), in order; None when
        the stream has no text template (then chunk() it is)."""
        if self._text_choice is None:
            return None
        parts = []
        for index, text in items:
            try:
                around = self._texts[index]
            except KeyError:
                around = self._texts[index] = _around(self._text_choice(index, _MARK))
            if around is None:
                return None
            parts.append(around[0] + orjson.dumps(text) + around[1])
        return self._head + b",".join(parts) + self._tail


class EventStream:
    """An SSE response: `text/event-stream`, `X-Accel-Buffering: no`, a `: ping` comment every ping_s."""

    def __init__(self, request: web.Request, done_marker: bool = True) -> None:
        self._request = request
        self._response = EventSourceResponse(
            sep="\n", allow_all_methods=True, ping_interval=request.app[SSE_PING_S]
        )
        self._ended = False
        self._done_marker = done_marker  # OpenAI's streams end with `data: [DONE]`, Anthropic's do not

    async def open(self) -> None:
        await self._response.prepare(self._request)
        call_of(self._request).stream = self

    async def send(self, payload: ChatCompletionChunk | Completion | ErrorResponse | Mapping[str, Any],
                   event: str | None = None) -> None:
        # written as is: JSON has no raw newlines to split into several `data:` lines. A stalled
        # client is still cut off: the ping task's writes time out and abort the connection.
        # `event` names the event (`event:` line), as the Responses API's typed events do.
        head = b"event: " + event.encode() + b"\n" if event else b""
        await self.send_bytes(head + b"data: " + jsonio.dumps(payload) + b"\n\n")

    async def send_bytes(self, event: bytes) -> None:
        """One or more whole events, already encoded (ChunkEncoder), in one write."""
        if not self._ended:
            try:
                await self._response.write(event)
            except ConnectionResetError:
                self._response.stop_streaming()
                raise

    async def send_error(self, err: OpenAIError) -> None:
        """After the first byte the status line is gone: errors travel in-band, as OpenAI does."""
        await self.send(err.body())

    async def close(self) -> web.StreamResponse:
        """Sends `data: [DONE]` (where the dialect has it) and ends the response (once, whoever asks first)."""
        if not self._ended:
            self._ended = True
            if self._done_marker:
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
