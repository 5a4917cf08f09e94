"""The whole stack on 127.0.0.1: Triton with the real models, the text service, the façade.

Used by `make run` (local/__main__.py) and by the end-to-end tests, so both meet the same thing.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from local import processes
from local.triton import ROOT, TritonServer

TEXT_REPOSITORY = ROOT / "services" / "text" / "model_repository"


@dataclass
class StackConfig:
    """Ports and credentials of one local stack."""

    api_key: str
    run_dir: Path
    http_port: int = 8080
    text_port: int = 50051
    triton_http_port: int = 8000
    triton_grpc_port: int = 8001
    triton_metrics_port: int = 8002
    extra_env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def with_free_ports(cls, api_key: str, run_dir: Path, **overrides) -> StackConfig:
        ports = {
            name: processes.free_port()
            for name in ("http_port", "text_port", "triton_http_port", "triton_grpc_port", "triton_metrics_port")
        }
        return cls(api_key=api_key, run_dir=run_dir, **{**ports, **overrides})

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/v1"


def _python_env(config: StackConfig, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "build" / "gen")])
    env["PYTHONUNBUFFERED"] = "1"
    env.update(config.extra_env)
    env.update(extra)
    return env


def grpc_serving(target: str, service: str) -> bool:
    with grpc.insecure_channel(target) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
        return reply.status == health_pb2.HealthCheckResponse.SERVING


def http_ok(url: str, headers: dict[str, str] | None = None) -> bool:
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.status == 200


class LocalStack:
    """Starts Triton, then the text service, then the façade; each waits for the one before."""

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        logs = config.run_dir / "logs"
        self.triton = TritonServer(
            model_repository=TEXT_REPOSITORY,
            models=["smollm2"],
            log_path=logs / "triton.log",
            http_port=config.triton_http_port,
            grpc_port=config.triton_grpc_port,
            metrics_port=config.triton_metrics_port,
        )
        self.text_log = logs / "text.log"
        self.facade_log = logs / "facade.log"
        self.text = None
        self.facade = None

    @property
    def text_target(self) -> str:
        return f"127.0.0.1:{self.config.text_port}"

    def start(self, timeout_s: float = 300.0) -> None:
        try:
            self.triton.start()
            self.triton.wait_ready(timeout_s)
            self.start_text()
            self.start_facade(timeout_s)
        except BaseException:
            self.stop()
            raise

    def start_text(self, timeout_s: float = 60.0) -> None:
        env = _python_env(
            self.config,
            HUBMESH_TEXT_LISTEN=self.text_target,
            HUBMESH_TEXT_TRITON_URL=f"127.0.0.1:{self.config.triton_grpc_port}",
        )
        self.text = processes.spawn([sys.executable, "-m", "services.text"], env, self.text_log, cwd=ROOT)
        processes.wait_until(
            lambda: grpc_serving(self.text_target, "hubmesh.text.v1.TextGeneration"),
            timeout_s, "text service", self.text, self.text_log,
        )

    def start_facade(self, timeout_s: float = 60.0) -> None:
        env = _python_env(
            self.config,
            HUBMESH_HTTP_HOST="127.0.0.1",
            HUBMESH_HTTP_PORT=str(self.config.http_port),
            HUBMESH_API_KEY=self.config.api_key,
            HUBMESH_TEXT_TARGET=self.text_target,
        )
        self.facade = processes.spawn([sys.executable, "-m", "facade"], env, self.facade_log, cwd=ROOT)
        auth = {"Authorization": f"Bearer {self.config.api_key}"}
        processes.wait_until(
            lambda: http_ok(f"{self.config.base_url}/models", auth), timeout_s, "façade", self.facade, self.facade_log
        )

    def triton_metric(self, name: str, **labels: str) -> float:
        """Sum of a Prometheus metric on Triton's metrics port (the model's own counters live there)."""
        url = f"http://127.0.0.1:{self.config.triton_metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        total = 0.0
        for line in text.splitlines():
            if not line.startswith(name + "{") and not line.startswith(name + " "):
                continue
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def children(self) -> dict[str, object]:
        return {"triton": self.triton.proc, "text": self.text, "facade": self.facade}

    def stop(self) -> None:
        """Stops the façade, then the service, then Triton; leaves no process and no /dev/shm region."""
        for proc in (self.facade, self.text):
            if proc is not None:
                processes.stop(proc)
        self.triton.stop()

    def __enter__(self) -> LocalStack:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def describe(config: StackConfig) -> str:
    """What `make run` prints: where it is and how to call it."""
    model = "HuggingFaceTB/SmolLM2-135M-Instruct"
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "What is the capital of France?"}]})
    return f"""
hubmesh is running.
  Base URL : {config.base_url}
  API key  : {config.api_key}
  gRPC     : text service on 127.0.0.1:{config.text_port}; Triton on 127.0.0.1:{config.triton_grpc_port} (gRPC), \
:{config.triton_http_port} (HTTP), :{config.triton_metrics_port} (metrics)
  Logs     : {config.run_dir / 'logs'}

curl {config.base_url}/chat/completions \\
  -H "Authorization: Bearer {config.api_key}" -H "Content-Type: application/json" \\
  -d '{body}'

python -c 'from openai import OpenAI; c = OpenAI(base_url="{config.base_url}", api_key="{config.api_key}"); \
print(c.chat.completions.create(model="{model}", messages=[{{"role": "user", "content": "What is the capital of France?"}}]).choices[0].message.content)'

Ctrl-C stops everything.
"""
