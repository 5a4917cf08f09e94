"""Domain errors of the services, and the one way each leaves a service.

A failed call carries a gRPC status code and, in its `grpc-status-details-bin` trailer, a
google.rpc.Status (grpcio-status) whose details say *why* — an ErrorInfo whose reason is one of
hubmesh.common.v1.ErrorReason — and *which field*, a BadRequest.FieldViolation whose field is
the request field at fault in OpenAI's naming (`messages`, `tools[0].function.parameters`).
The façade reads those two and nothing else; the message is only shown to the caller.
"""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from hubmesh.common.v1 import common_pb2 as common_pb

DOMAIN = "hubmesh"
# the trailer that carries a failed call's google.rpc.Status (grpcio-status reads and writes it)
STATUS_DETAILS_KEY = "grpc-status-details-bin"
# A message travels three times in a status's trailers (grpc-message, and the Status message and field
# violation inside grpc-status-details-bin), percent- or base64-encoded; bounded, it stays far below
# gRPC's 8 KiB metadata limit whatever the caller sent (a 20 000-character model id, say).
MAX_MESSAGE_CHARS = 400


def bounded(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """`text`, cut to `limit` characters (with an ellipsis) when longer."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def status_of(code: grpc.StatusCode, message: str, reason: int, field: str | None = None) -> grpc.Status:
    """A gRPC status with its google.rpc.Status details, ready for `context.abort(*...)`."""
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason=common_pb.ErrorReason.Name(reason), domain=DOMAIN))
    details = [info]
    if field:
        violation = any_pb2.Any()
        violation.Pack(error_details_pb2.BadRequest(
            field_violations=[error_details_pb2.BadRequest.FieldViolation(field=field, description=message)]
        ))
        details.append(violation)
    return rpc_status.to_status(status_pb2.Status(code=code.value[0], message=message, details=details))


def reason_and_field(err: grpc.aio.AioRpcError) -> tuple[str | None, str | None]:
    """What a caller reads of a failed call: (the ErrorInfo reason, the first BadRequest field) of its
    google.rpc.Status details; (None, None) when it carries none of ours (gRPC itself ended the call)."""
    try:
        status = rpc_status.from_call(err)
    except ValueError:  # details that disagree with the call's own status: not ours
        return None, None
    reason = field = None
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = info.reason if info.domain == DOMAIN else None
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            field = bad.field_violations[0].field if bad.field_violations else None
    return reason, field


async def abort(context: grpc.aio.ServicerContext, status: grpc.Status) -> None:
    """Ends the call being served with `status` (raises grpc.aio.AbortError)."""
    await context.abort(status.code, status.details, status.trailing_metadata)


class ServiceError(Exception):
    """An error a caller can act on; its message is safe to return to the caller."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    reason: int = common_pb.BACKEND_FAILED

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(bounded(message))
        self.param = bounded(param, 200) if param else param  # the request field at fault, in OpenAI's naming, when known

    def status(self) -> grpc.Status:
        return status_of(self.code, str(self), self.reason, self.param)


class InvalidArgument(ServiceError):
    """The request cannot be served as written (a bad field)."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = common_pb.INVALID_REQUEST


class ContextLengthExceeded(InvalidArgument):
    """The prompt (plus the tokens asked for) does not fit the model's context."""

    reason = common_pb.CONTEXT_LENGTH_EXCEEDED


class ModelNotFound(ServiceError):
    """The requested model is not served here."""

    code = grpc.StatusCode.NOT_FOUND
    reason = common_pb.MODEL_NOT_FOUND

    def __init__(self, model: str) -> None:
        super().__init__(f"The model '{bounded(model, 200)}' does not exist", "model")


class ImageNotFound(ServiceError):
    """An image id that is unknown or expired."""

    code = grpc.StatusCode.NOT_FOUND
    reason = common_pb.IMAGE_NOT_FOUND


class AtCapacity(ServiceError):
    """The service admits no more calls right now."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = common_pb.AT_CAPACITY


class TokenBudgetExceeded(ServiceError):
    """The prompt alone does not fit the request's token budget (the caller's limits)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = common_pb.TOKEN_BUDGET_EXCEEDED


class BackendUnavailable(ServiceError):
    """The model server is down or the model is not ready."""

    code = grpc.StatusCode.UNAVAILABLE
    reason = common_pb.BACKEND_UNAVAILABLE


class DeadlineExceeded(ServiceError):
    """The request ran out of time."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED
    reason = common_pb.TIMEOUT


class Cancelled(ServiceError):
    """The work was cancelled before it finished."""

    code = grpc.StatusCode.CANCELLED
    reason = common_pb.CANCELLED


class NotFromFacade(ServiceError):
    """The call lacks the façade's internal secret."""

    code = grpc.StatusCode.UNAUTHENTICATED
    reason = common_pb.NOT_FROM_FACADE
