"""Generations on the text service, carried by a few long-lived GenerateMany calls ("links").

A streamed token would otherwise cost a gRPC message of its own on this hop, about half of what the
façade spends per token, and every generation a call of its own; over a link, every token the service
produced in one turn of its event loop, of whichever streams, arrives in one message
(services.text.multiplex). A stream read from here behaves as its GenerateStream call did, and
generate() as Generate: the same messages, and the same grpc.aio.AioRpcError (code, message, status
details) when it fails, so that callers map errors one way (facade.errors).

Links spread over the service's replicas as calls do (the channel's round_robin policy gives each
new call the next replica): a stream goes to the link with the fewest open streams, equals in turn. A link retires —
takes no new streams and closes once its own have ended — when it is `max_age_s` old (so that links
follow replicas added or removed, as the server's connection age would make calls do) or when its
replica says it is stopping; the next stream opens a link in its place. A link that breaks (its
replica gone) fails its open streams with LinkLost (UNAVAILABLE, as their calls would have failed), which
the façade resumes on another link (facade/resumable.py).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import time
from typing import cast

import grpc
from google.rpc import status_pb2
from opentelemetry import propagate, trace

from hubmesh.text.v1 import text_generation_pb2 as pb
from hubmesh.text.v1 import text_generation_pb2_grpc as text_grpc
from services.common.errors import STATUS_DETAILS_KEY
from services.common.telemetry import tracing_enabled

log = logging.getLogger(__name__)

SERVICE = pb.DESCRIPTOR.services_by_name["TextGeneration"].full_name
CODES = {code.value[0]: code for code in grpc.StatusCode}
DEADLINE_GRACE_S = 1.0  # past a stream's deadline, the façade gives up waiting for the service's own word


def _error(code: grpc.StatusCode, details: str, *trailing: tuple[str, bytes]) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailing), details=details)


class LinkLost(grpc.aio.AioRpcError):
    """A stream's end because its link broke (the text service went away, or the connection to it):
    the generation may still go on elsewhere (facade/resumable.py)."""


def status_error(status_bytes: bytes) -> grpc.aio.AioRpcError:
    """The error a GenerateStream call ending with this google.rpc.Status would have raised."""
    status = status_pb2.Status.FromString(status_bytes)
    trailing = [(STATUS_DETAILS_KEY, status_bytes)] if status.details else []
    return _error(CODES.get(status.code, grpc.StatusCode.UNKNOWN), status.message, *trailing)


class TextStream:
    """One generation stream on a link: read() its messages, cancel() it."""

    __slots__ = ("_link", "id", "_messages", "_waiter", "_error", "_ended", "_timer", "_span")

    def __init__(self, link: _Link, stream_id: int, timeout_s: float | None, span) -> None:
        self._link = link
        self.id = stream_id
        self._messages: collections.deque[pb.GenerateStreamResponse] = collections.deque()
        self._waiter: asyncio.Future | None = None
        self._error: grpc.aio.AioRpcError | None = None
        self._ended = False
        self._span = span
        self._timer = None if timeout_s is None else asyncio.get_running_loop().call_later(
            timeout_s + DEADLINE_GRACE_S, self._overdue)

    async def read(self) -> pb.GenerateStreamResponse | object:
        """The next message, grpc.aio.EOF after the last; raises grpc.aio.AioRpcError if the stream failed."""
        while not self._messages:
            if self._ended:
                if self._error is not None:
                    raise self._error
                return grpc.aio.EOF
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._messages.popleft()

    def done(self) -> bool:
        return self._ended

    def cancel(self) -> None:
        """Stops the stream upstream, unless it has ended."""
        self._stop(_error(grpc.StatusCode.CANCELLED, "Locally cancelled by application!"))

    def _stop(self, error: grpc.aio.AioRpcError) -> None:
        if not self._ended:
            self._end(error)
            self._link.cancel(self.id)

    # called by the link
    def _push(self, message: pb.GenerateStreamResponse) -> None:
        self._messages.append(message)
        self._wake()

    def _end(self, error: grpc.aio.AioRpcError | None) -> None:
        if self._ended:
            return
        self._ended, self._error = True, error
        if self._timer is not None:
            self._timer.cancel()
        if self._span is not None:
            self._span.set_attribute("rpc.grpc.status_code", (error.code() if error else grpc.StatusCode.OK).value[0])
            self._span.end()
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _overdue(self) -> None:
        self._timer = None
        self._stop(_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"))


class _Link:
    """One GenerateMany call: a writer sends opens and cancels (all that queued up, in one message),
    a reader hands each frame to its stream."""

    def __init__(self, stub: text_grpc.TextGenerationStub, metadata) -> None:
        self._call = stub.GenerateMany(metadata=metadata)
        self.streams: dict[int, TextStream] = {}
        self._ids = itertools.count(1)
        self._opens: list[pb.StreamOpen] = []
        self._cancels: list[int] = []
        self._wake = asyncio.Event()
        self.born = time.monotonic()
        self.retiring = False
        self.broken = False
        self._traced = tracing_enabled()  # asked once: OpenTelemetry's answer reads the environment
        self._reader = asyncio.create_task(self._read())
        self._writer = asyncio.create_task(self._write())

    @property
    def usable(self) -> bool:
        return not (self.retiring or self.broken)

    def open(self, request: pb.GenerateRequest, timeout_s: float | None, unary: bool = False) -> TextStream:
        stream_id = next(self._ids)
        opened = pb.StreamOpen(id=stream_id, request=request, unary=unary)
        if timeout_s is not None:
            opened.timeout_s = timeout_s
        span = None
        if self._traced:  # the client span its call would have had
            method = "Generate" if unary else "GenerateStream"
            span = trace.get_tracer(__name__).start_span(f"{SERVICE}/{method}", kind=trace.SpanKind.CLIENT, attributes={
                "rpc.system": "grpc", "rpc.service": SERVICE, "rpc.method": method})
            propagate.inject(opened.trace_context, context=trace.set_span_in_context(span))
        stream = self.streams[stream_id] = TextStream(self, stream_id, timeout_s, span)
        self._opens.append(opened)
        self._wake.set()
        return stream

    def cancel(self, stream_id: int) -> None:
        if self.streams.pop(stream_id, None) is not None and not self.broken:
            self._cancels.append(stream_id)
            self._wake.set()

    def retire(self) -> None:
        self.retiring = True
        self._wake.set()

    async def _write(self) -> None:
        try:
            while not self.broken:
                await self._wake.wait()
                self._wake.clear()
                if self._opens or self._cancels:
                    message = pb.GenerateManyRequest(open=self._opens, cancel=self._cancels)
                    self._opens, self._cancels = [], []
                    await self._call.write(message)
                if self.retiring and not self.streams:
                    await self._call.done_writing()
                    return
        except (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError) as err:
            log.debug("GenerateMany link: write failed: %s", err)  # the reader sees why

    async def _read(self) -> None:
        error: grpc.aio.AioRpcError | None = None
        try:
            while True:
                response = await self._call.read()
                if response is grpc.aio.EOF:
                    break
                streams = self.streams
                for frame in response.frames:
                    stream = streams.get(frame.id)
                    if stream is None:
                        continue  # cancelled here since
                    if frame.HasField("message"):
                        stream._push(frame.message)
                    elif frame.HasField("response"):  # a unary stream's answer: it is over
                        del streams[frame.id]
                        stream._push(frame.response)
                        stream._end(None)
                    else:
                        del streams[frame.id]
                        stream._end(status_error(frame.end) if frame.end else None)
                if response.draining:
                    self.retire()
        except grpc.aio.AioRpcError as err:
            error = err
        finally:
            self.broken = True
            self._wake.set()
            if self.streams:
                if error is None or error.code() == grpc.StatusCode.CANCELLED:
                    code, details = grpc.StatusCode.UNAVAILABLE, "the text service ended the stream"
                else:
                    log.warning("GenerateMany link failed with %d streams open: %s %s", len(self.streams),
                                error.code(), error.details())
                    code, details = error.code(), error.details()
                lost = LinkLost(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)
                for stream in self.streams.values():
                    stream._end(lost)
                self.streams.clear()

    async def close(self) -> None:
        self._call.cancel()
        for task in (self._reader, self._writer):
            task.cancel()
        await asyncio.gather(self._reader, self._writer, return_exceptions=True)


class TextStreams:
    """Opens generation streams on up to `links` links of the text service's channel."""

    def __init__(self, stub: text_grpc.TextGenerationStub, metadata, links: int = 4, max_age_s: float = 60.0) -> None:
        self._stub = stub
        self._metadata = metadata
        self._max_links = links
        self._max_age_s = max_age_s
        self._links: list[_Link] = []
        self._turn = itertools.count()

    def open(self, request: pb.GenerateRequest, timeout_s: float | None) -> TextStream:
        """Starts the generation `request` (as GenerateStream would, with this deadline)."""
        return self._link().open(request, timeout_s)

    async def generate(self, request: pb.GenerateRequest, timeout_s: float | None) -> pb.GenerateResponse:
        """What Generate would answer (or raise); cancelling the caller cancels the generation."""
        stream = self._link().open(request, timeout_s, unary=True)
        try:
            return cast(pb.GenerateResponse, await stream.read())  # a unary stream's one message: its answer
        finally:
            stream.cancel()  # a no-op once answered

    def _link(self) -> _Link:
        now = time.monotonic()
        live = []
        for link in self._links:
            if link.usable and now - link.born > self._max_age_s:
                link.retire()
            if link.broken or (link.retiring and not link.streams):
                continue  # gone, or its writer is closing it
            live.append(link)
        self._links = live
        usable = [link for link in live if link.usable]
        if len(usable) < self._max_links:
            link = _Link(self._stub, self._metadata)
            self._links.append(link)
            return link
        # the fewest open streams; among equals, the next in turn, so that links on several text-service
        # replicas share even a trickle of requests (the replicas' pickers share one routing view:
        # services/text/prefix_view.py, so where a stream lands does not change where it is routed)
        fewest = min(len(link.streams) for link in usable)
        tied = [link for link in usable if len(link.streams) == fewest]
        return tied[next(self._turn) % len(tied)]

    async def close(self) -> None:
        links, self._links = self._links, []
        await asyncio.gather(*(link.close() for link in links), return_exceptions=True)
