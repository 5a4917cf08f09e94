"""Entry point: `python -m facade` serves the OpenAI API on HUBMESH_HTTP_HOST:HUBMESH_HTTP_PORT."""

import asyncio
import contextlib
import logging
import signal

from aiohttp import web

from facade.app import create_app
from facade.capacity import IN_FLIGHT
from facade.settings import Settings
from services.common import event_loop, logs, telemetry
from services.common.settings import settings_or_exit

log = logging.getLogger("facade")


async def main(settings: Settings) -> None:
    if not (settings.api_keys or settings.jwt_secret or settings.jwks):
        raise SystemExit("configure HUBMESH_API_KEY, HUBMESH_JWT_SECRET or HUBMESH_JWKS (make run generates a key and a secret)")
    # handler_cancellation: a client that goes away cancels its handler, hence its gRPC call
    app = create_app(settings)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=5.0)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port)
    await site.start()
    log.info("OpenAI API on http://%s:%d/v1", settings.host, settings.port)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    await drain(app, site, settings.grace_s)
    await runner.cleanup()


async def drain(app: web.Application, site: web.TCPSite, grace_s: float) -> None:
    """Graceful stop: no new connections; in-flight requests and streams get `grace_s` to finish;
    streams still open then end with a final error event (never a silent cut)."""
    await site.stop()
    in_flight = app[IN_FLIGHT]
    log.info("stopping: %d requests in flight, waiting up to %.0f s", in_flight.count, grace_s)
    try:
        await asyncio.wait_for(in_flight.drained.wait(), timeout=grace_s)
    except TimeoutError:
        log.warning("grace period over: ending %d requests early", in_flight.count)
        in_flight.interrupt()  # streams get a final error event, the others a 503
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(in_flight.drained.wait(), timeout=5.0)


if __name__ == "__main__":
    settings = settings_or_exit(Settings)  # a bad value: one line naming the variable, exit status 1
    logs.configure("facade")
    provider = telemetry.configure_tracing("hubmesh-facade")
    try:
        event_loop.run(main(settings))
    finally:
        if provider is not None:
            provider.shutdown()  # flush the last spans
