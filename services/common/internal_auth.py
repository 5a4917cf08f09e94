"""Only the façade may call the services: a shared secret in gRPC metadata (mTLS is the alternative,
see the README). Health checks stay open for the kubelet's probes."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

import grpc

from services.common.errors import NotFromFacade, abort

SECRET_METADATA_KEY = "hubmesh-internal-secret"
OPEN_PREFIXES = ("/grpc.health.v1.Health/",)


class RequireSecret(grpc.aio.ServerInterceptor):
    """Rejects calls that do not carry the shared internal secret."""

    def __init__(self, secret: str) -> None:
        self._secret = secret.encode()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if details.method.startswith(OPEN_PREFIXES):
            return handler
        presented = dict(details.invocation_metadata or ()).get(SECRET_METADATA_KEY, "")
        if isinstance(presented, str):
            presented = presented.encode()
        return handler if hmac.compare_digest(presented, self._secret) else _denying_like(handler)


def _denying_like(handler: grpc.RpcMethodHandler | None) -> grpc.RpcMethodHandler:
    """A handler of the same streaming shape that answers UNAUTHENTICATED."""
    status = NotFromFacade("calls to this service must come from the hubmesh façade").status()

    async def unary(request, context):
        await abort(context, status)

    async def stream(request, context):
        await abort(context, status)
        yield  # pragma: no cover - makes this an async generator

    async def bidi(requests, context):
        await abort(context, status)

    if handler is not None and handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(
            bidi, handler.request_deserializer, handler.response_serializer
        )
    if handler is not None and handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(
            stream, handler.request_deserializer, handler.response_serializer
        )
    return grpc.unary_unary_rpc_method_handler(
        unary, handler.request_deserializer if handler else None, handler.response_serializer if handler else None
    )
