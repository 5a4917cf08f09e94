"""Tools and response formats: what the model is told, what it is held to, how its answer is read.

The model is held to its constraint by the model server, through vLLM's `structured_outputs`
sampling parameter (StructuredOutputsParams); Triton's vLLM backend on GPU nodes and our CPU
model (llguidance) enforce the same JSON:

- tool_choice `required`, or a named function: `{"json": schema}` of a call object
  `{"name": <one of the tools>, "arguments": <that tool's parameters>}`; with parallel tool calls,
  also a JSON array of such objects. The model can write nothing else.
- tool_choice `auto`: `{"structural_tag": ...}`: free text, in which `{"` can only begin a call
  (`{"name": "<tool>", "arguments": <its parameters>}`), held to the schema to its closing brace.
  Text the model writes before its first call is the message content; text after the calls is
  dropped (as vLLM's tool parsers do).
- tool_choice `auto` with a JSON response_format: `{"json": {"anyOf": [call(s), format]}}`.
- response_format `json_object` / `json_schema` (without tools to call): `{"json": schema}`.

Object schemas that do not say otherwise get `additionalProperties: false`, so the model cannot
invent keys; the output stays valid against the schema as given. Every schema is compiled with
llguidance before the request goes out: a schema it cannot enforce is the caller's error
(INVALID_ARGUMENT naming the field), never a constraint silently dropped.
"""

from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass
from typing import Any

import llguidance

from hubmesh.text.v1 import text_generation_pb2 as pb
from services.common.errors import InvalidArgument
from services.text.limits import MAX_TOOLS

TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
CALL_TRIGGER = '{"'  # in auto mode, the only way to write `{"` is to begin a call
NO_ARGUMENTS = {"type": "object", "properties": {}}


class Mode(enum.Enum):
    """How a choice's output is read."""

    TEXT = "text"  # all content
    CALLS = "calls"  # a call object, or an array of them (tool_choice required or named)
    AUTO = "auto"  # text in which `{"name": ...` begins a call
    EITHER = "either"  # one JSON value: a call (or array of calls), or an answer in the response format


def call_begins(name: str) -> tuple[str, str]:
    """The two ways a call to `name` may begin in auto mode (json.dumps' layout, and compact)."""
    quoted = json.dumps(name)
    return f'{{"name": {quoted}, "arguments": ', f'{{"name":{quoted},"arguments":'


@dataclass(frozen=True)
class OutputPlan:
    """What one request's answer may be, and how to read it."""

    mode: Mode = Mode.TEXT
    tool_names: tuple[str, ...] = ()  # the functions the model may call now
    parallel: bool = True
    structured_outputs: dict[str, Any] | None = None  # vLLM StructuredOutputsParams fields
    prompt_tools: list[dict] | None = None  # OpenAI-shaped tools for the chat template; None = none shown
    forced: bool = False  # the whole answer is JSON fixed by a grammar

    @property
    def sampling_entry(self) -> dict[str, Any]:
        """The `sampling_parameters` entries that carry the constraint (a JSON string, as Triton's
        vLLM backend parses `structured_outputs`)."""
        if self.structured_outputs is None:
            return {}
        return {"structured_outputs": json.dumps(self.structured_outputs, separators=(",", ":"))}


def parse_schema(text: str, param: str) -> dict:
    """A JSON schema sent as JSON text; it must be a JSON object."""
    try:
        schema = json.loads(text)
    except json.JSONDecodeError as err:
        raise InvalidArgument(f"the schema is not valid JSON: {err}", param) from err
    if not isinstance(schema, dict):
        raise InvalidArgument("the schema must be a JSON object", param)
    return schema


def check_enforceable(schema: dict, param: str) -> None:
    """Compiles `schema` as the model server will; what cannot be enforced is an InvalidArgument."""
    try:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(schema)
        error = llguidance.LLMatcher.validate_grammar(grammar)
    except (ValueError, TypeError) as err:
        error = str(err)
    if error:
        detail = " ".join(line.strip() for line in error.splitlines() if line.strip())
        raise InvalidArgument(f"this schema cannot be enforced: {detail[:500]}", param)


_SUBSCHEMA_MAPS = ("properties", "$defs", "definitions", "dependentSchemas", "patternProperties")
_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "prefixItems")
_SUBSCHEMA_ONE = ("items", "additionalItems", "contains", "not", "if", "then", "else", "unevaluatedItems")


def closed(schema: Any) -> Any:
    """A copy of `schema` in which objects that name their properties admit no others, unless they
    say otherwise (allOf branches are left as written: closing them would contradict each other)."""
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    for key in _SUBSCHEMA_MAPS:
        if isinstance(out.get(key), dict):
            out[key] = {k: closed(v) for k, v in out[key].items()}
    for key in _SUBSCHEMA_LISTS:
        if isinstance(out.get(key), list):
            out[key] = [closed(v) for v in out[key]]
    for key in _SUBSCHEMA_ONE:
        if isinstance(out.get(key), dict):
            out[key] = closed(out[key])
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = closed(out["additionalProperties"])
    if (
        "properties" in out
        and "additionalProperties" not in out
        and "patternProperties" not in out
        and "unevaluatedProperties" not in out
        and "allOf" not in out
    ):
        out["additionalProperties"] = False
    return out


def _has_ref(value: Any) -> bool:
    if isinstance(value, dict):
        return "$ref" in value or any(_has_ref(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_ref(v) for v in value)
    return False


def _rebase_refs(value: Any, base: str) -> Any:
    """Local `$ref`s (#...) of a schema moved to #/$defs/<base>."""
    if isinstance(value, dict):
        out = {k: _rebase_refs(v, base) for k, v in value.items() if k not in ("$id", "$schema")}
        ref = value.get("$ref")
        if isinstance(ref, str) and ref.startswith("#"):
            out["$ref"] = f"#/$defs/{base}{ref[1:]}"
        return out
    if isinstance(value, list):
        return [_rebase_refs(v, base) for v in value]
    return value


class _Embedder:
    """Places schemas inside one document; those with `$ref`s move under its $defs, refs rewritten."""

    def __init__(self) -> None:
        self.defs: dict[str, Any] = {}

    def embed(self, schema: dict, key: str) -> dict:
        if not _has_ref(schema):
            return {k: v for k, v in schema.items() if k not in ("$id", "$schema")}
        self.defs[key] = _rebase_refs(schema, key)
        return {"$ref": f"#/$defs/{key}"}

    def document(self, root: dict) -> dict:
        return {**root, "$defs": self.defs} if self.defs else root


def _call_schema(names: list[str], schemas: dict[str, dict], parallel: bool, embedder: _Embedder) -> dict:
    calls = [
        {
            "type": "object",
            "properties": {
                "name": {"const": name},
                "arguments": embedder.embed(schemas[name], f"tool_{i}"),
            },
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for i, name in enumerate(names)
    ]
    one = calls[0] if len(calls) == 1 else {"anyOf": calls}
    if not parallel:
        return one
    return {"anyOf": [one, {"type": "array", "items": one, "minItems": 1}]}


def _structural_tag(names: list[str], schemas: dict[str, dict]) -> dict:
    structures = [
        {"begin": begin, "schema": schemas[name], "end": "}"} for name in names for begin in call_begins(name)
    ]
    return {"type": "structural_tag", "structures": structures, "triggers": [CALL_TRIGGER]}


def _tools(request: pb.GenerateRequest) -> tuple[list[str], dict[str, dict], list[dict]]:
    """Names, closed argument schemas, and OpenAI-shaped tools (for the prompt) of the request."""
    if len(request.tools) > MAX_TOOLS:
        raise InvalidArgument(f"at most {MAX_TOOLS} tools are allowed, got {len(request.tools)}", "tools")
    names, schemas, shown = [], {}, []
    for i, tool in enumerate(request.tools):
        if not TOOL_NAME.match(tool.name):
            raise InvalidArgument(
                "function names must be 1 to 64 letters, digits, underscores or dashes", f"tools[{i}].function.name"
            )
        if tool.name in schemas:
            raise InvalidArgument(f"the function name '{tool.name}' is used twice", f"tools[{i}].function.name")
        param = f"tools[{i}].function.parameters"
        parameters = parse_schema(tool.parameters, param) if tool.HasField("parameters") else dict(NO_ARGUMENTS)
        if parameters.get("type", "object") != "object":
            raise InvalidArgument("function parameters must be a JSON schema of type object", param)
        schema = closed({**parameters, "type": "object"})
        check_enforceable(schema, param)
        names.append(tool.name)
        schemas[tool.name] = schema
        function = {"name": tool.name}
        if tool.HasField("description"):
            function["description"] = tool.description
        function["parameters"] = parameters
        shown.append({"type": "function", "function": function})
    return names, schemas, shown


def _response_schema(request: pb.GenerateRequest) -> tuple[str, dict] | None:
    """("json_object" | "json_schema", schema) for a JSON response_format; None for text."""
    if not request.HasField("response_format"):
        return None
    fmt = request.response_format
    if fmt.type == pb.RESPONSE_FORMAT_TYPE_JSON_OBJECT:
        return "json_object", {"type": "object"}
    if fmt.type == pb.RESPONSE_FORMAT_TYPE_JSON_SCHEMA:
        if not fmt.json_schema:
            return "json_object", {"type": "object"}
        schema = closed(parse_schema(fmt.json_schema, "response_format"))
        check_enforceable(schema, "response_format")
        return "json_schema", schema
    return None


def plan_output(request: pb.GenerateRequest) -> OutputPlan:
    """The constraint, prompt tools and reading of one request; validates tools and formats."""
    names, schemas, shown = _tools(request)
    if names and request.WhichOneof("input") != "chat":
        raise InvalidArgument("tools are only available to chat messages", "tools")
    parallel = request.parallel_tool_calls if request.HasField("parallel_tool_calls") else True
    callable_names = list(names)
    mode = Mode.AUTO if names else Mode.TEXT
    if request.HasField("tool_choice"):
        choice = request.tool_choice
        which = choice.WhichOneof("choice")
        if which == "function_name":
            if choice.function_name not in schemas:
                raise InvalidArgument(
                    f"tool_choice names the function '{choice.function_name}', which is not among the tools",
                    "tool_choice",
                )
            mode, callable_names = Mode.CALLS, [choice.function_name]
        elif which == "mode" and choice.mode == pb.TOOL_CHOICE_MODE_NONE:
            mode = Mode.TEXT
        elif which == "mode" and choice.mode in (pb.TOOL_CHOICE_MODE_AUTO, pb.TOOL_CHOICE_MODE_REQUIRED):
            if not names:
                raise InvalidArgument("tool_choice needs tools to choose from", "tool_choice")
            mode = Mode.CALLS if choice.mode == pb.TOOL_CHOICE_MODE_REQUIRED else Mode.AUTO
    response = _response_schema(request)

    if mode is Mode.TEXT:
        if response is None:
            return OutputPlan()
        kind, schema = response
        constraint = {"json_object": True} if kind == "json_object" else {"json": schema}
        return OutputPlan(structured_outputs=constraint, forced=True)
    if mode is Mode.CALLS:
        embedder = _Embedder()
        schema = embedder.document(_call_schema(callable_names, schemas, parallel, embedder))
        return OutputPlan(Mode.CALLS, tuple(callable_names), parallel, {"json": schema}, shown, forced=True)
    if response is None:
        tag = json.dumps(_structural_tag(callable_names, schemas))
        return OutputPlan(Mode.AUTO, tuple(callable_names), parallel, {"structural_tag": tag}, shown)
    embedder = _Embedder()
    calls = _call_schema(callable_names, schemas, parallel, embedder)
    answer = embedder.embed(response[1], "answer")
    schema = embedder.document({"anyOf": [calls, answer]})
    return OutputPlan(Mode.EITHER, tuple(callable_names), parallel, {"json": schema}, shown, forced=True)
