"""POST/GET/DELETE /v1/responses and input_items through aiohttp's test client, in front of the real
text servicer with a fake backend (tests/fakes.py), the store on a SQLite file of the test's own.

What the model is shown is read from the fake backend: the prompt the servicer rendered with the
chat template, and the sampling it was asked for.
"""

from __future__ import annotations

import asyncio
import json
import time

import jwt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from facade.api.responses.conversation import chat_messages, conversation, responses_param, to_proto
from facade.api.responses.protocol import ResponseRequest, input_items
from facade.app import create_app
from facade.auth.tokens import issue_local_token
from facade.settings import Settings
from services.common.errors import BackendUnavailable
from services.text.backend import GenerationChunk
from tests.fakes import FakeTextBackend, chunk
from tests.unit.text_service_fixture import MODEL

KEY = "responses-key"
SECRET = "responses-secret-responses-secret-responses-secret"
AUTH = {"Authorization": f"Bearer {KEY}"}
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
TOOLS = [{"type": "function", "name": "get_weather", "description": "Weather now", "parameters": WEATHER}]
CALL = '{"name": "get_weather", "arguments": {"city": "Paris"}}'


def bearer(subject: str, scope: str = "responses") -> dict:
    now = int(time.time())
    token = jwt.encode({"sub": subject, "scope": scope, "iat": now, "exp": now + 600}, SECRET, algorithm="HS256")
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def database_url(tmp_path):
    return f"sqlite:///{tmp_path / 'hubmesh.db'}"


@pytest.fixture
def make_client(aiohttp_client, services, database_url):
    async def make(backend=None, target=None, **overrides):
        target = target or await services(backend or FakeTextBackend())
        settings = {"api_keys": (KEY,), "jwt_secret": SECRET, "text_target": target, "database_url": database_url,
                    **overrides}
        return await aiohttp_client(create_app(Settings(**settings)))

    return make


def body(**extra) -> dict:
    return {"model": MODEL, "input": "Hi", **extra}


def replies(*texts: str) -> FakeTextBackend:
    """A backend that answers each request with the next of `texts` (then the last one again)."""

    class Scripted(FakeTextBackend):
        async def generate(self, model, prompt, sampling, stream, resume=None):
            text = texts[min(len(self.calls), len(texts) - 1)]
            self.chunks = [chunk([text], ["stop"], n_in=7, n_out=[3])]
            async for piece in super().generate(model, prompt, sampling, stream):
                yield piece

    return Scripted()


def sse_events(raw: str) -> list[tuple[str | None, dict | str]]:
    """(event name, data) of each event of an SSE body."""
    events = []
    for block in raw.split("\n\n"):
        if not block.strip():
            continue
        name, data = None, None
        for line in block.split("\n"):
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                data = line.removeprefix("data: ")
        if data is not None:
            events.append((name, data if data == "[DONE]" else json.loads(data)))
    return events


# -- request -> proto ------------------------------------------------------------------------------


def test_a_responses_request_maps_onto_chat_proto():
    from hubmesh.text.v1 import text_generation_pb2 as pb

    request = ResponseRequest.model_validate(body(
        instructions="Be brief.",
        input=[
            {"role": "user", "content": "Weather?"},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Checking."}]},
            {"type": "function_call", "call_id": "call_9", "name": "get_weather", "arguments": '{"city": "Rome"}'},
            {"type": "function_call_output", "call_id": "call_9", "output": "21 C"},
            {"role": "developer", "content": [{"type": "input_text", "text": "In "}, {"type": "input_text", "text": "C."}]},
        ],
        tools=[*TOOLS, {"type": "function", "name": "noop", "strict": False}],
        tool_choice={"type": "function", "name": "get_weather"},
        parallel_tool_calls=False,
        text={"format": {"type": "json_schema", "name": "w", "schema": WEATHER, "strict": True}},
        temperature=0, top_p=0.5, max_output_tokens=33, user="ann@example.com",
    ))
    proto = to_proto(request, input_items(request.input))
    assert [(m.role, m.content) for m in proto.chat.messages] == [
        ("system", "Be brief."), ("user", "Weather?"), ("assistant", "Checking."), ("tool", "21 C"),
        ("developer", "In C."),
    ]
    # the call joins the assistant turn before it; the output answers it by call id
    assert [(c.id, c.name, c.arguments) for c in proto.chat.messages[2].tool_calls] == [
        ("call_9", "get_weather", '{"city": "Rome"}')]
    assert proto.chat.messages[3].tool_call_id == "call_9"
    weather, noop = proto.tools
    assert (weather.name, weather.description, json.loads(weather.parameters)) == ("get_weather", "Weather now", WEATHER)
    assert noop.name == "noop" and not noop.HasField("parameters")
    assert proto.tool_choice.function_name == "get_weather"
    assert proto.HasField("parallel_tool_calls") and not proto.parallel_tool_calls
    assert proto.response_format.type == pb.RESPONSE_FORMAT_TYPE_JSON_SCHEMA
    assert (proto.response_format.name, json.loads(proto.response_format.json_schema)) == ("w", WEATHER)
    assert (proto.sampling.temperature, proto.sampling.top_p, proto.sampling.max_tokens) == (0, 0.5, 33)
    assert not proto.sampling.HasField("n")

    plain = to_proto(ResponseRequest.model_validate(body(text={"format": {"type": "json_object"}}, tools=TOOLS,
                                                         tool_choice="required")), input_items("Hi"))
    assert [(m.role, m.content) for m in plain.chat.messages] == [("user", "Hi")]
    assert plain.response_format.type == pb.RESPONSE_FORMAT_TYPE_JSON_OBJECT
    assert plain.tool_choice.mode == pb.TOOL_CHOICE_MODE_REQUIRED and not plain.HasField("parallel_tool_calls")
    bare = to_proto(ResponseRequest.model_validate(body()), input_items("Hi"))
    assert not bare.tools and not bare.HasField("tool_choice") and not bare.HasField("response_format")
    assert not bare.sampling.HasField("max_tokens")  # as chat: until the context is full


def test_input_items_take_one_canonical_form():
    items = input_items([
        {"role": "user", "content": "a"},
        {"type": "message", "role": "assistant", "id": "msg_kept", "status": "completed",
         "content": [{"type": "output_text", "text": "b", "annotations": []}, {"type": "refusal", "refusal": "no"}]},
        {"type": "function_call", "id": "fc_kept", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": [{"type": "input_text", "text": "ok"}]},
        {"role": "system", "content": [{"type": "output_text", "text": "s"}], "id": "bad id!"},
    ])
    assert items[0]["id"].startswith("msg_") and items[0]["content"] == [{"type": "input_text", "text": "a"}]
    assert items[1] == {"type": "message", "id": "msg_kept", "status": "completed", "role": "assistant", "content": [
        {"type": "output_text", "text": "b", "annotations": [], "logprobs": []}, {"type": "refusal", "refusal": "no"}]}
    assert items[2] == {"type": "function_call", "id": "fc_kept", "call_id": "c1", "name": "f", "arguments": "{}",
                        "status": "completed"}
    assert items[3]["type"] == "function_call_output" and items[3]["output"] == "ok" and items[3]["id"].startswith("fco_")
    assert items[4]["id"].startswith("msg_") and items[4]["content"] == [{"type": "input_text", "text": "s"}]
    # a repeated id gets a new one, so that `after` names one item of the list
    again = conversation(items, [{**items[2]}])
    assert again[-1]["id"] != "fc_kept" and again[-1]["id"].startswith("fc_") and len({i["id"] for i in again}) == 6
    messages = chat_messages(None, items)
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "system"]
    assert messages[1]["content"] == "bno" and messages[1]["tool_calls"][0]["id"] == "c1"


def test_param_names_are_the_responses_requests():
    assert responses_param("messages[3].content") == "input"
    assert responses_param("max_tokens") == "max_output_tokens"
    assert responses_param("response_format.json_schema") == "text.format"
    assert responses_param("tools[2].function.parameters") == "tools[2].parameters"
    assert responses_param("tools") == "tools" and responses_param("temperature") == "temperature"


# -- unary ------------------------------------------------------------------------------------------


async def test_a_response_is_openai_shaped_and_stored(make_client):
    backend = FakeTextBackend([chunk(["Hello!"], ["stop"], n_in=9, n_out=[2])])
    client = await make_client(backend)
    reply = await client.post("/v1/responses", json=body(metadata={"k": "v"}, user="ann"), headers=AUTH)
    assert reply.status == 200, await reply.text()
    response = await reply.json()
    message = response["output"][0]
    assert response["id"].startswith("resp_") and message["id"].startswith("msg_")
    assert isinstance(response["created_at"], int) and isinstance(response["completed_at"], int)
    assert response == {
        "id": response["id"], "object": "response", "created_at": response["created_at"], "status": "completed",
        "completed_at": response["completed_at"], "error": None, "incomplete_details": None, "instructions": None,
        "max_output_tokens": None, "max_tool_calls": None, "model": MODEL,
        "output": [{"type": "message", "id": message["id"], "status": "completed", "role": "assistant",
                    "content": [{"type": "output_text", "text": "Hello!", "annotations": [], "logprobs": []}]}],
        "parallel_tool_calls": True, "previous_response_id": None, "reasoning": {"effort": None, "summary": None},
        "store": True, "temperature": 1.0, "text": {"format": {"type": "text"}}, "tool_choice": "auto", "tools": [],
        "top_p": 1.0, "truncation": "disabled",
        "usage": {"input_tokens": 9, "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                  "output_tokens": 2, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 11},
        "user": "ann", "metadata": {"k": "v"}, "background": False,
    }
    stored = await client.get(f"/v1/responses/{response['id']}", headers=AUTH)
    assert stored.status == 200 and await stored.json() == response
    listing = await (await client.get(f"/v1/responses/{response['id']}/input_items", headers=AUTH)).json()
    item = listing["data"][0]
    assert listing == {"object": "list", "data": [{"type": "message", "id": item["id"], "status": "completed",
                                                   "role": "user", "content": [{"type": "input_text", "text": "Hi"}]}],
                       "first_id": item["id"], "last_id": item["id"], "has_more": False}


async def test_length_is_an_incomplete_response(make_client):
    client = await make_client(FakeTextBackend([chunk(["Once upon"], ["length"], n_out=[2])]))
    response = await (await client.post("/v1/responses", json=body(max_output_tokens=2), headers=AUTH)).json()
    assert response["status"] == "incomplete" and response["completed_at"] is None
    assert response["incomplete_details"] == {"reason": "max_output_tokens"}
    assert response["output"][0]["status"] == "incomplete" and response["max_output_tokens"] == 2
    assert "user" not in response  # OpenAI's schema has no null user: absent when not given


async def test_function_tool_round_trip_with_previous_response_id(make_client):
    backend = FakeTextBackend([chunk([CALL], ["stop"], n_in=30, n_out=[14])])
    client = await make_client(backend)
    first = await (await client.post("/v1/responses", json=body(input="Weather in Paris?", tools=TOOLS,
                                                               tool_choice="required"), headers=AUTH)).json()
    assert first["status"] == "completed"
    [call] = first["output"]
    assert call["type"] == "function_call" and call["id"].startswith("fc_") and call["call_id"].startswith("call_")
    assert (call["name"], json.loads(call["arguments"]), call["status"]) == ("get_weather", {"city": "Paris"}, "completed")
    assert first["tools"] == [{"type": "function", "name": "get_weather", "description": "Weather now",
                               "parameters": WEATHER, "strict": True}]
    assert first["tool_choice"] == "required"

    backend.chunks = [chunk(["Sunny, 21 C."], ["stop"])]
    second = await (await client.post("/v1/responses", headers=AUTH, json=body(
        previous_response_id=first["id"], tools=TOOLS,
        input=[{"type": "function_call_output", "call_id": call["call_id"], "output": '{"temp_c": 21}'}],
    ))).json()
    assert second["output"][0]["content"][0]["text"] == "Sunny, 21 C." and second["previous_response_id"] == first["id"]
    prompt = backend.calls[1]["prompt"]
    assert "Weather in Paris?" in prompt and '"city": "Paris"' in prompt and '{"temp_c": 21}' in prompt
    assert prompt.index("Weather in Paris?") < prompt.index('"city": "Paris"') < prompt.index('{"temp_c": 21}')
    listing = await (await client.get(f"/v1/responses/{second['id']}/input_items?order=asc", headers=AUTH)).json()
    assert [i["type"] for i in listing["data"]] == ["message", "function_call", "function_call_output"]
    assert listing["data"][1] == call  # the previous output, as it was answered


async def test_a_chain_of_three_turns(make_client):
    backend = replies("Paris.", "About 2.1 million.", "The Seine.")
    client = await make_client(backend)
    one = await (await client.post("/v1/responses", headers=AUTH, json=body(
        input="Capital of France?", instructions="Answer in one line."))).json()
    two = await (await client.post("/v1/responses", headers=AUTH, json=body(
        input="How many people live there?", previous_response_id=one["id"]))).json()
    three = await (await client.post("/v1/responses", headers=AUTH, json=body(
        input=[{"role": "user", "content": "Which river?"}], previous_response_id=two["id"]))).json()
    assert three["output"][0]["content"][0]["text"] == "The Seine."
    prompts = [call["prompt"] for call in backend.calls]
    assert "Answer in one line." in prompts[0]
    assert "Answer in one line." not in prompts[1]  # instructions are not carried over (as OpenAI)
    order = ["Capital of France?", "Paris.", "How many people live there?", "About 2.1 million.", "Which river?"]
    assert [prompts[2].index(text) for text in order] == sorted(prompts[2].index(text) for text in order)
    listing = await (await client.get(f"/v1/responses/{three['id']}/input_items?order=asc&limit=2", headers=AUTH)).json()
    assert [i["role"] for i in listing["data"]] == ["user", "assistant"] and listing["has_more"]
    rest = await (await client.get(f"/v1/responses/{three['id']}/input_items?order=asc&after={listing['last_id']}",
                                   headers=AUTH)).json()
    texts = [i["content"][0]["text"] for i in listing["data"] + rest["data"]]
    assert texts == order and not rest["has_more"]
    newest = await (await client.get(f"/v1/responses/{three['id']}/input_items?limit=1", headers=AUTH)).json()
    assert newest["data"][0]["content"][0]["text"] == "Which river?"  # OpenAI's default order: desc


async def test_store_false_keeps_nothing(make_client):
    client = await make_client(replies("ok"))
    response = await (await client.post("/v1/responses", json=body(store=False), headers=AUTH)).json()
    assert response["store"] is False and response["status"] == "completed"
    assert (await client.get(f"/v1/responses/{response['id']}", headers=AUTH)).status == 404
    chained = await client.post("/v1/responses", json=body(previous_response_id=response["id"]), headers=AUTH)
    assert chained.status == 404
    assert (await chained.json())["error"]["param"] == "previous_response_id"


# -- streaming --------------------------------------------------------------------------------------


async def test_stream_sends_openai_typed_events_in_order(make_client):
    backend = FakeTextBackend([chunk(["Hel"]), chunk(["lo"]), chunk([""], ["stop"], n_out=[0])])
    client = await make_client(backend)
    reply = await client.post("/v1/responses", json=body(stream=True), headers=AUTH)
    assert reply.status == 200 and reply.headers["Content-Type"].startswith("text/event-stream")
    events = sse_events(await reply.text())
    assert events[-1] == (None, "[DONE]")
    events = events[:-1]
    assert all(name == data["type"] for name, data in events)  # every event is named by its type
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    assert [name for name, _ in events] == [
        "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta", "response.output_text.done",
        "response.content_part.done", "response.output_item.done", "response.completed",
    ]
    created, in_progress = events[0][1]["response"], events[1][1]["response"]
    assert created["status"] == in_progress["status"] == "in_progress" and created["output"] == []
    assert "usage" not in created  # OpenAI's schema has no null usage: absent while in progress
    item_id = events[2][1]["item"]["id"]
    assert events[2][1]["item"] == {"type": "message", "id": item_id, "status": "in_progress", "role": "assistant",
                                    "content": []}
    assert events[3][1]["part"] == {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
    assert [e["delta"] for _, e in events[4:6]] == ["Hel", "lo"]
    assert all(e["item_id"] == item_id and e["output_index"] == 0 and e["content_index"] == 0 for _, e in events[3:8])
    assert events[6][1]["text"] == "Hello" and events[7][1]["part"]["text"] == "Hello"
    assert events[8][1]["item"]["status"] == "completed"
    final = events[9][1]["response"]
    assert final["status"] == "completed" and final["id"] == created["id"]
    assert final["output"] == [events[8][1]["item"]]
    assert final["usage"]["input_tokens"] == 5 and final["usage"]["output_tokens"] == 2
    stored = await (await client.get(f"/v1/responses/{final['id']}", headers=AUTH)).json()
    assert stored == final


async def test_streamed_function_call_events(make_client):
    pieces = ['{"name": "get_weather", ', '"arguments": {"ci', 'ty": "Par', 'is"}}']
    backend = FakeTextBackend([chunk([p]) for p in pieces] + [chunk([""], ["stop"], n_out=[0])])
    client = await make_client(backend)
    reply = await client.post("/v1/responses", headers=AUTH, json=body(
        stream=True, tools=TOOLS, tool_choice={"type": "function", "name": "get_weather"}))
    events = [data for _, data in sse_events(await reply.text())[:-1]]
    assert [e["type"] for e in events] == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.function_call_arguments.delta", "response.function_call_arguments.delta",
        "response.function_call_arguments.delta", "response.function_call_arguments.done",
        "response.output_item.done", "response.completed",
    ]
    added = events[2]["item"]
    assert added["type"] == "function_call" and added["status"] == "in_progress" and added["arguments"] == ""
    assert added["name"] == "get_weather" and added["call_id"].startswith("call_") and added["id"].startswith("fc_")
    assert "".join(e["delta"] for e in events[3:6]) == '{"city": "Paris"}'
    assert events[6] | {"sequence_number": 0} == {"type": "response.function_call_arguments.done", "sequence_number": 0,
                                                  "item_id": added["id"], "output_index": 0, "name": "get_weather",
                                                  "arguments": '{"city": "Paris"}'}
    done = events[7]["item"]
    assert done == {**added, "arguments": '{"city": "Paris"}', "status": "completed"}
    assert events[-1]["response"]["output"] == [done]
    assert events[-1]["response"]["tool_choice"] == {"type": "function", "name": "get_weather"}


async def test_streamed_text_then_call(make_client):
    backend = FakeTextBackend([chunk(["Checking "]), chunk(['now. {"name": "get_weather", "arguments": {}}']),
                               chunk([""], ["stop"], n_out=[0])])
    client = await make_client(backend)
    reply = await client.post("/v1/responses", json=body(stream=True, tools=TOOLS), headers=AUTH)
    events = [data for _, data in sse_events(await reply.text())[:-1]]
    kinds = [e["type"] for e in events]
    assert kinds.index("response.output_item.done") < kinds.index("response.function_call_arguments.done")
    final = events[-1]["response"]
    assert [item["type"] for item in final["output"]] == ["message", "function_call"]
    assert final["output"][0]["content"][0]["text"] == "Checking now."
    added = [e for e in events if e["type"] == "response.output_item.added"]
    assert [e["output_index"] for e in added] == [0, 1]


async def test_stream_cut_by_the_budget_ends_incomplete(make_client):
    client = await make_client(FakeTextBackend([chunk(["a b"]), chunk([" c"], ["length"])]))
    reply = await client.post("/v1/responses", json=body(stream=True, max_output_tokens=2), headers=AUTH)
    events = [data for _, data in sse_events(await reply.text())[:-1]]
    assert events[-1]["type"] == "response.incomplete"
    assert events[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert events[-2]["item"]["status"] == "incomplete"


class FailsMidStream(FakeTextBackend):
    async def generate(self, model, prompt, sampling, stream, resume=None):
        self.calls.append({"prompt": prompt})
        yield GenerationChunk(texts=["Hel"], finish_reasons=[None], num_input_tokens=3, num_output_tokens=[1])
        raise BackendUnavailable("the model server went away")


async def test_a_failure_mid_stream_is_error_then_response_failed(make_client):
    client = await make_client(FailsMidStream())
    reply = await client.post("/v1/responses", json=body(stream=True), headers=AUTH)
    assert reply.status == 200
    events = sse_events(await reply.text())
    assert events[-1] == (None, "[DONE]")
    kinds = [data["type"] for _, data in events[:-1]]
    assert kinds[:5] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added", "response.output_text.delta"]
    error, failed = events[-3][1], events[-2][1]
    assert error["type"] == "error" and error["code"] == "service_unavailable" and error["message"]
    assert failed["type"] == "response.failed"
    assert failed["response"]["status"] == "failed" and failed["response"]["error"]["code"] == "server_error"
    stored = await (await client.get(f"/v1/responses/{failed['response']['id']}", headers=AUTH)).json()
    assert stored["status"] == "failed"  # kept, as OpenAI keeps failed responses


async def test_stream_errors_before_the_first_byte_keep_their_status(make_client):
    client = await make_client(FakeTextBackend())
    reply = await client.post("/v1/responses", json=body(model="nope", stream=True), headers=AUTH)
    assert reply.status == 404 and (await reply.json())["error"]["code"] == "model_not_found"


async def test_the_openai_sdk_reads_responses_and_streams(make_client):
    """The official SDK's own parsing: output_text, typed events, the stream helper's final response."""
    from openai import AsyncOpenAI

    backend = replies("Bonjour !")
    client = await make_client(backend)
    sdk = AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key=KEY, max_retries=0)
    try:
        response = await sdk.responses.create(model=MODEL, input="Say hello in French.")
        assert response.output_text == "Bonjour !" and response.usage.total_tokens == 10
        again = await sdk.responses.retrieve(response.id)
        assert again.id == response.id and again.output_text == "Bonjour !"
        async with sdk.responses.stream(model=MODEL, input="Again.", previous_response_id=response.id) as stream:
            kinds = [event.type async for event in stream]
            final = await stream.get_final_response()
        assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
        assert final.output_text == "Bonjour !" and final.previous_response_id == response.id
        items = await sdk.responses.input_items.list(final.id, order="asc")
        assert [item.type for item in items.data] == ["message", "message", "message"]
        await sdk.responses.delete(response.id)
        with pytest.raises(Exception) as info:
            await sdk.responses.retrieve(response.id)
        assert getattr(info.value, "status_code", None) == 404
    finally:
        await sdk.close()


# -- ownership, ids, scopes ------------------------------------------------------------------------


async def test_a_subject_reads_chains_and_deletes_only_its_own(make_client):
    client = await make_client(replies("secret answer"))
    alice, bob = bearer("alice"), bearer("bob")
    own = await (await client.post("/v1/responses", json=body(input="my secret"), headers=alice)).json()
    path = f"/v1/responses/{own['id']}"
    for method, url, payload in (("GET", path, None), ("DELETE", path, None), ("GET", path + "/input_items", None),
                                 ("POST", "/v1/responses", body(previous_response_id=own["id"]))):
        reply = await client.request(method, url, json=payload, headers=bob)
        text = await reply.text()
        assert reply.status == 404, (method, url, text)
        assert "secret" not in text  # never the content
        assert set(json.loads(text)["error"]) == {"message", "type", "param", "code"}
    # an API key is another subject too
    assert (await client.get(path, headers=AUTH)).status == 404
    assert (await client.get(path, headers=alice)).status == 200
    deleted = await client.delete(path, headers=alice)
    assert await deleted.json() == {"id": own["id"], "object": "response.deleted", "deleted": True}
    for url in (path, path + "/input_items"):
        assert (await client.get(url, headers=alice)).status == 404
    assert (await client.delete(path, headers=alice)).status == 404


@pytest.mark.parametrize("response_id", [
    "resp_0123456789abcdef", "nothing", "resp_" + "a" * 500, "resp_%C3%A9t%C3%A9", "resp_%00", "%F0%9F%98%80",
])
async def test_unknown_ids_are_404(make_client, response_id):
    client = await make_client()
    for method, suffix in (("GET", ""), ("DELETE", ""), ("GET", "/input_items")):
        reply = await client.request(method, f"/v1/responses/{response_id}{suffix}", headers=AUTH)
        assert reply.status == 404, (method, suffix, await reply.text())
        error = (await reply.json())["error"]
        assert error["code"] == "response_not_found" and error["type"] == "invalid_request_error"


async def test_the_responses_scope(make_client):
    client = await make_client(replies("ok"))
    chat_only = await client.post("/v1/responses", json=body(), headers=bearer("carol", scope="chat"))
    assert chat_only.status == 403 and "'responses' scope" in (await chat_only.json())["error"]["message"]
    assert (await client.post("/v1/responses", json=body(), headers=bearer("carol", "hubmesh:responses"))).status == 200
    local = {"Authorization": f"Bearer {issue_local_token(SECRET)}"}  # make run's token: every family
    assert (await client.post("/v1/responses", json=body(), headers=local)).status == 200


# -- bad input: 400 naming the param ---------------------------------------------------------------


@pytest.mark.parametrize("payload, param", [
    ({"input": "x"}, "model"),
    (body(input=5), "input"),
    (body(input=["x"]), "input"),
    (body(input=[]), "input"),
    (body(input=[{"type": "image_generation_call", "id": "x"}]), "input[0].type"),
    (body(input=[{"content": "no type, no role"}]), "input[0].type"),
    (body(input=[{"role": "wizard", "content": "x"}]), "input[0].role"),
    (body(input=[{"role": "user"}]), "input[0].content"),
    (body(input=[{"role": "user", "content": 3}]), "input[0].content"),
    (body(input=[{"role": "user", "content": [{"type": "input_image", "image_url": "http://x"}]}]),
     "input[0].content[0].type"),
    (body(input=[{"role": "user", "content": [{"type": "refusal", "refusal": "x"}]}]), "input[0].content[0].type"),
    (body(input=[{"role": "user", "content": [{"type": "input_text"}]}]), "input[0].content[0].text"),
    (body(input=[{"type": "function_call", "name": "f", "arguments": "{}"}]), "input[0].call_id"),
    (body(input=[{"type": "function_call", "call_id": "c", "name": "f", "arguments": {}}]), "input[0].arguments"),
    (body(input=[{"type": "function_call_output", "call_id": "c"}]), "input[0].output"),
    (body(input=[{"type": "function_call_output", "call_id": "c", "output": 7}]), "input[0].output"),
    (body(tools=[{"type": "web_search"}]), "tools[0].type"),
    (body(tools=[{"type": "function", "name": "bad name"}]), "tools[0].name"),
    (body(tools=[{"type": "function", "name": "f", "parameters": {
        "type": "object", "properties": {"a": {"not": {"type": "string"}}}}}]), "tools[0].parameters"),
    (body(tool_choice="required"), "tool_choice"),
    (body(tools=TOOLS, tool_choice={"type": "function", "name": "other"}), "tool_choice"),
    (body(tools=TOOLS, tool_choice={"type": "file_search"}), "tool_choice"),
    (body(text={"format": {"type": "json_schema", "name": "x"}}), "text.format"),
    (body(text={"format": {"type": "json_schema", "name": "has space", "schema": {}}}), "text.format.name"),
    (body(text={"format": {"type": "xml"}}), "text.format.type"),
    (body(text={"format": {"type": "json_schema", "name": "x", "schema": {
        "type": "object", "dependentRequired": {"a": ["b"]}}}}), "text.format"),
    (body(temperature=3), "temperature"),
    (body(top_p=0), "top_p"),
    (body(max_output_tokens=0), "max_output_tokens"),
    (body(max_output_tokens=-1), "max_output_tokens"),
    (body(max_output_tokens=9000), "max_output_tokens"),
    (body(metadata={str(i): "v" for i in range(17)}), "metadata"),
    (body(metadata={"k" * 65: "v"}), "metadata"),
    (body(metadata={"k": "v" * 513}), "metadata"),
    (body(metadata={"k": 1}), "metadata.k"),
    (body(store="yes"), "store"),
    (body(stream="yes"), "stream"),
    (body(include=["message.output_text.logprobs"]), "include"),
    (body(top_logprobs=3), "top_logprobs"),
    (body(truncation="auto"), "truncation"),
    (body(reasoning={"effort": "high"}), "reasoning"),
    (body(background=True), "background"),
    (body(conversation="conv_1"), "conversation"),
    (body(prompt={"id": "pmpt_1"}), "prompt"),
    (body(instructions=7), "instructions"),
])
async def test_bad_inputs_are_400_naming_the_param(make_client, payload, param):
    client = await make_client()
    reply = await client.post("/v1/responses", json=payload, headers=AUTH)
    assert reply.status == 400, await reply.text()
    error = (await reply.json())["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param and error["message"]


async def test_a_malformed_previous_response_id_is_404(make_client):
    client = await make_client()
    for previous in ("resp_nothere", "not an id", "\u0000", "resp_" + "x" * 300):
        reply = await client.post("/v1/responses", json=body(previous_response_id=previous), headers=AUTH)
        assert reply.status == 404
        assert (await reply.json())["error"]["param"] == "previous_response_id"


async def test_input_items_query_errors(make_client):
    client = await make_client(replies("ok"))
    response = await (await client.post("/v1/responses", json=body(), headers=AUTH)).json()
    path = f"/v1/responses/{response['id']}"
    for query, param in (("limit=0", "limit"), ("limit=101", "limit"), ("limit=x", "limit"), ("limit=%C2%B2", "limit"),
                         ("order=sideways", "order"), ("after=msg_nope", "after"), ("after=%00", "after"),
                         ("include=file_search_call.results", "include")):
        reply = await client.get(f"{path}/input_items?{query}", headers=AUTH)
        assert reply.status == 400, (query, await reply.text())
        assert (await reply.json())["error"]["param"] == param
    assert (await client.get(f"{path}?stream=true", headers=AUTH)).status == 400
    assert (await client.get(f"{path}?stream=false", headers=AUTH)).status == 200


# -- replicas, restarts, retention, an unreachable database ---------------------------------------


async def test_replicas_share_the_database(make_client, services):
    """Two façades on one database (as replicas, or one restarted): each reads and chains the other's."""
    backend = replies("one", "two")
    target = await services(backend)
    a = await make_client(target=target)
    b = await make_client(target=target)
    first = await (await a.post("/v1/responses", json=body(input="first"), headers=AUTH)).json()
    assert (await (await b.get(f"/v1/responses/{first['id']}", headers=AUTH)).json()) == first
    second = await (await b.post("/v1/responses", json=body(input="second", previous_response_id=first["id"]),
                                 headers=AUTH)).json()
    assert "first" in backend.calls[1]["prompt"] and "one" in backend.calls[1]["prompt"]
    assert (await a.delete(f"/v1/responses/{second['id']}", headers=AUTH)).status == 200
    assert (await b.get(f"/v1/responses/{second['id']}", headers=AUTH)).status == 404


async def test_expired_responses_are_gone(make_client):
    client = await make_client(replies("ok"), responses_retention_s=0.3)
    response = await (await client.post("/v1/responses", json=body(), headers=AUTH)).json()
    assert (await client.get(f"/v1/responses/{response['id']}", headers=AUTH)).status == 200
    await asyncio.sleep(0.4)
    assert (await client.get(f"/v1/responses/{response['id']}", headers=AUTH)).status == 404
    chained = await client.post("/v1/responses", json=body(previous_response_id=response["id"]), headers=AUTH)
    assert chained.status == 404


async def test_an_unreachable_database_is_503_and_the_rest_keeps_working(make_client):
    from local.processes import free_port

    client = await make_client(replies("ok"), database_url=f"postgresql://u:pw@127.0.0.1:{free_port()}/x")
    reply = await client.post("/v1/responses", json=body(), headers=AUTH)
    assert reply.status == 503 and reply.headers["Retry-After"]
    error = (await reply.json())["error"]
    assert error["code"] == "store_unavailable" and "pw" not in error["message"]
    assert (await client.get("/v1/responses/resp_abc", headers=AUTH)).status == 503
    unstored = await client.post("/v1/responses", json=body(store=False), headers=AUTH)
    assert unstored.status == 200  # nothing to keep: no database needed
    chat = await client.post("/v1/chat/completions", headers=AUTH,
                             json={"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]})
    assert chat.status == 200


# -- hostile input ---------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=10,
)
items = st.fixed_dictionaries({}, optional={
    "type": st.sampled_from(["message", "function_call", "function_call_output", "reasoning"]) | json_values,
    "role": st.sampled_from(["user", "assistant", "system", "developer", "tool"]) | json_values,
    "content": st.text(max_size=12) | st.lists(st.fixed_dictionaries({}, optional={
        "type": st.sampled_from(["input_text", "output_text", "refusal", "input_image"]) | json_values,
        "text": json_values, "refusal": json_values}), max_size=3) | json_values,
    "call_id": json_values, "name": json_values, "arguments": json_values, "output": json_values, "id": json_values,
})
FIELDS = st.fixed_dictionaries({"model": st.just(MODEL) | json_values}, optional={
    "input": st.text(max_size=12) | st.lists(items, max_size=4) | json_values,
    "instructions": json_values, "tools": json_values, "tool_choice": json_values, "text": json_values,
    "previous_response_id": json_values, "max_output_tokens": json_values, "temperature": json_values,
    "store": json_values, "stream": st.booleans(), "metadata": json_values, "include": json_values,
})


async def test_fuzzed_bodies_never_500(make_client):
    client = await make_client(FakeTextBackend([chunk(["ok"], ["stop"])]))
    drawn = []

    @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(FIELDS)
    def draw(payload):
        drawn.append(payload)

    draw()
    for payload in drawn:
        reply = await asyncio.wait_for(client.post("/v1/responses", data=json.dumps(payload), headers=AUTH), 30)
        text = await reply.text()
        assert reply.status < 500, (payload, text)
        if reply.status >= 400:
            assert set(json.loads(text)["error"]) == {"message", "type", "param", "code"}, text
