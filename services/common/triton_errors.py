"""The one table from Triton failures to the services' domain errors.

Unary calls carry a gRPC status; errors inside a decoupled stream carry only a message, so input
errors are also recognised by the wording that our models and Triton's vLLM backend use.
"""

from __future__ import annotations

import logging

import grpc

from services.common.errors import BackendUnavailable, Cancelled, DeadlineExceeded, InvalidArgument, ServiceError

log = logging.getLogger(__name__)

# Messages by which models (ours and vLLM's) report input errors; everything else is internal.
_INPUT_ERROR_MARKERS = (
    "invalid argument",
    "maximum context length",
    "maximum model length",
    "longer than the maximum",
    "out of vocabulary",
)


def classify_triton_error(message: str, code: grpc.StatusCode | None = None) -> ServiceError:
    """The domain error for a Triton failure (message, and gRPC status when there is one)."""
    lowered = message.lower()
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNKNOWN) and "connect" in lowered:
        return BackendUnavailable("the model server (Triton) is unreachable")
    if code == grpc.StatusCode.UNAVAILABLE:
        return BackendUnavailable(f"the model server (Triton) is unavailable: {message}")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return DeadlineExceeded("the model did not finish in time")
    if code == grpc.StatusCode.CANCELLED or "cancelled" in lowered:
        return Cancelled("the request was cancelled inside the model server")
    if any(marker in lowered for marker in _INPUT_ERROR_MARKERS):
        return InvalidArgument(
            message.removeprefix("invalid argument: "), "logit_bias" if "logit_bias" in lowered else None
        )
    if "unknown model" in lowered or "not ready" in lowered or "is not found" in lowered:
        return BackendUnavailable(f"the model is not loaded in Triton: {message}")
    log.error("unexpected Triton error: %s", message)
    return ServiceError("the model server failed to handle the request")


def from_triton_exception(err: grpc.aio.AioRpcError) -> ServiceError:
    """The domain error for a failed gRPC call to Triton."""
    code, message = err.code(), err.details() or str(err)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidArgument(message.removeprefix("invalid argument: "))
    return classify_triton_error(message, code)
