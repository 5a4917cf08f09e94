"""Entry point: `python -m services.text` serves hubmesh.text.v1.TextGeneration."""

from hubmesh.text.v1 import text_generation_pb2_grpc as pb_grpc
from services.common.server import run_modality_service
from services.text.backend import TritonTextBackend
from services.text.catalog import load_catalog
from services.text.prefix_picker import make_picker
from services.text.servicer import TextGenerationServicer
from services.text.settings import Settings


def _backend(replicas, settings: Settings) -> TritonTextBackend:
    picker = make_picker(settings.routing, **settings.picker_options())
    view = settings.prefix_view()
    if view is not None:
        view.attach(picker)  # the other text-service replicas' placements and load (services.text.prefix_view)
    return TritonTextBackend(replicas, settings.triton_timeout_s, picker, max_migrations=settings.max_migrations,
                             **settings.stall_options())


def _servicer(wiring) -> TextGenerationServicer:
    view = getattr(wiring.backend.picker, "view", None)
    if view is not None:
        wiring.background(view.run())  # connects (or keeps trying), replays, publishes; cancelled at stop
    return TextGenerationServicer(wiring.backend, wiring.catalog,
                                  flush_interval_s=wiring.settings.stream_flush_ms / 1000)


if __name__ == "__main__":
    run_modality_service(
        "text",
        Settings,
        load_catalog,
        _backend,
        _servicer,
        pb_grpc.add_TextGenerationServicer_to_server,
        "hubmesh.text.v1.TextGeneration",
    )
