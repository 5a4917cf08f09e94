"""Tool calls in the text service: request → constraint and prompt (structured.py), output → calls
(tool_calls.py), the tool chat template. No model: the grammar engine itself is tested in
test_structured.py."""

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hubmesh.text.v1 import text_generation_pb2 as pb
from services.common.errors import InvalidArgument
from services.text.chat_template import ChatTemplate
from services.text.structured import CALL_TRIGGER, Mode, call_begins, closed, plan_output
from services.text.tool_calls import CallArguments, CallStart, Content, ToolCallParser

TEMPLATES = Path(__file__).resolve().parents[2] / "services" / "text" / "templates"
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
           "required": ["city"]}


def tool(name, parameters=WEATHER, description=None):
    function = pb.FunctionTool(name=name, parameters=json.dumps(parameters))
    if description:
        function.description = description
    return function


def request(tools=(), choice=None, parallel=None, response_format=None, prompt=None):
    req = pb.GenerateRequest(model="m", tools=list(tools))
    if prompt is None:
        req.chat.messages.add(role="user", content="hi")
    else:
        req.prompt = prompt
    if isinstance(choice, str):
        req.tool_choice.function_name = choice
    elif choice is not None:
        req.tool_choice.mode = choice
    if parallel is not None:
        req.parallel_tool_calls = parallel
    if response_format is not None:
        req.response_format.CopyFrom(response_format)
    return req


def parse(mode, text, names=("get_weather", "get_time"), parallel=True, pieces=None):
    """Events of `text` fed whole, or in the given pieces; and the parser."""
    parser = ToolCallParser(mode, names, parallel)
    events = []
    for piece in pieces if pieces is not None else [text]:
        events += parser.feed(piece)
    return events + parser.finish(), parser


def split(text, cuts):
    cuts = sorted({c % (len(text) + 1) for c in cuts})
    return [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]


# -- the plan: what the model is held to --------------------------------------------------------


def test_no_tools_no_format_is_free_text():
    plan = plan_output(request())
    assert plan.mode is Mode.TEXT and plan.structured_outputs is None and plan.prompt_tools is None
    assert plan.sampling_entry == {}


def test_required_is_a_call_object_or_an_array_of_them():
    plan = plan_output(request([tool("get_weather"), tool("get_time")], pb.TOOL_CHOICE_MODE_REQUIRED))
    assert plan.mode is Mode.CALLS and plan.forced and plan.tool_names == ("get_weather", "get_time")
    schema = plan.structured_outputs["json"]
    one, array = schema["anyOf"]
    assert [c["properties"]["name"] for c in one["anyOf"]] == [{"const": "get_weather"}, {"const": "get_time"}]
    assert one["anyOf"][0]["required"] == ["name", "arguments"]
    assert one["anyOf"][0]["properties"]["arguments"] == {**WEATHER, "additionalProperties": False}
    assert array["type"] == "array" and array["minItems"] == 1 and array["items"] == one
    # sent as the vLLM contract wants it: structured_outputs as a JSON string
    assert json.loads(plan.sampling_entry["structured_outputs"]) == {"json": schema}


def test_named_function_without_parallel_calls_is_exactly_that_call():
    plan = plan_output(request([tool("get_weather"), tool("get_time")], "get_time", parallel=False))
    schema = plan.structured_outputs["json"]
    assert schema["properties"]["name"] == {"const": "get_time"} and "anyOf" not in schema
    assert plan.tool_names == ("get_time",) and not plan.parallel
    assert [t["function"]["name"] for t in plan.prompt_tools] == ["get_weather", "get_time"]  # all are shown


def test_auto_is_a_structural_tag_every_begin_of_every_tool():
    plan = plan_output(request([tool("get_weather"), tool("get_time", {"type": "object"})]))  # auto by default
    assert plan.mode is Mode.AUTO and not plan.forced
    tag = json.loads(plan.structured_outputs["structural_tag"])
    assert tag["triggers"] == [CALL_TRIGGER]
    assert [s["begin"] for s in tag["structures"]] == [*call_begins("get_weather"), *call_begins("get_time")]
    assert all(s["end"] == "}" and s["begin"].startswith(CALL_TRIGGER) for s in tag["structures"])
    assert tag["structures"][2]["schema"] == {"type": "object"}


def test_none_shows_no_tools_and_constrains_nothing():
    plan = plan_output(request([tool("get_weather")], pb.TOOL_CHOICE_MODE_NONE))
    assert plan.mode is Mode.TEXT and plan.structured_outputs is None and plan.prompt_tools is None


def test_response_formats():
    json_object = plan_output(request(response_format=pb.ResponseFormat(type=pb.RESPONSE_FORMAT_TYPE_JSON_OBJECT)))
    assert json_object.structured_outputs == {"json_object": True} and json_object.forced
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    fmt = pb.ResponseFormat(type=pb.RESPONSE_FORMAT_TYPE_JSON_SCHEMA, name="x", json_schema=json.dumps(schema))
    assert plan_output(request(response_format=fmt)).structured_outputs == {
        "json": {**schema, "additionalProperties": False}
    }
    text = plan_output(request(response_format=pb.ResponseFormat(type=pb.RESPONSE_FORMAT_TYPE_TEXT)))
    assert text.structured_outputs is None
    # auto tools with a JSON format: one JSON value, a call or the answer
    either = plan_output(request([tool("get_weather")], response_format=fmt))
    assert either.mode is Mode.EITHER and len(either.structured_outputs["json"]["anyOf"]) == 2


def test_refs_keep_working_when_schemas_are_nested():
    params = {"type": "object", "properties": {"where": {"$ref": "#/$defs/place"}},
              "$defs": {"place": {"type": "string", "enum": ["home", "work"]}}}
    plan = plan_output(request([tool("go", params)], pb.TOOL_CHOICE_MODE_REQUIRED, parallel=False))
    schema = plan.structured_outputs["json"]
    assert schema["properties"]["arguments"] == {"$ref": "#/$defs/tool_0"}
    assert schema["$defs"]["tool_0"]["properties"]["where"] == {"$ref": "#/$defs/tool_0/$defs/place"}


def test_closed_schemas_name_their_properties_only():
    schema = {"type": "object", "properties": {"a": {"type": "object", "properties": {"b": {}}},
                                               "c": {"type": "object", "additionalProperties": True, "properties": {}}},
              "allOf": [{"properties": {"x": {}}}]}
    out = closed(schema)
    assert "additionalProperties" not in out  # allOf siblings would contradict each other
    assert out["properties"]["a"]["additionalProperties"] is False
    assert out["properties"]["c"]["additionalProperties"] is True
    assert "additionalProperties" not in out["allOf"][0]
    assert schema["properties"]["a"] == {"type": "object", "properties": {"b": {}}}  # the input is untouched


@pytest.mark.parametrize(
    "req, param, message",
    [
        (request([tool("get weather")]), "tools[0].function.name", "letters, digits"),
        (request([tool("f"), tool("f")]), "tools[1].function.name", "used twice"),
        (request([tool("f", {"type": "array"})]), "tools[0].function.parameters", "type object"),
        (request([tool("f", {"type": "object", "properties": {"a": {"type": "array", "uniqueItems": True}}})]),
         "tools[0].function.parameters", "uniqueItems"),
        (request([tool("f")], "g"), "tool_choice", "not among the tools"),
        (request([], pb.TOOL_CHOICE_MODE_REQUIRED), "tool_choice", "needs tools"),
        (request([tool("f")], prompt="x"), "tools", "chat"),
        (request(response_format=pb.ResponseFormat(type=pb.RESPONSE_FORMAT_TYPE_JSON_SCHEMA, json_schema="[1]")),
         "response_format", "JSON object"),
        (request(response_format=pb.ResponseFormat(type=pb.RESPONSE_FORMAT_TYPE_JSON_SCHEMA, json_schema="{bad")),
         "response_format", "not valid JSON"),
        (request(response_format=pb.ResponseFormat(
            type=pb.RESPONSE_FORMAT_TYPE_JSON_SCHEMA,
            json_schema=json.dumps({"type": "object", "if": {"required": ["a"]}, "then": {"required": ["b"]}}))),
         "response_format", "if"),
        (request(response_format=pb.ResponseFormat(
            type=pb.RESPONSE_FORMAT_TYPE_JSON_SCHEMA, json_schema=json.dumps({"type": "string", "pattern": "(?=x)"}))),
         "response_format", "look-around"),
    ],
)
def test_what_cannot_be_enforced_is_invalid_argument_naming_the_field(req, param, message):
    with pytest.raises(InvalidArgument) as err:
        plan_output(req)
    assert err.value.param == param and message in str(err.value)


# -- the parser: output → content and calls ---------------------------------------------------

CALL = '{"name": "get_weather", "arguments": {"city": "Pa\\"ris {x}", "unit": "c"}}'
ARGS = '{"city": "Pa\\"ris {x}", "unit": "c"}'


def test_calls_mode_streams_the_name_then_the_arguments():
    pieces = ['{"name": "get_', 'weather", "argu', 'ments": {"ci', 'ty": "Pa\\"ris {x}", "unit": "c"}}']
    events, parser = parse(Mode.CALLS, CALL, pieces=pieces)
    assert isinstance(events[0], CallStart) and events[0].name == "get_weather" and events[0].id.startswith("call_")
    fragments = [e.fragment for e in events[1:]]
    assert len(fragments) == 2 and "".join(fragments) == ARGS
    assert parser.complete and parser.calls[0].arguments == ARGS and json.loads(ARGS)["city"] == 'Pa"ris {x}'


def test_calls_mode_reads_arrays_and_any_whitespace():
    text = '[\n  {"name" :"get_time","arguments":{ "tz": [1, {"a": null}] } } ,\n {"arguments": {}, "name": "get_weather"}]'
    events, parser = parse(Mode.CALLS, text)
    assert [(c.name, c.arguments, c.complete) for c in parser.calls] == [
        ("get_time", '{ "tz": [1, {"a": null}] }', True), ("get_weather", "{}", True),
    ]
    assert [type(e) for e in events] == [CallStart, CallArguments, CallStart, CallArguments]
    assert len({c.id for c in parser.calls}) == 2


def test_a_call_cut_short_is_incomplete():
    _, parser = parse(Mode.CALLS, CALL[:50])
    assert parser.calls[0].name == "get_weather" and not parser.complete
    _, parser = parse(Mode.CALLS, CALL[:20])
    assert parser.calls == []


def test_auto_mode_content_before_the_call_and_nothing_after():
    events, parser = parse(Mode.AUTO, "Let me check. \n" + CALL + "\nDone! " + CALL)
    assert events[0] == Content("Let me check.")
    assert [c.name for c in parser.calls] == ["get_weather", "get_weather"] and parser.complete
    assert all(not isinstance(e, Content) for e in events[1:])
    _, single = parse(Mode.AUTO, CALL + CALL, parallel=False)
    assert len(single.calls) == 1


def test_auto_mode_text_only_and_lookalikes():
    events, parser = parse(Mode.AUTO, 'Use {braces} and {"json": 1} freely  ')
    assert parser.calls == [] and "".join(e.text for e in events) == 'Use {braces} and {"json": 1} freely  '
    events, parser = parse(Mode.AUTO, '[' + CALL + ', ' + CALL.replace("get_weather", "get_time") + ']')
    assert events[0].__class__ is CallStart and [c.name for c in parser.calls] == ["get_weather", "get_time"]


def test_auto_mode_compact_begin():
    compact = '{"name":"get_time","arguments":{"tz":"UTC"}}'
    _, parser = parse(Mode.AUTO, compact, pieces=list(compact))
    assert [(c.name, c.arguments, c.complete) for c in parser.calls] == [("get_time", '{"tz":"UTC"}', True)]


def test_either_mode_tells_calls_from_answers():
    _, parser = parse(Mode.EITHER, CALL)
    assert parser.calls[0].name == "get_weather" and json.loads(parser.calls[0].arguments) == json.loads(ARGS)
    events, parser = parse(Mode.EITHER, '{"name": "Bob", "arguments": {}}')  # not a tool: an answer
    assert parser.calls == [] and events == [Content('{"name": "Bob", "arguments": {}}')]


def test_text_mode_passes_everything():
    events, _ = parse(Mode.TEXT, " " + CALL + " ")
    assert events == [Content(" " + CALL + " ")]


@settings(max_examples=200, deadline=None)
@given(
    mode=st.sampled_from([Mode.CALLS, Mode.AUTO]),
    prefix=st.sampled_from(["", "Sure: ", "x {y} "]),
    cuts=st.lists(st.integers(0, 10_000), max_size=12),
)
def test_any_split_of_the_output_gives_the_same_calls(mode, prefix, cuts):
    text = (prefix if mode is Mode.AUTO else "") + CALL
    _, whole = parse(mode, text)
    events, parser = parse(mode, text, pieces=split(text, cuts))
    def summary(p):
        return [(c.name, c.arguments, c.complete) for c in p.calls]

    assert summary(parser) == summary(whole)
    assert "".join(e.fragment for e in events if isinstance(e, CallArguments)) == ARGS
    assert "".join(e.text for e in events if isinstance(e, Content)) == (prefix.rstrip() if mode is Mode.AUTO else "")
    assert [type(e) for e in events if not isinstance(e, Content)][0] is CallStart


# -- the tool template ----------------------------------------------------------------------------


def test_tool_template_is_the_model_template_when_there_are_no_tools():
    base = ChatTemplate((TEMPLATES / "smollm2-chatml.jinja").read_text())
    tools = ChatTemplate((TEMPLATES / "smollm2-chatml-tools.jinja").read_text())
    for messages in (
        [{"role": "user", "content": "Hi"}],
        [{"role": "system", "content": "S"}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}],
        [{"role": "developer", "content": "D"}, {"role": "user", "content": "Hi"}],
    ):
        for generation in (True, False):
            assert tools.render(messages, generation) == base.render(messages, generation)


def test_tool_template_shows_tools_calls_and_results():
    template = ChatTemplate((TEMPLATES / "smollm2-chatml-tools.jinja").read_text())
    shown = [{"type": "function", "function": {"name": "get_weather", "description": "It's <now>", "parameters": WEATHER}}]
    prompt = template.render(
        [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": "", "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
            {"role": "tool", "content": '{"t": 21}', "tool_call_id": "call_1", "name": "get_weather"},
        ],
        tools=shown, tool_choice="auto", parallel_tool_calls=False,
    )
    assert prompt.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert "<tools>\n" + json.dumps(shown[0]) + "\n</tools>" in prompt  # plain JSON, no HTML escapes
    assert "If no function fits, answer the user directly." in prompt and "JSON array" not in prompt
    assert '<|im_start|>assistant\n{"name": "get_weather", "arguments": {"city": "Paris"}}<|im_end|>\n' in prompt
    assert prompt.endswith('<|im_start|>tool\n<tool_response>\n{"t": 21}\n</tool_response><|im_end|>\n'
                           "<|im_start|>assistant\n")
    several = template.render(
        [{"role": "system", "content": "Be brief."}, {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"id": "a", "type": "function", "function": {"name": "f", "arguments": {}}},
            {"id": "b", "type": "function", "function": {"name": "g", "arguments": "not json"}}]}],
        tools=shown, tool_choice="get_weather",
    )
    assert several.startswith("<|im_start|>system\nBe brief.\n\n# Tools")
    assert "JSON array of such objects. Call the function get_weather.<|im_end|>" in several
    assert 'Checking.\n[{"name": "f", "arguments": {}}, {"name": "g", "arguments": "not json"}]<|im_end|>' in several
