"""Servicer methods answer domain errors with their gRPC status; nothing else leaks out."""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable

import grpc

from services.common.errors import PARAM_METADATA_KEY, ServiceError

log = logging.getLogger(__name__)


async def _abort(context: grpc.aio.ServicerContext, err: Exception) -> None:
    if isinstance(err, ServiceError):
        if err.param:
            context.set_trailing_metadata(((PARAM_METADATA_KEY, err.param),))
        await context.abort(err.code, str(err))
    log.error("unexpected error", exc_info=err)
    await context.abort(grpc.StatusCode.INTERNAL, "internal error in the service")


def abort_on_service_error(method: Callable) -> Callable:
    """Decorates a unary or server-streaming servicer method (the table lives in ServiceError.code)."""
    if inspect.isasyncgenfunction(method):

        @functools.wraps(method)
        async def stream_wrapper(self, request, context):
            try:
                async for item in method(self, request, context):
                    yield item
            except grpc.aio.AbortError:
                raise
            except Exception as err:  # noqa: BLE001 - the status is chosen in _abort
                await _abort(context, err)

        return stream_wrapper

    @functools.wraps(method)
    async def unary_wrapper(self, request, context):
        try:
            return await method(self, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as err:  # noqa: BLE001 - the status is chosen in _abort
            await _abort(context, err)

    return unary_wrapper
