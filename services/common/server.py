"""Running a grpc.aio server with standard health checking and a graceful stop."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import grpc
from prometheus_client import start_http_server
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from services.common import event_loop, logs, telemetry
from services.common.channels import SERVER_OPTIONS
from services.common.internal_auth import RequireSecret
from services.common.interceptors import AdmissionInterceptor, MetricsInterceptor

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


@dataclass(frozen=True)
class ServeOptions:
    """What every service process shares: drain time, the façade's secret, the metrics port."""

    grace_s: float = 10.0
    # only callers presenting it (the façade) get past health checking; empty: no check
    internal_secret: str = ""
    # Prometheus /metrics; 0: none
    metrics_port: int = 9464
    # calls in flight before new ones get RESOURCE_EXHAUSTED
    max_in_flight: int = 64

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> ServeOptions:
        """HUBMESH_GRACE_S, HUBMESH_INTERNAL_SECRET, HUBMESH_METRICS_PORT, HUBMESH_MAX_IN_FLIGHT."""
        return cls(
            grace_s=float(env.get("HUBMESH_GRACE_S", cls.grace_s)),
            internal_secret=env.get("HUBMESH_INTERNAL_SECRET", ""),
            metrics_port=int(env.get("HUBMESH_METRICS_PORT", cls.metrics_port)),
            max_in_flight=int(env.get("HUBMESH_MAX_IN_FLIGHT", cls.max_in_flight)),
        )


def run_service(component: str, main: Callable[[ServeOptions], Awaitable[None]]) -> None:
    """A service process: JSON logs, tracing (when OTEL_* says so), then main(options) until stopped."""
    logs.configure(component)
    provider = telemetry.configure_tracing(f"hubmesh-{component}")
    if provider is not None:
        telemetry.instrument_grpc_clients()  # spans around Triton calls, traceparent sent to Triton
    try:
        event_loop.run(main(ServeOptions.from_env()))
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
) -> None:
    """Serves until SIGTERM/SIGINT; then NOT_SERVING, drain for `options.grace_s`, stop."""
    if options.metrics_port:
        start_http_server(options.metrics_port, addr=listen.rsplit(":", 1)[0].strip("[]") or "0.0.0.0")
    interceptors = telemetry.server_interceptors() if telemetry.tracing_enabled() else []
    if options.internal_secret:
        interceptors.append(RequireSecret(options.internal_secret))
    interceptors += [MetricsInterceptor(), AdmissionInterceptor(options.max_in_flight)]
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
    await server.stop(grace_s)
    if on_stop is not None:
        await on_stop()
    log.info("stopped")
