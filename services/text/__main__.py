"""Entry point: `python -m services.text` serves hubmesh.text.v1.TextGeneration."""

from hubmesh.text.v1 import text_generation_pb2_grpc as pb_grpc
from services.common.server import run_modality_service
from services.text.backend import TritonTextBackend
from services.text.catalog import load_catalog
from services.text.prefix_picker import make_picker
from services.text.servicer import TextGenerationServicer
from services.text.settings import Settings

if __name__ == "__main__":
    run_modality_service(
        "text",
        Settings,
        load_catalog,
        lambda replicas, settings: TritonTextBackend(
            replicas, settings.triton_timeout_s, make_picker(settings.routing, **settings.picker_options()),
            max_migrations=settings.max_migrations, **settings.stall_options(),
        ),
        lambda wiring: TextGenerationServicer(wiring.backend, wiring.catalog,
                                              flush_interval_s=wiring.settings.stream_flush_ms / 1000),
        pb_grpc.add_TextGenerationServicer_to_server,
        "hubmesh.text.v1.TextGeneration",
    )
