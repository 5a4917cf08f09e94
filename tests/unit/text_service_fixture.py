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
async def running_text_service(backend):
    server = grpc.aio.server()
    pb_grpc.add_TextGenerationServicer_to_server(TextGenerationServicer(backend, CATALOG), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)
