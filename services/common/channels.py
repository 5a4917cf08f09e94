"""gRPC channel options shared by every client in the mesh (façade → services, services → Triton)."""

from __future__ import annotations

import contextvars
import time

import grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from services.common.triton_errors import from_triton_exception

MAX_MESSAGE_BYTES = 64 * 1024 * 1024

_COMMON = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    # a restarted peer is found again quickly
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2_000),
    # with a dns:/// target of a headless Kubernetes Service, calls spread over every replica
    # (one HTTP/2 connection would otherwise pin them all to one pod)
    ("grpc.lb_policy_name", "round_robin"),
]

# Façade -> services: keepalive pings every 20 s, idle or not; our servers accept them (SERVER_OPTIONS).
CHANNEL_OPTIONS = [
    *_COMMON,
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]

# Services -> Triton: Triton's gRPC server, by default, answers pings more often than every 5 minutes
# without data with GOAWAY "too_many_pings", so pings stay within that and only during calls.
TRITON_CHANNEL_OPTIONS = [
    *_COMMON,
    ("grpc.keepalive_time_ms", 300_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 0),
]

# Our gRPC servers: accept the façade's keepalive pings, and end connections after 5 minutes (with a
# long grace for streams) so clients re-resolve DNS and spread over replicas added since.
SERVER_OPTIONS = [
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_ping_strikes", 0),
    ("grpc.max_connection_age_ms", 300_000),
    ("grpc.max_connection_age_grace_ms", 660_000),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]


# When the gRPC call being served must be answered (time.monotonic()), set per call by the servers'
# interceptor; Triton calls made for it get no more than what remains.
CALL_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("call_deadline", default=None)


class TritonBackend:
    """What every modality's Triton backend shares: one channel per process to Triton's own gRPC API
    (protobuf in and out, see services.common.triton_tensors), deadlines, readiness, closing."""

    def __init__(self, url: str, timeout_s: float) -> None:
        self._channel = grpc.aio.insecure_channel(url, options=TRITON_CHANNEL_OPTIONS)
        self._inference = service_pb2_grpc.GRPCInferenceServiceStub(self._channel)
        self._timeout_s = timeout_s

    def _call_timeout(self) -> float:
        """Seconds a Triton call may take: the service's limit, or less when the caller's deadline is nearer."""
        deadline = CALL_DEADLINE.get()
        if deadline is None:
            return self._timeout_s
        return max(0.001, min(self._timeout_s, deadline - time.monotonic()))

    async def _model_infer(self, request: service_pb2.ModelInferRequest) -> service_pb2.ModelInferResponse:
        """One unary inference within the call's deadline; failures become domain errors."""
        try:
            return await self._inference.ModelInfer(request, timeout=self._call_timeout())
        except grpc.aio.AioRpcError as err:
            raise from_triton_exception(err) from err

    async def is_ready(self, model: str) -> bool:
        """True when `model` is loaded and ready in Triton."""
        try:
            reply = await self._inference.ModelReady(service_pb2.ModelReadyRequest(name=model), timeout=2.0)
        except grpc.aio.AioRpcError:
            return False
        return reply.ready

    async def close(self) -> None:
        await self._channel.close()


async def all_ready(backend, triton_models) -> bool:
    """Ready when `backend.is_ready` says so for every one of `triton_models` (what gRPC health reports)."""
    for model in triton_models:
        if not await backend.is_ready(model):
            return False
    return True
