"""gRPC channels to the modality services, opened and closed with the app."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
from aiohttp import web

from facade.settings import Settings
from hubmesh.embeddings.v1 import embeddings_pb2_grpc as embeddings_grpc
from hubmesh.text.v1 import text_generation_pb2_grpc as text_grpc

CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    # a restarted service is found again quickly
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2_000),
]


@dataclass
class Clients:
    """One stub per modality service."""

    text: text_grpc.TextGenerationStub
    embeddings: embeddings_grpc.EmbeddingsStub
    timeout_s: float


CLIENTS = web.AppKey("clients", Clients)


def clients_ctx(settings: Settings):
    """cleanup_ctx: opens the channels at start-up, closes them at shutdown."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        text_channel = grpc.aio.insecure_channel(settings.text_target, options=CHANNEL_OPTIONS)
        embeddings_channel = grpc.aio.insecure_channel(settings.embeddings_target, options=CHANNEL_OPTIONS)
        app[CLIENTS] = Clients(
            text=text_grpc.TextGenerationStub(text_channel),
            embeddings=embeddings_grpc.EmbeddingsStub(embeddings_channel),
            timeout_s=settings.request_timeout_s,
        )
        yield
        await text_channel.close(grace=None)
        await embeddings_channel.close(grace=None)

    return ctx
