"""End to end: the Responses API with stored state, through the official openai SDK and the OpenAI
Agents SDK, against the real stack (tritonserver + SmolLM2, the text service, the façade and its
SQLite database in the stack's run directory).

The 135M model is held to a grammar for tool calls and json_schema, so the assertions check what
the grammar guarantees (arguments and answers parse and match their schemas), never what the model
chose to say. Every call is bounded by max_output_tokens so the suite stays fast on two cores.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import jsonschema
import openai
import pytest
from openai import OpenAI
from pydantic import BaseModel

from facade.auth.tokens import issue_local_token
from tests.e2e.conftest import KEY, MODEL

pytestmark = pytest.mark.e2e

WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TOOLS = [{"type": "function", "name": "get_weather", "description": "Current weather in a city",
          "parameters": WEATHER, "strict": True}]
CITY = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "country": {"type": "string"}, "population": {"type": "integer"}},
    "required": ["name", "country", "population"],
    "additionalProperties": False,
}


class City(BaseModel):
    name: str
    country: str


def test_create_text_then_retrieve(client):
    response = client.responses.create(
        model=MODEL, input="What is the capital of France?", instructions="Answer in one short sentence.",
        temperature=0, max_output_tokens=24, metadata={"suite": "e2e"},
    )
    assert response.id.startswith("resp_") and response.object == "response"
    assert response.status in ("completed", "incomplete") and response.model == MODEL
    assert response.output_text.strip()
    assert response.output[0].type == "message" and response.output[0].role == "assistant"
    assert response.usage.input_tokens > 0 and 0 < response.usage.output_tokens <= 24
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens
    assert (response.instructions, response.metadata, response.temperature) == (
        "Answer in one short sentence.", {"suite": "e2e"}, 0)
    again = client.responses.retrieve(response.id)
    assert again.model_dump() == response.model_dump()


def test_max_output_tokens_cut_is_incomplete(client):
    response = client.responses.create(model=MODEL, input="Tell me a long story about a dragon.",
                                       temperature=0, max_output_tokens=3)
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"
    assert response.usage.output_tokens == 3


def test_json_schema_answer_parses_and_matches(client):
    response = client.responses.create(
        model=MODEL, input="Describe Paris as JSON.", temperature=0, max_output_tokens=96,
        text={"format": {"type": "json_schema", "name": "city", "schema": CITY, "strict": True}},
    )
    if response.status == "completed":  # the budget may cut the JSON short; a finished one must match
        jsonschema.validate(json.loads(response.output_text), CITY)
    assert response.text.format.type == "json_schema" and response.text.format.name == "city"
    parsed = client.responses.parse(model=MODEL, input="Describe Paris.", text_format=City, temperature=0,
                                    max_output_tokens=64)
    if parsed.status == "completed":
        assert isinstance(parsed.output_parsed, City)


def test_function_tool_round_trip(client):
    first = client.responses.create(
        model=MODEL, input="What's the weather like in Paris today?", tools=TOOLS, tool_choice="required",
        temperature=0, max_output_tokens=64,
    )
    calls = [item for item in first.output if item.type == "function_call"]
    assert first.status == "completed" and calls
    call = calls[0]
    assert call.name == "get_weather" and call.call_id.startswith("call_") and call.id.startswith("fc_")
    jsonschema.validate(json.loads(call.arguments), WEATHER)

    second = client.responses.create(
        model=MODEL, previous_response_id=first.id, tools=TOOLS, temperature=0, max_output_tokens=32,
        input=[{"type": "function_call_output", "call_id": call.call_id,
                "output": json.dumps({"city": "Paris", "temperature": 21, "unit": "celsius", "sky": "sunny"})}],
        tool_choice="none",
    )
    assert second.status in ("completed", "incomplete") and second.output_text.strip()
    assert [item.type for item in second.output] == ["message"]
    items = client.responses.input_items.list(second.id, order="asc")
    assert [item.type for item in items.data] == ["message", "function_call", "function_call_output"]
    assert items.data[1].call_id == call.call_id


def test_stream_sends_the_event_sequence(client):
    with client.responses.stream(model=MODEL, input="Say hello.", temperature=0, max_output_tokens=48) as stream:
        events = list(stream)
        if events[-1].type == "response.completed":
            assert stream.get_final_response().output_text == events[-1].response.output_text
    # the budget may run out (then it ends response.incomplete, as OpenAI's does, which the SDK's
    # stream helper does not take for a final response): read the last event's either way
    final = events[-1].response
    kinds = [event.type for event in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds[-4:-1] == ["response.output_text.done", "response.content_part.done", "response.output_item.done"]
    assert kinds[-1] in ("response.completed", "response.incomplete")
    assert set(kinds[4:-4]) == {"response.output_text.delta"}
    assert [event.sequence_number for event in events] == list(range(len(events)))
    deltas = "".join(event.delta for event in events if event.type == "response.output_text.delta")
    assert deltas == final.output_text and deltas.strip()
    assert final.usage.output_tokens > 0
    assert client.responses.retrieve(final.id).output_text == final.output_text


def test_stream_of_a_function_call(client):
    with client.responses.stream(model=MODEL, input="Weather in Paris?", tools=TOOLS, temperature=0,
                                 tool_choice={"type": "function", "name": "get_weather"},
                                 max_output_tokens=64) as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [event.type for event in events]
    assert kinds[2] == "response.output_item.added" and events[2].item.type == "function_call"
    assert "response.function_call_arguments.delta" in kinds and "response.function_call_arguments.done" in kinds
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    jsonschema.validate(json.loads(done.arguments), WEATHER)
    assert final.output[0].arguments == done.arguments and kinds[-1] == "response.completed"


def test_stream_on_the_wire_names_each_event(stack):
    """The raw SSE: `event: <type>` before each `data:`, as OpenAI sends them."""
    body = {"model": MODEL, "input": "Hi", "stream": True, "max_output_tokens": 4}
    with httpx.stream("POST", f"{stack.config.base_url}/responses", json=body, timeout=120,
                      headers={"Authorization": f"Bearer {KEY}"}) as reply:
        assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/event-stream")
        blocks = [b for b in reply.read().decode().split("\n\n") if b.strip()]
    assert blocks[-1] == "data: [DONE]"
    for block in blocks[:-1]:
        name, data = block.split("\n")
        assert name.removeprefix("event: ") == json.loads(data.removeprefix("data: "))["type"]


def test_retrieve_delete_and_input_items(client):
    response = client.responses.create(model=MODEL, input=[
        {"role": "user", "content": [{"type": "input_text", "text": "Hello!"}]},
        {"role": "assistant", "content": "Hi! How can I help?"},
        {"role": "user", "content": "Name a colour."},
    ], temperature=0, max_output_tokens=8)
    items = client.responses.input_items.list(response.id)  # newest first, as OpenAI's default
    assert [item.role for item in items.data] == ["user", "assistant", "user"]
    assert items.data[0].content[0].text == "Name a colour." and not items.has_more
    page = client.responses.input_items.list(response.id, order="asc", limit=2)
    assert [item.role for item in page.data] == ["user", "assistant"] and page.has_more
    rest = client.responses.input_items.list(response.id, order="asc", after=page.last_id)
    assert [item.role for item in rest.data] == ["user"]
    assert client.responses.delete(response.id) is None
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.input_items.list(response.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(response.id)


def test_a_chain_of_three_turns(client):
    one = client.responses.create(model=MODEL, input="My name is Ada. Remember it.", temperature=0, max_output_tokens=16)
    two = client.responses.create(model=MODEL, input="What is 2 + 2?", previous_response_id=one.id, temperature=0,
                                  max_output_tokens=16)
    three = client.responses.create(model=MODEL, input="What is my name?", previous_response_id=two.id,
                                    temperature=0, max_output_tokens=16)
    assert (two.previous_response_id, three.previous_response_id) == (one.id, two.id)
    items = client.responses.input_items.list(three.id, order="asc").data
    assert [item.role for item in items] == ["user", "assistant", "user", "assistant", "user"]
    assert [items[i].content[0].text for i in (0, 2, 4)] == ["My name is Ada. Remember it.", "What is 2 + 2?",
                                                           "What is my name?"]
    assert items[1].content[0].text == one.output_text and items[3].content[0].text == two.output_text
    # the model was shown the whole conversation: far more input than the last question alone
    alone = client.responses.create(model=MODEL, input="What is my name?", temperature=0, max_output_tokens=1,
                                    store=False)
    assert three.usage.input_tokens > alone.usage.input_tokens + 20


def test_another_subject_gets_404_never_the_content(stack):
    base, secret = stack.config.base_url, stack.config.jwt_secret
    alice = OpenAI(base_url=base, api_key=issue_local_token(secret, subject="alice"), max_retries=0, timeout=120)
    bob = OpenAI(base_url=base, api_key=issue_local_token(secret, subject="bob"), max_retries=0, timeout=120)
    own = alice.responses.create(model=MODEL, input="The secret word is 'zebra'.", max_output_tokens=4)
    for attempt in (lambda: bob.responses.retrieve(own.id), lambda: bob.responses.input_items.list(own.id),
                    lambda: bob.responses.delete(own.id),
                    lambda: bob.responses.create(model=MODEL, input="And?", previous_response_id=own.id)):
        with pytest.raises(openai.NotFoundError) as info:
            attempt()
        assert "zebra" not in info.value.response.text
    assert alice.responses.retrieve(own.id).id == own.id


def test_unknown_ids_and_bad_input(client):
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve("resp_00000000000000000000000000000000")
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model=MODEL, input=[{"role": "user", "content": [
            {"type": "input_image", "image_url": "https://example.com/cat.png"}]}])
    assert info.value.body["param"] == "input[0].content[0].type"
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model=MODEL, input="x", text={"format": {"type": "json_schema", "name": "x", "schema": {
            "type": "object", "dependentRequired": {"a": ["b"]}}}})
    assert info.value.body["param"] == "text.format"


def test_the_agents_sdk_runs_an_agent_with_a_function_tool(stack):
    """The OpenAI Agents SDK's default model (the Responses API) pointed at the stack: the agent
    calls its tool, gets the result, and the run ends with a final answer."""
    from agents import (
        Agent,
        ModelSettings,
        MultiProvider,
        RunConfig,
        Runner,
        function_tool,
        set_default_openai_client,
        set_tracing_disabled,
    )
    from agents.models.openai_responses import OpenAIResponsesModel
    from openai import AsyncOpenAI

    calls: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """Current weather in a city."""
        calls.append(city)
        return f"It is sunny and 21 degrees Celsius in {city}."

    async def run():
        client = AsyncOpenAI(base_url=stack.config.base_url, api_key=KEY, max_retries=0, timeout=120)
        set_tracing_disabled(True)
        set_default_openai_client(client, use_for_tracing=False)
        agent = Agent(
            name="Weather assistant", model=MODEL, tools=[get_weather],
            instructions="You answer questions about the weather. Use the get_weather tool, then answer briefly.",
            # the first turn must call the tool; the SDK resets tool_choice after it (reset_tool_choice)
            model_settings=ModelSettings(tool_choice="required", temperature=0, max_tokens=64),
        )
        # the SDK's default provider; a model id with a "/" (HuggingFaceTB/...) is taken as it is
        # instead of as a provider prefix
        provider = MultiProvider(unknown_prefix_mode="model_id")
        assert isinstance(provider.get_model(MODEL), OpenAIResponsesModel)  # the Responses API, the default
        try:
            result = await Runner.run(agent, "What is the weather in Paris?", max_turns=6,
                                      run_config=RunConfig(model_provider=provider))
            # and streamed: the SDK reads the typed events of /v1/responses streams
            streamed = Runner.run_streamed(agent, "What is the weather in Rome?", max_turns=6,
                                           run_config=RunConfig(model_provider=provider))
            events = [event.type async for event in streamed.stream_events()]
            return result, streamed, events
        finally:
            await client.close()

    result, streamed, events = asyncio.run(run())
    assert len(calls) >= 2, f"the agent called its tool {len(calls)} times in two runs"
    for run_result in (result, streamed):
        assert isinstance(run_result.final_output, str) and run_result.final_output.strip()
        kinds = [item.type for item in run_result.new_items]
        assert "tool_call_item" in kinds and "tool_call_output_item" in kinds and kinds[-1] == "message_output_item"
        assert all(r.response_id and r.response_id.startswith("resp_") for r in run_result.raw_responses)
    assert "raw_response_event" in events and "run_item_stream_event" in events
