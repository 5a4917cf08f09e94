"""What operators see of the façade: request ids, one JSON log line per request, Prometheus metrics,
GenAI span attributes (the spans themselves come from OpenTelemetry's aiohttp instrumentation), and
what a platform team bills from: one usage ledger record per request on an API route
(facade/store/usage.py), with per-subject counters (facade/usage_metrics.py)."""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, Gauge, generate_latest

from facade.auth.middleware import charge_tokens, subject_of
from facade.routing import Route, route_of
from facade.store.usage import USAGE_LEDGER, UsageRecord
from facade.usage_metrics import SUBJECT_METRICS
from services.common import metrics
from services.common.telemetry import set_genai_attributes

access_log = logging.getLogger("hubmesh.access")
REQUEST_ID = web.RequestKey("request_id", str)
MODEL = web.RequestKey("model", str)
USER = web.RequestKey("user", str)  # OpenAI's `user` field (facade/clients.py caller() sets it)
_VALID_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


@dataclass(frozen=True, slots=True)
class RequestUsage:
    """What a request used, as record_usage() left it."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # of the prompt tokens, those the model server's prefix cache served
    images: int = 0  # images generated

    def plus(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int, images: int) -> RequestUsage:
        return RequestUsage(self.prompt_tokens + prompt_tokens, self.completion_tokens + completion_tokens,
                            self.cached_tokens + cached_tokens, self.images + images)


NO_USAGE = RequestUsage()
USAGE = web.RequestKey("usage", RequestUsage)


def record_usage(request: web.Request, prompt_tokens: int, completion_tokens: int = 0, *,
                 cached_tokens: int = 0, images: int = 0) -> None:
    """Tokens (and images) a request used: rate limits, metrics, spans, the access log and the usage
    ledger all read them from here. Each call adds to what the request used so far (completions
    with several prompts record each prompt's), so every reader sees the request's totals."""
    metrics.count_tokens(request.get(MODEL, ""), prompt_tokens, completion_tokens)  # this call's tokens
    usage = request.get(USAGE, NO_USAGE).plus(prompt_tokens, completion_tokens, cached_tokens, images)
    request[USAGE] = usage
    prompt_tokens, completion_tokens = usage.prompt_tokens, usage.completion_tokens  # the request's, from here on
    charge_tokens(request, prompt_tokens + completion_tokens)
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
        model = request.get(MODEL, "")
        route = route_of(request)
        if route is not None and route.operation is not None:
            set_genai_attributes(operation__name=route.operation, request__model=model or None)
        metrics.REQUESTS.labels(endpoint, model, str(status)).inc()
        metrics.LATENCY.labels(endpoint, model).observe(elapsed)
        usage = request.get(USAGE, NO_USAGE)
        access_log.info(
            "%s %s %s", request.method, endpoint, status,
            extra={
                "request_id": request[REQUEST_ID], "subject": subject_of(request), "user": request.get(USER, ""),
                "model": model, "endpoint": endpoint, "status": status, "latency_ms": round(elapsed * 1000, 1),
                "prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            },
        )
        if route is not None and route.admitted and route.family is not None:
            _bill(request, route, arrived_at, status, elapsed, usage)


def _bill(request: web.Request, route: Route, arrived_at: float, status: int, elapsed_s: float,
          usage: RequestUsage) -> None:
    """The one usage record of a request on an API route (whatever its outcome; a stream's when it
    ended): into the ledger's buffer, and the per-subject counters."""
    record = UsageRecord(
        created_at=arrived_at, subject=subject_of(request), user=request.get(USER, ""),
        model=request.get(MODEL, ""), endpoint=route.openapi_path, method=request.method, status=status,
        prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens,
        cached_tokens=usage.cached_tokens, images=usage.images, latency_ms=round(elapsed_s * 1000, 3),
        request_id=request[REQUEST_ID],
    )
    ledger = request.app.get(USAGE_LEDGER)
    if ledger is not None:
        ledger.record(record)
    subjects = request.app.get(SUBJECT_METRICS)
    if subjects is not None:
        subjects.count(record)


async def add_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: every response, streams included, carries X-Request-ID."""
    if REQUEST_ID in request:
        response.headers["X-Request-ID"] = request[REQUEST_ID]


async def metrics_endpoint(request: web.Request) -> web.Response:
    """Prometheus exposition of this process's metrics."""
    ASYNCIO_TASKS.set(len(asyncio.all_tasks()))
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


ASYNCIO_TASKS = Gauge("hubmesh_asyncio_tasks", "asyncio tasks alive in the façade's event loop")
