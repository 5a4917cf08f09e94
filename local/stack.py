"""The whole stack on 127.0.0.1: one Triton per modality with the real models, the three services,
the façade.

Used by `make run` (local/__main__.py) and by the end-to-end tests, so both meet the same thing.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from facade.auth.tokens import issue_local_token
from facade.settings import generate_secret
from local import processes
from local.triton import ROOT, TritonServer



@dataclass(frozen=True)
class Modality:
    """One modality: its Triton (own process, own models) and its gRPC service."""

    name: str  # text, embeddings, images
    models: tuple[str, ...]  # Triton models to load
    service_module: str  # python -m <module>
    grpc_service: str  # name in gRPC health checking
    env_prefix: str  # HUBMESH_<PREFIX>_LISTEN, _TRITON_URL (service) and _TARGET (façade)

    @property
    def repository(self) -> Path:
        return ROOT / "services" / self.name / "model_repository"


MODALITIES = (
    Modality("text", ("smollm2",), "services.text", "hubmesh.text.v1.TextGeneration", "TEXT"),
    Modality("embeddings", ("minilm",), "services.embeddings", "hubmesh.embeddings.v1.Embeddings", "EMBEDDINGS"),
    Modality("images", ("tiny_sd",), "services.images", "hubmesh.images.v1.Images", "IMAGES"),
)


@dataclass
class StackConfig:
    """Ports and credentials of one local stack."""

    api_key: str
    run_dir: Path
    # HS256 secret the façade verifies JWTs with, and the secret only the façade presents to services
    jwt_secret: str = field(default_factory=generate_secret)
    internal_secret: str = field(default_factory=generate_secret)
    http_port: int = 8080
    # per modality: service gRPC port and its Triton's HTTP, gRPC and metrics ports
    ports: dict[str, dict[str, int]] = field(
        default_factory=lambda: {
            "text": {"service": 50051, "metrics": 9464, "triton_http": 8000, "triton_grpc": 8001, "triton_metrics": 8002},
            "embeddings": {
                "service": 50052, "metrics": 9465, "triton_http": 8010, "triton_grpc": 8011, "triton_metrics": 8012,
            },
            "images": {"service": 50053, "metrics": 9466, "triton_http": 8020, "triton_grpc": 8021, "triton_metrics": 8022},
        }
    )
    extra_env: dict[str, str] = field(default_factory=dict)
    # more Triton models to load per modality (e.g. the text benchmark model "echo")
    extra_models: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def with_free_ports(cls, api_key: str, run_dir: Path, **overrides) -> StackConfig:
        kinds = ("service", "metrics", "triton_http", "triton_grpc", "triton_metrics")
        free = iter(processes.free_ports(1 + len(kinds) * len(MODALITIES)))  # all distinct
        http_port = next(free)
        ports = {m.name: {k: next(free) for k in kinds} for m in MODALITIES}
        return cls(api_key=api_key, run_dir=run_dir, http_port=http_port, ports=ports, **overrides)

    def service_target(self, modality: str) -> str:
        return f"127.0.0.1:{self.ports[modality]['service']}"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/v1"


def _python_env(config: StackConfig, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "build" / "gen")])
    env["PYTHONUNBUFFERED"] = "1"
    env["HUBMESH_IMAGES_STORE_DIR"] = str(config.run_dir / "images")  # images kept for `url` responses
    env["HUBMESH_INTERNAL_SECRET"] = config.internal_secret
    env.update(config.extra_env)
    env.update(extra)
    return env


def triton_tracing_args(otlp_endpoint: str, service_name: str) -> list[str]:
    """Triton's own OpenTelemetry tracing (OTLP/HTTP) to the collector the rest of the stack uses."""
    return [
        "--trace-config=mode=opentelemetry",
        "--trace-config=rate=1",
        "--trace-config=level=TIMESTAMPS",  # nothing is exported without it
        f"--trace-config=opentelemetry,url={otlp_endpoint.rstrip('/')}/v1/traces",
        f"--trace-config=opentelemetry,resource=service.name={service_name}",
        "--trace-config=opentelemetry,bsp_schedule_delay=200",
    ]


def grpc_serving(target: str, service: str) -> bool:
    with grpc.insecure_channel(target) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
        return reply.status == health_pb2.HealthCheckResponse.SERVING


class LocalStack:
    """Starts each modality's Triton, then its service, then the façade; each waits for the one before."""

    def __init__(self, config: StackConfig, modalities: tuple[Modality, ...] = MODALITIES) -> None:
        self.config = config
        self.modalities = modalities
        self.logs = config.run_dir / "logs"
        otlp = config.extra_env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        self.tritons = {
            m.name: TritonServer(
                model_repository=m.repository,
                models=[*m.models, *config.extra_models.get(m.name, [])],
                log_path=self.logs / f"triton-{m.name}.log",
                http_port=config.ports[m.name]["triton_http"],
                grpc_port=config.ports[m.name]["triton_grpc"],
                metrics_port=config.ports[m.name]["triton_metrics"],
                shm_prefix=f"hubmesh{os.getpid()}{m.name}_",
                extra_args=triton_tracing_args(otlp, f"triton-{m.name}") if otlp else [],
            )
            for m in modalities
        }
        self.services: dict[str, object] = {}
        self.facade = None

    def start(self, timeout_s: float = 300.0) -> None:
        try:
            for triton in self.tritons.values():  # the servers load their models in parallel
                triton.start()
            for modality in self.modalities:
                self.tritons[modality.name].wait_ready(timeout_s)
                self.start_service(modality)
            self.start_facade(timeout_s)
        except BaseException:
            self.stop()
            raise

    def start_service(self, modality: Modality, timeout_s: float = 60.0) -> None:
        target = self.config.service_target(modality.name)
        log_path = self.logs / f"{modality.name}.log"
        env = _python_env(
            self.config,
            OTEL_SERVICE_NAME=f"hubmesh-{modality.name}",
            HUBMESH_METRICS_PORT=str(self.config.ports[modality.name]["metrics"]),
            **{
                f"HUBMESH_{modality.env_prefix}_LISTEN": target,
                f"HUBMESH_{modality.env_prefix}_TRITON_URL": f"127.0.0.1:{self.config.ports[modality.name]['triton_grpc']}",
            },
        )
        proc = processes.spawn([sys.executable, "-m", modality.service_module], env, log_path, cwd=ROOT)
        self.services[modality.name] = proc
        processes.wait_until(
            lambda: grpc_serving(target, modality.grpc_service), timeout_s, f"{modality.name} service", proc, log_path
        )

    def start_facade(self, timeout_s: float = 60.0) -> None:
        env = _python_env(
            self.config,
            HUBMESH_HTTP_HOST="127.0.0.1",
            HUBMESH_HTTP_PORT=str(self.config.http_port),
            HUBMESH_API_KEY=self.config.api_key,
            HUBMESH_JWT_SECRET=self.config.jwt_secret,
            OTEL_SERVICE_NAME="hubmesh-facade",
            **{f"HUBMESH_{m.env_prefix}_TARGET": self.config.service_target(m.name) for m in self.modalities},
        )
        log_path = self.logs / "facade.log"
        self.facade = processes.spawn([sys.executable, "-m", "facade"], env, log_path, cwd=ROOT)
        auth = {"Authorization": f"Bearer {self.config.api_key}"}
        ready = f"http://127.0.0.1:{self.config.http_port}/ready"
        complete = len(self.modalities) == len(MODALITIES)  # /ready wants every service
        processes.wait_until(
            lambda: (not complete or processes.http_ok(ready)) and processes.http_ok(f"{self.config.base_url}/models", auth),
            timeout_s, "façade", self.facade, log_path,
        )

    def crash_triton(self, modality: str) -> None:
        """Kills a Triton hard (SIGKILL to its process group), as a crashed node would."""
        triton = self.tritons[modality]
        os.killpg(triton.proc.pid, signal.SIGKILL)
        triton.proc.wait(timeout=10)
        triton.stop()  # removes the shared-memory regions it left

    def restart_triton(self, modality: str, timeout_s: float = 120.0) -> None:
        """Starts a crashed Triton again on the same ports; the service reconnects by itself."""
        triton = self.tritons[modality]
        triton.start()
        triton.wait_ready(timeout_s)

    def triton_metric(self, name: str, modality: str = "text", **labels: str) -> float:
        """Sum of a Prometheus metric on a Triton's metrics port (the models' own counters live there)."""
        url = f"http://127.0.0.1:{self.config.ports[modality]['triton_metrics']}/metrics"
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
        procs = {f"triton-{name}": t.proc for name, t in self.tritons.items()}
        return {**procs, **self.services, "facade": self.facade}

    def stop(self) -> None:
        """Stops the façade, then the services, then the Tritons; leaves no process and no /dev/shm region."""
        for proc in (self.facade, *self.services.values()):
            if proc is not None:
                processes.stop(proc)
        for triton in self.tritons.values():
            triton.stop()

    def __enter__(self) -> LocalStack:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def describe(config: StackConfig) -> str:
    """What `make run` prints: where it is and how to call it."""
    model = "HuggingFaceTB/SmolLM2-135M-Instruct"
    services = "\n".join(
        f"  {name:<9}: gRPC service 127.0.0.1:{p['service']}; its Triton on 127.0.0.1:{p['triton_grpc']} (gRPC), "
        f":{p['triton_http']} (HTTP), :{p['triton_metrics']} (metrics)"
        for name, p in config.ports.items()
    )
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "What is the capital of France?"}]})
    return f"""
hubmesh is running.
  Base URL : {config.base_url}
  API key  : {config.api_key}
  JWT      : {issue_local_token(config.jwt_secret)}
             (HS256, every scope, valid 30 days: either one works as the Bearer credential)
{services}
  Logs     : {config.run_dir / 'logs'}

curl {config.base_url}/chat/completions \\
  -H "Authorization: Bearer {config.api_key}" -H "Content-Type: application/json" \\
  -d '{body}'

curl {config.base_url}/embeddings -H "Authorization: Bearer {config.api_key}" -H "Content-Type: application/json" \\
  -d '{{"model": "sentence-transformers/all-MiniLM-L6-v2", "input": "The food was delicious"}}'

python -c 'from openai import OpenAI; c = OpenAI(base_url="{config.base_url}", api_key="{config.api_key}"); \
print(c.chat.completions.create(model="{model}", messages=[{{"role": "user", "content": "What is the capital of France?"}}]).choices[0].message.content)'

Ctrl-C stops everything.
"""
