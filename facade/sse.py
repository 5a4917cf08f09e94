"""The one SSE helper: OpenAI-style `data:` events, keep-alive comments, in-band errors, [DONE]."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web
from aiohttp_sse import EventSourceResponse

from facade.errors import OpenAIError

SSE_PING_S = web.AppKey("sse_ping_s", float)


class EventStream:
    """An SSE response: `text/event-stream`, `X-Accel-Buffering: no`, a `: ping` comment every ping_s."""

    def __init__(self, request: web.Request) -> None:
        self._request = request
        self._response = EventSourceResponse(
            sep="\n", allow_all_methods=True, ping_interval=request.app[SSE_PING_S]
        )

    async def open(self) -> None:
        await self._response.prepare(self._request)

    async def send(self, payload: dict[str, Any]) -> None:
        await self._response.send(json.dumps(payload, separators=(",", ":"), ensure_ascii=False))

    async def send_error(self, err: OpenAIError) -> None:
        """After the first byte the status line is gone: errors travel in-band, as OpenAI does."""
        await self.send(err.body())

    async def close(self) -> web.StreamResponse:
        """Sends `data: [DONE]` and ends the response."""
        await self._response.send("[DONE]")
        self._response.stop_streaming()
        await self._response.write_eof()
        return self._response
