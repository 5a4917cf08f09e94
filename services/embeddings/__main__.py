"""Entry point: `python -m services.embeddings` serves hubmesh.embeddings.v1.Embeddings."""

import logging

from hubmesh.embeddings.v1 import embeddings_pb2_grpc as pb_grpc
from services.common.server import ServeOptions, run_service, serve
from services.embeddings.backend import TritonEmbeddingsBackend
from services.embeddings.catalog import load_catalog
from services.embeddings.servicer import EmbeddingsServicer
from services.embeddings.settings import Settings

log = logging.getLogger("services.embeddings")


async def main(settings: Settings, options: ServeOptions) -> None:
    catalog = load_catalog(settings.catalog)
    backend = TritonEmbeddingsBackend(settings.triton_url, settings.triton_timeout_s)
    servicer = EmbeddingsServicer(backend, catalog, settings.chunk_size)
    log.info("models: %s; Triton at %s", ", ".join(catalog), settings.triton_url)
    await serve(
        settings.listen,
        lambda server: pb_grpc.add_EmbeddingsServicer_to_server(servicer, server),
        ["hubmesh.embeddings.v1.Embeddings"],
        servicer.is_ready,
        options,
        on_stop=backend.close,
    )


if __name__ == "__main__":
    run_service("embeddings", lambda options: main(Settings.from_env(), options))
