"""Admission control for one façade worker: a bounded number of requests in flight, beyond which the
answer is an immediate 429 with Retry-After — never an unbounded queue, never a hang. It also ends
what is still running when a graceful shutdown's grace period is over: open streams with a final
error event, requests that have not answered yet with a 503."""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import web

from facade.errors import OpenAIError
from facade.routing import route_of
from facade.sse import EVENT_STREAM, SHUTDOWN_ERROR


class InFlight:
    """Counts admitted requests; `drained` is set whenever none is left."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0
        self.drained = asyncio.Event()
        self.drained.set()

    def enter(self) -> bool:
        if self.limit and self.count >= self.limit:
            return False
        self.count += 1
        self.drained.clear()
        return True

    def leave(self) -> None:
        self.count -= 1
        if self.count == 0:
            self.drained.set()


IN_FLIGHT = web.AppKey("in_flight", InFlight)
GRACE_OVER = web.AppKey("grace_over", asyncio.Event)  # set when shutdown stops waiting for requests


@web.middleware
async def admission_middleware(request: web.Request, handler) -> web.StreamResponse:
    route = route_of(request)
    if route is None or not route.admitted:  # probes, metrics, the document; unknown URLs
        return await handler(request)
    in_flight = request.app[IN_FLIGHT]
    if not in_flight.enter():
        raise OpenAIError(
            429,
            "The server is at capacity (too many requests in flight). Retry shortly.",
            type="server_overloaded",
            code="server_overloaded",
            headers={"Retry-After": "1"},
        )
    try:
        return await _until_grace_over(request, handler)
    finally:
        in_flight.leave()


async def _until_grace_over(request: web.Request, handler) -> web.StreamResponse:
    work = asyncio.ensure_future(handler(request))
    grace_over = asyncio.ensure_future(request.app[GRACE_OVER].wait())
    try:
        await asyncio.wait({work, grace_over}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:  # the client went away: stop the work (and its gRPC call) too
        work.cancel()
        raise
    finally:
        grace_over.cancel()
    if work.done():
        return work.result()
    stream = request.get(EVENT_STREAM)
    response = await stream.interrupt() if stream is not None else None
    work.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await work
    if response is None:
        raise SHUTDOWN_ERROR
    return response
