"""Capacity of one façade worker (admission control): a bounded number of requests in flight, beyond which the
answer is an immediate 429 with Retry-After — never an unbounded queue, never a hang. It also ends
what is still running when a graceful shutdown's grace period is over: open streams with a final
error event, requests that have not answered yet with a 503."""

from __future__ import annotations

import asyncio

from aiohttp import web

from facade.call import call_of
from facade.errors import OpenAIError
from facade.sse import SHUTDOWN_ERROR


class InFlight:
    """Counts admitted requests; `drained` is set whenever none is left. interrupt() ends the ones
    still running (the grace period is over): each request's own task is cancelled and answers as
    capacity_middleware says, so that no request needs a watcher of its own."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0
        self.drained = asyncio.Event()
        self.drained.set()
        self._tasks: set[asyncio.Task] = set()
        self._interrupted: set[asyncio.Task] = set()

    def enter(self, task: asyncio.Task | None = None) -> bool:
        if self.limit and self.count >= self.limit:
            return False
        self.count += 1
        self.drained.clear()
        if task is not None:
            self._tasks.add(task)
        return True

    def leave(self, task: asyncio.Task | None = None) -> None:
        self.count -= 1
        self._tasks.discard(task)
        self._interrupted.discard(task)
        if self.count == 0:
            self.drained.set()

    def interrupt(self) -> int:
        """Cancels every request still in flight; how many there were."""
        for task in self._tasks - self._interrupted:
            self._interrupted.add(task)
            task.cancel()
        return len(self._interrupted)

    def interrupted(self, task: asyncio.Task | None) -> bool:
        """Whether `task` was cancelled by interrupt() (and not, say, by its client going away)."""
        return task in self._interrupted


IN_FLIGHT = web.AppKey("in_flight", InFlight)


@web.middleware
async def capacity_middleware(request: web.Request, handler) -> web.StreamResponse:
    call = call_of(request)
    route = call.route
    if route is None or not route.admitted:  # probes, metrics, the document; unknown URLs
        return await handler(request)
    in_flight = request.app[IN_FLIGHT]
    task = asyncio.current_task()
    if not in_flight.enter(task):
        raise OpenAIError(
            429,
            "The server is at capacity (too many requests in flight). Retry shortly.",
            type="server_overloaded",
            code="server_overloaded",
            headers={"Retry-After": "1"},
        )
    try:
        return await handler(request)
    except asyncio.CancelledError:
        if task is None or not in_flight.interrupted(task):
            raise  # the client went away: the work (and its gRPC call) stopped with it
        task.uncancel()  # the grace period is over: the request answers, as below
        stream = call.stream
        if stream is None:
            raise SHUTDOWN_ERROR from None
        return await stream.interrupt()
    finally:
        in_flight.leave(task)
