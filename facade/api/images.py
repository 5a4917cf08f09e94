"""POST /v1/images/generations and GET /v1/images/files/{image_id} (the downloads behind `url`)."""

from __future__ import annotations

import base64
import re
import time
from typing import Literal

from aiohttp import web
from hubmesh.images.v1 import images_pb2 as pb
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from facade.api.validation import parse_body
from facade.auth.middleware import subject_of
from facade.clients import CLIENTS, unary
from facade.errors import OpenAIError
from facade.jsonio import json_response
from facade.signed_urls import URL_SIGNER

FILES_PREFIX = "/v1/images/files/"
PUBLIC_URL = web.AppKey("public_url", str)
_SIZE = re.compile(r"^\s*(\d{1,5})\s*[x*×]\s*(\d{1,5})\s*$")


class ImageRequest(BaseModel):
    """OpenAI's CreateImageRequest (plus `seed`, an extension for reproducible images)."""

    model_config = ConfigDict(extra="ignore", strict=True)

    model: StrictStr = Field(min_length=1)
    prompt: StrictStr = Field(min_length=1, max_length=4000)
    n: StrictInt = Field(default=1, ge=1, le=10)
    # The seed writes "1024*1024", OpenAI "1024x1024"; both are accepted.
    size: StrictStr = "1024x1024"
    response_format: Literal["b64_json", "url"] = "b64_json"
    quality: Literal["standard", "hd", "low", "medium", "high", "auto"] = "standard"
    style: Literal["vivid", "natural"] = "vivid"
    user: StrictStr | None = None
    seed: StrictInt | None = None

    def to_proto(self) -> pb.GenerateRequest:
        match = _SIZE.match(self.size)
        # a malformed size goes on as 0x0: the service rejects it listing the model's sizes
        width, height = (int(match.group(1)), int(match.group(2))) if match else (0, 0)
        request = pb.GenerateRequest(
            model=self.model,
            prompt=self.prompt,
            n=self.n,
            width=width,
            height=height,
            delivery=pb.DELIVERY_STORED if self.response_format == "url" else pb.DELIVERY_INLINE,
            quality=self.quality,
            style=self.style,
            user=self.user or "",
        )
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
    metadata = clients.metadata(subject_of(request), body.user)
    call = clients.images.Generate(body.to_proto(), timeout=clients.timeout_s, metadata=metadata)
    result = await unary(call, "images", default_param="prompt")
    data = []
    for image in result.images:
        if body.response_format == "url":
            path = FILES_PREFIX + image.image_id
            signed = request.app[URL_SIGNER].query(path, int(result.expires_at))
            data.append({"url": f"{_base_url(request)}{path}?{signed}", "revised_prompt": image.revised_prompt})
        else:
            data.append({"b64_json": base64.b64encode(image.png).decode("ascii"), "revised_prompt": image.revised_prompt})
    return json_response({"created": int(time.time()), "data": data})


async def download_image(request: web.Request) -> web.Response:
    """A stored image, for a signed link or a request with the API key, until it expires."""
    clients = request.app[CLIENTS]
    call = clients.images.GetImage(
        pb.GetImageRequest(image_id=request.match_info["image_id"]),
        timeout=min(clients.timeout_s, 30.0),
        metadata=clients.metadata(subject_of(request), None),
    )
    try:
        image = await unary(call, "images")
    except OpenAIError as err:
        if err.status == 404:  # NOT_FOUND
            raise OpenAIError(404, "The image does not exist or has expired.", code="image_not_found") from err
        raise
    max_age = max(0, int(image.expires_at - time.time()))
    return web.Response(
        body=image.data,
        content_type=image.content_type,
        headers={"Cache-Control": f"private, max-age={max_age}"},
    )


def signed_download(request: web.Request) -> bool:
    """Lets a signed image link through without an API key (the auth middleware asks)."""
    return request.method == "GET" and request.path.startswith(FILES_PREFIX) and request.app[URL_SIGNER].allows(request)
