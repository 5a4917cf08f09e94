"""OpenAI-shaped errors, and the one table from gRPC status codes to HTTP statuses."""

from __future__ import annotations

import logging

import grpc
from aiohttp import web

from facade.jsonio import json_response
from services.common.errors import PARAM_METADATA_KEY

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

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> web.Response:
        return json_response(self.body(), status=self.status, headers=self.headers)


def invalid(message: str, param: str | None = None, code: str | None = None) -> OpenAIError:
    """400 invalid_request_error."""
    return OpenAIError(400, message, param=param, code=code)


# gRPC status -> (HTTP status, OpenAI error type, OpenAI error code)
GRPC_TO_HTTP: dict[grpc.StatusCode, tuple[int, str, str | None]] = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "invalid_request_error", None),
    grpc.StatusCode.FAILED_PRECONDITION: (400, "invalid_request_error", None),
    grpc.StatusCode.OUT_OF_RANGE: (400, "invalid_request_error", None),
    grpc.StatusCode.NOT_FOUND: (404, "invalid_request_error", "model_not_found"),
    grpc.StatusCode.UNAUTHENTICATED: (401, "authentication_error", "invalid_api_key"),
    grpc.StatusCode.PERMISSION_DENIED: (403, "permission_error", None),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "rate_limit_error", "rate_limit_exceeded"),
    grpc.StatusCode.UNIMPLEMENTED: (501, "server_error", "not_implemented"),
    grpc.StatusCode.UNAVAILABLE: (503, "server_error", "service_unavailable"),
    grpc.StatusCode.CANCELLED: (503, "server_error", "cancelled"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (504, "server_error", "timeout"),
}


def from_grpc(err: grpc.aio.AioRpcError, service: str, default_param: str | None = None) -> OpenAIError:
    """The OpenAI error for a failed gRPC call to `service`."""
    code = err.code()
    status, type_, error_code = GRPC_TO_HTTP.get(code, (500, "server_error", None))
    details = err.details() or ""
    if code == grpc.StatusCode.UNAVAILABLE and (
        "connect" in details.lower() or "unavailable" == details.lower() or not details
    ):
        message = f"The {service} service is unavailable; try again shortly."
    elif status >= 500 and code not in GRPC_TO_HTTP:
        log.error("%s service failed: %s %s", service, code, details)
        message = f"The {service} service failed to handle the request."
    else:
        message = details or f"The {service} service answered {code.name}."
    headers = {"Retry-After": "1"} if status == 429 else None  # a service at capacity: retry shortly
    param = "model" if code == grpc.StatusCode.NOT_FOUND else None
    if status == 400:
        trailing = dict(err.trailing_metadata() or ())
        param = trailing.get(PARAM_METADATA_KEY) or default_param
    return OpenAIError(status, message, type=type_, param=param, code=error_code, headers=headers)


def _from_http_exception(exc: web.HTTPException, request: web.Request) -> OpenAIError:
    if exc.status == 404:
        return OpenAIError(404, f"Unknown request URL: {request.method} {request.path}", code="unknown_url")
    if exc.status == 405:
        return OpenAIError(405, "Method not allowed for this URL.", code="method_not_allowed")
    if exc.status == 413:
        return OpenAIError(413, "The request body is too large.", code="request_too_large")
    return OpenAIError(exc.status, exc.reason or "HTTP error", type="invalid_request_error")


@web.middleware
async def error_middleware(request: web.Request, handler) -> web.StreamResponse:
    """Every failure leaves as an OpenAI error body; nothing internal leaks."""
    try:
        return await handler(request)
    except OpenAIError as err:
        return err.response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _from_http_exception(exc, request).response()
    except grpc.aio.AioRpcError as err:
        return from_grpc(err, "model").response()
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return OpenAIError(500, "The server had an error while processing your request.", type="server_error").response()
