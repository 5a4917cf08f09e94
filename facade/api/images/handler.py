"""POST /v1/images/generations and GET /v1/images/files/{image_id} (the downloads behind `url`)."""

from __future__ import annotations

import base64
import time

from aiohttp import web

from facade.aliases import serve
from facade.api.images.protocol import ImageRequest
from facade.api.intake import accept
from facade.api.response_bodies import Image, ImagesResponse
from facade.call import call_of
from facade.clients import CLIENTS, unary
from facade.jsonio import json_response
from facade.signed_urls import URL_SIGNER
from hubmesh.images.v1 import images_pb2 as pb

FILES_PREFIX = "/v1/images/files/"
PUBLIC_URL = web.AppKey("public_url", str)


def _base_url(request: web.Request) -> str:
    configured = request.app[PUBLIC_URL]
    if configured:
        return configured
    proto = request.headers.get("X-Forwarded-Proto", request.scheme)
    host = request.headers.get("X-Forwarded-Host", request.host)
    return f"{proto}://{host}"


async def create_image(request: web.Request) -> web.Response:
    """Creates images from a prompt: base64 PNGs, or absolute URLs on this façade."""
    call, body = await accept(request, ImageRequest)
    clients = request.app[CLIENTS]
    proto = body.to_proto(call.caller())

    async def attempt(model: str) -> pb.GenerateResponse:
        proto.model = model  # "": the service's default model
        generation = clients.images.Generate(proto, timeout=clients.timeout_s, metadata=clients.metadata)
        return await unary(generation, "images", default_param="prompt")

    result = await serve(request, body.model or "", attempt)  # an alias: the first model of its chain that serves it
    call.record_usage(0, images=len(result.images))
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
    get = clients.images.GetImage(
        pb.GetImageRequest(image_id=request.match_info["image_id"], caller=call_of(request).caller()),
        timeout=min(clients.timeout_s, 30.0),
        metadata=clients.metadata,
    )
    image = await unary(get, "images")
    max_age = max(0, int(image.expires_at - time.time()))
    return web.Response(
        body=image.data,
        content_type=image.content_type,
        headers={"Cache-Control": f"private, max-age={max_age}"},
    )


def signed_download(request: web.Request) -> bool:
    """Lets a signed image link through without an API key (the auth middleware asks)."""
    return request.method == "GET" and request.path.startswith(FILES_PREFIX) and request.app[URL_SIGNER].allows(request)
