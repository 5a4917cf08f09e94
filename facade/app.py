"""create_app(settings): the OpenAI REST/SSE surface in front of the gRPC services."""

from __future__ import annotations

import asyncio

import grpc
from aiohttp import web
from grpc_health.v1 import health_pb2
from opentelemetry.instrumentation.aiohttp_server import AioHttpServerInstrumentor

from facade.admission import GRACE_OVER, IN_FLIGHT, InFlight, admission_middleware
from facade.api import chat, completions, embeddings, images, models
from facade.auth.limits import RateLimiter
from facade.auth.middleware import LIMITER, VERIFIER, auth_middleware, jwks_refresher
from facade.auth.tokens import JwtSettings, TokenVerifier
from facade.clients import CLIENTS, SERVICE_NAMES, clients_ctx
from facade.errors import error_middleware
from facade import jsonio
from facade.jsonio import json_response
from facade.observability import access_middleware, add_request_id, metrics_endpoint
from facade.openapi import OPENAPI, build_document, openapi
from facade.settings import Settings
from facade.signed_urls import URL_SIGNER, UrlSigner
from facade.sse import SSE_PING_S
from services.common.telemetry import tracing_enabled


async def health(request: web.Request) -> web.Response:
    """Alive (no dependency checked)."""
    return json_response({"status": "ok"})


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
    return json_response({"status": "ready" if ok else "not ready", "services": statuses}, status=200 if ok else 503)


def create_app(settings: Settings) -> web.Application:
    instrumentor = AioHttpServerInstrumentor()
    if tracing_enabled() and not instrumentor.is_instrumented_by_opentelemetry:
        # puts OpenTelemetry's middleware first in every web.Application: one server span per request,
        # continuing an incoming traceparent
        instrumentor.instrument()
    app = web.Application(
        middlewares=[
            access_middleware,
            error_middleware,
            admission_middleware,
            auth_middleware(allow=images.signed_download),
        ],
        client_max_size=settings.max_body_bytes,
    )
    app[SSE_PING_S] = settings.sse_ping_s
    app[IN_FLIGHT] = InFlight(settings.max_in_flight)
    app[GRACE_OVER] = asyncio.Event()
    app[VERIFIER] = TokenVerifier(
        settings.api_keys,
        JwtSettings(
            secret=settings.jwt_secret,
            jwks=settings.jwks,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            leeway_s=settings.jwt_leeway_s,
        ),
    )
    app[LIMITER] = RateLimiter(settings.rate_limit_rpm, settings.rate_limit_tpm)
    app.cleanup_ctx.append(jwks_refresher(settings.jwks_refresh_s))
    app[URL_SIGNER] = UrlSigner(settings.url_signing_key)
    app[images.PUBLIC_URL] = settings.public_url
    app.cleanup_ctx.append(clients_ctx(settings))
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/metrics", metrics_endpoint)
    app.on_response_prepare.append(add_request_id)
    app[OPENAPI] = jsonio.dumps(build_document())
    app.router.add_get("/openapi.json", openapi)
    app.router.add_get("/v1/models", models.list_models)
    app.router.add_get("/v1/models/{model:.+}", models.retrieve_model)
    app.router.add_post("/v1/chat/completions", chat.create_chat_completion)
    app.router.add_post("/v1/completions", completions.create_completion)
    app.router.add_post("/v1/embeddings", embeddings.create_embeddings)
    app.router.add_post("/v1/images/generations", images.create_image)
    app.router.add_get(images.FILES_PREFIX + "{image_id}", images.download_image)
    return app
