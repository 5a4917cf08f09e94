"""GET /health and GET /ready: the probes (public, never admission-controlled)."""

from __future__ import annotations

import asyncio

import grpc
from aiohttp import web
from grpc_health.v1 import health_pb2

from facade.api.response_bodies import Health, Readiness
from facade.clients import CLIENTS, SERVICE_NAMES
from facade.jsonio import json_response


async def health(request: web.Request) -> web.Response:
    """Alive (no dependency checked)."""
    alive: Health = {"status": "ok"}
    return json_response(alive)


async def ready(request: web.Request) -> web.Response:
    """Ready when every service reports SERVING on gRPC health checking (what Kubernetes probes)."""
    health = request.app[CLIENTS].health

    async def status(name: str) -> str:
        try:
            reply = await health[name].Check(health_pb2.HealthCheckRequest(service=SERVICE_NAMES[name]), timeout=2.0)
        except grpc.aio.AioRpcError as err:
            return err.code().name
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    names = list(SERVICE_NAMES)
    statuses = dict(zip(names, await asyncio.gather(*(status(n) for n in names)), strict=True))
    ok = all(s == "SERVING" for s in statuses.values())
    readiness: Readiness = {"status": "ready" if ok else "not ready", "services": statuses}
    return json_response(readiness, status=200 if ok else 503)
