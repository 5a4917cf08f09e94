"""The whole stack on 127.0.0.1: one Triton (or several replicas) per modality with the real models, the
three services, the façade.

Used by `make run` (local/__main__.py) and by the end-to-end tests, so both meet the same thing.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from facade.auth.tokens import issue_local_token
from facade.settings import generate_secret
from facade.store.database import redact
from local import processes
from local.nats import Bus, choose_bus, describe_bus
from local.prometheus import metric_sum
from local.supervisor import Unit
from local.triton import ROOT, TritonServer

log = logging.getLogger("hubmesh")



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


TRITON_PORT_KINDS = ("triton_http", "triton_grpc", "triton_metrics")


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
    # Triton models a modality loads instead of its defaults (e.g. {"text": ("sim",)}: no SmolLM2);
    # extra_models come on top
    models: dict[str, tuple[str, ...]] | None = None
    # Triton replicas per modality (1 when absent); every replica loads the same models
    replicas: dict[str, int] = field(default_factory=dict)
    # per modality, every replica's triton_http/triton_grpc/triton_metrics ports, replica 0 first;
    # replica 0 is always ports[m]'s (see triton_ports); missing replicas get ports when asked for
    replica_ports: dict[str, list[dict[str, int]]] = field(default_factory=dict)
    # how ports of replicas >= 1 that were not given are chosen: free ports (with_free_ports), or
    # replica 0's plus replica_port_step × index (make run: text 8000-8002, replica 1 8100-8102, ...)
    free_replica_ports: bool = False
    replica_port_step: int = 100
    # text-service processes (HUBMESH_TEXT_SERVICES): the first on ports["text"]'s service and metrics
    # ports, the others on free ports (with_free_ports) or those + replica_port_step × index; with
    # more than one, their prefix pickers share one routing view over a NATS bus (routing_bus)
    text_services: int = 1
    # which bus (local.nats.choose_bus): auto (HUBMESH_TEXT_ROUTING_BUS_URL, else a private nats-server,
    # else the machine's NATS on 127.0.0.1:4222, else none), private, shared, off
    routing_bus: str = "auto"
    text_service_ports: list[tuple[int, int]] = field(default_factory=list)

    @classmethod
    def with_free_ports(cls, api_key: str, run_dir: Path, **overrides) -> StackConfig:
        kinds = ("service", "metrics", "triton_http", "triton_grpc", "triton_metrics")
        replicas = overrides.get("replicas") or {}
        extra = sum(max(replicas.get(m.name, 1), 1) - 1 for m in MODALITIES) * len(TRITON_PORT_KINDS)
        free = iter(processes.free_ports(1 + len(kinds) * len(MODALITIES) + extra))  # all distinct
        http_port = next(free)
        ports = {m.name: {k: next(free) for k in kinds} for m in MODALITIES}
        replica_ports = {
            m.name: [{k: ports[m.name][k] for k in TRITON_PORT_KINDS}]
            + [{k: next(free) for k in TRITON_PORT_KINDS} for _ in range(max(replicas.get(m.name, 1), 1) - 1)]
            for m in MODALITIES
        }
        overrides.setdefault("replica_ports", replica_ports)
        overrides.setdefault("free_replica_ports", True)
        return cls(api_key=api_key, run_dir=run_dir, http_port=http_port, ports=ports, **overrides)

    def replica_count(self, modality: str) -> int:
        return max(int(self.replicas.get(modality, 1)), 1)

    def triton_ports(self, modality: str) -> list[dict[str, int]]:
        """Ports of every Triton replica of `modality`, replica 0 first (replica 0 is ports[modality]'s).
        Replicas without ports get them now (free ports, or replica 0's + step × index) and keep them."""
        first = {k: self.ports[modality][k] for k in TRITON_PORT_KINDS}
        listed = self.replica_ports.setdefault(modality, [])
        if listed:
            listed[0] = first
        else:
            listed.append(first)
        missing = self.replica_count(modality) - len(listed)
        if missing > 0:
            if self.free_replica_ports:
                taken = self._ports_in_use()
                fresh = iter(p for p in processes.free_ports(missing * len(TRITON_PORT_KINDS) + len(taken))
                             if p not in taken)
                listed += [{k: next(fresh) for k in TRITON_PORT_KINDS} for _ in range(missing)]
            else:
                for index in range(len(listed), self.replica_count(modality)):
                    listed.append({k: first[k] + self.replica_port_step * index for k in TRITON_PORT_KINDS})
        return listed[: self.replica_count(modality)]

    def triton_url(self, modality: str) -> str:
        """HUBMESH_<PREFIX>_TRITON_URL of the modality's service: every replica as host:grpc:metrics."""
        return ",".join(f"127.0.0.1:{p['triton_grpc']}:{p['triton_metrics']}" for p in self.triton_ports(modality))

    def modality_models(self, modality: Modality) -> list[str]:
        """The Triton models each replica of `modality` loads."""
        base = modality.models if self.models is None else self.models.get(modality.name, modality.models)
        return [*base, *self.extra_models.get(modality.name, [])]

    def _ports_in_use(self) -> set[int]:
        used = {self.http_port}
        for ports in self.ports.values():
            used.update(ports.values())
        for replicas in self.replica_ports.values():
            for ports in replicas:
                used.update(ports.values())
        return used

    def text_ports(self) -> list[tuple[int, int]]:
        """(listen, metrics) port of each text-service process, the first one's from ports["text"]."""
        first = (self.ports["text"]["service"], self.ports["text"]["metrics"])
        listed = self.text_service_ports
        if listed:
            listed[0] = first
        else:
            listed.append(first)
        missing = self.text_services - len(listed)
        if missing > 0:
            if self.free_replica_ports:
                taken = self._ports_in_use() | {p for pair in listed for p in pair}
                fresh = iter(p for p in processes.free_ports(2 * missing + len(taken)) if p not in taken)
                listed += [(next(fresh), next(fresh)) for _ in range(missing)]
            else:
                listed += [(first[0] + self.replica_port_step * i, first[1] + self.replica_port_step * i)
                           for i in range(len(listed), self.text_services)]
        return listed[: max(1, self.text_services)]

    def service_target(self, modality: str) -> str:
        """The façade's target of a modality's service; several text services: all their addresses
        (the façade's channel spreads its links over them round robin)."""
        if modality == "text" and self.text_services > 1:
            return "ipv4:" + ",".join(f"127.0.0.1:{listen}" for listen, _ in self.text_ports())
        return f"127.0.0.1:{self.ports[modality]['service']}"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/v1"


def _python_env(config: StackConfig, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env["HUBMESH_IMAGES_STORE_DIR"] = str(config.run_dir / "images")  # images kept for `url` responses
    env["HUBMESH_INTERNAL_SECRET"] = config.internal_secret
    # the Responses API's stored state: SQLite in the run directory, unless a database is configured
    env.setdefault("HUBMESH_DATABASE_URL", "sqlite:///" + str(config.run_dir / "hubmesh.db"))
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


def triton_name(modality: str, replica: int) -> str:
    """triton-text for replica 0 (as with one Triton per modality), triton-text-1, -2, ... for the others."""
    return f"triton-{modality}" + (f"-{replica}" if replica else "")


def grpc_serving(target: str, service: str) -> bool:
    with grpc.insecure_channel(target) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
        return reply.status == health_pb2.HealthCheckResponse.SERVING


class LocalStack:
    """Starts each modality's Tritons, then its service, then the façade; each waits for the one before."""

    def __init__(self, config: StackConfig, modalities: tuple[Modality, ...] = MODALITIES) -> None:
        self.config = config
        self.modalities = modalities
        self.logs = config.run_dir / "logs"
        otlp = config.extra_env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        # every Triton replica of each modality, replica 0 first; replica 0 keeps the old names
        self.replicas: dict[str, list[TritonServer]] = {}
        for m in modalities:
            self.replicas[m.name] = []
            for index, ports in enumerate(config.triton_ports(m.name)):
                name = triton_name(m.name, index)
                self.replicas[m.name].append(TritonServer(
                    model_repository=m.repository,
                    models=config.modality_models(m),
                    log_path=self.logs / f"{name}.log",
                    http_port=ports["triton_http"],
                    grpc_port=ports["triton_grpc"],
                    metrics_port=ports["triton_metrics"],
                    shm_prefix=f"hubmesh{os.getpid()}{m.name}" + (f"r{index}_" if index else "_"),
                    extra_args=triton_tracing_args(otlp, name) if otlp else [],
                ))
        self.tritons = {name: replicas[0] for name, replicas in self.replicas.items()}  # replica 0
        self.services: dict[str, object] = {}
        self.facade = None
        self.bus: Bus | None = None  # the text services' routing bus, when several take part
        if config.text_services > 1 and any(m.name == "text" for m in modalities):
            self.bus = choose_bus(config.run_dir, {**os.environ, **config.extra_env}, config.routing_bus)

    def start(self, timeout_s: float = 300.0, facade: bool = True) -> None:
        """Every Triton (all replicas load their models in parallel), each service once its modality's
        Tritons are all ready, then the façade (unless facade=False)."""
        try:
            self.start_bus()
            self.start_tritons()
            for modality in self.modalities:
                for triton in self.replicas[modality.name]:
                    triton.wait_ready(timeout_s)
                if modality.name == "text":
                    self.start_text_services()
                else:
                    self.start_service(modality)
            if facade:
                self.start_facade(timeout_s)
        except BaseException:
            self.stop()
            raise

    def start_tritons(self, wait_s: float | None = None) -> None:
        """Starts every Triton replica of every modality (they load their models in parallel); with
        `wait_s`, waits until all are ready."""
        for replicas in self.replicas.values():
            for triton in replicas:
                triton.start()  # from this thread: children die with the thread that forked them
        if wait_s is not None:
            for replicas in self.replicas.values():
                for triton in replicas:
                    triton.wait_ready(wait_s)

    def start_service(
        self, modality: Modality | str, timeout_s: float = 60.0, *, instance: str | None = None,
        listen_port: int | None = None, metrics_port: int | None = None, env: dict[str, str] | None = None,
    ) -> subprocess.Popen:
        """Starts the modality's service (or another instance of it: `instance` names it in
        self.services and its log file, on its own listen and metrics ports) against every replica
        of its Triton; `env` adds to or overrides the service's environment."""
        modality = self.modality(modality)
        name = instance or modality.name
        proc = self.spawn_service(modality, instance=instance, listen_port=listen_port, metrics_port=metrics_port,
                                  env=env)
        processes.wait_until(lambda: self.service_ready(modality, listen_port), timeout_s, f"{name} service", proc,
                             self.logs / f"{name}.log")
        return proc

    def start_bus(self) -> None:
        """The private nats-server, when the bus is one (see local.nats); says which bus it is."""
        if self.bus is None:
            return
        if self.bus.server is not None and self.bus.server.proc is None:
            self.bus.server.start()
        log.info("text services: %d; their shared routing view: %s", self.config.text_services,
                 describe_bus(self.bus, self.config.text_services))

    def text_instance(self, index: int) -> str:
        return "text" if index == 0 else f"text-{index}"

    def spawn_text_service(self, index: int, env: dict[str, str] | None = None) -> subprocess.Popen:
        listen, metrics = self.config.text_ports()[index]
        return self.spawn_service("text", instance=self.text_instance(index), listen_port=listen,
                                  metrics_port=metrics, env={**self.text_env(), **(env or {})})

    def text_env(self) -> dict[str, str]:
        """The text services' environment for their shared routing view (none with one service)."""
        return self.bus.env() if self.bus is not None else {}

    def start_text_services(self, timeout_s: float = 60.0, env: dict[str, str] | None = None) -> None:
        """Every text-service process (HUBMESH_TEXT_SERVICES), started together, each waited for."""
        procs = [self.spawn_text_service(i, env) for i in range(self.config.text_services)]
        for i, proc in enumerate(procs):
            name = self.text_instance(i)
            listen = self.config.text_ports()[i][0]
            processes.wait_until(lambda p=listen: self.service_ready("text", p), timeout_s, f"{name} service", proc,
                                 self.logs / f"{name}.log")

    def modality(self, modality: Modality | str) -> Modality:
        return modality if isinstance(modality, Modality) else next(m for m in self.modalities if m.name == modality)

    def spawn_service(
        self, modality: Modality | str, *, instance: str | None = None, listen_port: int | None = None,
        metrics_port: int | None = None, env: dict[str, str] | None = None,
    ) -> subprocess.Popen:
        """Starts the modality's service process and returns at once (start_service also waits)."""
        modality = self.modality(modality)
        name = instance or modality.name
        ports = self.config.ports[modality.name]
        service_env = _python_env(
            self.config,
            OTEL_SERVICE_NAME=f"hubmesh-{modality.name}",
            HUBMESH_METRICS_PORT=str(metrics_port or ports["metrics"]),
            **{
                f"HUBMESH_{modality.env_prefix}_LISTEN": f"127.0.0.1:{listen_port or ports['service']}",
                f"HUBMESH_{modality.env_prefix}_TRITON_URL": self.config.triton_url(modality.name),
            },
        )
        service_env.update(env or {})
        proc = processes.spawn([sys.executable, "-m", modality.service_module], service_env,
                               self.logs / f"{name}.log", cwd=ROOT)
        self.services[name] = proc
        return proc

    def service_ready(self, modality: Modality | str, listen_port: int | None = None) -> bool:
        modality = self.modality(modality)
        port = listen_port or self.config.ports[modality.name]["service"]
        return grpc_serving(f"127.0.0.1:{port}", modality.grpc_service)

    def stop_service(self, name: str) -> None:
        """Stops one service process (a modality's, or an instance started with start_service)."""
        proc = self.services.pop(name, None)
        if proc is not None:
            processes.stop(proc)

    def start_facade(self, timeout_s: float = 60.0) -> None:
        self.facade = self.spawn_facade(self.config.http_port, "facade", timeout_s)

    def spawn_facade(self, port: int, name: str, timeout_s: float = 60.0, **env: str):
        """A façade process on `port` in front of this stack's services (more replicas: other
        ports and names), with `env` over the stack's environment; returned once it answers. The
        caller stops it (processes.stop: SIGTERM, a graceful shutdown)."""
        env = _python_env(
            self.config,
            HUBMESH_HTTP_HOST="127.0.0.1",
            HUBMESH_HTTP_PORT=str(port),
            HUBMESH_API_KEY=self.config.api_key,
            HUBMESH_JWT_SECRET=self.config.jwt_secret,
            OTEL_SERVICE_NAME="hubmesh-facade",
            **{f"HUBMESH_{m.env_prefix}_TARGET": self.config.service_target(m.name) for m in self.modalities},
            # links to the text services: at least two on each when there are several (facade/text_streams.py)
            **({"HUBMESH_TEXT_LINKS": str(max(4, 2 * self.config.text_services))}
               if self.config.text_services > 1 and "HUBMESH_TEXT_LINKS" not in self.config.extra_env else {}),
            **env,
        )
        log_path = self.logs / f"{name}.log"
        proc = processes.spawn([sys.executable, "-m", "facade"], env, log_path, cwd=ROOT)
        auth = {"Authorization": f"Bearer {self.config.api_key}"}
        base = f"http://127.0.0.1:{port}"
        complete = len(self.modalities) == len(MODALITIES)  # /ready wants every service
        processes.wait_until(
            lambda: (not complete or processes.http_ok(f"{base}/ready")) and processes.http_ok(f"{base}/v1/models", auth),
            timeout_s, name, proc, log_path,
        )
        return proc

    def crash_triton(self, modality: str, replica: int = 0) -> None:
        """Kills a Triton hard (SIGKILL to its process group), as a crashed node would."""
        triton = self.replicas[modality][replica]
        os.killpg(triton.proc.pid, signal.SIGKILL)
        triton.proc.wait(timeout=10)
        triton.stop()  # removes the shared-memory regions it left

    def restart_triton(self, modality: str, replica: int = 0, timeout_s: float = 120.0) -> None:
        """Starts a crashed Triton again on the same ports; the service reconnects by itself."""
        triton = self.replicas[modality][replica]
        triton.start()
        triton.wait_ready(timeout_s)

    def triton_metric(self, name: str, modality: str = "text", replica: int | None = 0, **labels: str) -> float:
        """Sum of a Prometheus metric on a Triton's metrics port (the models' own counters live there);
        replica=None sums it over every replica of the modality."""
        replicas = self.replicas[modality] if replica is None else [self.replicas[modality][replica]]
        return sum(metric_sum(f"http://127.0.0.1:{t.metrics_port}/metrics", name, **labels) for t in replicas)

    def units(self) -> list[Unit]:
        """Every process of the stack as `make run` supervises it: Tritons and services are started
        again when they exit, the façade's exit ends the stack."""
        units = []
        for modality in self.modalities:
            for index, triton in enumerate(self.replicas[modality.name]):
                units.append(Unit(
                    name=triton_name(modality.name, index), proc=lambda t=triton: t.proc,
                    start=lambda t=triton: (t.start(), t.proc)[1], cleanup=triton.stop, ready=triton.is_ready,
                    log_path=triton.log_path,
                ))
        if self.bus is not None and self.bus.server is not None:
            server = self.bus.server
            units.append(Unit(name="nats", proc=lambda: server.proc, start=server.spawn, cleanup=lambda: None,
                              ready=server.is_ready, log_path=server.log_path))
        for modality in self.modalities:
            if modality.name == "text" and self.config.text_services > 1:
                for index in range(self.config.text_services):
                    name = self.text_instance(index)
                    units.append(Unit(
                        name=name, proc=lambda n=name: self.services.get(n),
                        start=lambda i=index: self.spawn_text_service(i),
                        cleanup=lambda n=name: self.stop_service(n),
                        ready=lambda i=index: self.service_ready("text", self.config.text_ports()[i][0]),
                        log_path=self.logs / f"{name}.log",
                    ))
                continue
            units.append(Unit(
                name=modality.name, proc=lambda m=modality: self.services.get(m.name),
                start=lambda m=modality: self.spawn_service(m),
                cleanup=lambda m=modality: self.stop_service(m.name), ready=lambda m=modality: self.service_ready(m),
                log_path=self.logs / f"{modality.name}.log",
            ))
        units.append(Unit(name="facade", proc=lambda: self.facade, start=self.start_facade, cleanup=lambda: None,
                          ready=lambda: True, log_path=self.logs / "facade.log", essential=True))
        return units

    def children(self) -> dict[str, object]:
        procs = {
            triton_name(name, index): t.proc
            for name, replicas in self.replicas.items() for index, t in enumerate(replicas)
        }
        bus = {"nats": self.bus.server.proc} if self.bus is not None and self.bus.server is not None else {}
        return {**procs, **self.services, **bus, "facade": self.facade}

    def stop(self) -> None:
        """Stops the façade, then the services, then the Tritons (all replicas at once); leaves no
        process and no /dev/shm region."""
        for proc in (self.facade, *self.services.values()):
            if proc is not None:
                processes.stop(proc)
        tritons = [t for replicas in self.replicas.values() for t in replicas]
        with ThreadPoolExecutor(max_workers=max(len(tritons), 1)) as pool:  # each may take its exit timeout
            for future in [pool.submit(t.stop) for t in tritons]:
                future.result()
        if self.bus is not None and self.bus.server is not None:
            self.bus.server.stop()

    def __enter__(self) -> LocalStack:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def describe(config: StackConfig) -> str:
    """What `make run` prints: where it is and how to call it."""
    model = "HuggingFaceTB/SmolLM2-135M-Instruct"
    lines = []
    for name, p in config.ports.items():
        replicas = config.triton_ports(name)
        where = [f"127.0.0.1:{r['triton_grpc']} (gRPC), :{r['triton_http']} (HTTP), :{r['triton_metrics']} (metrics)"
                 for r in replicas]
        if len(replicas) == 1:
            lines.append(f"  {name:<9}: gRPC service 127.0.0.1:{p['service']}; its Triton on {where[0]}")
        else:
            lines.append(f"  {name:<9}: gRPC service 127.0.0.1:{p['service']}; its {len(replicas)} Tritons:")
            lines += [f"{'':<13}replica {i}: {w}" for i, w in enumerate(where)]
    if config.text_services > 1:
        lines.append(f"  {'':<9}  {config.text_services} text services: "
                     + ", ".join(f"127.0.0.1:{listen}" for listen, _ in config.text_ports()))
    services = "\n".join(lines)
    env = {**os.environ, **config.extra_env}
    database = env.get("HUBMESH_DATABASE_URL") or "sqlite:///" + str(config.run_dir / "hubmesh.db")
    limits = (f"shared in Redis ({redact(env['HUBMESH_REDIS_URL'])})" if env.get("HUBMESH_REDIS_URL")
              else "counted in the façade process (HUBMESH_REDIS_URL=redis://... shares them between replicas)")
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "What is the capital of France?"}]})
    return f"""
hubmesh is running.
  Base URL : {config.base_url}
  API key  : {config.api_key}
  JWT      : {issue_local_token(config.jwt_secret)}
             (HS256, every scope, valid 30 days: either one works as the Bearer credential)
  Console  : {config.base_url.removesuffix('/v1')}/console
             (usage, keys, the mesh, a playground: sign in by pasting the API key or the JWT above)
{services}
  Logs     : {config.run_dir / 'logs'}
  Database : {redact(database)} (Responses store, usage ledger)
  Limits   : {limits}

curl {config.base_url}/chat/completions \\
  -H "Authorization: Bearer {config.api_key}" -H "Content-Type: application/json" \\
  -d '{body}'

curl {config.base_url}/embeddings -H "Authorization: Bearer {config.api_key}" -H "Content-Type: application/json" \\
  -d '{{"model": "sentence-transformers/all-MiniLM-L6-v2", "input": "The food was delicious"}}'

python -c 'from openai import OpenAI; c = OpenAI(base_url="{config.base_url}", api_key="{config.api_key}"); \
print(c.chat.completions.create(model="{model}", messages=[{{"role": "user", "content": "What is the capital of France?"}}]).choices[0].message.content)'

Ctrl-C stops everything.
"""
