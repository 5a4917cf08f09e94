"""Anthropic's Messages API (facade/api/messages) through the official `anthropic` SDK, in front of the
real text servicer with a fake backend: create, stream, a tool round trip, count_tokens, x-api-key,
and errors in Anthropic's shape."""

from __future__ import annotations

import anthropic
import pytest

from facade.api.messages.protocol import MessagesRequest
from facade.app import create_app
from facade.settings import Settings
from tests.fakes import FakeTextBackend, chunk
from tests.unit.text_service_fixture import MODEL

KEY = "messages-test-key"
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
TOOLS = [{"name": "get_weather", "description": "Weather now", "input_schema": WEATHER}]
CALL = '{"name": "get_weather", "arguments": {"city": "Paris"}}'


async def sdk_for(aiohttp_client, services, backend) -> tuple[anthropic.AsyncAnthropic, object]:
    target = await services(backend)
    client = await aiohttp_client(create_app(Settings(api_keys=(KEY,), text_target=target)))
    sdk = anthropic.AsyncAnthropic(base_url=str(client.make_url("")).rstrip("/"), api_key=KEY, max_retries=0)
    return sdk, client


async def test_create_a_message(aiohttp_client, services):
    backend = FakeTextBackend([chunk(["Paris."], ["stop"], n_in=12, n_out=[2])])
    sdk, _ = await sdk_for(aiohttp_client, services, backend)
    message = await sdk.messages.create(model=MODEL, max_tokens=64, system="Answer briefly.",
                                        messages=[{"role": "user", "content": "Capital of France?"}],
                                        stop_sequences=["\n\n"], metadata={"user_id": "u-1"},
                                        # this SDK no longer names them; the API still takes them
                                        extra_body={"temperature": 0, "top_k": 5})
    assert message.type == "message" and message.role == "assistant" and message.model == MODEL
    assert [b.type for b in message.content] == ["text"] and message.content[0].text == "Paris."
    assert message.stop_reason == "end_turn" and message.usage.input_tokens == 12 and message.usage.output_tokens == 2
    sampling = backend.calls[0]["sampling"]
    assert sampling["top_k"] == 5 and sampling["stop"] == ["\n\n"] and sampling["max_tokens"] == 64
    assert "Answer briefly." in backend.calls[0]["prompt"]


async def test_stream_a_message_with_anthropics_events(aiohttp_client, services):
    backend = FakeTextBackend([chunk(["Hel"], n_in=7), chunk(["lo"], n_in=7), chunk([""], ["length"], n_in=7, n_out=[0])])
    sdk, _ = await sdk_for(aiohttp_client, services, backend)
    kinds = []
    async with sdk.messages.stream(model=MODEL, max_tokens=2, messages=[{"role": "user", "content": "Hi"}]) as stream:
        async for event in stream:
            kinds.append(event.type)
        final = await stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert "content_block_start" in kinds and "content_block_delta" in kinds and "content_block_stop" in kinds
    assert "message_delta" in kinds
    assert final.content[0].text == "Hello" and final.stop_reason == "max_tokens"
    assert final.usage.input_tokens == 7 and final.usage.output_tokens == 2


async def test_a_tool_round_trip(aiohttp_client, services):
    backend = FakeTextBackend([chunk([CALL], ["stop"], n_in=30, n_out=[14])])
    sdk, _ = await sdk_for(aiohttp_client, services, backend)
    first = await sdk.messages.create(model=MODEL, max_tokens=64, tools=TOOLS, tool_choice={"type": "any"},
                                      messages=[{"role": "user", "content": "Weather in Paris?"}])
    assert first.stop_reason == "tool_use"
    (use,) = [b for b in first.content if b.type == "tool_use"]
    assert use.name == "get_weather" and use.input == {"city": "Paris"}
    backend.chunks = [chunk(["It is 21 C in Paris."], ["stop"], n_in=40, n_out=[8])]
    second = await sdk.messages.create(model=MODEL, max_tokens=64, tools=TOOLS, messages=[
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": first.content},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "21 C"}]},
    ])
    assert second.content[0].text == "It is 21 C in Paris." and second.stop_reason == "end_turn"
    prompt = backend.calls[1]["prompt"]
    assert "21 C" in prompt and "get_weather" in prompt


async def test_streamed_tool_use_is_input_json_deltas(aiohttp_client, services):
    pieces = ['{"name": "get_weather", ', '"arguments": {"ci', 'ty": "Par', 'is"}}']
    backend = FakeTextBackend([chunk([p]) for p in pieces] + [chunk([""], ["stop"], n_out=[0])])
    sdk, _ = await sdk_for(aiohttp_client, services, backend)
    async with sdk.messages.stream(model=MODEL, max_tokens=64, tools=TOOLS, tool_choice={"type": "tool", "name": "get_weather"},
                                   messages=[{"role": "user", "content": "Weather?"}]) as stream:
        deltas = [e.delta.type async for e in stream if e.type == "content_block_delta"]
        final = await stream.get_final_message()
    assert deltas and set(deltas) == {"input_json_delta"}
    assert final.content[-1].type == "tool_use" and final.content[-1].input == {"city": "Paris"}
    assert final.stop_reason == "tool_use"


async def test_count_tokens(aiohttp_client, services):
    backend = FakeTextBackend([chunk(["x"], ["length"], n_in=23, n_out=[1])])
    sdk, _ = await sdk_for(aiohttp_client, services, backend)
    count = await sdk.messages.count_tokens(model=MODEL, messages=[{"role": "user", "content": "Hello there"}],
                                            system="Be brief.", tools=TOOLS)
    assert count.input_tokens == 23
    assert backend.calls[0]["sampling"]["max_tokens"] == 1


@pytest.mark.parametrize("payload, param", [
    ({"model": MODEL, "messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
    ({"model": MODEL, "max_tokens": 5, "messages": []}, "messages"),
    ({"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA=="}}]}]},
     "messages[0].content[0].type"),
    ({"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "x"}],
      "thinking": {"type": "enabled", "budget_tokens": 1024}}, "thinking"),
    ({"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "x"}],
      "tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools[0].type"),
    ({"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "x"}], "temperature": 1.5},
     "temperature"),
    ({"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "x"}],
      "stop_sequences": ["a", "b", "c", "d", "e"]}, "stop_sequences"),
])
async def test_bad_inputs_are_anthropic_400s_naming_the_field(aiohttp_client, services, payload, param):
    target = await services(FakeTextBackend([chunk(["x"], ["stop"])]))
    client = await aiohttp_client(create_app(Settings(api_keys=(KEY,), text_target=target)))
    reply = await client.post("/v1/messages", json=payload, headers={"x-api-key": KEY, "anthropic-version": "2023-06-01"})
    body = await reply.json()
    assert reply.status == 400, body
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error", body
    assert param in body["error"]["message"], (param, body)


async def test_auth_errors_are_anthropic_shaped(aiohttp_client, services):
    target = await services(FakeTextBackend())
    client = await aiohttp_client(create_app(Settings(api_keys=(KEY,), text_target=target)))
    body = {"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
    reply = await client.post("/v1/messages", json=body, headers={"x-api-key": "wrong"})
    assert reply.status == 401 and (await reply.json())["error"]["type"] == "authentication_error"
    reply = await client.post("/v1/messages", json={**body, "model": "no-such-model"}, headers={"x-api-key": KEY})
    assert reply.status == 404 and (await reply.json())["error"]["type"] == "not_found_error"


def test_the_conversation_maps_onto_chat():
    request = MessagesRequest.model_validate({
        "model": MODEL, "max_tokens": 9, "system": [{"type": "text", "text": "S"}],
        "messages": [
            {"role": "user", "content": "Q"},
            {"role": "assistant", "content": [{"type": "text", "text": "Let me check."},
                                              {"type": "tool_use", "id": "t1", "name": "f", "input": {"a": 1}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "42", "is_error": False},
                                         {"type": "text", "text": "and?"}]},
        ],
        "tools": [{"name": "f", "input_schema": {"type": "object"}}],
        "tool_choice": {"type": "auto", "disable_parallel_tool_use": True},
    })
    proto = request.to_proto()
    assert [(m.role, m.content) for m in proto.chat.messages] == [
        ("system", "S"), ("user", "Q"), ("assistant", "Let me check."), ("tool", "42"), ("user", "and?")]
    assert proto.chat.messages[2].tool_calls[0].arguments == '{"a":1}' and proto.chat.messages[3].tool_call_id == "t1"
    assert proto.parallel_tool_calls is False and proto.sampling.max_tokens == 9
