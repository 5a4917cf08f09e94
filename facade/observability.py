"""What operators see of the façade: request ids, one JSON log line per request, Prometheus metrics,
GenAI span attributes (the spans themselves come from OpenTelemetry's aiohttp instrumentation)."""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, Gauge, generate_latest

from facade.auth.middleware import charge_tokens, subject_of
from facade.routing import route_of
from services.common import metrics
from services.common.telemetry import set_genai_attributes

access_log = logging.getLogger("hubmesh.access")
REQUEST_ID = web.RequestKey("request_id", str)
MODEL = web.RequestKey("model", str)
USAGE = web.RequestKey("usage", tuple)
_VALID_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def record_usage(request: web.Request, prompt_tokens: int, completion_tokens: int = 0) -> None:
    """Tokens a request used: rate limits, metrics, spans and the access log all read them from here."""
    request[USAGE] = (prompt_tokens, completion_tokens)
    charge_tokens(request, prompt_tokens + completion_tokens)
    metrics.count_tokens(request.get(MODEL, ""), prompt_tokens, completion_tokens)
    set_genai_attributes(usage__input_tokens=prompt_tokens, usage__output_tokens=completion_tokens or None)


def _endpoint(request: web.Request) -> str:
    route = request.match_info.route
    resource = route.resource if route is not None else None
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def access_middleware(request: web.Request, handler) -> web.StreamResponse:
    """Request id (an incoming X-Request-ID is kept), in-flight gauge, latency, status, and one log line."""
    incoming = request.headers.get("X-Request-ID", "")
    request[REQUEST_ID] = incoming if _VALID_ID.match(incoming) else uuid.uuid4().hex
    endpoint = _endpoint(request)
    start = time.perf_counter()
    status = 500
    in_flight = metrics.IN_FLIGHT.labels(endpoint)
    in_flight.inc()
    try:
        response = await handler(request)
        status = response.status
        return response
    except asyncio.CancelledError:
        status = 499  # the client went away
        raise
    finally:
        elapsed = time.perf_counter() - start
        in_flight.dec()
        model = request.get(MODEL, "")
        route = route_of(request)
        if route is not None and route.operation is not None:
            set_genai_attributes(operation__name=route.operation, request__model=model or None)
        metrics.REQUESTS.labels(endpoint, model, str(status)).inc()
        metrics.LATENCY.labels(endpoint, model).observe(elapsed)
        prompt_tokens, completion_tokens = request.get(USAGE, (0, 0))
        access_log.info(
            "%s %s %s", request.method, endpoint, status,
            extra={
                "request_id": request[REQUEST_ID], "subject": subject_of(request), "model": model,
                "endpoint": endpoint, "status": status, "latency_ms": round(elapsed * 1000, 1),
                "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            },
        )


async def add_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: every response, streams included, carries X-Request-ID."""
    if REQUEST_ID in request:
        response.headers["X-Request-ID"] = request[REQUEST_ID]


async def metrics_endpoint(request: web.Request) -> web.Response:
    """Prometheus exposition of this process's metrics."""
    ASYNCIO_TASKS.set(len(asyncio.all_tasks()))
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


ASYNCIO_TASKS = Gauge("hubmesh_asyncio_tasks", "asyncio tasks alive in the façade's event loop")
