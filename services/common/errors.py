"""Domain errors of the services and the one table that maps them to gRPC status codes.

A service reports the field at fault in the trailing metadata key PARAM_METADATA_KEY, so the
façade can name OpenAI's `param` without knowing each service's rules.
"""

from __future__ import annotations

import grpc

PARAM_METADATA_KEY = "hubmesh-param"


class ServiceError(Exception):
    """An error a caller can act on; its message is safe to return to the caller."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param  # the request field at fault, in OpenAI's naming, when known


class InvalidArgument(ServiceError):
    """The request cannot be served as written (bad field, prompt too long, ...)."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class ModelNotFound(ServiceError):
    """The requested model is not served here."""

    code = grpc.StatusCode.NOT_FOUND


class BackendUnavailable(ServiceError):
    """The model server is down or the model is not ready."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(ServiceError):
    """The request ran out of time."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Cancelled(ServiceError):
    """The work was cancelled before it finished."""

    code = grpc.StatusCode.CANCELLED
