"""End to end: images with the official openai SDK and raw HTTP against the real stack (real Triton,
the tiny diffusers pipeline)."""

import base64
import io

import httpx
import openai
import pytest
from PIL import Image

from tests.e2e.conftest import IMAGE_TTL_S, KEY, wait_for

pytestmark = pytest.mark.e2e
MODEL = "hubmesh/tiny-sd-noise-test"
SUNSET = "A beautiful sunset over the ocean"


def png(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return image


def test_listed_and_described_as_a_noise_test_pipeline(stack):
    models = httpx.get(f"{stack.config.base_url}/models", headers={"Authorization": f"Bearer {KEY}"}).json()["data"]
    entry = next(m for m in models if m["id"] == MODEL)
    assert "noise" in entry["description"]


def test_sdk_generate_n2_wide(client):
    reply = client.images.generate(model=MODEL, prompt=SUNSET, n=2, size="1792x1024", response_format="b64_json")
    assert len(reply.data) == 2
    for item in reply.data:
        assert png(base64.b64decode(item.b64_json)).size == (1792, 1024)
        assert item.revised_prompt == SUNSET


def test_seed_request_as_written(stack):
    body = {"model": MODEL, "prompt": SUNSET, "n": 1, "size": "1024*1024", "response_format": "b64_json"}
    reply = httpx.post(f"{stack.config.base_url}/images/generations", json=body,
                       headers={"Authorization": f"Bearer {KEY}"}, timeout=120)
    assert reply.status_code == 200, reply.text
    assert png(base64.b64decode(reply.json()["data"][0]["b64_json"])).size == (1024, 1024)


def test_seed_makes_images_reproducible(client):
    def draw(seed):
        return client.images.generate(model=MODEL, prompt=SUNSET, size="256x256", extra_body={"seed": seed}).data[0].b64_json

    assert draw(11) == draw(11)
    assert draw(11) != draw(12)


def test_url_download_with_signature_or_key_and_expiry(stack, client):
    reply = client.images.generate(model=MODEL, prompt=SUNSET, size="512x512", response_format="url")
    url = reply.data[0].url
    assert url.startswith(f"http://127.0.0.1:{stack.config.http_port}/v1/images/files/")
    signed = httpx.get(url, timeout=30)  # the signed link alone
    assert signed.status_code == 200 and signed.headers["content-type"] == "image/png"
    assert png(signed.content).size == (512, 512)
    bare = url.split("?")[0]
    assert httpx.get(bare, timeout=30).status_code == 401
    assert httpx.get(bare, headers={"Authorization": f"Bearer {KEY}"}, timeout=30).status_code == 200
    # after the TTL the stored image is gone for everyone
    wait_for(lambda: httpx.get(bare, headers={"Authorization": f"Bearer {KEY}"}, timeout=30).status_code == 404,
             IMAGE_TTL_S + 60, "the image expiring")
    assert httpx.get(url, timeout=30).status_code in (401, 404)


@pytest.mark.parametrize(
    "extra, param",
    [
        ({"size": "1000x1000"}, "size"),
        ({"size": "1024x"}, "size"),
        ({"n": 11}, "n"),
        ({"prompt": ""}, "prompt"),
        ({"response_format": "gif"}, "response_format"),
    ],
)
def test_bad_inputs(stack, extra, param):
    body = {"model": MODEL, "prompt": SUNSET, **extra}
    reply = httpx.post(f"{stack.config.base_url}/images/generations", json=body,
                       headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert error["param"] == param
    if param == "size":
        assert "1792x1024" in error["message"]


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError):
        client.images.generate(model="dall-e-3", prompt=SUNSET)
