"""gRPC methods of hubmesh.images.v1.Images."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from hubmesh.common.v1 import common_pb2 as common_pb
from hubmesh.images.v1 import images_pb2 as pb
from hubmesh.images.v1 import images_pb2_grpc as pb_grpc
from services.common.errors import ImageNotFound, InvalidArgument
from services.common.grpc_errors import abort_on_service_error
from services.common.servicer import CatalogServicer
from services.common.telemetry import set_genai_attributes
from services.images.backend import ImagesBackend
from services.images.catalog import ImageModel
from services.images.limits import MAX_IMAGES, MAX_PROMPT_CHARS, QUALITIES, STYLES
from services.images.png import encode_png
from services.images.storage import ImageStore


class ImagesServicer(CatalogServicer[ImageModel], pb_grpc.ImagesServicer):
    """Text-to-image in front of an ImagesBackend (Triton in production) and an ImageStore."""

    _backend: ImagesBackend

    def __init__(self, backend: ImagesBackend, catalog: Mapping[str, ImageModel], store: ImageStore, ttl_s: float) -> None:
        super().__init__(backend, catalog)
        self._store = store
        self._ttl_s = ttl_s

    def details(self, entry: ImageModel) -> dict:
        return {"image": common_pb.ImageModelDetails(sizes=[f"{w}x{h}" for w, h in entry.sizes])}

    def _validate(self, request: pb.GenerateRequest) -> ImageModel:
        # OpenAI makes `model` optional for images: the catalogue's first model is the default
        entry = self.entry(request.model) if request.model else next(iter(self._catalog.values()))
        if not request.prompt.strip():
            raise InvalidArgument("prompt must not be empty", "prompt")
        if len(request.prompt) > MAX_PROMPT_CHARS:
            raise InvalidArgument(
                f"prompt is {len(request.prompt)} characters long; the maximum is {MAX_PROMPT_CHARS}", "prompt"
            )
        if not 1 <= _count(request) <= MAX_IMAGES:
            raise InvalidArgument(f"n must be between 1 and {MAX_IMAGES}, got {request.n}", "n")
        if (request.width, request.height) not in entry.sizes:
            allowed = ", ".join(f"{w}x{h}" for w, h in entry.sizes)
            raise InvalidArgument(
                f"size {request.width}x{request.height} is not supported by this model; use one of {allowed}", "size"
            )
        if request.quality and request.quality not in QUALITIES:
            raise InvalidArgument(f"quality must be one of {', '.join(QUALITIES)}", "quality")
        if request.style and request.style not in STYLES:
            raise InvalidArgument(f"style must be one of {', '.join(STYLES)}", "style")
        return entry

    @abort_on_service_error
    async def Generate(self, request: pb.GenerateRequest, context) -> pb.GenerateResponse:
        entry = self._validate(request)
        set_genai_attributes(operation__name="image_generation", request__model=entry.id, request__choice__count=_count(request))
        pixels = await self._backend.generate(
            entry.triton_model,
            request.prompt,
            request.width,
            request.height,
            _count(request),
            request.seed if request.HasField("seed") else None,
            request.quality or "standard",
            request.style or "vivid",
        )
        pngs = await asyncio.gather(*(asyncio.to_thread(encode_png, image) for image in pixels))
        response = pb.GenerateResponse(model=entry.id)
        if request.delivery == pb.DELIVERY_STORED:
            stored = await asyncio.gather(*(self._store.put(png, "image/png", self._ttl_s) for png in pngs))
            response.expires_at = int(min(s.expires_at for s in stored))
            response.images.extend(pb.Image(image_id=s.image_id, revised_prompt=request.prompt) for s in stored)
        else:
            response.images.extend(pb.Image(png=png, revised_prompt=request.prompt) for png in pngs)
        return response

    @abort_on_service_error
    async def GetImage(self, request: pb.GetImageRequest, context) -> pb.GetImageResponse:
        image = await self._store.get(request.image_id)
        if image is None:
            raise ImageNotFound("The image does not exist or has expired", "image_id")
        return pb.GetImageResponse(data=image.data, content_type=image.content_type, expires_at=int(image.expires_at))


def _count(request: pb.GenerateRequest) -> int:
    """How many images: n, 1 when unset."""
    return request.n if request.HasField("n") else 1
