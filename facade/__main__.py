"""Entry point: `python -m facade` serves the OpenAI API on HUBMESH_HTTP_HOST:HUBMESH_HTTP_PORT."""

import asyncio
import logging
import signal

from aiohttp import web

from facade.app import create_app
from facade.settings import Settings
from services.common import logs, telemetry

log = logging.getLogger("facade")


async def main(settings: Settings) -> None:
    if not (settings.api_keys or settings.jwt_secret or settings.jwks):
        raise SystemExit("configure HUBMESH_API_KEY, HUBMESH_JWT_SECRET or HUBMESH_JWKS (make run generates a key and a secret)")
    # handler_cancellation: a client that goes away cancels its handler, hence its gRPC call
    runner = web.AppRunner(create_app(settings), handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, shutdown_timeout=10.0)
    await site.start()
    log.info("OpenAI API on http://%s:%d/v1", settings.host, settings.port)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    log.info("stopping")
    await runner.cleanup()


if __name__ == "__main__":
    logs.configure("facade")
    provider = telemetry.configure_tracing("hubmesh-facade")
    try:
        asyncio.run(main(Settings.from_env()))
    finally:
        if provider is not None:
            provider.shutdown()  # flush the last spans
