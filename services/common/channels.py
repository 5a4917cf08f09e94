"""gRPC channel options shared by every client in the mesh (façade → services, services → Triton)."""

from __future__ import annotations

import grpc
import tritonclient.grpc.aio as triton
from tritonclient.utils import InferenceServerException

MAX_MESSAGE_BYTES = 64 * 1024 * 1024

CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    # a restarted peer is found again quickly
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2_000),
    # with a dns:/// target of a headless Kubernetes Service, calls spread over every replica
    # (one HTTP/2 connection would otherwise pin them all to one pod)
    ("grpc.lb_policy_name", "round_robin"),
]


def triton_client(url: str) -> triton.InferenceServerClient:
    """The one tritonclient.grpc.aio client of a service process."""
    return triton.InferenceServerClient(url=url, channel_args=CHANNEL_OPTIONS)


class TritonBackend:
    """What every modality's Triton backend shares: one client per process, readiness, closing."""

    def __init__(self, url: str, timeout_s: float) -> None:
        self._client = triton_client(url)
        self._timeout_s = timeout_s

    async def is_ready(self, model: str) -> bool:
        """True when `model` is loaded and ready in Triton."""
        try:
            return bool(await self._client.is_model_ready(model, client_timeout=2.0))
        except (InferenceServerException, grpc.aio.AioRpcError):
            return False

    async def close(self) -> None:
        await self._client.close()
