"""End to end: tool calls and structured output from the real SmolLM2, through the official openai SDK.

The 135M model is held to a grammar, so whatever it decides, a call's arguments and a JSON answer
parse and match their schema; the assertions check exactly that (never what the model decided to
say). Every call is bounded by max_tokens so the suite stays fast on two cores.
"""

import json

import jsonschema
import openai
import pytest

from tests.e2e.conftest import MODEL

pytestmark = pytest.mark.e2e

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "description": "City name, e.g. Paris"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city", "unit"],
}
TIME = {"type": "object", "properties": {"timezone": {"type": "string"}}, "required": ["timezone"]}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city",
                                      "parameters": WEATHER}},
    {"type": "function", "function": {"name": "get_time", "description": "Current time in a timezone",
                                      "parameters": TIME}},
]
SCHEMAS = {"get_weather": WEATHER, "get_time": TIME}
ASK = [{"role": "user", "content": "What's the weather like in Paris today?"}]


def assert_valid_call(call, names=tuple(SCHEMAS)):
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name in names
    arguments = json.loads(call.function.arguments)
    jsonschema.validate(arguments, SCHEMAS[call.function.name])
    return arguments


def test_required_tool_choice_gives_a_valid_call(client):
    reply = client.chat.completions.create(
        model=MODEL, messages=ASK, tools=TOOLS, tool_choice="required", temperature=0, max_tokens=64
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None and len(choice.message.tool_calls) >= 1
    for call in choice.message.tool_calls:
        assert_valid_call(call)


def test_sampled_required_calls_are_always_valid(client):
    reply = client.chat.completions.create(
        model=MODEL, messages=ASK, tools=TOOLS, tool_choice="required", temperature=1.2, seed=7, n=3,
        max_tokens=96, parallel_tool_calls=False,
    )
    for choice in reply.choices:
        if choice.finish_reason == "length":  # the budget ran out inside the arguments: nothing to check
            continue
        assert choice.finish_reason == "tool_calls" and len(choice.message.tool_calls) == 1
        assert_valid_call(choice.message.tool_calls[0])


def test_named_function_is_the_one_called(client):
    reply = client.chat.completions.create(
        model=MODEL, messages=ASK, tools=TOOLS, temperature=0, max_tokens=64,
        tool_choice={"type": "function", "function": {"name": "get_time"}},
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert [c.function.name for c in choice.message.tool_calls] == ["get_time"]
    assert_valid_call(choice.message.tool_calls[0], names=("get_time",))


def test_tool_choice_none_never_calls(client):
    reply = client.chat.completions.create(
        model=MODEL, messages=ASK, tools=TOOLS, tool_choice="none", temperature=0, max_tokens=24
    )
    choice = reply.choices[0]
    assert not choice.message.tool_calls and choice.message.content
    assert choice.finish_reason in ("stop", "length")


def test_auto_answers_with_text_or_a_valid_call(client):
    # an earlier call and its result in the history make a call the likely next move
    history = [
        {"role": "user", "content": "What's the weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature": 21, "sky": "sunny"}'},
        {"role": "assistant", "content": "It is sunny and 21 °C in Paris."},
        {"role": "user", "content": "And what's the weather in London?"},
    ]
    calls = 0
    for seed in (1, 2, 3):
        reply = client.chat.completions.create(
            model=MODEL, messages=history, tools=TOOLS, tool_choice="auto", temperature=0.8, seed=seed,
            max_tokens=48,
        )
        choice = reply.choices[0]
        if choice.message.tool_calls:
            calls += 1
            assert choice.finish_reason == "tool_calls"
            for call in choice.message.tool_calls:
                assert_valid_call(call)
        else:
            assert isinstance(choice.message.content, str) and choice.finish_reason in ("stop", "length")
    greedy = client.chat.completions.create(
        model=MODEL, messages=history, tools=TOOLS, temperature=0, max_tokens=48
    ).choices[0]  # tool_choice left out: auto, as tools are given
    assert greedy.message.tool_calls or greedy.message.content


def test_streamed_call_assembles_like_openai(client):
    stream = client.chat.completions.create(
        model=MODEL, messages=ASK, tools=TOOLS, tool_choice="required", temperature=0, max_tokens=64,
        stream=True, stream_options={"include_usage": True},
    )
    chunks = list(stream)
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert deltas[0].role == "assistant" and deltas[0].content is None
    parts = [t for d in deltas for t in (d.tool_calls or [])]
    first = parts[0]
    assert first.index == 0 and first.id.startswith("call_") and first.type == "function"
    assert first.function.name in SCHEMAS and first.function.arguments == ""
    assert all(p.id is None and p.function.name is None for p in parts[1:] if p.index == 0)
    arguments = "".join(p.function.arguments or "" for p in parts if p.index == 0)
    jsonschema.validate(json.loads(arguments), SCHEMAS[first.function.name])
    assert len([p for p in parts[1:] if p.index == 0]) >= 2  # fragments, not one piece
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["tool_calls"]
    assert chunks[-1].usage.completion_tokens > 0

    unary = client.chat.completions.create(
        model=MODEL, messages=ASK, tools=TOOLS, tool_choice="required", temperature=0, max_tokens=64
    ).choices[0].message.tool_calls[0]
    assert (unary.function.name, unary.function.arguments) == (first.function.name, arguments)


def test_tool_result_round_trip(client):
    call = client.chat.completions.create(
        model=MODEL, messages=ASK, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_weather"}},
        temperature=0, max_tokens=64,
    ).choices[0].message
    arguments = assert_valid_call(call.tool_calls[0])
    conversation = [
        *ASK,
        call.model_dump(exclude_none=True),  # the assistant message exactly as returned
        {"role": "tool", "tool_call_id": call.tool_calls[0].id,
         "content": json.dumps({"city": arguments["city"], "temperature": 18, "sky": "cloudy"})},
    ]
    answer = client.chat.completions.create(
        model=MODEL, messages=conversation, tools=TOOLS, tool_choice="none", temperature=0, max_tokens=40
    )
    assert answer.choices[0].message.content and not answer.choices[0].message.tool_calls


def test_json_object_response_format(client):
    reply = client.chat.completions.create(
        model=MODEL, temperature=0, max_tokens=64, response_format={"type": "json_object"},
        messages=[{"role": "user", "content": "Describe Paris as JSON with the keys country and population."}],
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "stop"
    assert isinstance(json.loads(choice.message.content), dict)


def test_json_schema_response_format_is_enforced(client):
    schema = {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "country": {"type": "string", "enum": ["France", "Germany", "Italy"]},
            "population_millions": {"type": "number"},
            "landmarks": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 3},
        },
        "required": ["city", "country", "population_millions", "landmarks"],
        "additionalProperties": False,
    }
    for stream in (False, True):
        kwargs = dict(
            model=MODEL, temperature=0, max_tokens=120, stream=stream,
            messages=[{"role": "user", "content": "Give me facts about Paris."}],
            response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": schema, "strict": True}},
        )
        if stream:
            chunks = list(client.chat.completions.create(**kwargs))
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            reason = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason][-1]
        else:
            choice = client.chat.completions.create(**kwargs).choices[0]
            text, reason = choice.message.content, choice.finish_reason
        assert reason == "stop", text
        jsonschema.validate(json.loads(text), schema)


@pytest.mark.parametrize(
    "extra, param",
    [
        ({"response_format": {"type": "json_schema", "json_schema": {
            "name": "x", "schema": {"type": "object", "if": {"required": ["a"]}, "then": {"required": ["b"]}}}}},
         "response_format"),
        ({"tools": [{"type": "function", "function": {
            "name": "f", "parameters": {"type": "object", "properties": {"a": {"type": "array", "uniqueItems": True}}}}}],
          "tool_choice": "required"}, "tools[0].function.parameters"),
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
    ],
)
def test_what_cannot_be_enforced_is_a_400(client, extra, param):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=8, **extra)
    assert err.value.status_code == 400 and err.value.body["param"] == param
