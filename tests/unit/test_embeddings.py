"""Embeddings servicer (fake backend, in-process gRPC) and the façade's /v1/embeddings."""

import base64
from pathlib import Path

import grpc
import numpy as np
import pytest

from facade.app import create_app
from facade.settings import Settings
from services.common.errors import reason_and_field
from hubmesh.embeddings.v1 import embeddings_pb2 as pb
from hubmesh.embeddings.v1 import embeddings_pb2_grpc as pb_grpc
from services.common.errors import InvalidArgument
from services.embeddings.catalog import load_catalog
from services.embeddings.servicer import EmbeddingsServicer
from tests.fakes import FakeEmbeddingsBackend
from tests.unit.text_service_fixture import serving

CATALOG = load_catalog(Path(__file__).resolve().parents[2] / "services" / "embeddings" / "catalog.toml")
MODEL = next(iter(CATALOG))
KEY = "k"
AUTH = {"Authorization": f"Bearer {KEY}"}


def embeddings_service(backend, catalog=CATALOG, chunk_size=3):
    servicer = EmbeddingsServicer(backend, catalog, chunk_size)
    return serving(lambda server: pb_grpc.add_EmbeddingsServicer_to_server(servicer, server))


async def embed(target, **fields):
    async with grpc.aio.insecure_channel(target) as channel:
        return await pb_grpc.EmbeddingsStub(channel).Embed(pb.EmbedRequest(model=MODEL, **fields))


async def test_inputs_are_chunked_and_order_is_kept():
    backend = FakeEmbeddingsBackend()
    texts = [f"t{i}" for i in range(8)]
    inputs = [pb.EmbedInput(text=t) for t in texts[:4]] + [pb.EmbedInput(tokens=pb.TokenIds(ids=[5, 6]))] + [
        pb.EmbedInput(text=t) for t in texts[4:]
    ]
    async with embeddings_service(backend) as target:
        reply = await embed(target, inputs=inputs)
    assert [kind for kind, _ in backend.requests].count("text") == 4  # [t0 t1 t2] [t3] [t4 t5 t6] [t7]
    assert ("tokens", [5, 6]) in backend.requests
    assert [e.index for e in reply.embeddings] == list(range(9))
    expected = backend._vector(sum(b"t5"))
    got = np.frombuffer(reply.embeddings[6].vector_f32le, dtype="<f4")
    assert np.array_equal(got, expected)
    assert reply.prompt_tokens == 8 + 2


async def test_model_errors_name_the_callers_input_index():
    backend = FakeEmbeddingsBackend(error=InvalidArgument("input 1 has 300 tokens; this model's maximum is 254"))
    async with embeddings_service(backend) as target:
        inputs = [pb.EmbedInput(text=f"t{i}") for i in range(5)]
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await embed(target, inputs=inputs)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith("input 1 has 300 tokens") or err.value.details().startswith("input 4 has")
    assert reason_and_field(err.value) == ("INVALID_REQUEST", "input")


async def test_dimensions_shorten_and_renormalise_where_supported():
    catalog = {MODEL: CATALOG[MODEL].model_copy(update={"supports_dimensions": True, "dimensions": 4})}
    async with embeddings_service(FakeEmbeddingsBackend(dims=4), catalog) as target:
        reply = await embed(target, inputs=[pb.EmbedInput(text="x")], dimensions=2)
    vector = np.frombuffer(reply.embeddings[0].vector_f32le, dtype="<f4")
    assert vector.shape == (2,) and np.linalg.norm(vector) == pytest.approx(1.0)


@pytest.mark.parametrize(
    "fields, code",
    [
        ({"inputs": []}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"inputs": [pb.EmbedInput(text="")]}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"inputs": [pb.EmbedInput(text="x")] * 2049}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"inputs": [pb.EmbedInput(text="x")], "dimensions": 10}, grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
async def test_invalid_requests(fields, code):
    async with embeddings_service(FakeEmbeddingsBackend()) as target:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await embed(target, **fields)
    assert err.value.code() == code


@pytest.fixture
async def facade(aiohttp_client):
    backend = FakeEmbeddingsBackend()
    async with embeddings_service(backend) as target:
        app = create_app(Settings(api_keys=(KEY,), embeddings_target=target, text_target=target))
        yield await aiohttp_client(app), backend


async def test_facade_float_and_base64_agree(facade):
    client, _ = facade
    as_float = await (await client.post("/v1/embeddings", json={"model": MODEL, "input": ["a b", "c"]}, headers=AUTH)).json()
    as_b64 = await (await client.post(
        "/v1/embeddings", json={"model": MODEL, "input": ["a b", "c"], "encoding_format": "base64"}, headers=AUTH
    )).json()
    assert as_float["object"] == "list" and as_float["model"] == MODEL
    assert as_float["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
    for f, b in zip(as_float["data"], as_b64["data"], strict=True):
        assert f["object"] == "embedding" and f["index"] == b["index"]
        assert np.array_equal(np.frombuffer(base64.b64decode(b["embedding"]), "<f4"), np.array(f["embedding"], "<f4"))


async def test_facade_token_inputs_map_to_token_protos(facade):
    client, backend = facade
    await client.post("/v1/embeddings", json={"model": MODEL, "input": [1, 2, 3]}, headers=AUTH)
    await client.post("/v1/embeddings", json={"model": MODEL, "input": [[4], [5, 6]]}, headers=AUTH)
    assert [r for r in backend.requests if r[0] == "tokens"] == [("tokens", [1, 2, 3]), ("tokens", [4]), ("tokens", [5, 6])]


@pytest.mark.parametrize(
    "body, param",
    [
        ({"input": "x"}, "model"),
        ({"model": MODEL}, "input"),
        ({"model": MODEL, "input": ""}, "input"),
        ({"model": MODEL, "input": [""]}, "input"),
        ({"model": MODEL, "input": ["x"] * 2049}, "input"),
        ({"model": MODEL, "input": [[-1]]}, "input"),
        ({"model": MODEL, "input": [1.5]}, "input"),
        ({"model": MODEL, "input": "x", "encoding_format": "hex"}, "encoding_format"),
        ({"model": MODEL, "input": "x", "dimensions": 0}, "dimensions"),
        ({"model": MODEL, "input": "x", "dimensions": 100}, "dimensions"),
    ],
)
async def test_facade_bad_inputs(facade, body, param):
    client, _ = facade
    response = await client.post("/v1/embeddings", json=body, headers=AUTH)
    assert response.status == 400
    error = (await response.json())["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
