"""NVIDIA's tritonserver (unpacked by fetch-tritonserver.sh) as a local child process."""

from __future__ import annotations

import os
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

from local import processes

ROOT = Path(__file__).resolve().parent.parent
TRITON_HOME = ROOT / ".triton"


@dataclass
class TritonServer:
    """One tritonserver with the python backend, its models run by this venv's Python."""

    model_repository: Path
    models: list[str]
    log_path: Path
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    shm_prefix: str = field(default_factory=lambda: f"hubmesh{os.getpid()}_")
    extra_args: list[str] = field(default_factory=list)
    proc: object = None

    def command(self) -> list[str]:
        cmd = [
            str(TRITON_HOME / "bin" / "tritonserver"),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={TRITON_HOME / 'backends'}",
            f"--cache-directory={TRITON_HOME / 'caches'}",
            "--model-control-mode=explicit",
            "--http-address=127.0.0.1", f"--http-port={self.http_port}",
            "--grpc-address=127.0.0.1", f"--grpc-port={self.grpc_port}",
            "--metrics-address=127.0.0.1", f"--metrics-port={self.metrics_port}",
            "--allow-gpu-metrics=false",
            "--pinned-memory-pool-byte-size=0",
            "--exit-timeout-secs=5",
            # the services ping every 2 s during calls (services.common.grpc_options): not bad pings
            "--grpc-http2-min-recv-ping-interval-without-data=1000",
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
            "--log-verbose=0",
        ]
        cmd += [f"--load-model={m}" for m in self.models]
        return cmd + self.extra_args

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        venv_bin = str(Path(sys.executable).parent)
        libdir = sysconfig.get_config_var("LIBDIR")  # the stub links this Python's libpython
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (libdir, str(TRITON_HOME / "lib"), env.get("LD_LIBRARY_PATH")) if p
        )
        env["PATH"] = venv_bin + os.pathsep + env.get("PATH", "")  # the stub finds its venv via python3
        env.pop("PYTHONPATH", None)
        return env

    def start(self) -> None:
        self.proc = processes.spawn(self.command(), self.env(), self.log_path)

    def is_ready(self) -> bool:
        return processes.http_ok(f"http://127.0.0.1:{self.http_port}/v2/health/ready", timeout_s=2)

    def wait_ready(self, timeout_s: float = 180.0) -> None:
        processes.wait_until(self.is_ready, timeout_s, "tritonserver", self.proc, self.log_path)

    def stop(self) -> None:
        if self.proc is not None:
            processes.stop(self.proc)
        # a server killed hard leaves its shared-memory regions; remove only our own prefix
        for region in Path("/dev/shm").glob(f"{self.shm_prefix}*"):
            region.unlink(missing_ok=True)
