"""Entry point: `python -m services.embeddings` serves hubmesh.embeddings.v1.Embeddings."""

from hubmesh.embeddings.v1 import embeddings_pb2_grpc as pb_grpc
from services.common.server import run_modality_service
from services.embeddings.backend import TritonEmbeddingsBackend
from services.embeddings.catalog import load_catalog
from services.embeddings.servicer import EmbeddingsServicer
from services.embeddings.settings import Settings

if __name__ == "__main__":
    run_modality_service(
        "embeddings",
        Settings,
        load_catalog,
        lambda replicas, settings: TritonEmbeddingsBackend(replicas, settings.triton_timeout_s),
        lambda wiring: EmbeddingsServicer(wiring.backend, wiring.catalog, wiring.settings.chunk_size),
        pb_grpc.add_EmbeddingsServicer_to_server,
        "hubmesh.embeddings.v1.Embeddings",
    )
