"""What the façade sends is what /openapi.json says: real responses (unary bodies, every SSE event,
error bodies) from the app in front of in-process services over fake backends, each validated
against the schema the served document gives for its operation and status (tests/unit/openapi_check.py)."""

import pytest

from facade.app import create_app
from facade.settings import Settings
from services.common.errors import BackendUnavailable
from services.images.storage import LocalDirectoryStore
from tests.fakes import FakeEmbeddingsBackend, FakeImagesBackend, FakeTextBackend, chunk, logprob_chunks
from tests.unit import test_embeddings, test_images
from tests.unit.openapi_check import Conformance
from tests.unit.text_service_fixture import MODEL, running_text_service

KEY = "conformance-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}}]
CALL = '{"name": "get_weather", "arguments": {"city": "Paris"}}'


class FailsMidStream(FakeTextBackend):
    """Sends its chunks, then Triton goes away: the error travels in-band."""

    async def generate(self, model, prompt, sampling, stream, resume=None):
        async for piece in super().generate(model, prompt, sampling, stream):
            yield piece
        raise BackendUnavailable("Triton is unreachable")


@pytest.fixture
async def stack(aiohttp_client, tmp_path):
    """start(text_backend) -> (client, Conformance over the served /openapi.json)."""
    from contextlib import AsyncExitStack

    async with AsyncExitStack() as contexts:
        emb = await contexts.enter_async_context(test_embeddings.embeddings_service(FakeEmbeddingsBackend()))
        img = await contexts.enter_async_context(
            test_images.images_service(FakeImagesBackend(), LocalDirectoryStore(tmp_path)))

        async def start(text_backend):
            text = await contexts.enter_async_context(running_text_service(text_backend))
            app = create_app(Settings(api_keys=(KEY,), text_target=text, embeddings_target=emb, images_target=img))
            client = await aiohttp_client(app)
            document = await (await client.get("/openapi.json")).json()
            return client, Conformance(document)

        yield start


def chat(**extra):
    return {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], **extra}


async def test_chat_text_unary_and_stream(stack):
    backend = FakeTextBackend([chunk(["Hel", "Bon"]), chunk(["lo", "jour"], ["stop", "length"])])
    client, doc = await stack(backend)
    body = await doc.check(await client.post("/v1/chat/completions", json=chat(n=2), headers=AUTH),
                           "POST", "/v1/chat/completions")
    assert [c["message"]["content"] for c in body["choices"]] == ["Hello", "Bonjour"]

    for options in ({}, {"stream_options": {"include_usage": True}}):
        response = await client.post("/v1/chat/completions", json=chat(n=2, stream=True, **options), headers=AUTH)
        events = await doc.check(response, "POST", "/v1/chat/completions")
        for event in events:
            doc.component("ChatCompletionChunk", event)  # chunks, not errors
        assert ("usage" in events[0]) == bool(options)
        assert {c["finish_reason"] for e in events for c in e["choices"]} == {None, "stop", "length"}


async def test_chat_tool_calls_unary_and_stream(stack):
    pieces = ['{"name": "get_weather", ', '"arguments": {"ci', 'ty": "Paris"}}']
    backend = FakeTextBackend([chunk([p]) for p in pieces] + [chunk([""], ["stop"], n_out=[0])])
    client, doc = await stack(backend)
    required = chat(tools=TOOLS, tool_choice="required")
    body = await doc.check(await client.post("/v1/chat/completions", json=required, headers=AUTH),
                           "POST", "/v1/chat/completions")
    choice = body["choices"][0]
    assert choice["message"]["content"] is None and choice["message"]["tool_calls"]
    assert choice["finish_reason"] == "tool_calls"

    response = await client.post("/v1/chat/completions", json={**required, "stream": True}, headers=AUTH)
    events = await doc.check(response, "POST", "/v1/chat/completions")
    for event in events:
        doc.component("ChatCompletionChunk", event)
    deltas = [c["delta"] for e in events for c in e["choices"]]
    assert deltas[0] == {"role": "assistant", "content": None}
    assert {"id", "type"} <= set(deltas[1]["tool_calls"][0]) and "id" not in deltas[2]["tool_calls"][0]


async def test_completions_several_prompts_unary_and_stream(stack):
    client, doc = await stack(FakeTextBackend([chunk([" a", " b"]), chunk(["", ""], ["stop", "length"])]))
    body = await doc.check(
        await client.post("/v1/completions", json={"model": MODEL, "prompt": ["p", "q"], "n": 2, "echo": True},
                          headers=AUTH),
        "POST", "/v1/completions")
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3] and "system_fingerprint" in body

    for options in ({}, {"stream_options": {"include_usage": True}}):
        response = await client.post(
            "/v1/completions", json={"model": MODEL, "prompt": ["p", "q"], "n": 2, "stream": True, **options},
            headers=AUTH)
        events = await doc.check(response, "POST", "/v1/completions")
        for event in events:
            doc.component("Completion", event)
        assert {c["index"] for e in events for c in e["choices"]} == {0, 1, 2, 3}
        assert events[-1]["usage"] if options else all("usage" not in e for e in events)


async def test_logprobs_chat_and_completions_unary_and_stream(stack):
    client, doc = await stack(FakeTextBackend(logprob_chunks(["Hel", "lo"])))
    for stream in (False, True):
        response = await client.post("/v1/chat/completions", headers=AUTH,
                                     json=chat(logprobs=True, top_logprobs=3, stream=stream))
        body = await doc.check(response, "POST", "/v1/chat/completions")
        for event in body if stream else [body]:
            doc.component("ChatCompletionChunk" if stream else "ChatCompletion", event)
        logprobs = [c["logprobs"] for e in (body if stream else [body]) for c in e["choices"]]
        assert [t["token"] for lp in logprobs if lp for t in lp["content"]] == ["Hel", "lo"]

        response = await client.post("/v1/completions", headers=AUTH,
                                     json={"model": MODEL, "prompt": "p", "logprobs": 2, "stream": stream})
        body = await doc.check(response, "POST", "/v1/completions")
        for event in body if stream else [body]:
            doc.component("Completion", event)
        assert [t for e in (body if stream else [body]) for c in e["choices"] for t in c["logprobs"]["tokens"]] == [
            "Hel", "lo"]


async def test_embeddings_float_and_base64(stack):
    client, doc = await stack(FakeTextBackend())
    for encoding, kind in (("float", list), ("base64", str)):
        body = await doc.check(
            await client.post("/v1/embeddings", headers=AUTH,
                              json={"model": test_embeddings.MODEL, "input": ["a b", "c"], "encoding_format": encoding}),
            "POST", "/v1/embeddings")
        assert all(isinstance(e["embedding"], kind) for e in body["data"])


async def test_images_b64_and_url(stack):
    client, doc = await stack(FakeTextBackend())
    for response_format in ("b64_json", "url"):
        body = await doc.check(
            await client.post("/v1/images/generations", headers=AUTH,
                              json={"model": test_images.MODEL, "prompt": "p", "n": 2, "size": "256x256",
                                    "response_format": response_format}),
            "POST", "/v1/images/generations")
        assert all(set(image) == {response_format, "revised_prompt"} for image in body["data"])


async def test_models_list_and_retrieve(stack):
    client, doc = await stack(FakeTextBackend())
    listing = await doc.check(await client.get("/v1/models", headers=AUTH), "GET", "/v1/models")
    ids = [m["id"] for m in listing["data"]]
    assert {MODEL, test_embeddings.MODEL, test_images.MODEL} <= set(ids)
    for model_id in ids:  # descriptions (an extension) included
        model = await doc.check(await client.get(f"/v1/models/{model_id}", headers=AUTH), "GET", "/v1/models/{model}")
        assert model["id"] == model_id


async def test_errors_are_documented_error_responses(stack):
    client, doc = await stack(FakeTextBackend())
    cases = [
        ("POST", "/v1/chat/completions", {"model": MODEL, "messages": []}, AUTH, 400),
        ("POST", "/v1/chat/completions", chat(), {}, 401),
        ("POST", "/v1/completions", {"model": "nope", "prompt": "x"}, AUTH, 404),
        ("POST", "/v1/embeddings", {"model": "nope", "input": "x"}, AUTH, 404),
        ("POST", "/v1/images/generations", {"model": test_images.MODEL, "prompt": "p", "size": "7x7"}, AUTH, 400),
        ("GET", "/v1/models/nope", None, AUTH, 404),
    ]
    for method, path, json_body, headers, status in cases:
        response = await client.request(method, path, json=json_body, headers=headers)
        assert response.status == status, (path, await response.text())
        body = await doc.check(response, method, path)
        assert set(body["error"]) == {"message", "type", "param", "code"}
    unknown = await client.get("/v1/nothing", headers=AUTH)  # no documented path: the component itself
    assert unknown.status == 404
    doc.component("ErrorResponse", await unknown.json())


async def test_an_error_mid_stream_is_a_documented_event(stack):
    client, doc = await stack(FailsMidStream([chunk(["a"])]))
    response = await client.post("/v1/chat/completions", json=chat(stream=True), headers=AUTH)
    assert response.status == 200
    events = await doc.check(response, "POST", "/v1/chat/completions")
    doc.component("ErrorResponse", events[-1])
    assert events[-1]["error"]["type"] == "server_error"


async def test_the_document_references_only_what_it_defines(stack):
    client, doc = await stack(FakeTextBackend())
    schemas = doc.document["components"]["schemas"]
    refs = set()

    def walk(node):
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                refs.add(node["$ref"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(doc.document)
    assert refs and all(r.startswith("#/components/schemas/") for r in refs)
    assert {r.rsplit("/", 1)[1] for r in refs} <= set(schemas)
    chat_ok = doc.document["paths"]["/v1/chat/completions"]["post"]["responses"]["200"]["content"]
    assert set(chat_ok) == {"application/json", "text/event-stream"}
    assert "data: [DONE]" in chat_ok["text/event-stream"]["schema"]["description"]
    message = schemas["ChatCompletionMessage"]
    assert message["properties"]["content"] == {"anyOf": [{"type": "string"}, {"type": "null"}], "title": "Content"}
    assert "tool_calls" in schemas["ChatCompletionChoice"]["properties"]["finish_reason"]["enum"]


def test_the_check_catches_drift():
    import jsonschema

    from facade.openapi import build_document
    from facade.routes import ROUTES

    doc = Conformance(build_document(ROUTES))
    good = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": MODEL, "system_fingerprint": "fp",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": None, "refusal": None},
                         "logprobs": None, "finish_reason": "tool_calls"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}}
    doc.component("ChatCompletion", good)
    message = good["choices"][0]["message"]
    drifted = [
        {**good, "extra": 1},  # a field sent but not documented
        {**good, "choices": [{**good["choices"][0], "message": {k: v for k, v in message.items() if k != "refusal"}}]},
        {**good, "choices": [{**good["choices"][0], "finish_reason": None}]},  # null where it never is
        {**good, "choices": [{**good["choices"][0], "finish_reason": "content_filter"}]},  # never sent here
        {**good, "usage": None},
    ]
    for body in drifted:
        with pytest.raises(jsonschema.ValidationError):
            doc.component("ChatCompletion", body)
    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": MODEL, "system_fingerprint": "fp",
             "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": None}], "usage": None}
    doc.validate(doc.schema("POST", "/v1/chat/completions", 200, "text/event-stream"), chunk)
    with pytest.raises(jsonschema.ValidationError):
        doc.component("ChatCompletionChunk", {**chunk, "choices": [{**chunk["choices"][0], "delta": {"refusal": None}}]})
    token = {"token": "a", "logprob": -0.5, "bytes": [97], "top_logprobs": [{"token": "a", "logprob": -0.5, "bytes": [97]}]}
    with_logprobs = {**good, "choices": [{**good["choices"][0], "logprobs": {"content": [token], "refusal": None}}]}
    doc.component("ChatCompletion", with_logprobs)
    for logprobs in ({"content": [token]}, {"content": [{**token, "top_logprobs": None}], "refusal": None},
                     {"content": [token], "refusal": []}):
        with pytest.raises(jsonschema.ValidationError):
            doc.component("ChatCompletion", {**good, "choices": [{**good["choices"][0], "logprobs": logprobs}]})
