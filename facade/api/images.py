"""POST /v1/images/generations and GET /v1/images/files/{image_id} (the downloads behind `url`)."""

from __future__ import annotations

import base64
import re
import time
from typing import Literal

from aiohttp import web
from hubmesh.images.v1 import images_pb2 as pb
from pydantic import BaseModel, ConfigDict, StrictStr

from facade.api.responses import Image, ImagesResponse
from facade.api.validation import Int64, UInt32, parse_body, shows_limit
from services.images import limits
from facade.clients import CLIENTS, caller, unary
from hubmesh.common.v1 import common_pb2 as common_pb
from facade.jsonio import json_response
from facade.observability import record_usage
from facade.signed_urls import URL_SIGNER

FILES_PREFIX = "/v1/images/files/"
PUBLIC_URL = web.AppKey("public_url", str)
DEFAULT_SIZE = "1024x1024"
_SIZE = re.compile(r"^\s*(\d{1,5})\s*[x*×]\s*(\d{1,5})\s*$")


class ImageRequest(BaseModel):
    """OpenAI's CreateImageRequest (plus `seed`, an extension for reproducible images), as types; the
    prompt's length, n, the sizes, qualities and styles a model takes are the images service's rules
    (services/images/servicer.py). null means the default, as in OpenAI's document."""

    model_config = ConfigDict(extra="ignore", strict=True)

    model: StrictStr | None = None  # None: the images service's default model
    prompt: StrictStr = shows_limit(limits.DOCUMENTED, "prompt", ...)
    n: UInt32 | None = shows_limit(limits.DOCUMENTED, "n")
    # The seed writes "1024*1024", OpenAI "1024x1024"; both are accepted.
    size: StrictStr | None = None
    response_format: Literal["b64_json", "url"] | None = None  # None: b64_json
    quality: StrictStr | None = shows_limit(limits.DOCUMENTED, "quality")
    style: StrictStr | None = shows_limit(limits.DOCUMENTED, "style")
    user: StrictStr | None = None
    seed: Int64 | None = None

    def to_proto(self, caller: common_pb.Caller | None = None) -> pb.GenerateRequest:
        match = _SIZE.match(self.size or DEFAULT_SIZE)
        # a malformed size goes on as 0x0: the service rejects it listing the model's sizes
        width, height = (int(match.group(1)), int(match.group(2))) if match else (0, 0)
        request = pb.GenerateRequest(
            model=self.model or "",
            prompt=self.prompt,
            width=width,
            height=height,
            delivery=pb.DELIVERY_STORED if self.response_format == "url" else pb.DELIVERY_INLINE,
            quality=self.quality or "",
            style=self.style or "",
            caller=caller,
        )
        if self.n is not None:
            request.n = self.n
        if self.seed is not None:
            request.seed = self.seed
        return request


def _base_url(request: web.Request) -> str:
    configured = request.app[PUBLIC_URL]
    if configured:
        return configured
    proto = request.headers.get("X-Forwarded-Proto", request.scheme)
    host = request.headers.get("X-Forwarded-Host", request.host)
    return f"{proto}://{host}"


async def create_image(request: web.Request) -> web.Response:
    """Creates images from a prompt: base64 PNGs, or absolute URLs on this façade."""
    body = await parse_body(request, ImageRequest)
    clients = request.app[CLIENTS]
    call = clients.images.Generate(
        body.to_proto(caller(request, body.user)), timeout=clients.timeout_s, metadata=clients.metadata
    )
    result = await unary(call, "images", default_param="prompt")
    record_usage(request, 0, images=len(result.images))
    data: list[Image] = []
    for image in result.images:
        if body.response_format == "url":
            path = FILES_PREFIX + image.image_id
            signed = request.app[URL_SIGNER].query(path, int(result.expires_at))
            data.append({"url": f"{_base_url(request)}{path}?{signed}", "revised_prompt": image.revised_prompt})
        else:
            data.append({"b64_json": base64.b64encode(image.png).decode("ascii"), "revised_prompt": image.revised_prompt})
    images: ImagesResponse = {"created": int(time.time()), "data": data}
    return json_response(images)


async def download_image(request: web.Request) -> web.Response:
    """A stored image, for a signed link or a request with the API key, until it expires."""
    clients = request.app[CLIENTS]
    call = clients.images.GetImage(
        pb.GetImageRequest(image_id=request.match_info["image_id"], caller=caller(request)),
        timeout=min(clients.timeout_s, 30.0),
        metadata=clients.metadata,
    )
    image = await unary(call, "images")
    max_age = max(0, int(image.expires_at - time.time()))
    return web.Response(
        body=image.data,
        content_type=image.content_type,
        headers={"Cache-Control": f"private, max-age={max_age}"},
    )


def signed_download(request: web.Request) -> bool:
    """Lets a signed image link through without an API key (the auth middleware asks)."""
    return request.method == "GET" and request.path.startswith(FILES_PREFIX) and request.app[URL_SIGNER].allows(request)
