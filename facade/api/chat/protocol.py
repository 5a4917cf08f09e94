"""The request models of POST /v1/chat/completions (OpenAI's CreateChatCompletionRequest, the
fields this server honours) and their one mapping to the text service's GenerateRequest. The
Responses API validates and converts through them too (facade/api/responses)."""

from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, field_validator, model_validator

from facade.api.text.sampling import SamplingFields, max_tokens_of, shows_limit
from facade.api.validation import UInt32
from facade.errors import invalid
from hubmesh.common.v1 import common_pb2 as common_pb
from hubmesh.text.v1 import text_generation_pb2 as pb

Role = Literal["system", "developer", "user", "assistant", "tool"]
NAME_PATTERN = r"^[a-zA-Z0-9_-]{1,64}$"  # OpenAI's rule for function and schema names
TOOL_CHOICE_MODES = {"none": pb.TOOL_CHOICE_MODE_NONE, "auto": pb.TOOL_CHOICE_MODE_AUTO,
                     "required": pb.TOOL_CHOICE_MODE_REQUIRED}
RESPONSE_FORMATS = {"text": pb.RESPONSE_FORMAT_TYPE_TEXT, "json_object": pb.RESPONSE_FORMAT_TYPE_JSON_OBJECT,
                    "json_schema": pb.RESPONSE_FORMAT_TYPE_JSON_SCHEMA}


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    type: StrictStr
    text: StrictStr | None = None


class FunctionCall(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    name: StrictStr
    arguments: StrictStr  # JSON text, as the model (or OpenAI) wrote it


class ToolCall(BaseModel):
    """A call in an assistant message of the history."""

    model_config = ConfigDict(extra="ignore", strict=True)
    id: StrictStr
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    role: Role
    content: StrictStr | list[TextPart] | None = None
    name: StrictStr | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: StrictStr | None = None

    @field_validator("content")
    @classmethod
    def _content(cls, value):
        if isinstance(value, list):
            for part in value:
                if part.type != "text" or part.text is None:
                    raise ValueError(f"content parts of type '{part.type}' are not supported by this model; use text")
        return value

    @model_validator(mode="after")
    def _needs_content(self):
        if self.content is None and self.role != "assistant":
            raise ValueError(f"messages with role '{self.role}' must have content")
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only assistant messages can have tool_calls")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("messages with role 'tool' must have a tool_call_id")
        return self

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text or "" for part in self.content)
        return self.content or ""

    def to_proto(self) -> pb.ChatMessage:
        message = pb.ChatMessage(role=self.role, content=self.text())
        if self.name:
            message.name = self.name
        if self.tool_call_id is not None:
            message.tool_call_id = self.tool_call_id
        for call in self.tool_calls or ():
            message.tool_calls.add(id=call.id, name=call.function.name, arguments=call.function.arguments)
        return message


class FunctionDefinition(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    name: StrictStr  # the service checks it (OpenAI's rule: [a-zA-Z0-9_-]{1,64})
    description: StrictStr | None = None
    parameters: dict | None = None  # a JSON schema of type object; absent: no arguments
    strict: StrictBool | None = None  # the schema is always enforced here


class Tool(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    name: StrictStr


class NamedToolChoice(BaseModel):
    """{"type": "function", "function": {"name": ...}}: call exactly this function."""

    model_config = ConfigDict(extra="ignore", strict=True)
    type: Literal["function"]
    function: NamedFunction


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True, populate_by_name=True)
    name: StrictStr = Field(pattern=NAME_PATTERN)
    description: StrictStr | None = None
    schema_: dict | None = Field(default=None, alias="schema")
    strict: StrictBool | None = None  # enforced either way


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_for_json_schema(self):
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("json_schema is required when type is 'json_schema'")
        return self

    def to_proto(self) -> pb.ResponseFormat:
        fmt = pb.ResponseFormat(type=RESPONSE_FORMATS[self.type])
        if self.type == "json_schema" and self.json_schema is not None:
            fmt.name = self.json_schema.name
            if self.json_schema.schema_ is not None:
                fmt.json_schema = json.dumps(self.json_schema.schema_)
        return fmt


class ChatCompletionRequest(SamplingFields):
    """OpenAI's CreateChatCompletionRequest (the fields this server honours)."""

    messages: list[Message] = shows_limit("messages", ...)
    max_completion_tokens: UInt32 | None = shows_limit("max_tokens")
    logprobs: StrictBool | None = None
    top_logprobs: UInt32 | None = shows_limit("top_logprobs")
    response_format: ResponseFormat | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    tools: list[Tool] | None = shows_limit("tools")
    parallel_tool_calls: StrictBool | None = None
    functions: list | None = None  # deprecated by OpenAI: a 400 pointing at tools
    function_call: StrictStr | dict | None = None  # deprecated by OpenAI: a 400 pointing at tool_choice

    @property
    def forces_tool_calls(self) -> bool:
        """True when the answer can only be tool calls (required, or a named function)."""
        return bool(self.tools) and (self.tool_choice == "required" or isinstance(self.tool_choice, NamedToolChoice))

    def to_proto(self, caller: common_pb.Caller | None = None) -> pb.GenerateRequest:
        self.check_stream_options()
        if self.top_logprobs is not None and not self.logprobs:
            raise invalid("logprobs must be set to true if top_logprobs is used.", param="top_logprobs")
        if self.functions is not None:
            raise invalid("functions is deprecated and not supported here; send tools.", param="functions")
        if self.function_call is not None:
            raise invalid("function_call is deprecated and not supported here; send tool_choice.", param="function_call")
        request = pb.GenerateRequest(
            model=self.model,
            chat=pb.ChatInput(messages=[m.to_proto() for m in self.messages]),
            sampling=self.sampling_proto(max_tokens_of(self, self.max_completion_tokens, default=None)),
            caller=caller,
        )
        if self.logprobs:
            request.sampling.logprobs = self.top_logprobs or 0
        for tool in self.tools or ():
            function = request.tools.add(name=tool.function.name)
            if tool.function.description is not None:
                function.description = tool.function.description
            if tool.function.parameters is not None:
                function.parameters = json.dumps(tool.function.parameters)
        if isinstance(self.tool_choice, NamedToolChoice):
            request.tool_choice.function_name = self.tool_choice.function.name
        elif self.tool_choice is not None:
            request.tool_choice.mode = TOOL_CHOICE_MODES[self.tool_choice]
        if self.parallel_tool_calls is not None:
            request.parallel_tool_calls = self.parallel_tool_calls
        if self.response_format is not None:
            request.response_format.CopyFrom(self.response_format.to_proto())
        return request
