"""The Triton backend's error mapping, against a real (unreachable) gRPC endpoint and real messages."""

import grpc
import pytest

from local.processes import free_port
from hubmesh.common.v1 import common_pb2 as common_pb
from services.common.errors import (
    BackendUnavailable,
    Cancelled,
    ContextLengthExceeded,
    DeadlineExceeded,
    InvalidArgument,
    ServiceError,
)
from services.common.triton_errors import classify_triton_error, from_triton_exception
from services.text.backend import TritonTextBackend


async def test_unreachable_triton_is_unavailable_not_a_hang():
    backend = TritonTextBackend(f"127.0.0.1:{free_port()}", timeout_s=30)
    try:
        assert await backend.is_ready("smollm2") is False
        with pytest.raises(BackendUnavailable):
            async for _ in backend.generate("smollm2", "hi", {"n": 1}, stream=True):
                pass
    finally:
        await backend.close()


# Every message the door knows, as the server that sends it writes it: a change of wording there
# shows up here, not as a 500 in production.
KNOWN = [
    # our CPU models (TritonError INVALID_ARG / CANCELLED inside a decoupled stream)
    ("invalid argument: logit_bias token id 99999 is out of vocabulary range (0..49151)", InvalidArgument,
     "logit_bias", "INVALID_REQUEST"),
    ("invalid argument: Prompt length of 9000 tokens is longer than the maximum model length of 8192 tokens",
     ContextLengthExceeded, None, "CONTEXT_LENGTH_EXCEEDED"),
    ("invalid argument: structured_outputs takes one constraint, got json, regex", InvalidArgument, None,
     "INVALID_REQUEST"),
    ("Request was cancelled", Cancelled, None, "CANCELLED"),
    # Triton's vLLM backend (vLLM's own messages behind its "Error generating stream: " prefix)
    ("Error generating stream: The decoder prompt (length 9000) is longer than the maximum model length of "
     "8192. Make sure that `max_model_len` is no smaller than the number of text tokens.", ContextLengthExceeded,
     None, "CONTEXT_LENGTH_EXCEEDED"),
    ("Error generating stream: This model's maximum context length is 8192 tokens. However, you requested "
     "9000 tokens (8000 in the messages, 1000 in the completion).", ContextLengthExceeded, None,
     "CONTEXT_LENGTH_EXCEEDED"),
    ("Error generating stream: Input prompt (9000 tokens) is too long and exceeds limit of 8192",
     ContextLengthExceeded, None, "CONTEXT_LENGTH_EXCEEDED"),
    ("Error generating stream: token id 99999 is out of vocabulary", InvalidArgument, None, "INVALID_REQUEST"),
    # Triton itself
    ("Request for unknown model: 'smollm2' is not found", BackendUnavailable, None, "BACKEND_UNAVAILABLE"),
    ("Request for unknown model: 'smollm2' has no available versions", BackendUnavailable, None,
     "BACKEND_UNAVAILABLE"),
    ("Failed to process the request(s) for model 'smollm2_0_0', message: Stub process 'smollm2_0_0' is not "
     "healthy.", BackendUnavailable, None, "BACKEND_UNAVAILABLE"),
    # anything else: logged, never returned
    ("Error generating stream: CUDA out of memory", ServiceError, None, "BACKEND_FAILED"),
]


@pytest.mark.parametrize("message, expected, param, reason", KNOWN)
def test_known_triton_messages_map_to_domain_errors(message, expected, param, reason):
    err = classify_triton_error(message)
    assert type(err) is expected and err.param == param
    assert common_pb.ErrorReason.Name(err.reason) == reason
    if expected is ServiceError:
        assert "CUDA" not in str(err)  # internals are logged, not returned
    if expected in (InvalidArgument, ContextLengthExceeded):
        assert not str(err).startswith(("invalid argument", "Error generating"))  # the server's prefix is cut


class _RpcError(grpc.aio.AioRpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


@pytest.mark.parametrize(
    "code, details, expected",
    [
        (grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: "
         "Failed to connect to remote host: Connection refused", BackendUnavailable),
        (grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded", DeadlineExceeded),
        (grpc.StatusCode.CANCELLED, "Locally cancelled by application!", Cancelled),
        (grpc.StatusCode.INVALID_ARGUMENT, "[request id: 1] unexpected datatype TYPE_FP32 for input 'stream'",
         InvalidArgument),
        (grpc.StatusCode.INVALID_ARGUMENT, "invalid argument: Prompt length of 9000 tokens is longer than the "
         "maximum model length of 8192 tokens", ContextLengthExceeded),
        (grpc.StatusCode.NOT_FOUND, "Request for unknown model: 'minilm' is not found", BackendUnavailable),
        (grpc.StatusCode.INTERNAL, "Failed to process the request(s) for model 'minilm_0_0', message: "
         "Stub process 'minilm_0_0' is not healthy.", BackendUnavailable),
    ],
)
def test_unary_triton_failures_map_by_code_then_message(code, details, expected):
    assert type(from_triton_exception(_RpcError(code, details))) is expected
