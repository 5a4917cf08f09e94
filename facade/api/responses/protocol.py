"""The Responses API's request: CreateResponse (the fields this server honours) and its input items,
as pydantic models. Each input item is one of a discriminated union (message, function_call,
function_call_output; a message without `type` is a message) and knows its canonical form, the one
kept and answered by GET .../input_items: messages with typed content parts, calls and outputs with
ids and statuses."""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from typing import Annotated, Any, ClassVar, Generic, Literal, TypeVar

import pydantic
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    RootModel,
    StrictBool,
    StrictStr,
    Tag,
    field_validator,
    model_validator,
)

from facade.api.chat.protocol import NAME_PATTERN
from facade.api.response_bodies import (
    ResponseFormatJsonObjectConfig,
    ResponseFormatJsonSchemaConfig,
    ResponseFormatTextConfig,
    ResponseInputText,
    ResponseOutputText,
    ResponseRefusal,
    ResponseStreamEventType,
)
from facade.api.text.sampling import shows_limit
from facade.api.validation import UInt32, param_path
from facade.errors import OpenAIError, invalid

RESPONSE_ID = re.compile(r"^resp_[A-Za-z0-9]{1,128}$")
ITEM_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")  # ids kept from a client's items (fc_..., msg_...)
MAX_METADATA = 16  # OpenAI's limits on metadata: pairs, key length, value length
MAX_METADATA_KEY, MAX_METADATA_VALUE = 64, 512
ITEM_TYPES = ("message", "function_call", "function_call_output")
ROLES = ("user", "assistant", "system", "developer")
ITEM_STATUSES = ("in_progress", "completed", "incomplete")
TEXT_PARTS = ("input_text", "output_text", "text")


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def shown(value: str, most: int = 100) -> str:
    """A client's string in an error message: cut short."""
    return value if len(value) <= most else value[:most] + "..."


CanonicalPart = ResponseInputText | ResponseOutputText | ResponseRefusal  # a content part as kept and sent


def output_text(text: str) -> ResponseOutputText:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def previous_not_found(response_id: str) -> OpenAIError:
    return OpenAIError(404, f"Previous response with id '{shown(response_id)}' not found.",
                       param="previous_response_id", code="previous_response_not_found")


# -- input items -----------------------------------------------------------------------------------


class _Item(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    id: Any = None  # kept when it is a valid id, else a new one
    status: Any = None  # kept when it is one of ITEM_STATUSES, else "completed"

    def _id(self, prefix: str) -> str:
        return self.id if isinstance(self.id, str) and ITEM_ID.match(self.id) else new_id(prefix)

    def _status(self) -> str:
        return self.status if self.status in ITEM_STATUSES else "completed"


class ContentPart(BaseModel):
    """A content part of a message: text (input_text, output_text, text)."""

    model_config = ConfigDict(extra="ignore", strict=True)
    ALLOWED: ClassVar[tuple[str, ...]] = TEXT_PARTS
    type: Any = Field(None, validate_default=True)
    text: StrictStr | None = Field(None, validate_default=True)
    refusal: StrictStr | None = Field(None, validate_default=True)

    @field_validator("type")
    @classmethod
    def _type(cls, value):
        if value not in cls.ALLOWED:
            kind = shown(value) if isinstance(value, str) else repr(value)
            raise ValueError(f"content parts of type '{kind}' are not supported by this model; use input_text")
        return value

    @field_validator("text")
    @classmethod
    def _text(cls, value, info: pydantic.ValidationInfo):
        if value is None and info.data.get("type") in TEXT_PARTS:
            raise ValueError("a text part needs its text")
        return value

    @field_validator("refusal")
    @classmethod
    def _refusal(cls, value, info: pydantic.ValidationInfo):
        if value is None and info.data.get("type") == "refusal":
            raise ValueError("a refusal part needs its refusal")
        return value

    def canonical(self, assistant: bool) -> CanonicalPart:
        # the validators leave no text part without its text, and no refusal without its refusal
        if self.type == "refusal":
            return {"type": "refusal", "refusal": self.refusal or ""}
        return output_text(self.text or "") if assistant else {"type": "input_text", "text": self.text or ""}


class AssistantContentPart(ContentPart):
    """A content part of an assistant's message: text, or a refusal."""

    ALLOWED: ClassVar[tuple[str, ...]] = (*TEXT_PARTS, "refusal")


def _parts(content: str | Sequence[ContentPart], assistant: bool) -> list[CanonicalPart]:
    if isinstance(content, str):
        return [output_text(content) if assistant else {"type": "input_text", "text": content}]
    return [part.canonical(assistant) for part in content]


Part = TypeVar("Part", bound=ContentPart)


class _Message(_Item, Generic[Part]):
    """A message; `Part`: the content parts its role may send."""

    type: Literal["message"] = "message"
    role: Any = Field(None, validate_default=True)
    content: StrictStr | list[Part]

    @field_validator("role")
    @classmethod
    def _role(cls, value):
        if value is None:
            raise ValueError("Missing required parameter")
        if value not in ROLES:
            role = shown(value) if isinstance(value, str) else repr(value)
            raise ValueError(f"'{role}'; use one of {', '.join(ROLES)}")
        return value

    def canonical(self) -> dict:
        return {"type": "message", "id": self._id("msg"), "status": self._status(), "role": self.role,
                "content": _parts(self.content, self.role == "assistant")}


class MessageItem(_Message[ContentPart]):
    """A message of the user, the system or the developer (any role but the assistant's)."""


class AssistantMessageItem(_Message[AssistantContentPart]):
    """An assistant's message: its parts may be refusals."""


class FunctionCallItem(_Item):
    type: Literal["function_call"]
    call_id: StrictStr
    name: StrictStr
    arguments: StrictStr

    def canonical(self) -> dict:
        return {"type": "function_call", "id": self._id("fc"), "call_id": self.call_id, "name": self.name,
                "arguments": self.arguments, "status": self._status()}


class FunctionCallOutputItem(_Item):
    type: Literal["function_call_output"]
    call_id: StrictStr
    output: StrictStr | list[ContentPart]  # content parts: their text

    def canonical(self) -> dict:
        # content parts: text parts (a ContentPart is no refusal), each with its text
        output = self.output if isinstance(self.output, str) else "".join(part.text or "" for part in self.output)
        return {"type": "function_call_output", "id": self._id("fco"), "call_id": self.call_id, "output": output,
                "status": self._status()}


class _Refused(BaseModel):
    """An item the union's tag marks as one validation refuses (its error names what is wrong)."""

    model_config = ConfigDict(extra="ignore", strict=True)

    def canonical(self) -> dict:
        raise AssertionError(f"{type(self).__name__} never validates")


class UntypedItem(_Refused):
    """An object with neither `type` nor `role`: what it lacks is its type."""

    type: StrictStr


class UnsupportedItem(_Refused):
    """An item of a type this server does not take."""

    type: Any

    @field_validator("type")
    @classmethod
    def _type(cls, value):
        kind = shown(value) if isinstance(value, str) else repr(value)
        raise ValueError(f"Input items of type '{kind}' are not supported by this server; send "
                         f"{', '.join(ITEM_TYPES)} items")


def _item_kind(value: Any) -> str:
    """The union's tag of an item: its type (a message may leave it out); tags are not identifiers,
    so that error locations name the item's fields only (item_param)."""
    if not isinstance(value, dict):
        return "item:untyped"
    kind = value.get("type", "message" if "role" in value else None)
    if kind is None:
        return "item:untyped"
    if kind == "message" and value.get("role") == "assistant":
        return "item:assistant_message"
    return f"item:{kind}" if kind in ITEM_TYPES else "item:unsupported"


InputItem = Annotated[
    Annotated[MessageItem, Tag("item:message")]
    | Annotated[AssistantMessageItem, Tag("item:assistant_message")]
    | Annotated[FunctionCallItem, Tag("item:function_call")]
    | Annotated[FunctionCallOutputItem, Tag("item:function_call_output")]
    | Annotated[UntypedItem, Tag("item:untyped")]
    | Annotated[UnsupportedItem, Tag("item:unsupported")],
    Discriminator(_item_kind),
]
_INPUT_ITEMS = pydantic.TypeAdapter(list[InputItem])


def item_param(loc: tuple) -> str:
    """An input item error's location as a param, through the union's tags: ('input', 0,
    'item:message', 'content', 'list[ContentPart]', 1, 'text') -> 'input[0].content[1].text'."""
    return param_path(("input", *loc), through_unions=True) or "input"


def _item_error(exc: pydantic.ValidationError) -> OpenAIError:
    """The 400 of invalid input items: the most specific (deepest) error, naming its param."""
    errors = exc.errors(include_url=False)
    first = max(errors, key=lambda e: len(item_param(e["loc"])))  # max keeps the first of equals
    param = item_param(first["loc"])
    if first["type"] == "missing":
        return invalid(f"Missing required parameter: '{param}'.", param=param)
    text = first["msg"].removeprefix("Value error, ")
    if text.startswith("Missing required parameter"):
        return invalid(f"Missing required parameter: '{param}'.", param=param)
    if first["type"] in ("string_type", "model_type", "list_type"):
        return invalid(f"Invalid type for '{param}': {text}.", param=param)
    if text.startswith("Input items of type") or text.startswith("content parts of type"):
        return invalid(f"{text}.", param=param)
    return invalid(f"Invalid value for '{param}': {text}.", param=param)


def input_items(value: str | list | None) -> list[dict]:
    """A request's `input` as canonical items (a string: one user message); a 400 naming the
    offending param when an item is not one this server takes."""
    if value is None:
        return []
    if isinstance(value, str):
        return [{"type": "message", "id": new_id("msg"), "status": "completed", "role": "user",
                 "content": [{"type": "input_text", "text": value}]}]
    try:
        items = _INPUT_ITEMS.validate_python(value)
    except pydantic.ValidationError as exc:
        raise _item_error(exc) from None
    return [item.canonical() for item in items]


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
        schema: dict[str, Any] = {"name": self.name, "schema": self.schema_}
        if self.description is not None:
            schema["description"] = self.description
        if self.strict is not None:
            schema["strict"] = self.strict
        return {"type": "json_schema", "json_schema": schema}

    def echo(self) -> ResponseFormatTextConfig | ResponseFormatJsonObjectConfig | ResponseFormatJsonSchemaConfig:
        if self.type == "text":
            return {"type": "text"}
        if self.type == "json_object":
            return {"type": "json_object"}
        # _json_schema_needs_name_and_schema: a json_schema format has both
        assert self.name is not None and self.schema_ is not None
        echoed: ResponseFormatJsonSchemaConfig = {"type": "json_schema", "name": self.name, "schema": self.schema_,
                                                  "strict": self.strict}
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
    tools: list[ResponsesFunctionTool] | None = shows_limit("tools")
    tool_choice: Literal["none", "auto", "required"] | ResponsesToolChoiceFunction | None = None
    parallel_tool_calls: StrictBool | None = None
    text: ResponsesText | None = None
    temperature: float | None = shows_limit("temperature")
    top_p: float | None = shows_limit("top_p")
    max_output_tokens: UInt32 | None = shows_limit("max_tokens")
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
            raise invalid(f"include value '{shown(self.include[0])}' is not supported by this server.",
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
            raise previous_not_found(self.previous_response_id)

    @property
    def format(self) -> ResponsesTextFormat | None:
        return self.text.format if self.text is not None else None

    @property
    def stores(self) -> bool:
        return self.store is not False  # null: OpenAI's default, true


class ResponseStreamEvent(RootModel[ResponseStreamEventType]):
    """One typed event of a /v1/responses stream (each also named by its `event:` line)."""
