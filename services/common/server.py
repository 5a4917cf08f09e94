"""Running a grpc.aio server with standard health checking and a graceful stop."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from services.common.internal_auth import RequireSecret

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
            for name in ["", *service_names]:
                await health_servicer.set(name, status)
            last = status
        try:
            await asyncio.wait_for(stopping.wait(), timeout=interval_s)
        except TimeoutError:
            pass


async def serve(
    listen: str,
    register: Callable[[grpc.aio.Server], None],
    service_names: list[str],
    is_ready: Callable[[], Awaitable[bool]],
    grace_s: float = 10.0,
    on_stop: Callable[[], Awaitable[None]] | None = None,
    internal_secret: str = "",
) -> None:
    """Serves until SIGTERM/SIGINT; then NOT_SERVING, drain for `grace_s`, stop.

    With `internal_secret`, only callers presenting it (the façade) get past health checking.
    """
    server = grpc.aio.server(
        interceptors=[RequireSecret(internal_secret)] if internal_secret else None,
        options=[
            ("grpc.keepalive_time_ms", 20_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
        ]
    )
    register(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ["", *service_names]:
        await health_servicer.set(name, NOT_SERVING)
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
    for name in ["", *service_names]:
        await health_servicer.set(name, NOT_SERVING)
    await server.stop(grace_s)
    if on_stop is not None:
        await on_stop()
    log.info("stopped")
