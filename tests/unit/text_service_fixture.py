"""An in-process text service (real servicer, fake backend) on a grpc.aio server bound to port 0."""

from __future__ import annotations

from contextlib import asynccontextmanager
from pathlib import Path

import grpc

from hubmesh.text.v1 import text_generation_pb2_grpc as pb_grpc
from services.text.catalog import load_catalog
from services.text.servicer import TextGenerationServicer

CATALOG = load_catalog(Path(__file__).resolve().parents[2] / "services" / "text" / "catalog.toml")
MODEL = next(iter(CATALOG))


@asynccontextmanager
async def serving(register, interceptors=None):
    """An in-process grpc.aio server on 127.0.0.1, port 0; `register(server)` adds the servicers."""
    server = grpc.aio.server(interceptors=interceptors)
    register(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


def running_text_service(backend):
    """The real text servicer in front of `backend`."""
    servicer = TextGenerationServicer(backend, CATALOG)
    return serving(lambda server: pb_grpc.add_TextGenerationServicer_to_server(servicer, server))
