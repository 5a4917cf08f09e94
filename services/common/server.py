"""Running a grpc.aio server with standard health checking and a graceful stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Literal, Protocol, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import start_http_server
from pydantic import Field, NonNegativeInt, PositiveInt
from pydantic_settings import SettingsConfigDict

from services.common import event_loop, logs, telemetry
from services.common.catalog import CatalogEntry, CatalogError
from services.common.grpc_options import SERVER_OPTIONS
from services.common.interceptors import AdmissionInterceptor, MetricsInterceptor
from services.common.internal_auth import RequireSecret
from services.common.mesh import add_mesh
from services.common.replicas import ReplicaSet, parse_targets
from services.common.settings import EnvSettings, NonNegativeSeconds, Port, ServiceSettings, settings_or_exit

log = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def watch_readiness(
    health_servicer: health.aio.HealthServicer,
    service_names: list[str],
    is_ready: Callable[[], Awaitable[bool]],
    stopping: asyncio.Event,
    interval_s: float = 1.0,
) -> None:
    """Keeps the health status of `service_names` (and the server, "") in step with `is_ready`."""
    last = None
    while not stopping.is_set():
        try:
            ready = await is_ready()
        except Exception:  # a failing probe means "not ready", never a crash
            log.exception("readiness probe failed")
            ready = False
        status = SERVING if ready else NOT_SERVING
        if status != last:
            log.info("health: %s", "SERVING" if ready else "NOT_SERVING")
            await _set_health(health_servicer, service_names, status)
            last = status
        try:
            await asyncio.wait_for(stopping.wait(), timeout=interval_s)
        except TimeoutError:
            pass


async def _set_health(health_servicer: health.aio.HealthServicer, service_names: list[str], status) -> None:
    """The status of every service name and of the server as a whole ("")."""
    for name in ["", *service_names]:
        await health_servicer.set(name, status)


class ServeOptions(EnvSettings):
    """What every service process shares: drain time, the façade's secret, the metrics port.

    HUBMESH_GRACE_S, HUBMESH_INTERNAL_SECRET, HUBMESH_METRICS_PORT, HUBMESH_MAX_IN_FLIGHT, and how calls
    are admitted at that limit: HUBMESH_ADMISSION, HUBMESH_ADMISSION_WAIT_S, HUBMESH_ADMISSION_BURST
    (services/common/fair_share.py).
    """

    model_config = SettingsConfigDict(env_prefix="HUBMESH_")

    grace_s: NonNegativeSeconds = 10.0
    # only callers presenting it (the façade) get past health checking; empty: no check
    internal_secret: str = Field("", repr=False)
    # Prometheus /metrics; 0: none
    metrics_port: Port = 9464
    # calls in flight before new ones get RESOURCE_EXHAUSTED
    max_in_flight: PositiveInt = 64
    # at that limit: `fair` (the limit divided among the subjects asking; a subject below its share
    # starts or waits, one at or over it is refused) or `first_come` (everyone refused at once)
    admission: Literal["fair", "first_come"] = "fair"
    # fair: how long a call of a subject below its share may wait for a slot (0: never waits)
    admission_wait_s: NonNegativeSeconds = 0.5
    # fair: slots above max_in_flight a subject below its share may take at once (repaid by the
    # subjects over theirs); unset: max_in_flight / 4, rounded up
    admission_burst: NonNegativeInt | None = None

    @property
    def burst(self) -> int:
        return -(-self.max_in_flight // 4) if self.admission_burst is None else self.admission_burst


def run_service(
    component: str, main: Callable[[ServeOptions], Coroutine[Any, Any, None]], options: ServeOptions | None = None
) -> None:
    """A service process: JSON logs, tracing (when OTEL_* says so), then main(options) until stopped.

    `options` default to the environment's (a bad value exits with one line naming it)."""
    if options is None:
        options = settings_or_exit(ServeOptions)
    logs.configure(component)
    provider = telemetry.configure_tracing(f"hubmesh-{component}")
    if provider is not None:
        telemetry.instrument_grpc_clients()  # spans around Triton calls, traceparent sent to Triton
    try:
        event_loop.run(main(options))
    finally:
        if provider is not None:
            provider.shutdown()  # flush the last spans


async def serve(
    listen: str,
    register: Callable[[grpc.aio.Server], None],
    service_names: list[str],
    is_ready: Callable[[], Awaitable[bool]],
    options: ServeOptions,
    on_stop: Callable[[], Awaitable[None]] | None = None,
    on_drain: Callable[[], None] | None = None,
) -> None:
    """Serves until SIGTERM/SIGINT; then NOT_SERVING, `on_drain()` (multiplexing callers are told to
    open no more streams here), drain for `options.grace_s`, stop."""
    if options.metrics_port:
        start_http_server(options.metrics_port, addr=listen.rsplit(":", 1)[0].strip("[]") or "0.0.0.0")
    interceptors = telemetry.server_interceptors() if telemetry.tracing_enabled() else []
    if options.internal_secret:
        interceptors.append(RequireSecret(options.internal_secret))
    interceptors += [MetricsInterceptor(), AdmissionInterceptor(
        options.max_in_flight, options.admission, options.admission_wait_s, options.burst)]
    grace_s = options.grace_s
    server = grpc.aio.server(
        interceptors=interceptors,
        options=SERVER_OPTIONS
    )
    register(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    await _set_health(health_servicer, service_names, NOT_SERVING)
    port = server.add_insecure_port(listen)
    if port == 0:
        raise RuntimeError(f"cannot listen on {listen}")
    await server.start()
    log.info("listening on %s", listen)

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    watcher = asyncio.create_task(watch_readiness(health_servicer, service_names, is_ready, stopping))
    await stopping.wait()

    log.info("stopping: NOT_SERVING, draining for up to %.0f s", grace_s)
    await watcher
    await _set_health(health_servicer, service_names, NOT_SERVING)
    if on_drain is not None:
        on_drain()
    await server.stop(grace_s)
    if on_stop is not None:
        await on_stop()
    log.info("stopped")


SettingsT = TypeVar("SettingsT", bound=ServiceSettings)
BackendT = TypeVar("BackendT", bound="Closable")
ServicerT = TypeVar("ServicerT", bound="Servicer")
EntryT = TypeVar("EntryT", bound=CatalogEntry)


class Closable(Protocol):
    """A Triton backend: its channel closes when the service stops."""

    async def close(self) -> None: ...


class Servicer(Protocol):
    """A modality's servicer: SERVING while is_ready() says so."""

    async def is_ready(self) -> bool: ...


@dataclass
class Wiring(Generic[SettingsT, BackendT, EntryT]):
    """What a modality's servicer is built from (see run_modality_service)."""

    settings: SettingsT
    catalog: Mapping[str, EntryT]
    backend: BackendT
    tasks: list[asyncio.Task] = field(default_factory=list)

    def background(self, work: Coroutine[Any, Any, None]) -> None:
        """Runs `work` beside the server until the server has stopped (then it is cancelled)."""
        self.tasks.append(asyncio.create_task(work))


def run_modality_service(
    component: str,
    settings_type: type[SettingsT],
    load_catalog: Callable[[Path], Mapping[str, EntryT]],
    make_backend: Callable[[ReplicaSet, SettingsT], BackendT],
    make_servicer: Callable[[Wiring[SettingsT, BackendT, EntryT]], ServicerT],
    add_to_server: Callable[[ServicerT, grpc.aio.Server], None],
    service_name: str,
    env: Mapping[str, str] = os.environ,
) -> None:
    """A modality service's entry point, from start-up to stop.

    Parses ServeOptions and `settings_type` from `env` and loads the catalogue (a bad value or a bad
    catalogue exits with status 1 and one line saying what is wrong), then: logs and tracing
    (run_service), the Triton replicas of `settings.triton_url` (kept current beside the server),
    `make_backend(replicas, settings)`, the servicer `make_servicer` builds, served under the health
    name `service_name` until SIGTERM; then background work is cancelled and the backend closed.
    """
    options = settings_or_exit(ServeOptions, env)
    settings = settings_or_exit(settings_type, env)
    try:
        catalog = load_catalog(settings.catalog)
    except CatalogError as err:
        print(f"bad catalogue: {err}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None

    async def main(options: ServeOptions) -> None:
        replicas = ReplicaSet(
            parse_targets(settings.triton_url, settings.triton_metrics_port),
            models=[entry.triton_model for entry in catalog.values()],
            **settings.replica_options(),
        )
        backend = make_backend(replicas, settings)
        wiring = Wiring(settings, catalog, backend)
        wiring.background(replicas.run())
        try:
            servicer = make_servicer(wiring)
            log.info("models: %s; Triton replicas: %s", ", ".join(catalog), settings.triton_url)

            def register(server: grpc.aio.Server) -> None:  # the modality's servicer, and Mesh (its replicas)
                add_to_server(servicer, server)
                add_mesh(server, component, replicas, settings.listen)

            await serve(
                settings.listen,
                register,
                [service_name],
                servicer.is_ready,
                options,
                on_drain=getattr(servicer, "drain", None),
            )
        finally:
            for task in wiring.tasks:
                task.cancel()
            for task in wiring.tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await backend.close()

    run_service(component, main, options)
