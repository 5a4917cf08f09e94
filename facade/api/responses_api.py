"""OpenAI's Responses API, with stored state: POST /v1/responses (JSON or typed SSE events),
GET and DELETE /v1/responses/{response_id}, GET /v1/responses/{response_id}/input_items.

A request is a chat request in other clothes, and runs as one: its conversation (the previous
response's input and output items when `previous_response_id` names one, then this request's
`input`; `instructions` as a system message first) becomes chat messages, function tools become
chat tools, `text.format` becomes `response_format`. Chat's own request model validates and
converts them (facade/api/chat.py ChatCompletionRequest.to_proto), so the text service's Generate /
GenerateStream serve it with the same enforcement as a chat completion: a function call's arguments
and a json_schema answer always match their schemas. There is no second generation path.

With `store` (the default) the response and its input items are kept in the façade's database
(facade/store): SQLite by default, PostgreSQL to share them between replicas. A subject reads,
chains and deletes only its own responses; anything else reads as unknown (404).
"""

from __future__ import annotations

import logging
import re
import uuid
from typing import Any, Literal

import pydantic
from aiohttp import web
from hubmesh.text.v1 import text_generation_pb2 as pb
from pydantic import BaseModel, ConfigDict, Field, RootModel, StrictBool, StrictStr, field_validator, model_validator

from facade.api import text_common as tc
from facade.api.chat import NAME_PATTERN, ChatCompletionRequest
from facade.api.responses import (
    Response,
    ResponseDeleted,
    ResponseError,
    ResponseFunctionTool,
    ResponseItemList,
    ResponseStreamEventType,
    ResponseTextConfig,
    ResponseUsage,
)
from facade.api.validation import UInt32, param_path, parse_body
from facade.auth.middleware import subject_of
from facade.clients import caller
from facade.errors import OpenAIError, invalid
from facade.jsonio import json_response
from facade.observability import MODEL
from facade.sse import EventStream
from facade.store import RESPONSES_STORE, ResponsesStore, StoreError
from facade.store.responses import UnknownItem
from services.common.metrics import StreamTimer

log = logging.getLogger(__name__)

RESPONSE_ID = re.compile(r"^resp_[A-Za-z0-9]{1,128}$")
ITEM_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")  # ids kept from a client's items (fc_..., msg_...)
MAX_METADATA = 16  # OpenAI's limits on metadata: pairs, key length, value length
MAX_METADATA_KEY, MAX_METADATA_VALUE = 64, 512
MAX_PAGE = 100
ITEM_TYPES = ("message", "function_call", "function_call_output")
ROLES = ("user", "assistant", "system", "developer")
ITEM_STATUSES = ("in_progress", "completed", "incomplete")


def _id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def _shown(value: str, most: int = 100) -> str:
    """A client's string in an error message: cut short."""
    return value if len(value) <= most else value[:most] + "..."


# -- the request -----------------------------------------------------------------------------------


class ResponsesFunctionTool(BaseModel):
    """A function tool, as the Responses API spells it (name and parameters at the top level)."""

    model_config = ConfigDict(extra="ignore", strict=True)
    type: Literal["function"]
    name: StrictStr  # the text service checks it (OpenAI's rule: [a-zA-Z0-9_-]{1,64})
    description: StrictStr | None = None
    parameters: dict | None = None  # a JSON schema of type object; absent: no arguments
    strict: StrictBool | None = None  # enforced either way


class ResponsesToolChoiceFunction(BaseModel):
    """{"type": "function", "name": ...}: call exactly this function."""

    model_config = ConfigDict(extra="ignore", strict=True)
    type: Literal["function"]
    name: StrictStr


class ResponsesTextFormat(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True, populate_by_name=True)
    type: Literal["text", "json_object", "json_schema"]
    name: StrictStr | None = Field(default=None, pattern=NAME_PATTERN)
    description: StrictStr | None = None
    schema_: dict | None = Field(default=None, alias="schema")
    strict: StrictBool | None = None  # enforced either way

    @model_validator(mode="after")
    def _json_schema_needs_name_and_schema(self):
        if self.type == "json_schema" and (self.name is None or self.schema_ is None):
            raise ValueError("a json_schema format needs a name and a schema")
        return self

    def to_chat(self) -> dict:
        if self.type != "json_schema":
            return {"type": self.type}
        schema = {"name": self.name, "schema": self.schema_}
        if self.description is not None:
            schema["description"] = self.description
        if self.strict is not None:
            schema["strict"] = self.strict
        return {"type": "json_schema", "json_schema": schema}

    def echo(self) -> dict:
        if self.type != "json_schema":
            return {"type": self.type}
        echoed = {"type": "json_schema", "name": self.name, "schema": self.schema_, "strict": self.strict}
        if self.description is not None:
            echoed["description"] = self.description
        return echoed


class ResponsesText(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    format: ResponsesTextFormat | None = None


class ResponseRequest(BaseModel):
    """OpenAI's CreateResponse (the fields this server honours; see the README). `input` items are
    messages (role user, assistant, system or developer; content a string or input_text /
    output_text parts), function_call and function_call_output items."""

    model_config = ConfigDict(extra="ignore", strict=True)

    model: StrictStr
    input: StrictStr | list[dict] | None = None
    instructions: StrictStr | None = None
    previous_response_id: StrictStr | None = None
    tools: list[ResponsesFunctionTool] | None = tc.shows_limit("tools")
    tool_choice: Literal["none", "auto", "required"] | ResponsesToolChoiceFunction | None = None
    parallel_tool_calls: StrictBool | None = None
    text: ResponsesText | None = None
    temperature: float | None = tc.shows_limit("temperature")
    top_p: float | None = tc.shows_limit("top_p")
    max_output_tokens: UInt32 | None = tc.shows_limit("max_tokens")
    metadata: dict[StrictStr, StrictStr] | None = None
    user: StrictStr | None = None
    store: StrictBool | None = True
    stream: StrictBool | None = False
    # accepted only where they ask nothing this server cannot do (a 400 otherwise)
    include: list[StrictStr] | None = None
    top_logprobs: UInt32 | None = None
    truncation: Literal["disabled", "auto"] | None = None
    reasoning: dict | None = None
    background: StrictBool | None = None
    conversation: StrictStr | dict | None = None
    prompt: dict | None = None

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value):
        if value is not None:
            if len(value) > MAX_METADATA:
                raise ValueError(f"at most {MAX_METADATA} key-value pairs are allowed, got {len(value)}")
            for key, item in value.items():
                if len(key) > MAX_METADATA_KEY:
                    raise ValueError(f"keys are at most {MAX_METADATA_KEY} characters long")
                if len(item) > MAX_METADATA_VALUE:
                    raise ValueError(f"values are at most {MAX_METADATA_VALUE} characters long")
        return value

    def check_supported(self) -> None:
        """400 for what the request asks that this server cannot do (never silently ignored)."""
        if self.include:
            raise invalid(f"include value '{_shown(self.include[0])}' is not supported by this server.",
                          param="include")
        if self.top_logprobs:
            raise invalid("logprobs are not supported on /v1/responses by this server.", param="top_logprobs")
        if self.truncation == "auto":
            raise invalid("truncation 'auto' is not supported; the conversation must fit the model's context.",
                          param="truncation")
        if self.reasoning and any(self.reasoning.get(k) is not None for k in ("effort", "summary", "generate_summary")):
            raise invalid("reasoning is not supported with this model.", param="reasoning")
        if self.background:
            raise invalid("background responses are not supported by this server.", param="background")
        if self.conversation is not None:
            raise invalid("conversations are not supported by this server; chain responses with "
                          "previous_response_id.", param="conversation")
        if self.prompt is not None:
            raise invalid("prompt templates are not supported by this server.", param="prompt")
        if self.previous_response_id is not None and not RESPONSE_ID.match(self.previous_response_id):
            raise _previous_not_found(self.previous_response_id)

    @property
    def format(self) -> ResponsesTextFormat | None:
        return self.text.format if self.text is not None else None

    @property
    def stores(self) -> bool:
        return self.store is not False  # null: OpenAI's default, true


# -- input items -----------------------------------------------------------------------------------
# Every item is brought to one canonical form, the one GET .../input_items answers (and the one
# kept): messages with typed content parts, calls and outputs with ids and statuses.


def _string(raw: dict, key: str, where: str) -> str:
    value = raw.get(key)
    if value is None:
        raise invalid(f"Missing required parameter: '{where}.{key}'.", param=f"{where}.{key}")
    if not isinstance(value, str):
        raise invalid(f"Invalid type for '{where}.{key}': expected a string.", param=f"{where}.{key}")
    return value


def _item_id(raw: dict, prefix: str) -> str:
    value = raw.get("id")
    return value if isinstance(value, str) and ITEM_ID.match(value) else _id(prefix)


def _status(raw: dict) -> str:
    value = raw.get("status")
    return value if value in ITEM_STATUSES else "completed"


def _output_text(text: str) -> dict:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _parts(raw: dict, where: str, assistant: bool) -> list[dict]:
    content = raw.get("content")
    if isinstance(content, str):
        return [_output_text(content) if assistant else {"type": "input_text", "text": content}]
    if not isinstance(content, list):
        if content is None:
            raise invalid(f"Missing required parameter: '{where}.content'.", param=f"{where}.content")
        raise invalid(f"Invalid type for '{where}.content': expected a string or a list of content parts.",
                      param=f"{where}.content")
    parts = []
    for j, part in enumerate(content):
        at = f"{where}.content[{j}]"
        if not isinstance(part, dict):
            raise invalid(f"Invalid type for '{at}': expected an object.", param=at)
        kind = part.get("type")
        if kind in ("input_text", "output_text", "text"):
            text = _string(part, "text", at)
            parts.append(_output_text(text) if assistant else {"type": "input_text", "text": text})
        elif kind == "refusal" and assistant:
            parts.append({"type": "refusal", "refusal": _string(part, "refusal", at)})
        else:
            shown = _shown(kind) if isinstance(kind, str) else repr(kind)
            raise invalid(f"content parts of type '{shown}' are not supported by this model; use input_text.",
                          param=f"{at}.type")
    return parts


def _item(raw: Any, where: str) -> dict:
    """One input item, checked, in canonical form; a 400 naming the offending param otherwise."""
    if not isinstance(raw, dict):
        raise invalid(f"Invalid type for '{where}': expected an object.", param=where)
    kind = raw.get("type", "message" if "role" in raw else None)
    if kind == "message":
        role = raw.get("role")
        if role not in ROLES:
            if role is None:
                raise invalid(f"Missing required parameter: '{where}.role'.", param=f"{where}.role")
            shown = _shown(role) if isinstance(role, str) else repr(role)
            raise invalid(f"Invalid value for '{where}.role': '{shown}'; use one of {', '.join(ROLES)}.",
                          param=f"{where}.role")
        assistant = role == "assistant"
        return {"type": "message", "id": _item_id(raw, "msg"), "status": _status(raw), "role": role,
                "content": _parts(raw, where, assistant)}
    if kind == "function_call":
        return {"type": "function_call", "id": _item_id(raw, "fc"), "call_id": _string(raw, "call_id", where),
                "name": _string(raw, "name", where), "arguments": _string(raw, "arguments", where),
                "status": _status(raw)}
    if kind == "function_call_output":
        call_id = _string(raw, "call_id", where)
        output = raw.get("output")
        if isinstance(output, list):  # content parts: their text
            output = "".join(p["text"] for p in _parts({"content": output}, where, assistant=False))
        elif not isinstance(output, str):
            return _string(raw, "output", where)  # raises: missing, or not a string
        return {"type": "function_call_output", "id": _item_id(raw, "fco"), "call_id": call_id, "output": output,
                "status": _status(raw)}
    if kind is None:
        raise invalid(f"Missing required parameter: '{where}.type'.", param=f"{where}.type")
    shown = _shown(kind) if isinstance(kind, str) else repr(kind)
    raise invalid(f"Input items of type '{shown}' are not supported by this server; send {', '.join(ITEM_TYPES)} "
                  "items.", param=f"{where}.type")


def input_items(value: str | list | None) -> list[dict]:
    """A request's `input` as canonical items (a string: one user message)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [{"type": "message", "id": _id("msg"), "status": "completed", "role": "user",
                 "content": [{"type": "input_text", "text": value}]}]
    return [_item(raw, f"input[{i}]") for i, raw in enumerate(value)]


def conversation(prior: list[dict], new: list[dict]) -> list[dict]:
    """The input items of a response: what it continues from, then its own input; an id that
    repeats one already in the conversation is replaced (so `after` names one item)."""
    seen = {item["id"] for item in prior}
    items = list(prior)
    for item in new:
        if item["id"] in seen:
            item = {**item, "id": _id(item["id"].split("_", 1)[0] if "_" in item["id"] else "item")}
        seen.add(item["id"])
        items.append(item)
    return items


def chat_messages(instructions: str | None, items: list[dict]) -> list[dict]:
    """Canonical items -> chat messages: function calls join the assistant message before them (one
    assistant turn with content and tool_calls), outputs become tool messages."""
    messages: list[dict] = [{"role": "system", "content": instructions}] if instructions else []
    for item in items:
        kind = item["type"]
        if kind == "message":
            text = "".join(p.get("text", p.get("refusal", "")) for p in item["content"])
            messages.append({"role": item["role"], "content": text})
        elif kind == "function_call":
            call = {"id": item["call_id"], "type": "function",
                    "function": {"name": item["name"], "arguments": item["arguments"]}}
            if messages and messages[-1]["role"] == "assistant":
                messages[-1].setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": item["output"]})
    return messages


# -- request -> chat request -> proto --------------------------------------------------------------

_TOOL_PARAM = re.compile(r"^tools\[(\d+)\]\.function\.(\w+)")


def responses_param(param: str | None) -> str | None:
    """A chat request's (or the text service's) param name -> the Responses request's."""
    if param is None:
        return None
    if param.startswith("messages"):
        return "input"
    if param in ("max_tokens", "max_completion_tokens"):
        return "max_output_tokens"
    if param.startswith("response_format"):
        return "text.format"
    if param.startswith("tool_choice"):
        return "tool_choice"
    if match := _TOOL_PARAM.match(param):
        return f"tools[{match[1]}].{match[2]}"
    return param


def renamed(err: OpenAIError) -> OpenAIError:
    err.param = responses_param(err.param)
    return err


def chat_request(body: ResponseRequest, items: list[dict]) -> ChatCompletionRequest:
    """The chat request a Responses request runs as."""
    messages = chat_messages(body.instructions, items)
    if not messages:
        raise invalid("Missing required parameter: 'input'.", param="input")
    chat: dict[str, Any] = {"model": body.model, "messages": messages}
    for name in ("temperature", "top_p", "user", "parallel_tool_calls"):
        if getattr(body, name) is not None:
            chat[name] = getattr(body, name)
    if body.max_output_tokens is not None:
        chat["max_completion_tokens"] = body.max_output_tokens
    if body.tools:
        chat["tools"] = [
            {"type": "function", "function": {k: v for k, v in (
                ("name", tool.name), ("description", tool.description), ("parameters", tool.parameters),
                ("strict", tool.strict)) if v is not None}}
            for tool in body.tools
        ]
    if isinstance(body.tool_choice, ResponsesToolChoiceFunction):
        chat["tool_choice"] = {"type": "function", "function": {"name": body.tool_choice.name}}
    elif body.tool_choice is not None:
        chat["tool_choice"] = body.tool_choice
    if body.format is not None:
        chat["response_format"] = body.format.to_chat()
    try:
        return ChatCompletionRequest.model_validate(chat)
    except pydantic.ValidationError as exc:  # items were checked already: this is a bug's safety net
        first = exc.errors(include_url=False)[0]
        param = responses_param(param_path(first["loc"]))
        raise invalid(f"Invalid value for '{param}': {first['msg']}.", param=param) from exc


def to_proto(body: ResponseRequest, items: list[dict], request: web.Request | None = None) -> pb.GenerateRequest:
    """The text service's GenerateRequest for a Responses request whose conversation is `items`."""
    chat = chat_request(body, items)
    who = caller(request, body.user) if request is not None else None
    try:
        return chat.to_proto(who)
    except OpenAIError as err:
        raise renamed(err) from None


# -- the Response object ---------------------------------------------------------------------------


def usage_json(usage: pb.Usage) -> ResponseUsage:
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": usage.cached_tokens if usage.HasField("cached_tokens") else 0,
                                 "cache_write_tokens": 0},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }


def _tools_json(body: ResponseRequest) -> list[ResponseFunctionTool]:
    return [{"type": "function", "name": t.name, "description": t.description, "parameters": t.parameters,
             "strict": True} for t in body.tools or ()]


def response_json(body: ResponseRequest, response_id: str, created_at: int, *, status: str, output: list[dict],
                  usage: ResponseUsage | None, model: str, error: ResponseError | None = None) -> Response:
    """The Response object: the outcome, and the request's settings with the defaults filled in."""
    text: ResponseTextConfig = {"format": body.format.echo() if body.format is not None else {"type": "text"}}
    tool_choice = body.tool_choice
    if isinstance(tool_choice, ResponsesToolChoiceFunction):
        tool_choice = {"type": "function", "name": tool_choice.name}
    response: Response = {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "completed_at": tc.now() if status == "completed" else None,
        "error": error,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "instructions": body.instructions,
        "max_output_tokens": body.max_output_tokens,
        "max_tool_calls": None,
        "model": model,
        "output": output,
        "parallel_tool_calls": body.parallel_tool_calls is not False,
        "previous_response_id": body.previous_response_id,
        "reasoning": {"effort": None, "summary": None},
        "store": body.stores,
        "temperature": body.temperature if body.temperature is not None else 1.0,
        "text": text,
        "tool_choice": tool_choice if tool_choice is not None else "auto",
        "tools": _tools_json(body),
        "top_p": body.top_p if body.top_p is not None else 1.0,
        "truncation": "disabled",
        "metadata": body.metadata or {},
        "background": False,
    }
    # OpenAI's schema has neither ever null: usage is absent while in progress, user when not given
    if usage is not None:
        response["usage"] = usage
    if body.user is not None:
        response["user"] = body.user
    return response


def _message_item(text: str, status: str, item_id: str | None = None) -> dict:
    return {"type": "message", "id": item_id or _id("msg"), "status": status, "role": "assistant",
            "content": [_output_text(text)]}


def output_items(choice: pb.Choice) -> tuple[list[dict], str]:
    """A finished choice as output items (text first, then each call), and the response's status."""
    incomplete = choice.finish_reason == pb.FINISH_REASON_LENGTH
    status = "incomplete" if incomplete else "completed"
    output = []
    if choice.text or not choice.tool_calls:
        output.append(_message_item(choice.text, "incomplete" if incomplete and not choice.tool_calls else "completed"))
    for i, call in enumerate(choice.tool_calls):
        cut = incomplete and i == len(choice.tool_calls) - 1
        output.append({"type": "function_call", "id": _id("fc"), "call_id": call.id, "name": call.name,
                       "arguments": call.arguments, "status": "incomplete" if cut else "completed"})
    return output, status


def _failure(err: OpenAIError) -> ResponseError:
    code = "rate_limit_exceeded" if err.status == 429 else "invalid_prompt" if err.status < 500 else "server_error"
    return {"code": code, "message": err.message}


# -- the store -------------------------------------------------------------------------------------


def _store_unavailable() -> OpenAIError:
    return OpenAIError(503, "The response store is unavailable; try again shortly.", type="server_error",
                       code="store_unavailable", headers={"Retry-After": "5"})


async def _store(request: web.Request) -> ResponsesStore:
    try:
        return await request.app[RESPONSES_STORE].get()
    except StoreError:
        raise _store_unavailable() from None


async def _stored(awaitable):
    """A store call; a database failure is a 503, never a 500."""
    try:
        return await awaitable
    except StoreError as err:
        log.error("responses store: %s", err)
        raise _store_unavailable() from None


def _not_found(response_id: str) -> OpenAIError:
    return OpenAIError(404, f"Response with id '{_shown(response_id)}' not found.", code="response_not_found")


def _previous_not_found(response_id: str) -> OpenAIError:
    return OpenAIError(404, f"Previous response with id '{_shown(response_id)}' not found.",
                       param="previous_response_id", code="previous_response_not_found")


# -- POST /v1/responses ----------------------------------------------------------------------------


async def create_response(request: web.Request) -> web.StreamResponse:
    """Creates a model response (JSON, or with `stream: true` OpenAI's typed server-sent events);
    with `store` (the default) it is kept for GET, DELETE, input_items and previous_response_id."""
    body = await parse_body(request, ResponseRequest)
    body.check_supported()
    new_items = input_items(body.input)
    subject = subject_of(request)
    store = await _store(request) if body.stores or body.previous_response_id is not None else None
    prior: list[dict] = []
    if body.previous_response_id is not None:
        found = await _stored(store.conversation(body.previous_response_id, subject))
        if found is None:
            raise _previous_not_found(body.previous_response_id)
        previous, previous_items = found
        prior = previous_items + previous["output"]
    items = conversation(prior, new_items)
    proto = to_proto(body, items, request)
    created = Created(store if body.stores else None, subject, items)
    await tc.reserve_budget(request, proto)
    if body.stream:
        return await _stream(request, body, proto, created)
    try:
        result = await tc.generate(request, proto, input_param="input")
    except OpenAIError as err:
        raise renamed(err) from None
    choice = result.choices[0] if result.choices else pb.Choice(finish_reason=pb.FINISH_REASON_STOP)
    output, status = output_items(choice)
    response = response_json(body, created.id, created.at, status=status, output=output,
                             usage=usage_json(result.usage), model=result.model or body.model)
    await created.save(response)
    return json_response(response)


class Created:
    """A response being made: its id, time, and where it is kept (store None: not kept)."""

    def __init__(self, store: ResponsesStore | None, subject: str, items: list[dict]) -> None:
        self.id = _id("resp")
        self.at = tc.now()
        self.store = store
        self.subject = subject
        self.items = items

    async def save(self, response: Response) -> None:
        if self.store is not None:
            await _stored(self.store.save(self.subject, response, self.items))


class _Events:
    """The typed events of one stream, numbered from 0 by sequence_number."""

    def __init__(self, stream: EventStream) -> None:
        self.stream = stream
        self.sequence = 0

    async def send(self, kind: str, **fields: Any) -> None:
        event = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        await self.stream.send(event, event=kind)


class _StreamedOutput:
    """Turns one choice's deltas into output items and their events: a message (output_item.added,
    content_part.added, output_text.delta..., output_text.done, content_part.done,
    output_item.done), then each function call (output_item.added, function_call_arguments.delta...,
    function_call_arguments.done, output_item.done)."""

    def __init__(self, events: _Events, timer: StreamTimer) -> None:
        self.events = events
        self.timer = timer
        self.output: list[dict] = []
        self.message: dict | None = None  # the open message item, its text in content[0]
        self.call: dict | None = None  # the open function call item
        self.finish = pb.FINISH_REASON_UNSPECIFIED

    @property
    def status(self) -> str:
        return "incomplete" if self.finish == pb.FINISH_REASON_LENGTH else "completed"

    async def add(self, delta: pb.ChoiceDelta) -> None:
        if delta.text:
            await self._close_call("completed")
            if self.message is None:
                await self._open_message()
            self.message["content"][0]["text"] += delta.text
            self.timer.chunk()
            await self.events.send("response.output_text.delta", item_id=self.message["id"],
                                   output_index=len(self.output) - 1, content_index=0, delta=delta.text, logprobs=[])
        for call in delta.tool_calls:
            if call.HasField("id"):
                await self._close_message("completed")
                await self._close_call("completed")
                self.call = {"type": "function_call", "id": _id("fc"), "call_id": call.id, "name": call.name,
                             "arguments": "", "status": "in_progress"}
                self.output.append(self.call)
                await self.events.send("response.output_item.added", output_index=len(self.output) - 1,
                                       item=self.call)
            if call.arguments and self.call is not None:
                self.call["arguments"] += call.arguments
                self.timer.chunk()
                await self.events.send("response.function_call_arguments.delta", item_id=self.call["id"],
                                       output_index=len(self.output) - 1, delta=call.arguments)
        if delta.finish_reason:
            self.finish = delta.finish_reason

    async def finish_items(self) -> None:
        """Closes what is open (incomplete when the token budget ran out); an answer with no text
        and no call is one empty message."""
        if not self.output:
            await self._open_message()
        await self._close_message(self.status)
        await self._close_call(self.status)

    async def _open_message(self) -> None:
        self.message = {"type": "message", "id": _id("msg"), "status": "in_progress", "role": "assistant",
                        "content": []}
        self.output.append(self.message)
        index = len(self.output) - 1
        await self.events.send("response.output_item.added", output_index=index, item=self.message)
        self.message["content"].append(_output_text(""))
        await self.events.send("response.content_part.added", item_id=self.message["id"], output_index=index,
                               content_index=0, part=self.message["content"][0])

    async def _close_message(self, status: str) -> None:
        item, self.message = self.message, None
        if item is None:
            return
        index = self.output.index(item)
        part = item["content"][0]
        await self.events.send("response.output_text.done", item_id=item["id"], output_index=index,
                               content_index=0, text=part["text"], logprobs=[])
        await self.events.send("response.content_part.done", item_id=item["id"], output_index=index,
                               content_index=0, part=part)
        item["status"] = status
        await self.events.send("response.output_item.done", output_index=index, item=item)

    async def _close_call(self, status: str) -> None:
        item, self.call = self.call, None
        if item is None:
            return
        index = self.output.index(item)
        await self.events.send("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                               name=item["name"], arguments=item["arguments"])
        item["status"] = status
        await self.events.send("response.output_item.done", output_index=index, item=item)


async def _stream(request: web.Request, body: ResponseRequest, proto: pb.GenerateRequest,
                  created: Created) -> web.StreamResponse:
    """The typed event stream; the first upstream message (or error) is read before any byte is
    sent, so errors such as an unknown model keep their HTTP status."""
    upstream = tc.GenerationStream(request, proto, input_param="input")
    try:
        try:
            await upstream.start()
        except OpenAIError as err:
            raise renamed(err) from None
        stream = EventStream(request)
        await stream.open()
        events = _Events(stream)
        model = body.model
        snapshot = response_json(body, created.id, created.at, status="in_progress", output=[], usage=None,
                                 model=model)
        await events.send("response.created", response=snapshot)
        await events.send("response.in_progress", response=snapshot)
        output = _StreamedOutput(events, StreamTimer(request.get(MODEL, "")))
        used = tc.StreamUsage()
        usage = used.total
        try:
            async for message in upstream.messages():
                model = message.model or model
                used.see(message)
                for delta in message.deltas:
                    if delta.index == 0:  # n is always 1 here
                        await output.add(delta)
            await output.finish_items()
            used.record(request)
            final = response_json(body, created.id, created.at, status=output.status, output=output.output,
                                  usage=usage_json(usage), model=model)
            await created.save(final)
            await events.send(f"response.{output.status}", response=final)
        except OpenAIError as err:
            err = renamed(err)
            failed = response_json(body, created.id, created.at, status="failed", output=output.output,
                                   usage=usage_json(usage), model=model, error=_failure(err))
            await events.send("error", code=err.code, message=err.message, param=err.param)
            await events.send("response.failed", response=failed)
            if err.code != "store_unavailable":
                try:
                    await created.save(failed)
                except OpenAIError:
                    pass  # logged by _stored; the stream has said what failed
        finally:
            used.record(request)  # a stream cut short: what it had shown
        return await stream.close()
    finally:
        upstream.cancel()


# -- GET / DELETE /v1/responses/{response_id}, GET .../input_items ---------------------------------


def _response_id(request: web.Request) -> str:
    return request.match_info["response_id"]


def _reject_query(request: web.Request, names: tuple[str, ...]) -> None:
    for name in names:
        values = [v for v in (*request.query.getall(name, ()), *request.query.getall(name + "[]", ())) if v]
        if name == "stream":
            values = [v for v in values if v.lower() not in ("false", "0")]
        if values:
            raise invalid(f"'{name}' is not supported here by this server.", param=name)


async def retrieve_response(request: web.Request) -> web.Response:
    """Retrieves a stored response (the caller's own; any other id is unknown)."""
    response_id = _response_id(request)
    _reject_query(request, ("include", "stream"))
    store = await _store(request)
    found = await _stored(store.get(response_id, subject_of(request))) if RESPONSE_ID.match(response_id) else None
    if found is None:
        raise _not_found(response_id)
    return json_response(found)


async def delete_response(request: web.Request) -> web.Response:
    """Deletes a stored response and its input items (the caller's own)."""
    response_id = _response_id(request)
    store = await _store(request)
    deleted = RESPONSE_ID.match(response_id) and await _stored(store.delete(response_id, subject_of(request)))
    if not deleted:
        raise _not_found(response_id)
    answer: ResponseDeleted = {"id": response_id, "object": "response.deleted", "deleted": True}
    return json_response(answer)


def _limit(request: web.Request) -> int:
    raw = request.query.get("limit")
    if raw is None:
        return 20
    if not (raw.isascii() and raw.isdigit() and 1 <= int(raw) <= MAX_PAGE):
        raise invalid(f"Invalid value for 'limit': an integer from 1 to {MAX_PAGE}.", param="limit")
    return int(raw)


async def list_input_items(request: web.Request) -> web.Response:
    """Lists the input items of a stored response: the conversation it was made from (previous
    responses' items included), newest first unless `order=asc`; `limit` (1-100, 20) and `after`
    (an item id) page through it."""
    response_id = _response_id(request)
    _reject_query(request, ("include",))
    limit = _limit(request)
    order = request.query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise invalid("Invalid value for 'order': use 'asc' or 'desc'.", param="order")
    after = request.query.get("after")
    store = await _store(request)
    if not RESPONSE_ID.match(response_id):
        raise _not_found(response_id)
    if after is not None and not ITEM_ID.match(after):
        raise invalid(f"No input item with id '{_shown(after)}' in this response.", param="after")
    try:
        page = await _stored(store.input_items(response_id, subject_of(request), limit, order, after))
    except UnknownItem:
        raise invalid(f"No input item with id '{_shown(after or '')}' in this response.", param="after") from None
    if page is None:
        raise _not_found(response_id)
    listing: ResponseItemList = {
        "object": "list",
        "data": page.items,
        "first_id": page.items[0]["id"] if page.items else None,
        "last_id": page.items[-1]["id"] if page.items else None,
        "has_more": page.has_more,
    }
    return json_response(listing)


class ResponseStreamEvent(RootModel[ResponseStreamEventType]):
    """One typed event of a /v1/responses stream (each also named by its `event:` line)."""
