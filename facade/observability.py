"""What operators see of the façade: request ids, one JSON log line per request, Prometheus metrics,
GenAI span attributes (the spans themselves come from OpenTelemetry's aiohttp instrumentation), and
what a platform team bills from: one usage ledger record per request on an API route
(facade/store/usage.py), with per-subject counters (facade/usage_metrics.py)."""

from __future__ import annotations

import asyncio
import logging
import re
import time

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, Gauge, generate_latest

from facade.call import Call, call_of, open_call
from facade.refusals import OTHER, REFUSED
from facade.route_index import Route
from facade.store.usage import USAGE_LEDGER, UsageRecord
from facade.usage_metrics import SUBJECT_METRICS
from services.common import metrics
from services.common.telemetry import set_genai_attributes

access_log = logging.getLogger("hubmesh.access")
_VALID_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def _endpoint(request: web.Request) -> str:
    route = request.match_info.route
    resource = route.resource if route is not None else None
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def access_middleware(request: web.Request, handler) -> web.StreamResponse:
    """Request id (an incoming X-Request-ID is kept), in-flight gauge, latency, status, and one log line."""
    incoming = request.headers.get("X-Request-ID", "")
    call = open_call(request, incoming if _VALID_ID.match(incoming) else None)
    endpoint = _endpoint(request)
    arrived_at = time.time()
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
        model, route, usage = call.model, call.route, call.usage
        if route is not None and route.operation is not None:
            set_genai_attributes(operation__name=route.operation, request__model=model or None)
        metrics.REQUESTS.labels(endpoint, model, str(status)).inc()
        if status == 429:
            REFUSED.labels(endpoint, model, call.refusal or OTHER).inc()
        metrics.LATENCY.labels(endpoint, model).observe(elapsed)
        access_log.info(
            "%s %s %s", request.method, endpoint, status,
            extra={
                "request_id": call.request_id, "subject": call.subject, "user": call.user,
                "model": model, "endpoint": endpoint, "status": status, "latency_ms": round(elapsed * 1000, 1),
                "prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            },
        )
        if route is not None and route.admitted and route.family is not None:
            _bill(request, call, route, arrived_at, status, elapsed)


def _bill(request: web.Request, call: Call, route: Route, arrived_at: float, status: int, elapsed_s: float) -> None:
    """The one usage record of a request on an API route (whatever its outcome; a stream's when it
    ended): into the ledger's buffer, and the per-subject counters."""
    usage = call.usage
    record = UsageRecord(
        created_at=arrived_at, subject=call.subject, user=call.user,
        model=call.model, endpoint=route.openapi_path, method=request.method, status=status,
        prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens,
        cached_tokens=usage.cached_tokens, images=usage.images, latency_ms=round(elapsed_s * 1000, 3),
        request_id=call.request_id,
    )
    ledger = request.app.get(USAGE_LEDGER)
    if ledger is not None:
        ledger.record(record)
    subjects = request.app.get(SUBJECT_METRICS)
    if subjects is not None:
        subjects.count(record)


async def add_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: every response, streams included, carries X-Request-ID."""
    response.headers["X-Request-ID"] = call_of(request).request_id


async def metrics_endpoint(request: web.Request) -> web.Response:
    """Prometheus exposition of this process's metrics."""
    ASYNCIO_TASKS.set(len(asyncio.all_tasks()))
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


ASYNCIO_TASKS = Gauge("hubmesh_asyncio_tasks", "asyncio tasks alive in the façade's event loop")
