"""One real tritonserver on free ports with some of the text models, for the model-level tests."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from local.processes import free_ports
from local.triton import ROOT, TritonServer

REPOSITORY = ROOT / "services" / "text" / "model_repository"


@contextlib.contextmanager
def one_triton(run_dir: Path, models: list[str], tag: str, ready_s: float = 300) -> Iterator[TritonServer]:
    """A ready server loading `models`; stopped after, leaving no /dev/shm region of its own."""
    http, grpc_port, metrics = free_ports(3)
    server = TritonServer(
        model_repository=REPOSITORY, models=models, log_path=run_dir / "triton.log",
        http_port=http, grpc_port=grpc_port, metrics_port=metrics,
        shm_prefix=f"hubmesh{os.getpid()}{tag}_",  # apart from the regions of any other server of the session
    )
    server.start()
    try:
        server.wait_ready(ready_s)
        yield server
    finally:
        server.stop()
    assert not list(Path("/dev/shm").glob(f"{server.shm_prefix}*"))
