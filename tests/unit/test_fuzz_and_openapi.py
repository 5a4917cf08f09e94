"""Hostile input: the OpenAPI document, and property-based fuzzing of every endpoint's body (no 500, no hang)."""

import asyncio
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from facade.app import create_app
from facade.settings import Settings
from tests.fakes import FakeEmbeddingsBackend, FakeImagesBackend, FakeTextBackend, chunk
from tests.unit.test_embeddings import embeddings_service
from tests.unit.test_images import images_service
from tests.unit.text_service_fixture import MODEL, running_text_service

KEY = "fuzz-key"
ENDPOINTS = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/images/generations"]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
FIELDS = ["model", "messages", "prompt", "input", "n", "temperature", "top_p", "stop", "max_tokens", "logit_bias",
          "stream", "stream_options", "size", "response_format", "encoding_format", "dimensions", "seed", "user"]
bodies = st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=8) | st.builds(
    lambda extra: {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "prompt": "p", "input": "x",
                   **extra},
    st.dictionaries(st.sampled_from(FIELDS[4:]), json_values, max_size=4),
)


@pytest.fixture
async def client(aiohttp_client, tmp_path):
    from services.images.storage import LocalDirectoryStore

    async with running_text_service(FakeTextBackend([chunk(["ok"], ["stop"])])) as text, \
            embeddings_service(FakeEmbeddingsBackend()) as emb, \
            images_service(FakeImagesBackend(), LocalDirectoryStore(tmp_path)) as img:
        app = create_app(Settings(api_keys=(KEY,), text_target=text, embeddings_target=emb, images_target=img))
        yield await aiohttp_client(app)


async def test_openapi_document_lists_the_five_families(client):
    response = await client.get("/openapi.json")  # public
    assert response.status == 200
    doc = await response.json()
    assert set(doc["paths"]) == {"/v1/chat/completions", "/v1/completions", "/v1/embeddings",
                                 "/v1/images/generations", "/v1/models", "/v1/models/{model}", "/v1/responses",
                                 "/v1/responses/{response_id}", "/v1/responses/{response_id}/input_items",
                                 "/v1/usage",  # the usage ledger's totals: a hubmesh extension
                                 "/v1/mesh",  # the services' Triton replicas: a hubmesh extension
                                 # keys the hub issues (a hubmesh extension), and IONOS's Auth API for them
                                 "/v1/keys", "/v1/keys/{key_id}", "/v1/keys/{key_id}/block", "/v1/keys/{key_id}/unblock",
                                 "/v1/keys/{key_id}/regenerate", "/auth/v1/tokens", "/auth/v1/tokens/generate",
                                 "/auth/v1/tokens/{token_id}",
                                 # Anthropic's Messages API
                                 "/v1/messages", "/v1/messages/count_tokens"}
    chat = doc["components"]["schemas"]["CreateChatCompletionRequest"]
    assert {"model", "messages"} <= set(chat["required"])
    assert chat["properties"]["temperature"]["anyOf"][0]["type"] == "number"  # its range is the service's rule


async def test_fuzzed_bodies_never_500_or_hang(client):
    seen = []

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(endpoint=st.sampled_from(ENDPOINTS), body=bodies)
    def run(endpoint, body):
        seen.append((endpoint, body))

    run()  # hypothesis draws the examples; the async client sends them below
    for endpoint, body in seen:
        response = await asyncio.wait_for(
            client.post(endpoint, data=json.dumps(body), headers={"Authorization": f"Bearer {KEY}"}), timeout=30
        )
        text = await response.text()
        assert response.status < 500, (endpoint, body, text)
        payload = json.loads(text) if response.content_type == "application/json" else None
        if response.status >= 400:
            assert set(payload["error"]) == {"message", "type", "param", "code"}


async def test_raw_byte_garbage_never_500(client):
    @settings(max_examples=60, deadline=None)
    @given(st.binary(max_size=200))
    def draw(data):
        samples.append(data)

    samples: list[bytes] = []
    draw()
    for data in samples:
        response = await client.post("/v1/chat/completions", data=data, headers={"Authorization": f"Bearer {KEY}"})
        assert response.status == 400
