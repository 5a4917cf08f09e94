"""gRPC channels to the modality services, opened and closed with the app."""

from __future__ import annotations

import functools
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
from aiohttp import web
from grpc_health.v1 import health_pb2_grpc

from facade.api.mesh.instances import Instances
from facade.errors import from_grpc
from facade.settings import Settings
from facade.text_streams import TextStreams
from hubmesh.common.v1 import mesh_pb2_grpc
from hubmesh.embeddings.v1 import embeddings_pb2_grpc as embeddings_grpc
from hubmesh.images.v1 import images_pb2_grpc as images_grpc
from hubmesh.text.v1 import text_generation_pb2_grpc as text_grpc
from services.common.grpc_options import CHANNEL_OPTIONS
from services.common.internal_auth import SECRET_METADATA_KEY
from services.common.telemetry import client_interceptors, tracing_enabled

# Idempotent unary calls are retried once on UNAVAILABLE (a service restarting, a replica going away);
# generation never is: it could run twice, and a stream may have sent tokens already.
RETRY_IDEMPOTENT = json.dumps({"methodConfig": [{
    "name": [
        {"service": "hubmesh.text.v1.TextGeneration", "method": "ListModels"},
        {"service": "hubmesh.embeddings.v1.Embeddings"},
        {"service": "hubmesh.images.v1.Images", "method": "ListModels"},
        {"service": "hubmesh.images.v1.Images", "method": "GetImage"},
    ],
    "retryPolicy": {
        "maxAttempts": 2, "initialBackoff": "0.2s", "maxBackoff": "1s", "backoffMultiplier": 2,
        "retryableStatusCodes": ["UNAVAILABLE"],
    },
}]})
FACADE_CHANNEL_OPTIONS = [*CHANNEL_OPTIONS, ("grpc.enable_retries", 1), ("grpc.service_config", RETRY_IDEMPOTENT)]

# gRPC health-checking names of the services the façade needs
SERVICE_NAMES = {
    "text": "hubmesh.text.v1.TextGeneration",
    "embeddings": "hubmesh.embeddings.v1.Embeddings",
    "images": "hubmesh.images.v1.Images",
}

@dataclass
class Clients:
    """One stub per modality service; generations (streamed or not) go over `text_streams`."""

    text: text_grpc.TextGenerationStub
    text_streams: TextStreams
    embeddings: embeddings_grpc.EmbeddingsStub
    images: images_grpc.ImagesStub
    health: dict[str, health_pb2_grpc.HealthStub]
    timeout_s: float
    internal_secret: str = ""
    # each modality service's Mesh (its replicas and counters: GET /v1/mesh), on the same channels,
    # and on a channel per process behind each target (`targets`), where a service has several
    mesh: dict[str, mesh_pb2_grpc.MeshStub] = field(default_factory=dict)
    targets: dict[str, str] = field(default_factory=dict)
    mesh_instances: Instances = field(default_factory=Instances)

    @functools.cached_property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """gRPC metadata of every call to the services: the internal secret, nothing else. Who the
        call is for travels in the request message (`caller`), where any Unicode is fine."""
        return service_metadata(self.internal_secret)


def service_metadata(internal_secret: str) -> tuple[tuple[str, str], ...]:
    return ((SECRET_METADATA_KEY, internal_secret),) if internal_secret else ()


CLIENTS = web.AppKey("clients", Clients)


def clients_ctx(settings: Settings):
    """cleanup_ctx: opens the channels at start-up, closes them at shutdown."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        # OpenTelemetry client spans and traceparent to the services, when tracing is on
        interceptors = client_interceptors() if tracing_enabled() else []
        targets = {"text": settings.text_target, "embeddings": settings.embeddings_target,
                   "images": settings.images_target}
        channels = {
            name: grpc.aio.insecure_channel(target, options=FACADE_CHANNEL_OPTIONS, interceptors=interceptors)
            for name, target in targets.items()
        }
        text = text_grpc.TextGenerationStub(channels["text"])
        metadata = service_metadata(settings.internal_secret)
        app[CLIENTS] = Clients(
            text=text,
            text_streams=TextStreams(text, metadata, settings.text_links, settings.text_link_max_age_s),
            embeddings=embeddings_grpc.EmbeddingsStub(channels["embeddings"]),
            images=images_grpc.ImagesStub(channels["images"]),
            health={name: health_pb2_grpc.HealthStub(channel) for name, channel in channels.items()},
            timeout_s=settings.request_timeout_s,
            internal_secret=settings.internal_secret,
            mesh={name: mesh_pb2_grpc.MeshStub(channel) for name, channel in channels.items()},
            targets=targets,
        )
        yield
        await app[CLIENTS].text_streams.close()
        await app[CLIENTS].mesh_instances.close()
        for channel in channels.values():
            await channel.close(grace=None)

    return ctx


async def unary(call: grpc.aio.UnaryUnaryCall, service: str, default_param: str | None = None):
    """Awaits a unary call; gRPC failures become OpenAI errors; a cancelled caller cancels the call."""
    try:
        return await call
    except grpc.aio.AioRpcError as err:
        raise from_grpc(err, service, default_param=default_param) from err
    finally:
        if not call.done():
            call.cancel()
