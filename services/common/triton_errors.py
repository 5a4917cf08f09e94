"""The service's door for Triton's failures: each known message of Triton, of Triton's vLLM backend and
of our own CPU models becomes a domain error here, once; nothing past this module reads error text.

Unary calls carry a gRPC status; an error inside a decoupled stream carries only its message, so
the messages themselves are classified. Every pattern below is pinned by a test with the message
it was written for (tests/unit/test_triton_errors.py).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

import grpc

from services.common.errors import (
    BackendUnavailable,
    Cancelled,
    ContextLengthExceeded,
    DeadlineExceeded,
    InvalidArgument,
    ServiceError,
)

log = logging.getLogger(__name__)

# prefixes the model servers put before the message that matters
_PREFIXES = ("invalid argument: ", "Error generating stream: ", "Error generating response: ")


def _clean(message: str) -> str:
    for prefix in _PREFIXES:
        message = message.removeprefix(prefix)
    return message


# (pattern, error) in order: the first pattern found in the message decides
KNOWN_MESSAGES: list[tuple[re.Pattern[str], Callable[[str], ServiceError]]] = [
    # the prompt does not fit: our models, vLLM's engine (V1 processor, V0) and its OpenAI layer
    (re.compile(r"longer than the maximum model length|maximum context length is|is too long and exceeds limit",
                re.I), lambda m: ContextLengthExceeded(_clean(m))),
    # a logit_bias token the model does not have (our models; vLLM: "out of vocabulary")
    (re.compile(r"logit_bias.*out of vocabulary|out of vocabulary.*logit_bias", re.I),
     lambda m: InvalidArgument(_clean(m), "logit_bias")),
    # input errors of our models (TritonError INVALID_ARG) and vLLM's SamplingParams checks
    (re.compile(r"^invalid argument: |out of vocabulary", re.I), lambda m: InvalidArgument(_clean(m))),
    # the request was cancelled inside Triton (our models' CANCELLED error, Triton's own)
    (re.compile(r"\bcancell?ed\b", re.I), lambda m: Cancelled("the request was cancelled inside the model server")),
    # the model is not (or no longer) loaded, or its python stub died
    (re.compile(r"unknown model|is not ready|is not found|has no available versions|stub process .* is not healthy",
                re.I), lambda m: BackendUnavailable(f"the model is not available in Triton: {m}")),
]


def _known(message: str) -> ServiceError | None:
    for pattern, error in KNOWN_MESSAGES:
        if pattern.search(message):
            return error(message)
    return None


def classify_triton_error(message: str) -> ServiceError:
    """The domain error for a failure message Triton sent (a decoupled stream's error response)."""
    error = _known(message)
    if error is None:
        log.error("unexpected Triton error: %s", message)
        return ServiceError("the model server failed to handle the request")
    return error


# gRPC status codes whose meaning does not depend on the message
_BY_CODE: dict[grpc.StatusCode, Callable[[], ServiceError]] = {
    grpc.StatusCode.UNAVAILABLE: lambda: BackendUnavailable("the model server (Triton) is unavailable"),
    grpc.StatusCode.DEADLINE_EXCEEDED: lambda: DeadlineExceeded("the model did not finish in time"),
    grpc.StatusCode.CANCELLED: lambda: Cancelled("the request was cancelled inside the model server"),
}


def from_triton_exception(err: grpc.aio.AioRpcError) -> ServiceError:
    """The domain error for a failed gRPC call to Triton: its status code, then its message."""
    code, message = err.code(), err.details() or ""
    if code in _BY_CODE:
        if code == grpc.StatusCode.UNAVAILABLE:
            log.warning("Triton unavailable: %s", message)
        return _BY_CODE[code]()
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        error = _known(message)
        return error if isinstance(error, InvalidArgument) else InvalidArgument(_clean(message))
    return classify_triton_error(message)
