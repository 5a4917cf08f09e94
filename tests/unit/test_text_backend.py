"""The Triton backend's error mapping, against a real (unreachable) gRPC endpoint and real messages."""

import grpc
import pytest

from local.processes import free_port
from services.common.errors import BackendUnavailable, Cancelled, InvalidArgument, ServiceError
from services.common.triton_errors import classify_triton_error
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


@pytest.mark.parametrize(
    "message, code, expected, param",
    [
        ("invalid argument: logit_bias token id 99999 is out of vocabulary range (0..49151)", None, InvalidArgument, "logit_bias"),
        ("Error generating stream: Prompt length of 9000 is longer than the maximum model length of 8192.", None, InvalidArgument, None),
        ("Request was cancelled", None, Cancelled, None),
        ("failed to connect to all addresses", grpc.StatusCode.UNAVAILABLE, BackendUnavailable, None),
        ("Request for unknown model: 'smollm2' is not found", None, BackendUnavailable, None),
        ("Error generating stream: CUDA out of memory", None, ServiceError, None),
    ],
)
def test_triton_messages_map_to_domain_errors(message, code, expected, param):
    err = classify_triton_error(message, code)
    assert type(err) is expected and err.param == param
    if expected is ServiceError:
        assert "CUDA" not in str(err)  # internals are logged, not returned
