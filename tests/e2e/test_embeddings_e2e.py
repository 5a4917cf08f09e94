"""End to end: embeddings with the official openai SDK against the real stack (real Triton, real MiniLM)."""

import asyncio
import base64

import httpx
import numpy as np
import openai
import pytest
import tritonclient.grpc.aio as triton

from tests.e2e.conftest import KEY

pytestmark = pytest.mark.e2e
MODEL = "sentence-transformers/all-MiniLM-L6-v2"
GUITAR, STRUM, MARKET = "A man is playing a guitar.", "Someone is strumming a guitar.", "The stock market fell sharply today."


def vectors(reply) -> np.ndarray:
    return np.array([d.embedding for d in sorted(reply.data, key=lambda d: d.index)], dtype=np.float32)


def test_listed_with_the_text_model(client):
    assert MODEL in [m.id for m in client.models.list().data]
    assert client.models.retrieve(MODEL).owned_by == "sentence-transformers"


def test_semantics_are_real_with_sdk_default_base64(client):
    reply = client.embeddings.create(model=MODEL, input=[GUITAR, STRUM, MARKET])  # SDK asks for base64
    v = vectors(reply)
    assert v.shape == (3, 384)
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-4)
    assert float(v[0] @ v[1]) == pytest.approx(0.7186, abs=0.01)
    assert abs(float(v[0] @ v[2])) < 0.15
    assert reply.usage.prompt_tokens == reply.usage.total_tokens > 0 and reply.model == MODEL


def test_string_input_and_float_equals_decoded_base64(stack, client):
    single = client.embeddings.create(model=MODEL, input=GUITAR, encoding_format="float")
    assert len(single.data) == 1 and len(single.data[0].embedding) == 384
    raw = httpx.post(f"{stack.config.base_url}/embeddings", headers={"Authorization": f"Bearer {KEY}"},
                     json={"model": MODEL, "input": GUITAR, "encoding_format": "base64"}, timeout=60).json()
    decoded = np.frombuffer(base64.b64decode(raw["data"][0]["embedding"]), dtype="<f4")
    assert np.array_equal(decoded, np.array(single.data[0].embedding, dtype=np.float32))


def test_seed_example_as_written(stack):
    body = {"model": MODEL, "input": "The food was delicious and the waiter..."}
    reply = httpx.post(f"{stack.config.base_url}/embeddings", json=body,
                       headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
    assert reply.status_code == 200, reply.text
    data = reply.json()
    assert data["object"] == "list" and data["data"][0]["object"] == "embedding"
    assert isinstance(data["data"][0]["embedding"][0], float)


def test_order_of_100_inputs_is_kept(client):
    texts = [f"Sentence number {i} is about topic {i % 7}." for i in range(100)]
    many = vectors(client.embeddings.create(model=MODEL, input=texts))
    for i in (0, 37, 99):
        alone = vectors(client.embeddings.create(model=MODEL, input=texts[i]))[0]
        assert float(many[i] @ alone) == pytest.approx(1.0, abs=1e-4)


def test_token_id_inputs(client):
    by_text = vectors(client.embeddings.create(model=MODEL, input="hello world"))[0]
    # "hello world" in the model's WordPiece vocabulary
    by_ids = vectors(client.embeddings.create(model=MODEL, input=[7592, 2088]))[0]
    assert float(by_text @ by_ids) == pytest.approx(1.0, abs=1e-4)
    both = client.embeddings.create(model=MODEL, input=[[7592, 2088], [7592]])
    assert [d.index for d in both.data] == [0, 1]


@pytest.mark.parametrize(
    "body, param, fragment",
    [
        ({"input": ""}, "input", "empty"),
        ({"input": ["ok", ""]}, "input", "empty"),
        ({"input": []}, "input", "empty"),
        ({"input": ["x"] * 2049}, "input", "2048"),
        ({"input": "x", "dimensions": 128}, "dimensions", "does not support"),
        ({"input": "x", "encoding_format": "int8"}, "encoding_format", ""),
        ({"input": "word " * 400}, "input", "254 tokens"),
        ({"input": [[999999]]}, "input", "vocabulary"),
        ({"input": 42}, "input", ""),
    ],
)
def test_bad_inputs_are_400_with_param(stack, body, param, fragment):
    reply = httpx.post(f"{stack.config.base_url}/embeddings", json={"model": MODEL, **body},
                       headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["param"] == param and fragment in error["message"]


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as err:
        client.embeddings.create(model="nope", input="x")
    assert err.value.body["code"] == "model_not_found"


def test_triton_merges_concurrent_requests_into_batches(stack):
    """Triton's own statistics show batches larger than any single request."""
    port = stack.config.ports["embeddings"]["triton_grpc"]

    async def run():
        client = triton.InferenceServerClient(f"127.0.0.1:{port}")
        try:
            before = (await client.get_inference_statistics("minilm", as_json=True))["model_stats"][0]
            async with httpx.AsyncClient(timeout=120) as http:
                await asyncio.gather(*(
                    http.post(f"{stack.config.base_url}/embeddings", headers={"Authorization": f"Bearer {KEY}"},
                              json={"model": MODEL, "input": f"one sentence, request {i}"})
                    for i in range(48)
                ))
            expected = int(before.get("inference_count", 0)) + 48

            async def stats():
                return (await client.get_inference_statistics("minilm", as_json=True))["model_stats"][0]

            deadline = asyncio.get_running_loop().time() + 30
            while int((after := await stats()).get("inference_count", 0)) < expected:
                assert asyncio.get_running_loop().time() < deadline, "statistics never caught up"
                await asyncio.sleep(0.1)
            return before, after
        finally:
            await client.close()

    before, after = asyncio.run(run())
    executions = int(after["execution_count"]) - int(before.get("execution_count", 0))
    inferences = int(after["inference_count"]) - int(before.get("inference_count", 0))
    assert executions < inferences == 48  # each request carried one input: fewer executions means merged batches
    assert max(int(b["batch_size"]) for b in after["batch_stats"]) > 1


