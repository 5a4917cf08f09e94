"""Images: servicer with a fake backend and a real local store, the façade's generations and downloads."""

import base64
import io
from pathlib import Path

import grpc
import pytest
from PIL import Image

from facade.app import create_app
from facade.settings import Settings
from services.common.errors import reason_and_field
from hubmesh.images.v1 import images_pb2 as pb
from hubmesh.images.v1 import images_pb2_grpc as pb_grpc
from services.images.catalog import load_catalog
from services.images.servicer import ImagesServicer
from services.images.storage import LocalDirectoryStore
from tests.fakes import FakeImagesBackend
from tests.unit.text_service_fixture import serving

CATALOG = load_catalog(Path(__file__).resolve().parents[2] / "services" / "images" / "catalog.toml")
MODEL = next(iter(CATALOG))
KEY = "k"
AUTH = {"Authorization": f"Bearer {KEY}"}


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def images_service(backend, store, ttl_s=60.0):
    servicer = ImagesServicer(backend, CATALOG, store, ttl_s)
    return serving(lambda server: pb_grpc.add_ImagesServicer_to_server(servicer, server))


def png_size(data: bytes) -> tuple[int, int]:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return image.size


async def test_local_store_expires_and_sweeps(tmp_path):
    clock = Clock()
    store = LocalDirectoryStore(tmp_path, clock=clock)
    image = await store.put(b"png-bytes", "image/png", ttl_s=10)
    assert (await store.get(image.image_id)).data == b"png-bytes"
    assert await store.get("../../etc/passwd") is None
    clock.now += 11
    assert await store.get(image.image_id) is None
    assert await store.sweep() == 1 and list(tmp_path.iterdir()) == []


async def test_servicer_inline_and_stored(tmp_path):
    backend, store = FakeImagesBackend(), LocalDirectoryStore(tmp_path)
    async with images_service(backend, store) as target, grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.ImagesStub(channel)
        inline = await stub.Generate(pb.GenerateRequest(model=MODEL, prompt="sunset", n=2, width=256, height=256, seed=7))
        assert [png_size(i.png) for i in inline.images] == [(256, 256), (256, 256)]
        assert inline.images[0].revised_prompt == "sunset"
        assert backend.calls[0] == {"model": "tiny_sd", "prompt": "sunset", "width": 256, "height": 256, "n": 2,
                                    "seed": 7, "quality": "standard", "style": "vivid"}
        stored = await stub.Generate(pb.GenerateRequest(
            model=MODEL, prompt="sunset", width=512, height=512, delivery=pb.DELIVERY_STORED, quality="hd"))
        fetched = await stub.GetImage(pb.GetImageRequest(image_id=stored.images[0].image_id))
        assert fetched.content_type == "image/png" and png_size(fetched.data) == (512, 512)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetImage(pb.GetImageRequest(image_id="0" * 32))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    "fields, param",
    [
        ({"prompt": ""}, "prompt"),
        ({"prompt": "x" * 4001}, "prompt"),
        ({"n": 11}, "n"),
        ({"width": 300, "height": 300}, "size"),
        ({"quality": "ultra"}, "quality"),
        ({"style": "retro"}, "style"),
    ],
)
async def test_servicer_rejects_bad_requests(tmp_path, fields, param):
    async with images_service(FakeImagesBackend(), LocalDirectoryStore(tmp_path)) as target, \
            grpc.aio.insecure_channel(target) as channel:
        request = {"model": MODEL, "prompt": "p", "width": 256, "height": 256, **fields}
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await pb_grpc.ImagesStub(channel).Generate(pb.GenerateRequest(**request))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason_and_field(err.value) == ("INVALID_REQUEST", param)


@pytest.fixture
async def facade(aiohttp_client, tmp_path):
    backend = FakeImagesBackend()
    async with images_service(backend, LocalDirectoryStore(tmp_path)) as target:
        app = create_app(Settings(api_keys=(KEY,), images_target=target, text_target=target, embeddings_target=target))
        yield await aiohttp_client(app), backend


@pytest.mark.parametrize("size, expected", [("1024*1024", (1024, 1024)), ("1792x1024", (1792, 1024)),
                                            ("1024x1792", (1024, 1792)), ("256x256", (256, 256))])
async def test_facade_b64_in_both_size_forms(facade, size, expected):
    client, _ = facade
    response = await client.post("/v1/images/generations", headers=AUTH,
                                 json={"model": MODEL, "prompt": "A beautiful sunset over the ocean", "size": size})
    assert response.status == 200
    body = await response.json()
    assert isinstance(body["created"], int) and len(body["data"]) == 1
    item = body["data"][0]
    assert png_size(base64.b64decode(item["b64_json"])) == expected
    assert item["revised_prompt"] == "A beautiful sunset over the ocean"


async def test_facade_defaults_and_passes_quality_style_seed(facade):
    client, backend = facade
    await client.post("/v1/images/generations", headers=AUTH,
                      json={"model": MODEL, "prompt": "p", "quality": "hd", "style": "natural", "seed": 3, "n": 2})
    call = backend.calls[-1]
    assert (call["width"], call["height"], call["n"]) == (1024, 1024, 2)
    assert (call["quality"], call["style"], call["seed"]) == ("hd", "natural", 3)


async def test_facade_url_is_absolute_signed_and_downloadable(facade):
    client, _ = facade
    body = await (await client.post("/v1/images/generations", headers=AUTH,
                                    json={"model": MODEL, "prompt": "p", "size": "512x512", "response_format": "url"})).json()
    url = body["data"][0]["url"]
    assert url.startswith(f"http://{client.server.host}:{client.server.port}/v1/images/files/")
    path_and_query = url.split(str(client.server.port), 1)[1]
    signed = await client.get(path_and_query)  # no credential: the signature is enough
    assert signed.status == 200 and signed.content_type == "image/png"
    assert png_size(await signed.read()) == (512, 512)
    path = path_and_query.split("?")[0]
    assert (await client.get(path)).status == 401  # unsigned and no key
    assert (await client.get(path, headers=AUTH)).status == 200  # the bearer credential works too
    tampered = path_and_query.replace("signature=", "signature=0")
    assert (await client.get(tampered)).status == 401
    assert (await client.get("/v1/images/files/" + "0" * 32, headers=AUTH)).status == 404


@pytest.mark.parametrize(
    "body, param",
    [
        ({"model": 5, "prompt": "p"}, "model"),  # optional (OpenAI's default model), but a string
        ({"model": MODEL}, "prompt"),
        ({"model": MODEL, "prompt": ""}, "prompt"),
        ({"model": MODEL, "prompt": "p", "n": 0}, "n"),
        ({"model": MODEL, "prompt": "p", "n": 11}, "n"),
        ({"model": MODEL, "prompt": "p", "size": "1000x1000"}, "size"),
        ({"model": MODEL, "prompt": "p", "size": "big"}, "size"),
        ({"model": MODEL, "prompt": "p", "response_format": "png"}, "response_format"),
        ({"model": MODEL, "prompt": "p", "quality": "ultra"}, "quality"),
        ({"model": MODEL, "prompt": "p", "style": "retro"}, "style"),
    ],
)
async def test_facade_bad_inputs(facade, body, param):
    client, _ = facade
    response = await client.post("/v1/images/generations", json=body, headers=AUTH)
    assert response.status == 400
    error = (await response.json())["error"]
    assert error["param"] == param
    if param == "size":
        assert "1024x1024" in error["message"] and "1792x1024" in error["message"]


async def test_model_may_be_omitted_as_in_openai(facade):
    client, _ = facade
    response = await client.post("/v1/images/generations", json={"prompt": "p", "size": "256x256"}, headers=AUTH)
    assert response.status == 200, await response.text()
    assert len((await response.json())["data"]) == 1
