"""Prometheus metrics shared by the façade and the services (each process has its own registry)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import grpc
from prometheus_client import Counter, Gauge, Histogram

from services.common.channels import CALL_DEADLINE

REQUESTS = Counter("hubmesh_requests", "Requests by endpoint, model and status", ["endpoint", "model", "status"])
LATENCY = Histogram(
    "hubmesh_request_duration_seconds", "Request latency", ["endpoint", "model"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
TTFT = Histogram(
    "hubmesh_time_to_first_token_seconds", "Time to first token of streams", ["model"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
ITL = Histogram(
    "hubmesh_inter_token_latency_seconds", "Time between stream chunks", ["model"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
)
TOKENS = Counter("hubmesh_tokens", "Tokens in (prompt) and out (completion)", ["model", "direction"])
IN_FLIGHT = Gauge("hubmesh_requests_in_flight", "Requests being served", ["endpoint"])


class StreamTimer:
    """Time to first token and inter-token latency of one stream."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.started = time.perf_counter()
        self.last: float | None = None

    def chunk(self) -> None:
        now = time.perf_counter()
        if self.last is None:
            TTFT.labels(self.model).observe(now - self.started)
        else:
            ITL.labels(self.model).observe(now - self.last)
        self.last = now


def count_tokens(model: str, prompt: int, completion: int) -> None:
    if prompt:
        TOKENS.labels(model, "in").inc(prompt)
    if completion:
        TOKENS.labels(model, "out").inc(completion)


def _note_deadline(context) -> None:
    remaining = context.time_remaining()
    CALL_DEADLINE.set(None if remaining is None else time.monotonic() + remaining)


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Requests, latency and in-flight gauge for every unary and server-streaming RPC; also notes the
    call's deadline for the Triton calls made on its behalf (CALL_DEADLINE)."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or details.method.startswith("/grpc.health"):
            return handler
        endpoint = details.method.rsplit("/", 1)[-1]

        def status(context) -> str:
            code = context.code()
            if code is None:
                return "OK"
            return code.name if isinstance(code, grpc.StatusCode) else str(code)

        if handler.unary_unary:
            inner = handler.unary_unary

            async def unary(request, context):
                _note_deadline(context)
                model, start = getattr(request, "model", ""), time.perf_counter()
                IN_FLIGHT.labels(endpoint).inc()
                try:
                    return await inner(request, context)
                finally:
                    IN_FLIGHT.labels(endpoint).dec()
                    LATENCY.labels(endpoint, model).observe(time.perf_counter() - start)
                    REQUESTS.labels(endpoint, model, status(context)).inc()

            return grpc.unary_unary_rpc_method_handler(unary, handler.request_deserializer, handler.response_serializer)
        if handler.unary_stream:
            inner_stream = handler.unary_stream

            async def stream(request, context):
                _note_deadline(context)
                model, start = getattr(request, "model", ""), time.perf_counter()
                IN_FLIGHT.labels(endpoint).inc()
                try:
                    async for item in inner_stream(request, context):
                        yield item
                finally:
                    IN_FLIGHT.labels(endpoint).dec()
                    LATENCY.labels(endpoint, model).observe(time.perf_counter() - start)
                    REQUESTS.labels(endpoint, model, status(context)).inc()

            return grpc.unary_stream_rpc_method_handler(stream, handler.request_deserializer, handler.response_serializer)
        return handler
