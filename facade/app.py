"""create_app(settings): the OpenAI REST/SSE surface in front of the gRPC services."""

from __future__ import annotations

from aiohttp import web
from opentelemetry.instrumentation.aiohttp_server import AioHttpServerInstrumentor

from facade import jsonio
from facade.aliases import ALIASES, Aliases, add_model_header, check_catalogues_ctx
from facade.api.images import handler as images
from facade.api.keys.manage import MAX_KEYS_PER_OWNER
from facade.auth.hub_keys import KEY_REGISTRY, KeyRegistry, registry_ctx
from facade.auth.middleware import VERIFIER, auth_middleware, jwks_refresher
from facade.auth.tokens import JwtSettings, TokenVerifier
from facade.capacity import IN_FLIGHT, InFlight, capacity_middleware
from facade.clients import clients_ctx
from facade.dependencies import dependencies_ctx
from facade.errors import error_middleware
from facade.limits.headers import add_rate_limit_headers
from facade.limits.middleware import METERING, limits_middleware
from facade.limits.setup import metering_ctx, metering_from
from facade.observability import access_middleware, add_request_id
from facade.openapi import OPENAPI, build_document
from facade.route_index import add_routes
from facade.routes import ROUTES
from facade.settings import Settings
from facade.signed_urls import URL_SIGNER, UrlSigner
from facade.sse import SSE_PING_S
from facade.store import RESPONSES_STORE, store_ctx
from facade.store.usage import usage_ctx
from facade.usage_metrics import SUBJECT_METRICS, SubjectMetrics
from services.common.telemetry import tracing_enabled


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
            capacity_middleware,
            auth_middleware(allow=images.signed_download),
            limits_middleware,
        ],
        client_max_size=settings.max_body_bytes,
    )
    app[SSE_PING_S] = settings.sse_ping_s
    app[IN_FLIGHT] = InFlight(settings.max_in_flight)
    app[VERIFIER] = TokenVerifier(
        settings.api_keys,
        JwtSettings(
            secret=settings.jwt_secret,
            jwks=settings.jwks,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            leeway_s=settings.jwt_leeway_s,
            default_scopes=settings.jwt_default_scopes,
        ),
    )
    app[METERING] = metering_from(settings)
    app.cleanup_ctx.append(metering_ctx)
    app.cleanup_ctx.append(jwks_refresher(settings.jwks_refresh_s))
    app[URL_SIGNER] = UrlSigner(settings.url_signing_key)
    app[images.PUBLIC_URL] = settings.public_url
    app.cleanup_ctx.append(clients_ctx(settings))
    # model aliases; those that shadow a model a service lists are dropped (and logged) once it answers
    app[ALIASES] = Aliases(settings.model_aliases, settings.model_alias_cooldown_s)
    app.cleanup_ctx.append(check_catalogues_ctx())
    # the Responses API's database: opened and migrated at start-up, swept while the app runs
    app.cleanup_ctx.append(store_ctx(settings.database_url, settings.responses_retention_s,
                                     settings.responses_sweep_interval_s, settings.database_pool_size))
    # the usage ledger, in that database: after store_ctx, so that its last write (at shutdown, once
    # every request has ended) comes before the database closes
    app.cleanup_ctx.append(usage_ctx(settings.usage_flush_interval_s, settings.usage_buffer_records))
    # the keys the hub issues, from that database too, kept in step with the other replicas over Redis
    registry = app[KEY_REGISTRY] = KeyRegistry(
        lambda: app[RESPONSES_STORE].database(), settings.redis_url, settings.limits_fail_mode, settings.keys_refresh_s)
    app[VERIFIER].keys = registry
    app[MAX_KEYS_PER_OWNER] = settings.keys_max_per_owner
    app.cleanup_ctx.append(registry_ctx(registry))
    app.cleanup_ctx.append(dependencies_ctx())  # hubmesh_dependency_up: the database, Redis
    app[SUBJECT_METRICS] = SubjectMetrics(settings.usage_metric_subjects)
    app.on_response_prepare.append(add_request_id)
    app.on_response_prepare.append(add_rate_limit_headers)  # x-ratelimit-*, Retry-After on 429
    app.on_response_prepare.append(add_model_header)  # x-hubmesh-model: the model an alias was served by
    app[OPENAPI] = jsonio.dumps(build_document(ROUTES))
    add_routes(app, ROUTES)
    return app
