"""The façade through aiohttp's test client, in front of the real servicer with a fake backend."""

import asyncio
import json

import pytest

from facade.app import create_app
from facade.settings import Settings
from services.common.errors import BackendUnavailable, InvalidArgument
from tests.fakes import FakeTextBackend, chunk, logprob_chunks, token
from tests.unit.text_service_fixture import MODEL

KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


async def client_for(aiohttp_client, services, backend, **settings):
    target = await services(backend)
    return await aiohttp_client(create_app(Settings(api_keys=(KEY,), text_target=target, **settings)))


def chat_body(**extra):
    return {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], **extra}


async def test_chat_completion_body_is_openai_shaped(aiohttp_client, services):
    client = await client_for(aiohttp_client, services, FakeTextBackend([chunk(["Hello!"], ["stop"], n_in=9, n_out=[2])]))
    response = await client.post("/v1/chat/completions", json=chat_body(), headers=AUTH)
    assert response.status == 200
    body = await response.json()
    assert body["id"].startswith("chatcmpl-") and body["object"] == "chat.completion"
    assert isinstance(body["created"], int) and body["model"] == MODEL and body["system_fingerprint"]
    assert body["choices"] == [
        {"index": 0, "message": {"role": "assistant", "content": "Hello!", "refusal": None},
         "logprobs": None, "finish_reason": "stop"}
    ]
    assert body["usage"] == {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}


async def test_chat_stream_exact_sse_bytes(aiohttp_client, services):
    backend = FakeTextBackend([chunk(["Hel"]), chunk(["lo"]), chunk([""], ["length"], n_out=[0])])
    client = await client_for(aiohttp_client, services, backend)
    response = await client.post(
        "/v1/chat/completions", json=chat_body(stream=True, stream_options={"include_usage": True}), headers=AUTH
    )
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")
    assert response.headers["X-Accel-Buffering"] == "no"
    raw = (await response.read()).decode()
    events = raw.split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    assert all(e.startswith("data: ") and "\n" not in e for e in events[:-1])
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    assert len({c["id"] for c in chunks}) == 1
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == MODEL for c in chunks)
    assert [c["choices"] for c in chunks] == [
        [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}],
        [{"index": 0, "delta": {"content": "Hel"}, "logprobs": None, "finish_reason": None}],
        [{"index": 0, "delta": {"content": "lo"}, "logprobs": None, "finish_reason": None}],
        [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "length"}],
        [],
    ]
    assert [c["usage"] for c in chunks[:-1]] == [None] * 4
    assert chunks[-1]["usage"] == {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}


async def test_cached_prompt_tokens_reach_usage_details(aiohttp_client, services):
    """A model server that reports its prefix cache (the engine simulator): usage.prompt_tokens_details."""
    cached = chunk(["Hi"], ["stop"], n_in=40, n_out=[1])
    cached.num_cached_tokens = 32
    client = await client_for(aiohttp_client, services, FakeTextBackend([cached]))
    body = await (await client.post("/v1/chat/completions", json=chat_body(), headers=AUTH)).json()
    assert body["usage"] == {"prompt_tokens": 40, "completion_tokens": 1, "total_tokens": 41,
                             "prompt_tokens_details": {"cached_tokens": 32}}
    response = await client.post(
        "/v1/completions", json={"model": MODEL, "prompt": ["a", "b"], "stream": True,
                                 "stream_options": {"include_usage": True}}, headers=AUTH,
    )
    events = (await response.read()).decode().split("\n\n")
    usage = json.loads(events[-3].removeprefix("data: "))["usage"]
    assert usage["prompt_tokens"] == 80 and usage["prompt_tokens_details"] == {"cached_tokens": 64}


async def test_completion_stream_and_json(aiohttp_client, services):
    backend = FakeTextBackend([chunk([" a", " b"]), chunk(["", ""], ["stop", "stop"], n_out=[0, 0])])
    client = await client_for(aiohttp_client, services, backend)
    response = await client.post(
        "/v1/completions", json={"model": MODEL, "prompt": "x", "n": 2, "stream": True}, headers=AUTH
    )
    events = (await response.read()).decode().split("\n\n")
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    assert [c["choices"] for c in chunks] == [
        [{"index": 0, "text": " a", "logprobs": None, "finish_reason": None},
         {"index": 1, "text": " b", "logprobs": None, "finish_reason": None}],
        [{"index": 0, "text": "", "logprobs": None, "finish_reason": "stop"},
         {"index": 1, "text": "", "logprobs": None, "finish_reason": "stop"}],
    ]
    assert "usage" not in chunks[0]
    assert backend.calls[0]["sampling"]["max_tokens"] == 16  # OpenAI's default for completions

    response = await client.post(
        "/v1/completions", json={"model": MODEL, "prompt": ["p", "q"], "n": 2, "echo": True}, headers=AUTH
    )
    body = await response.json()
    assert body["object"] == "text_completion"
    assert [(c["index"], c["text"]) for c in body["choices"]] == [(0, "p a"), (1, "p b"), (2, "q a"), (3, "q b")]


async def test_max_completion_tokens_wins_over_max_tokens(aiohttp_client, services):
    backend = FakeTextBackend([chunk(["x"], ["length"])])
    client = await client_for(aiohttp_client, services, backend)
    await client.post("/v1/chat/completions", json=chat_body(max_tokens=50, max_completion_tokens=7), headers=AUTH)
    assert backend.calls[0]["sampling"]["max_tokens"] == 7


@pytest.mark.parametrize(
    "body, param",
    [
        ({"messages": [{"role": "user", "content": "x"}]}, "model"),
        ({"model": MODEL}, "messages"),
        (chat_body(messages=[]), "messages"),
        (chat_body(messages="hi"), "messages"),
        (chat_body(messages=[{"role": "wizard", "content": "x"}]), "messages[0].role"),
        (chat_body(messages=[{"content": "x"}]), "messages[0].role"),
        (chat_body(messages=[{"role": "user"}]), "messages[0]"),
        (chat_body(temperature=2.5), "temperature"),
        (chat_body(temperature="hot"), "temperature"),
        (chat_body(top_p=0), "top_p"),
        (chat_body(top_p=1.5), "top_p"),
        (chat_body(n=0), "n"),
        (chat_body(n=129), "n"),
        (chat_body(presence_penalty=3), "presence_penalty"),
        (chat_body(frequency_penalty=-2.5), "frequency_penalty"),
        (chat_body(stop=["a", "b", "c", "d", "e"]), "stop"),
        (chat_body(logit_bias={"5": 101}), "logit_bias"),
        (chat_body(logit_bias={"token": 1}), "logit_bias"),
        (chat_body(max_tokens=0), "max_tokens"),
        (chat_body(max_tokens=9000), "max_tokens"),
        (chat_body(stream="yes"), "stream"),
        (chat_body(stream_options={"include_usage": True}), "stream_options"),
        (chat_body(response_format={"type": "json_schema"}), "response_format"),
        (chat_body(response_format={"type": "xml"}), "response_format.type"),
    ],
)
async def test_bad_chat_inputs_are_400_naming_the_param(aiohttp_client, services, body, param):
    client = await client_for(aiohttp_client, services, FakeTextBackend())
    response = await client.post("/v1/chat/completions", json=body, headers=AUTH)
    assert response.status == 400, await response.text()
    error = (await response.json())["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param and error["message"]


async def test_malformed_json_and_non_object_bodies(aiohttp_client, services):
    client = await client_for(aiohttp_client, services, FakeTextBackend())
    for data in (b"{not json", b"[1, 2]", b"\xff\xfe"):
        response = await client.post("/v1/chat/completions", data=data, headers=AUTH)
        assert response.status == 400
        assert set((await response.json())["error"]) == {"message", "type", "param", "code"}
    deep = b"[" * 100 + b"]" * 100
    response = await client.post("/v1/chat/completions", data=b'{"model": ' + deep + b"}", headers=AUTH)
    assert response.status == 400 and "nested" in (await response.json())["error"]["message"]


async def test_body_over_the_limit_is_413(aiohttp_client, services):
    client = await client_for(aiohttp_client, services, FakeTextBackend(), max_body_bytes=1024)
    response = await client.post("/v1/chat/completions", data=b"x" * 4096, headers=AUTH)
    assert response.status == 413
    assert (await response.json())["error"]["code"] == "request_too_large"


async def test_auth_failures_are_401_and_never_echo_the_key(aiohttp_client, services):
    client = await client_for(aiohttp_client, services, FakeTextBackend())
    for headers in ({}, {"Authorization": "Basic abc"}, {"Authorization": "Bearer wrong-secret-value"}):
        response = await client.post("/v1/chat/completions", json=chat_body(), headers=headers)
        assert response.status == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        text = await response.text()
        assert "wrong-secret-value" not in text and (await response.json())["error"]["type"] == "authentication_error"
    assert (await client.get("/health")).status == 200


async def test_unknown_model_is_404_model_not_found(aiohttp_client, services):
    client = await client_for(aiohttp_client, services, FakeTextBackend())
    for path, body in (("/v1/chat/completions", chat_body(model="nope")), ("/v1/completions", {"model": "nope", "prompt": "x"})):
        response = await client.post(path, json=body, headers=AUTH)
        assert response.status == 404
        assert (await response.json())["error"] == {
            "message": "The model 'nope' does not exist", "type": "invalid_request_error",
            "param": "model", "code": "model_not_found",
        }
    response = await client.get("/v1/models/nope", headers=AUTH)
    assert response.status == 404 and (await response.json())["error"]["code"] == "model_not_found"


async def test_models_list_and_retrieve_with_slash_in_id(aiohttp_client, services):
    client = await client_for(aiohttp_client, services, FakeTextBackend())
    listing = await (await client.get("/v1/models", headers=AUTH)).json()
    assert listing["object"] == "list" and [m["id"] for m in listing["data"]] == [MODEL]
    model = await (await client.get(f"/v1/models/{MODEL}", headers=AUTH)).json()
    assert model == {"id": MODEL, "object": "model", "created": 1730419200, "owned_by": "HuggingFaceTB"}


async def test_model_input_errors_map_to_400_with_param(aiohttp_client, services):
    backend = FakeTextBackend(error=InvalidArgument("Prompt length of 9000 tokens is longer than the maximum model length"))
    client = await client_for(aiohttp_client, services, backend)
    response = await client.post("/v1/completions", json={"model": MODEL, "prompt": "x"}, headers=AUTH)
    assert response.status == 400
    assert (await response.json())["error"]["param"] == "prompt"
    response = await client.post("/v1/chat/completions", json=chat_body(stream=True), headers=AUTH)
    assert response.status == 400  # streams read the first message before sending headers
    assert (await response.json())["error"]["param"] == "messages"


async def test_triton_down_is_503(aiohttp_client, services):
    client = await client_for(aiohttp_client, services, FakeTextBackend(error=BackendUnavailable("Triton is unreachable")))
    response = await client.post("/v1/chat/completions", json=chat_body(), headers=AUTH)
    assert response.status == 503
    assert (await response.json())["error"]["type"] == "server_error"


async def test_service_down_is_503_not_a_hang(aiohttp_client):
    from local.processes import free_port

    app = create_app(Settings(api_keys=(KEY,), text_target=f"127.0.0.1:{free_port()}"))
    client = await aiohttp_client(app)
    for path, body in (("/v1/chat/completions", chat_body()), ("/v1/chat/completions", chat_body(stream=True))):
        response = await asyncio.wait_for(client.post(path, json=body, headers=AUTH), timeout=30)
        assert response.status == 503
        assert "text service is unavailable" in (await response.json())["error"]["message"]
    response = await client.get("/v1/models", headers=AUTH)
    assert response.status == 503


async def test_client_disconnect_cancels_the_generation(aiohttp_client, services):
    backend = FakeTextBackend([chunk(["a"]), chunk(["b"])], hang_after=1)
    target = await services(backend)
    app = create_app(Settings(api_keys=(KEY,), text_target=target))
    client = await aiohttp_client(app, server_kwargs={"handler_cancellation": True})
    response = await client.post("/v1/chat/completions", json=chat_body(stream=True), headers=AUTH)
    await response.content.readuntil(b'"a"')
    response.close()  # the client goes away mid-stream
    await asyncio.wait_for(backend.closed_early.wait(), timeout=10)


async def test_unknown_route_is_openai_shaped_404(aiohttp_client, services):
    client = await client_for(aiohttp_client, services, FakeTextBackend())
    response = await client.get("/v1/nothing", headers=AUTH)
    assert response.status == 404 and "error" in await response.json()


async def test_ready_reports_each_service(aiohttp_client):
    from local.processes import free_port

    app = create_app(Settings(api_keys=(KEY,), text_target=f"127.0.0.1:{free_port()}",
                              embeddings_target=f"127.0.0.1:{free_port()}", images_target=f"127.0.0.1:{free_port()}"))
    client = await aiohttp_client(app)
    response = await client.get("/ready")  # public, like /health
    assert response.status == 503
    body = await response.json()
    assert body["status"] == "not ready" and set(body["services"]) == {"text", "embeddings", "images"}
    assert (await client.get("/health")).status == 200


# -- tools and structured output -------------------------------------------------------------------

WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather now", "parameters": WEATHER}}]
CALL = '{"name": "get_weather", "arguments": {"city": "Paris"}}'


def test_tools_and_tool_messages_map_onto_the_proto():
    from facade.api.chat.protocol import ChatCompletionRequest
    from hubmesh.text.v1 import text_generation_pb2 as pb

    body = ChatCompletionRequest.model_validate(chat_body(
        messages=[
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_9", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}}]},
            {"role": "tool", "tool_call_id": "call_9", "content": [{"type": "text", "text": "21 C"}]},
        ],
        tools=[*TOOLS, {"type": "function", "function": {"name": "noop"}}],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        parallel_tool_calls=False,
        response_format={"type": "json_schema", "json_schema": {"name": "w", "schema": WEATHER, "strict": True}},
    ))
    request = body.to_proto()
    assert [(m.role, m.content) for m in request.chat.messages] == [("user", "Weather?"), ("assistant", ""), ("tool", "21 C")]
    assert [(c.id, c.name, c.arguments) for c in request.chat.messages[1].tool_calls] == [
        ("call_9", "get_weather", '{"city": "Rome"}')]
    assert request.chat.messages[2].tool_call_id == "call_9" and not request.chat.messages[0].HasField("tool_call_id")
    weather, noop = request.tools
    assert (weather.name, weather.description, json.loads(weather.parameters)) == ("get_weather", "Weather now", WEATHER)
    assert noop.name == "noop" and not noop.HasField("parameters") and not noop.HasField("description")
    assert request.tool_choice.function_name == "get_weather"
    assert request.HasField("parallel_tool_calls") and not request.parallel_tool_calls
    assert request.response_format.type == pb.RESPONSE_FORMAT_TYPE_JSON_SCHEMA
    assert (request.response_format.name, json.loads(request.response_format.json_schema)) == ("w", WEATHER)

    plain = ChatCompletionRequest.model_validate(chat_body(tools=TOOLS, tool_choice="required")).to_proto()
    assert plain.tool_choice.mode == pb.TOOL_CHOICE_MODE_REQUIRED and not plain.HasField("parallel_tool_calls")
    assert not plain.HasField("response_format")
    bare = ChatCompletionRequest.model_validate(chat_body()).to_proto()
    assert not bare.tools and not bare.HasField("tool_choice")


async def test_unary_tool_call_is_openai_shaped(aiohttp_client, services):
    backend = FakeTextBackend([chunk([CALL], ["stop"], n_in=30, n_out=[14])])
    client = await client_for(aiohttp_client, services, backend)
    response = await client.post("/v1/chat/completions", json=chat_body(tools=TOOLS, tool_choice="required"), headers=AUTH)
    assert response.status == 200, await response.text()
    choice = (await response.json())["choices"][0]
    call_id = choice["message"]["tool_calls"][0]["id"]
    assert call_id.startswith("call_")
    assert choice == {
        "index": 0,
        "message": {"role": "assistant", "content": None, "refusal": None, "tool_calls": [
            {"id": call_id, "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        "logprobs": None,
        "finish_reason": "tool_calls",
    }


async def test_streamed_tool_call_exact_sse_chunks(aiohttp_client, services):
    pieces = ['{"name": "get_weather", ', '"arguments": {"ci', 'ty": "Par', 'is"}}']
    backend = FakeTextBackend([chunk([p]) for p in pieces] + [chunk([""], ["stop"], n_out=[0])])
    client = await client_for(aiohttp_client, services, backend)
    response = await client.post(
        "/v1/chat/completions", headers=AUTH,
        json=chat_body(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_weather"}}, stream=True),
    )
    assert response.status == 200
    events = (await response.read()).decode().split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    call_id = chunks[1]["choices"][0]["delta"]["tool_calls"][0]["id"]
    assert call_id.startswith("call_")

    def fragment(text):
        return [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": text}}]},
                 "logprobs": None, "finish_reason": None}]

    assert [c["choices"] for c in chunks] == [
        [{"index": 0, "delta": {"role": "assistant", "content": None}, "logprobs": None, "finish_reason": None}],
        [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": call_id, "type": "function",
                                                "function": {"name": "get_weather", "arguments": ""}}]},
          "logprobs": None, "finish_reason": None}],
        fragment('{"ci'), fragment('ty": "Par'), fragment('is"}'),
        [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "tool_calls"}],
    ]
    assert len({c["id"] for c in chunks}) == 1 and all(c["object"] == "chat.completion.chunk" for c in chunks)


async def test_streamed_auto_answer_text_then_call(aiohttp_client, services):
    backend = FakeTextBackend([chunk(["Checking "]), chunk(['now. {"name": "get_weather", "arguments": {}}']),
                               chunk([""], ["stop"], n_out=[0])])
    client = await client_for(aiohttp_client, services, backend)
    response = await client.post("/v1/chat/completions", json=chat_body(tools=TOOLS, stream=True), headers=AUTH)
    chunks = [json.loads(e.removeprefix("data: ")) for e in (await response.read()).decode().split("\n\n")[:-2]]
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas[0] == {"role": "assistant", "content": ""}
    assert "".join(d.get("content") or "" for d in deltas) == "Checking now."
    calls = [t for d in deltas for t in d.get("tool_calls", [])]
    assert calls[0]["function"] == {"name": "get_weather", "arguments": ""} and calls[1]["function"] == {"arguments": "{}"}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


async def test_json_response_format_reaches_the_model(aiohttp_client, services):
    backend = FakeTextBackend([chunk(['{"ok": true}'], ["stop"])])
    client = await client_for(aiohttp_client, services, backend)
    response = await client.post("/v1/chat/completions", json=chat_body(response_format={"type": "json_object"}),
                                 headers=AUTH)
    assert (await response.json())["choices"][0]["message"]["content"] == '{"ok": true}'
    assert json.loads(backend.calls[0]["sampling"]["structured_outputs"]) == {"json_object": True}


@pytest.mark.parametrize(
    "body, param",
    [
        (chat_body(tools=[{"type": "function", "function": {"name": "bad name"}}]), "tools[0].function.name"),
        (chat_body(tools=[{"type": "retrieval"}]), "tools[0].type"),
        (chat_body(tools=TOOLS, tool_choice="sometimes"), "tool_choice"),
        (chat_body(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "other"}}), "tool_choice"),
        (chat_body(tool_choice="required"), "tool_choice"),
        (chat_body(tools=[{"type": "function", "function": {"name": "f", "parameters": {
            "type": "object", "properties": {"a": {"not": {"type": "string"}}}}}}]), "tools[0].function.parameters"),
        (chat_body(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {
            "type": "object", "dependentRequired": {"a": ["b"]}}}}), "response_format"),
        (chat_body(response_format={"type": "json_schema", "json_schema": {"name": "has space", "schema": {}}}),
         "response_format.json_schema.name"),
        (chat_body(messages=[{"role": "user", "content": "x"}, {"role": "tool", "content": "r"}]), "messages[1]"),
        (chat_body(messages=[{"role": "user", "content": "x", "tool_calls": []}, {"role": "user", "content": "y",
          "tool_calls": [{"id": "a", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}]), "messages[1]"),
        (chat_body(parallel_tool_calls="no"), "parallel_tool_calls"),
        (chat_body(functions=[{"name": "f"}]), "functions"),
        (chat_body(function_call="auto"), "function_call"),
    ],
)
async def test_bad_tool_and_format_inputs_are_400_naming_the_param(aiohttp_client, services, body, param):
    client = await client_for(aiohttp_client, services, FakeTextBackend())
    response = await client.post("/v1/chat/completions", json=body, headers=AUTH)
    assert response.status == 400, await response.text()
    error = (await response.json())["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param and error["message"]


# -- logprobs -------------------------------------------------------------------------------------


def _sse(raw: bytes) -> list[dict]:
    events = raw.decode().split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    return [json.loads(e.removeprefix("data: ")) for e in events[:-2]]


def _lp(text, logprob, top):
    return {"token": text, "logprob": logprob, "bytes": list(text.encode()),
            "top_logprobs": [{"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in top]}


async def test_chat_logprobs_unary_and_stream(aiohttp_client, services):
    backend = FakeTextBackend(logprob_chunks(["Hel", "lo é"], alternatives=2))
    client = await client_for(aiohttp_client, services, backend)
    body = await (await client.post("/v1/chat/completions", json=chat_body(logprobs=True, top_logprobs=2),
                                    headers=AUTH)).json()
    assert backend.calls[0]["sampling"]["logprobs"] == 2
    assert body["choices"][0]["logprobs"] == {
        "content": [_lp("Hel", -0.1, [("Hel", -0.1), ("<alt0.1>", -1.1)]),
                    _lp("lo é", -0.2, [("lo é", -0.2), ("<alt1.1>", -1.2)])],
        "refusal": None,
    }
    assert body["choices"][0]["message"]["content"] == "Hello é"

    response = await client.post("/v1/chat/completions", json=chat_body(logprobs=True, stream=True), headers=AUTH)
    chunks = _sse(await response.read())
    assert backend.calls[1]["sampling"]["logprobs"] == 0  # logprobs without top_logprobs: the sampled token's only
    assert [c["choices"] for c in chunks] == [
        [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}],
        [{"index": 0, "delta": {"content": "Hel"}, "logprobs": {"content": [_lp("Hel", -0.1, [])], "refusal": None},
          "finish_reason": None}],
        [{"index": 0, "delta": {"content": "lo é"}, "logprobs": {"content": [_lp("lo é", -0.2, [])], "refusal": None},
          "finish_reason": None}],
        [{"index": 0, "delta": {}, "logprobs": {"content": [], "refusal": None}, "finish_reason": "stop"}],
    ]


async def test_completions_logprobs_legacy_shape_unary_and_stream(aiohttp_client, services):
    backend = FakeTextBackend(logprob_chunks([" Par", "is", "."], alternatives=1, reason="length"))
    client = await client_for(aiohttp_client, services, backend)
    request = {"model": MODEL, "prompt": "The capital of France is", "logprobs": 1, "max_tokens": 3}
    body = await (await client.post("/v1/completions", json=request, headers=AUTH)).json()
    choice = body["choices"][0]
    assert choice["text"] == " Paris." and backend.calls[0]["sampling"]["logprobs"] == 1
    assert choice["logprobs"] == {
        "tokens": [" Par", "is", "."],
        "token_logprobs": [-0.1, -0.2, -0.30000000000000004],
        "top_logprobs": [{" Par": -0.1}, {"is": -0.2}, {".": -0.30000000000000004}],
        "text_offset": [0, 4, 6],
    }
    response = await client.post("/v1/completions", json={**request, "stream": True, "logprobs": 0}, headers=AUTH)
    parts = [c["choices"][0]["logprobs"] for c in _sse(await response.read())]
    assert [p["tokens"] for p in parts] == [[" Par"], ["is"], ["."], []]
    assert [p["text_offset"] for p in parts] == [[0], [4], [6], []]
    assert parts[0]["top_logprobs"] == [{" Par": -0.1}]  # logprobs 0: the sampled token, as OpenAI's legacy API


async def test_completions_logprobs_top_holds_the_best_and_the_sampled(aiohttp_client, services):
    sampled = token(" x", -3.0, (" a", -0.5), (" b", -1.0), (" c", -2.0))
    backend = FakeTextBackend([chunk([" x"], ["length"], logprobs=[[sampled]])])
    client = await client_for(aiohttp_client, services, backend)
    body = await (await client.post("/v1/completions", json={"model": MODEL, "prompt": "p", "logprobs": 2},
                                    headers=AUTH)).json()
    assert body["choices"][0]["logprobs"]["top_logprobs"] == [{" a": -0.5, " b": -1.0, " x": -3.0}]


async def test_without_logprobs_the_wire_keeps_null(aiohttp_client, services):
    backend = FakeTextBackend(logprob_chunks(["Hi"]))  # a backend that would have them
    client = await client_for(aiohttp_client, services, backend)
    body = await (await client.post("/v1/chat/completions", json=chat_body(logprobs=False), headers=AUTH)).json()
    assert body["choices"][0]["logprobs"] is None and "logprobs" not in backend.calls[0]["sampling"]
    response = await client.post("/v1/completions", json={"model": MODEL, "prompt": "p", "stream": True}, headers=AUTH)
    assert all(c["logprobs"] is None for e in _sse(await response.read()) for c in e["choices"])


@pytest.mark.parametrize(
    "path, body, param",
    [
        ("/v1/chat/completions", chat_body(top_logprobs=2), "top_logprobs"),
        ("/v1/chat/completions", chat_body(logprobs=False, top_logprobs=0), "top_logprobs"),
        ("/v1/chat/completions", chat_body(logprobs=True, top_logprobs=21), "top_logprobs"),
        ("/v1/chat/completions", chat_body(logprobs=True, top_logprobs=-1), "top_logprobs"),
        ("/v1/chat/completions", chat_body(logprobs="yes"), "logprobs"),
        ("/v1/completions", {"model": MODEL, "prompt": "p", "logprobs": 6}, "logprobs"),
        ("/v1/completions", {"model": MODEL, "prompt": "p", "logprobs": True}, "logprobs"),
        ("/v1/completions", {"model": MODEL, "prompt": "p", "logprobs": 1, "echo": True}, "echo"),
        ("/v1/completions", {"model": MODEL, "prompt": "p", "logprobs": 0, "echo": True, "stream": True}, "echo"),
    ],
)
async def test_bad_logprobs_are_400_naming_the_param(aiohttp_client, services, path, body, param):
    client = await client_for(aiohttp_client, services, FakeTextBackend())
    response = await client.post(path, json=body, headers=AUTH)
    assert response.status == 400, await response.text()
    error = (await response.json())["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param and error["message"]
