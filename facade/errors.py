"""OpenAI-shaped errors, and the one table from gRPC status codes to HTTP statuses."""

from __future__ import annotations

import logging

import grpc
from aiohttp import web

from facade.api.response_bodies import ErrorResponse
from facade.jsonio import json_response
from facade.refusals import refusal_reason
from facade.route_index import route_of
from services.common.errors import reason_and_field

log = logging.getLogger(__name__)


class OpenAIError(Exception):
    """An error answered as {"error": {"message", "type", "param", "code"}}."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> ErrorResponse:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> web.Response:
        return json_response(self.body(), status=self.status, headers=self.headers)


def invalid(message: str, param: str | None = None, code: str | None = None) -> OpenAIError:
    """400 invalid_request_error."""
    return OpenAIError(400, message, param=param, code=code)


# Why a service call failed (hubmesh.common.v1.ErrorReason, the ErrorInfo of its status details)
# -> (HTTP status, OpenAI error type, OpenAI error code). The one table the façade reads.
REASONS: dict[str, tuple[int, str, str | None]] = {
    "INVALID_REQUEST": (400, "invalid_request_error", None),
    "CONTEXT_LENGTH_EXCEEDED": (400, "invalid_request_error", "context_length_exceeded"),
    "MODEL_NOT_FOUND": (404, "invalid_request_error", "model_not_found"),
    "IMAGE_NOT_FOUND": (404, "invalid_request_error", "image_not_found"),
    "AT_CAPACITY": (429, "rate_limit_error", "rate_limit_exceeded"),
    # the façade's limits gave the call too few tokens for its prompt (facade/limits/meter.py names
    # the limit that bound it)
    "TOKEN_BUDGET_EXCEEDED": (429, "insufficient_quota", "token_budget_exceeded"),
    "BACKEND_UNAVAILABLE": (503, "server_error", "service_unavailable"),
    "TIMEOUT": (504, "server_error", "timeout"),
    "CANCELLED": (503, "server_error", "cancelled"),
    "BACKEND_FAILED": (502, "server_error", "model_server_error"),
}

# A failure without details (the call never reached a service, or gRPC itself ended it):
# gRPC status -> HTTP status, OpenAI error type and code, and the message shown.
TRANSPORT: dict[grpc.StatusCode, tuple[int, str, str | None, str]] = {
    grpc.StatusCode.UNAVAILABLE: (503, "server_error", "service_unavailable",
                                  "The {service} service is unavailable; try again shortly."),
    grpc.StatusCode.DEADLINE_EXCEEDED: (504, "server_error", "timeout",
                                        "The {service} service did not answer in time."),
    grpc.StatusCode.CANCELLED: (503, "server_error", "cancelled", "The call to the {service} service was cancelled."),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (503, "server_error", "service_unavailable",
                                         "The {service} service cannot take the request now; try again shortly."),
}
FAILED = (500, "server_error", None, "The {service} service failed to handle the request.")


def from_grpc(err: grpc.aio.AioRpcError, service: str, default_param: str | None = None) -> OpenAIError:
    """The OpenAI error for a failed gRPC call to `service`: by the reason its status details give,
    else (the call never reached the service) by its status code alone."""
    reason, field = reason_and_field(err)
    mapped = REASONS.get(reason or "")
    if mapped is not None:
        status, type_, code = mapped
        message = err.details() or f"The {service} service failed."
        if status >= 500:
            log.warning("%s service: %s (%s)", service, reason, message)
        param = field or (default_param if status == 400 else None)
    else:
        status, type_, code, template = TRANSPORT.get(err.code(), FAILED)
        message, param = template.format(service=service), None
        log.error("%s service call failed: %s %s", service, err.code(), err.details())
    headers = {"Retry-After": "1"} if status in (429, 503) else None  # retry shortly
    return OpenAIError(status, message, type=type_, param=param, code=code, headers=headers)


def _from_http_exception(exc: web.HTTPException, request: web.Request) -> OpenAIError:
    if exc.status == 404:
        return OpenAIError(404, f"Unknown request URL: {request.method} {request.path}", code="unknown_url")
    if exc.status == 405:
        return OpenAIError(405, "Method not allowed for this URL.", code="method_not_allowed")
    if exc.status == 413:
        return OpenAIError(413, "The request body is too large.", code="request_too_large")
    return OpenAIError(exc.status, exc.reason or "HTTP error", type="invalid_request_error")


# Anthropic's error type by HTTP status, for the routes that speak its dialect (POST /v1/messages)
ANTHROPIC_TYPES: dict[int, str] = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
    405: "invalid_request_error", 413: "request_too_large", 429: "rate_limit_error", 500: "api_error",
    502: "api_error", 503: "overloaded_error", 504: "timeout_error", 529: "overloaded_error",
}


def anthropic_body(err: OpenAIError, request_id: str | None = None) -> dict:
    """Anthropic's error object: {"type": "error", "error": {"type", "message"}, "request_id"}."""
    kind = ANTHROPIC_TYPES.get(err.status, "api_error" if err.status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": kind, "message": err.message}, "request_id": request_id}


def _answer(err: OpenAIError, request: web.Request) -> web.Response:
    """The error in the dialect of the route it happened on (OpenAI's unless the route says otherwise);
    a 429 leaves its reason on the Call, for the access log's hubmesh_requests_refused_total."""
    from facade.call import call_of  # facade.call needs this module first

    if err.status == 429:
        call_of(request).refusal = refusal_reason(err)
    route = route_of(request)
    if route is not None and route.dialect == "anthropic":
        request_id = call_of(request).request_id
        return json_response(anthropic_body(err, request_id), status=err.status, headers=err.headers)
    return err.response()


@web.middleware
async def error_middleware(request: web.Request, handler) -> web.StreamResponse:
    """Every failure leaves as an error body in the route's dialect (OpenAI's, or Anthropic's);
    nothing internal leaks."""
    try:
        return await handler(request)
    except OpenAIError as err:
        return _answer(err, request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _answer(_from_http_exception(exc, request), request)
    except grpc.aio.AioRpcError as err:
        return _answer(from_grpc(err, "model"), request)
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return _answer(OpenAIError(500, "The server had an error while processing your request.", type="server_error"),
                       request)
