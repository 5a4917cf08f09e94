"""GenerateMany: many GenerateStream and Generate calls carried by one long-lived call (the proto says
what it is for).

Each stream the caller opens runs the servicer's own GenerateStream (Generate, for a unary one) as
a task of its own, with a SubContext in place of a gRPC call's context, inside what the server's
interceptors put around any call (SUBCALL_AROUNDS: admission, metrics, the access log) and, when tracing is on, a server span of
its own continuing the caller's trace. So a stream is served, refused, counted, logged and traced
exactly as its GenerateStream call would be, and ends with the same status and details.

What the streams produce is queued and written by one writer, one GenerateManyResponse a write:
whatever was produced while the last write was under way, or in the same turn of the event loop,
shares one message. By default nothing waits for company; with `interval_s` (the text service's
HUBMESH_TEXT_STREAM_FLUSH_MS), a write follows the last by at least that long, so that under load
more tokens share a message at the cost of up to that much more inter-token latency.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
from google.rpc import status_pb2
from opentelemetry import propagate, trace

from hubmesh.common.v1 import common_pb2 as common_pb
from hubmesh.text.v1 import text_generation_pb2 as pb
from services.common.errors import STATUS_DETAILS_KEY, status_of
from services.common.interceptors import SUBCALL_AROUNDS
from services.common.telemetry import tracing_enabled

log = logging.getLogger(__name__)

SERVICE = pb.DESCRIPTOR.services_by_name["TextGeneration"].full_name

StreamMethod = Callable[[pb.GenerateRequest, "SubContext"], AsyncIterator[pb.GenerateStreamResponse]]
UnaryMethod = Callable[[pb.GenerateRequest, "SubContext"], Awaitable[pb.GenerateResponse]]


class SubAbort(grpc.aio.AbortError):
    """SubContext.abort(): the carried call ends with this status (servicers re-raise AbortError)."""

    def __init__(self, code: grpc.StatusCode, details: str, trailing_metadata) -> None:
        super().__init__(details)
        self.code, self.details = code, details
        self.trailing_metadata = tuple(trailing_metadata or ())

    def status_bytes(self) -> bytes:
        """The serialized google.rpc.Status: the one in the trailers when there is one (abort() with
        a ServiceError's status puts it there), else the bare code and message."""
        for key, value in self.trailing_metadata:
            if key == STATUS_DETAILS_KEY:
                return value
        return _status(self.code, self.details)


class SubContext:
    """What servicers, interceptors and services.common.errors.abort use of a call's context, for
    one stream of a GenerateMany call."""

    def __init__(self, call: grpc.aio.ServicerContext, timeout_s: float | None) -> None:
        self._call = call
        self._deadline = None if timeout_s is None else time.monotonic() + timeout_s
        self._code: grpc.StatusCode | None = None
        self._details = ""

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def details(self) -> str:
        return self._details

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def set_details(self, details: str) -> None:
        self._details = details

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata=()) -> None:
        self._code, self._details = code, details
        raise SubAbort(code, details, trailing_metadata)

    def invocation_metadata(self):
        return self._call.invocation_metadata()

    def peer(self) -> str:
        return self._call.peer()


def _status(code: grpc.StatusCode, message: str) -> bytes:
    return status_pb2.Status(code=code.value[0], message=message).SerializeToString()


# How a stream ends that its method did not end itself (what gRPC would have said of the call).
DEADLINE_EXCEEDED = _status(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
INTERNAL = dict(status_of(grpc.StatusCode.INTERNAL, "internal error in the service",
                          common_pb.ERROR_REASON_UNSPECIFIED).trailing_metadata)[STATUS_DETAILS_KEY]


class Multiplexer:
    """Serves one GenerateMany call: the servicer's GenerateStream for each stream opened, its
    Generate for each unary one."""

    def __init__(self, stream: StreamMethod, unary: UnaryMethod, context: grpc.aio.ServicerContext,
                 interval_s: float = 0.0) -> None:
        self._interval_s = interval_s
        self._stream = stream
        self._unary = unary
        self._context = context
        self._arounds = SUBCALL_AROUNDS.get()
        self._tasks: dict[int, asyncio.Task] = {}
        self._frames: list[pb.StreamFrame] = []
        self._wake = asyncio.Event()
        self._reading = True
        self._draining = False
        self._told_draining = False
        self._traced = tracing_enabled()

    def drain(self) -> None:
        """Tells the caller (once) to open no more streams here; the open ones run on."""
        self._draining = True
        self._wake.set()

    async def run(self, requests: AsyncIterator[pb.GenerateManyRequest]) -> None:
        """Until the caller has half-closed the call and every stream has ended (or the call is cancelled)."""
        reader = asyncio.create_task(self._read(requests))
        try:
            await self._write()
        finally:
            reader.cancel()
            tasks = [reader, *self._tasks.values()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _read(self, requests: AsyncIterator[pb.GenerateManyRequest]) -> None:
        try:
            async for message in requests:
                for opened in message.open:
                    if opened.id in self._tasks:
                        self._emit(pb.StreamFrame(id=opened.id, end=_status(
                            grpc.StatusCode.INVALID_ARGUMENT, f"stream id {opened.id} is already open")))
                        continue
                    self._tasks[opened.id] = asyncio.create_task(self._serve(opened))
                for stream_id in message.cancel:
                    task = self._tasks.pop(stream_id, None)
                    if task is not None:
                        task.cancel()
        finally:
            self._reading = False
            self._wake.set()

    async def _write(self) -> None:
        loop = asyncio.get_running_loop()
        last = -1.0
        while self._reading or self._tasks or self._frames:
            await self._wake.wait()
            self._wake.clear()
            tell = self._draining and not self._told_draining
            if self._frames or tell:
                early = last + self._interval_s - loop.time()
                if early > 0:
                    await asyncio.sleep(early)
                last = loop.time()
                frames, self._frames = self._frames, []
                self._told_draining = self._told_draining or tell
                await self._context.write(pb.GenerateManyResponse(frames=frames, draining=tell))

    def _emit(self, frame: pb.StreamFrame) -> None:
        self._frames.append(frame)
        self._wake.set()

    async def _serve(self, opened: pb.StreamOpen) -> None:
        stream_id = opened.id
        sub = SubContext(self._context, opened.timeout_s if opened.HasField("timeout_s") else None)
        endpoint = "Generate" if opened.unary else "GenerateStream"
        try:
            with self._span(opened, endpoint) as span:
                end = await self._run(opened, sub, endpoint)
                if span is not None:
                    span.set_attribute("rpc.grpc.status_code", (sub.code() or grpc.StatusCode.OK).value[0])
        except asyncio.CancelledError:
            return  # the caller cancelled it (and reads it no more), or the whole call is ending
        finally:
            self._tasks.pop(stream_id, None)
        if end is not None:
            self._emit(pb.StreamFrame(id=stream_id, end=end))

    async def _run(self, opened: pb.StreamOpen, sub: SubContext, endpoint: str) -> bytes | None:
        """Runs one stream under the arounds; the serialized status it ended with (None: a unary
        stream's answer, which says it ended, is out)."""
        request, stream_id = opened.request, opened.id
        remaining = sub.time_remaining()
        try:
            async with contextlib.AsyncExitStack() as stack:
                for around in self._arounds:
                    await stack.enter_async_context(around(endpoint, request, sub))
                try:
                    async with asyncio.timeout(remaining):
                        if opened.unary:
                            response = await self._unary(request, sub)
                            self._emit(pb.StreamFrame(id=stream_id, response=response))
                            return None
                        async for message in self._stream(request, sub):
                            self._emit(pb.StreamFrame(id=stream_id, message=message))
                except TimeoutError:
                    sub.set_code(grpc.StatusCode.DEADLINE_EXCEEDED)
                    raise
                except asyncio.CancelledError:
                    sub.set_code(grpc.StatusCode.CANCELLED)
                    raise
        except SubAbort as abort:
            return abort.status_bytes()
        except TimeoutError:
            return DEADLINE_EXCEEDED
        except Exception:  # GenerateStream ends its own errors; this is a bug elsewhere
            log.exception("stream %d of a GenerateMany call failed", stream_id)
            return INTERNAL
        return b""

    @contextlib.contextmanager
    def _span(self, opened: pb.StreamOpen, endpoint: str):
        """The stream's server span, as OpenTelemetry's gRPC instrumentation makes for a call."""
        if not self._traced:
            yield None
            return
        method = f"/{SERVICE}/{endpoint}"
        parent = propagate.extract(dict(opened.trace_context))
        with trace.get_tracer(__name__).start_as_current_span(
            method, context=parent, kind=trace.SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "rpc.service": SERVICE, "rpc.method": endpoint},
        ) as span:
            yield span
