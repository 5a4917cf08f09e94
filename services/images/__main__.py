"""Entry point: `python -m services.images` serves hubmesh.images.v1.Images."""

import logging

from hubmesh.images.v1 import images_pb2_grpc as pb_grpc
from services.common.server import Wiring, run_modality_service
from services.images.backend import TritonImagesBackend
from services.images.catalog import ImageModel, load_catalog
from services.images.servicer import ImagesServicer
from services.images.settings import Settings
from services.images.storage import LocalDirectoryStore, sweep_forever

log = logging.getLogger("services.images")


def images_servicer(wiring: Wiring[Settings, TritonImagesBackend, ImageModel]) -> ImagesServicer:
    """The servicer, its image store, and the sweeper that deletes expired images."""
    settings = wiring.settings
    store = LocalDirectoryStore(settings.store_dir)
    wiring.background(sweep_forever(store, interval_s=min(60.0, settings.image_ttl_s)))
    log.info("images kept in %s for %.0f s", settings.store_dir, settings.image_ttl_s)
    return ImagesServicer(wiring.backend, wiring.catalog, store, settings.image_ttl_s)


if __name__ == "__main__":
    run_modality_service(
        "images",
        Settings,
        load_catalog,
        lambda replicas, settings: TritonImagesBackend(replicas, settings.triton_timeout_s),
        images_servicer,
        pb_grpc.add_ImagesServicer_to_server,
        "hubmesh.images.v1.Images",
    )
