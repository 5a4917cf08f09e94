"""Servicer methods answer domain errors with their gRPC status and details; nothing else leaks out."""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable

import grpc

from hubmesh.common.v1 import common_pb2 as common_pb
from services.common.errors import ServiceError, abort, status_of

log = logging.getLogger(__name__)


async def _abort(context: grpc.aio.ServicerContext, err: Exception) -> None:
    if isinstance(err, ServiceError):
        await abort(context, err.status())
    log.error("unexpected error", exc_info=err)
    await abort(context, status_of(grpc.StatusCode.INTERNAL, "internal error in the service",
                                   common_pb.ERROR_REASON_UNSPECIFIED))


def abort_on_service_error(method: Callable) -> Callable:
    """Decorates a unary or server-streaming servicer method (codes and reasons live on ServiceError)."""
    if inspect.isasyncgenfunction(method):

        @functools.wraps(method)
        async def stream_wrapper(self, request, context):
            try:
                async for item in method(self, request, context):
                    yield item
            except grpc.aio.AbortError:
                raise
            except Exception as err:  # any: the status is chosen in _abort
                await _abort(context, err)

        return stream_wrapper

    @functools.wraps(method)
    async def unary_wrapper(self, request, context):
        try:
            return await method(self, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as err:  # any: the status is chosen in _abort
            await _abort(context, err)

    return unary_wrapper
