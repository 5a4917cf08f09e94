"""Domain errors of the services and the one table that maps them to gRPC status codes."""

from __future__ import annotations

import grpc


class ServiceError(Exception):
    """An error a caller can act on; its message is safe to return to the caller."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidArgument(ServiceError):
    """The request cannot be served as written (bad field, prompt too long, ...)."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class ModelNotFound(ServiceError):
    """The requested model is not served here."""

    code = grpc.StatusCode.NOT_FOUND


class Overloaded(ServiceError):
    """Too much work in flight; retry later."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class BackendUnavailable(ServiceError):
    """The model server is down or the model is not ready."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(ServiceError):
    """The request ran out of time."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Cancelled(ServiceError):
    """The work was cancelled before it finished."""

    code = grpc.StatusCode.CANCELLED
