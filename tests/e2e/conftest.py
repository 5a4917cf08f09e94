"""The real stack (NVIDIA's tritonserver + SmolLM2, the text service, the façade) for end-to-end tests."""

import os
import time
from pathlib import Path

import pytest
from openai import OpenAI

from local.stack import LocalStack, StackConfig
from tests.otlp_receiver import OtlpReceiver

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
KEY = "e2e-" + os.urandom(8).hex()
IMAGE_TTL_S = 20


@pytest.fixture(scope="session")
def otlp():
    """A real OTLP/HTTP receiver every process of the stack (Triton included) exports its spans to."""
    with OtlpReceiver() as receiver:
        yield receiver


@pytest.fixture(scope="session")
def stack(tmp_path_factory, otlp):
    config = StackConfig.with_free_ports(api_key=KEY, run_dir=tmp_path_factory.mktemp("stack"))
    config.extra_env["HUBMESH_IMAGES_TTL_S"] = str(IMAGE_TTL_S)  # short, so expiry can be watched
    config.extra_env["OTEL_EXPORTER_OTLP_ENDPOINT"] = otlp.endpoint
    config.extra_env["OTEL_EXPORTER_OTLP_PROTOCOL"] = "http/protobuf"
    config.extra_env["OTEL_BSP_SCHEDULE_DELAY"] = "200"  # export within a fraction of a second
    stack = LocalStack(config)
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()
        for name, proc in stack.children().items():
            assert proc is None or proc.poll() is not None, f"{name} still running"
            if proc is not None:
                with pytest.raises(ProcessLookupError):  # nothing of its process group is left
                    os.killpg(proc.pid, 0)
                    pytest.fail(f"{name}: a process of its group is still there")
        for triton in stack.tritons.values():
            assert not list(Path("/dev/shm").glob(f"{triton.shm_prefix}*"))


@pytest.fixture(scope="session")
def client(stack) -> OpenAI:
    return OpenAI(base_url=stack.config.base_url, api_key=KEY, max_retries=0, timeout=120)


def wait_for(predicate, timeout_s=60.0, what="condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what} not reached in {timeout_s} s")


