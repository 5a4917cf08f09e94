"""Entry point: `python -m services.text` serves hubmesh.text.v1.TextGeneration."""

import logging

from hubmesh.text.v1 import text_generation_pb2_grpc as pb_grpc
from services.common.server import ServeOptions, run_service, serve
from services.text.backend import TritonTextBackend
from services.text.catalog import load_catalog
from services.text.servicer import TextGenerationServicer
from services.text.settings import Settings

log = logging.getLogger("services.text")


async def main(settings: Settings, options: ServeOptions) -> None:
    catalog = load_catalog(settings.catalog)
    backend = TritonTextBackend(settings.triton_url, settings.triton_timeout_s)
    servicer = TextGenerationServicer(backend, catalog)
    log.info("models: %s; Triton at %s", ", ".join(catalog), settings.triton_url)
    await serve(
        settings.listen,
        lambda server: pb_grpc.add_TextGenerationServicer_to_server(servicer, server),
        ["hubmesh.text.v1.TextGeneration"],
        servicer.is_ready,
        options,
        on_stop=backend.close,
    )


if __name__ == "__main__":
    run_service("text", lambda options: main(Settings.from_env(), options))
