"""Entry point: `python -m services.images` serves hubmesh.images.v1.Images."""

import asyncio
import contextlib
import logging

from hubmesh.images.v1 import images_pb2_grpc as pb_grpc
from services.common.server import ServeOptions, run_service, serve
from services.images.backend import TritonImagesBackend
from services.images.catalog import load_catalog
from services.images.servicer import ImagesServicer
from services.images.settings import Settings
from services.images.storage import LocalDirectoryStore, sweep_forever

log = logging.getLogger("services.images")


async def main(settings: Settings, options: ServeOptions) -> None:
    catalog = load_catalog(settings.catalog)
    backend = TritonImagesBackend(settings.triton_url, settings.triton_timeout_s)
    store = LocalDirectoryStore(settings.store_dir)
    servicer = ImagesServicer(backend, catalog, store, settings.image_ttl_s)
    sweeper = asyncio.create_task(sweep_forever(store, interval_s=min(60.0, settings.image_ttl_s)))
    log.info("models: %s; Triton at %s; images kept in %s", ", ".join(catalog), settings.triton_url, settings.store_dir)

    async def on_stop() -> None:
        sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeper
        await backend.close()

    await serve(
        settings.listen,
        lambda server: pb_grpc.add_ImagesServicer_to_server(servicer, server),
        ["hubmesh.images.v1.Images"],
        servicer.is_ready,
        options,
        on_stop=on_stop,
    )


if __name__ == "__main__":
    run_service("images", lambda options: main(Settings.from_env(), options))
