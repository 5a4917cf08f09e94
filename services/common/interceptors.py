"""Server interceptors that wrap each call of a service: admission control, call metrics, the access log.

A multiplexing call (a bidirectional one carrying many calls, services.text.multiplex) is not a call
of its own to them: each interceptor adds its `around` to SUBCALL_AROUNDS for it instead, and the
multiplexer enters them around each call it carries, in the same order.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from opentelemetry import trace

from services.common.call_context import CALL_DEADLINE, CALL_NOTES
from services.common.errors import AtCapacity, abort
from services.common.fair_share import Admission, Policy, Refused
from services.common.metrics import IN_FLIGHT, LATENCY, REQUESTS

access_log = logging.getLogger("hubmesh.access")

Around = Callable[[str, Any, grpc.aio.ServicerContext], contextlib.AbstractAsyncContextManager]

# Inside a multiplexing call: what to enter around each call it carries, outermost first.
SUBCALL_AROUNDS: contextvars.ContextVar[tuple[Around, ...]] = contextvars.ContextVar("subcall_arounds", default=())


def wrap_handler(handler: grpc.RpcMethodHandler, endpoint: str, around: Around) -> grpc.RpcMethodHandler:
    """The same handler with `around(endpoint, request, context)` entered for the whole call."""
    if handler.unary_unary:
        inner = handler.unary_unary

        async def unary(request, context):
            async with around(endpoint, request, context):
                return await inner(request, context)

        return grpc.unary_unary_rpc_method_handler(unary, handler.request_deserializer, handler.response_serializer)
    if handler.unary_stream:
        inner_stream = handler.unary_stream

        async def stream(request, context):
            async with around(endpoint, request, context):
                async for item in inner_stream(request, context):
                    yield item

        return grpc.unary_stream_rpc_method_handler(stream, handler.request_deserializer, handler.response_serializer)
    if handler.stream_stream:  # a multiplexing call: `around` goes around each call it carries
        inner_mux = handler.stream_stream

        async def mux(requests, context):
            token = SUBCALL_AROUNDS.set((*SUBCALL_AROUNDS.get(), around))
            try:
                return await inner_mux(requests, context)
            finally:
                SUBCALL_AROUNDS.reset(token)

        return grpc.stream_stream_rpc_method_handler(mux, handler.request_deserializer, handler.response_serializer)
    return handler


class _Interceptor(grpc.aio.ServerInterceptor):
    """Applies `around` to every call but those of the services in `exempt` (health checking)."""

    exempt: tuple[str, ...] = ("/grpc.health",)

    def around(self, endpoint: str, request, context) -> contextlib.AbstractAsyncContextManager:
        raise NotImplementedError

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or details.method.startswith(self.exempt):
            return handler
        return wrap_handler(handler, details.method.rsplit("/", 1)[-1], self.around)


class AdmissionInterceptor(_Interceptor):
    """At most `limit` calls in flight; at the limit, services.common.fair_share decides: `first_come`
    refuses at once (RESOURCE_EXHAUSTED, AT_CAPACITY); `fair` divides the limit among the subjects
    asking (the request's `caller`: subject, weight, priority), so a subject below its share starts at
    once (one of `burst` slots above the limit) or waits up to `wait_s` for the next free slot, and one
    at or over its share is refused at once.

    Every generation carried by a GenerateMany call is admitted here on its own (SUBCALL_AROUNDS), so
    the share holds however the generations arrive."""

    # the operator's view of the service (hubmesh.common.v1.Mesh, GET /v1/mesh) answers when the
    # service is full too, which is when it is looked at: it reads state, in microseconds
    exempt = ("/grpc.health", "/hubmesh.common.v1.Mesh/")

    def __init__(self, limit: int, policy: Policy = "fair", wait_s: float = 0.5, burst: int = 0) -> None:
        self.limit = limit
        self.admission = Admission(limit, policy=policy, wait_s=wait_s, burst=burst)

    @property
    def in_flight(self) -> int:
        return self.admission.policy.in_flight

    @contextlib.asynccontextmanager
    async def around(self, endpoint: str, request, context) -> AsyncIterator[None]:
        caller = getattr(request, "caller", None)
        subject, weight, priority = (caller.subject, caller.weight, caller.priority) if caller is not None else ("", 1.0, 0)
        try:
            ticket = await self.admission.acquire(subject, weight, priority, context.time_remaining())
        except Refused as refused:
            await abort(context, AtCapacity(str(refused)).status())
            raise  # (abort raises)
        try:
            yield
        finally:
            self.admission.release(ticket)


class MetricsInterceptor(_Interceptor):
    """Requests, latency and in-flight gauge per RPC, and one access-log line per call with whom it
    was for (the request's `caller`: the verified subject and OpenAI's `user`, also put on the
    call's span); also notes the call's deadline for the Triton calls made on its behalf
    (CALL_DEADLINE), and whatever that work noted for the log line (CALL_NOTES: a generation that
    moved to another replica says how many times)."""

    @contextlib.asynccontextmanager
    async def around(self, endpoint: str, request, context) -> AsyncIterator[None]:
        remaining = context.time_remaining()
        CALL_DEADLINE.set(None if remaining is None else time.monotonic() + remaining)
        notes: dict = {}
        CALL_NOTES.set(notes)
        model, start = getattr(request, "model", ""), time.perf_counter()
        caller = getattr(request, "caller", None)
        subject, user = (caller.subject, caller.user) if caller is not None else ("", "")
        span = trace.get_current_span()
        if span.is_recording():
            span.set_attributes({"hubmesh.subject": subject, "enduser.id": user})
        IN_FLIGHT.labels(endpoint).inc()
        try:
            yield
        finally:
            IN_FLIGHT.labels(endpoint).dec()
            elapsed = time.perf_counter() - start
            LATENCY.labels(endpoint, model).observe(elapsed)
            code = context.code()
            status = "OK" if code is None else code.name if isinstance(code, grpc.StatusCode) else str(code)
            REQUESTS.labels(endpoint, model, status).inc()
            access_log.info("%s %s", endpoint, status, extra={
                "endpoint": endpoint, "model": model, "status": status, "latency_ms": round(elapsed * 1000, 1),
                "subject": subject, "user": user, **notes,
            })
