"""Anthropic's Messages API request (CreateMessageParams, the fields this server honours) and the chat
request it runs as.

A Messages request becomes a chat request (facade/api/chat/protocol.py ChatCompletionRequest) and
then the same GenerateRequest: `system` a system message, `tool_use` blocks an assistant's
tool_calls, `tool_result` blocks tool messages, `tools` chat tools with `input_schema` as their
parameters (enforced while generating, as chat's are), `tool_choice` auto / any (required) / tool (a
named function) / none, `stop_sequences` stop, `metadata.user_id` the user. There is no second
generation path. What the engine cannot do (images, documents, thinking, server tools, ...) is a 400
naming the field.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Discriminator, Field, StrictBool, StrictStr, Tag, field_validator

from facade.api.chat.protocol import ChatCompletionRequest
from facade.api.validation import UInt32, param_path
from facade.errors import OpenAIError, invalid
from hubmesh.common.v1 import common_pb2 as common_pb
from hubmesh.text.v1 import text_generation_pb2 as pb

UNSUPPORTED_BLOCKS = ("image", "document", "search_result", "thinking", "redacted_thinking", "server_tool_use",
                      "web_search_tool_result", "web_fetch_tool_result", "code_execution_tool_result",
                      "container_upload", "mcp_tool_use", "mcp_tool_result")


class _Block(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class TextBlockParam(_Block):
    type: Literal["text"]
    text: StrictStr


class ToolUseBlockParam(_Block):
    type: Literal["tool_use"]
    id: StrictStr
    name: StrictStr
    input: dict[str, Any]


class ToolResultBlockParam(_Block):
    type: Literal["tool_result"]
    tool_use_id: StrictStr
    content: StrictStr | list[TextBlockParam] | None = None
    is_error: StrictBool | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(block.text for block in self.content)
        return self.content or ""


class UnsupportedBlockParam(_Block):
    """A block this server cannot take: its type names what is missing."""

    type: Any

    @field_validator("type")
    @classmethod
    def _refuse(cls, value):
        kind = value if isinstance(value, str) and len(value) <= 40 else repr(value)[:40]
        raise ValueError(f"content blocks of type '{kind}' are not supported by this server; send text, "
                         "tool_use and tool_result blocks")


def _block_kind(value: Any) -> str:
    kind = value.get("type") if isinstance(value, dict) else None
    return f"block:{kind}" if kind in ("text", "tool_use", "tool_result") else "block:unsupported"


Block = Annotated[
    Annotated[TextBlockParam, Tag("block:text")]
    | Annotated[ToolUseBlockParam, Tag("block:tool_use")]
    | Annotated[ToolResultBlockParam, Tag("block:tool_result")]
    | Annotated[UnsupportedBlockParam, Tag("block:unsupported")],
    Discriminator(_block_kind),
]


class MessageParam(_Block):
    role: Literal["user", "assistant"]
    content: StrictStr | list[Block]


class ToolParam(_Block):
    name: StrictStr
    description: StrictStr | None = None
    input_schema: dict[str, Any] | None = None  # required of custom tools (check_supported)
    type: StrictStr | None = None  # "custom"; server tools (web_search_..., bash_...) have other types


class ToolChoiceParam(_Block):
    type: Literal["auto", "any", "tool", "none"]
    name: StrictStr | None = None
    disable_parallel_tool_use: StrictBool | None = None


class MetadataParam(_Block):
    user_id: StrictStr | None = None


class MessagesRequest(_Block):
    """CreateMessageParams: the fields this server honours; others it cannot do are refused."""

    precise_errors: ClassVar[bool] = True  # its content blocks are a tagged union (facade/api/validation.py)

    model: StrictStr
    max_tokens: UInt32
    messages: list[MessageParam] = Field(min_length=1)
    system: StrictStr | list[TextBlockParam] | None = None
    stop_sequences: list[StrictStr] | None = None
    stream: StrictBool | None = False
    temperature: float | None = Field(None, ge=0.0, le=1.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: UInt32 | None = None
    tools: list[ToolParam] | None = None
    tool_choice: ToolChoiceParam | None = None
    metadata: MetadataParam | None = None
    # refused unless they ask for nothing
    thinking: dict[str, Any] | None = None
    container: Any = None
    mcp_servers: Any = None
    output_config: dict[str, Any] | None = None

    @property
    def user(self) -> str | None:
        """OpenAI's `user`, from metadata.user_id (intake puts it on the Call)."""
        return self.metadata.user_id if self.metadata is not None else None

    def check_supported(self) -> None:
        if self.thinking and self.thinking.get("type") not in (None, "disabled"):
            raise invalid("thinking is not supported by this model.", param="thinking")
        if self.container is not None:
            raise invalid("containers are not supported by this server.", param="container")
        if self.mcp_servers:
            raise invalid("MCP servers are not supported by this server.", param="mcp_servers")
        if self.output_config and any(v is not None for v in self.output_config.values()):
            raise invalid("output_config is not supported by this server.", param="output_config")
        for i, tool in enumerate(self.tools or ()):
            if tool.type not in (None, "custom"):
                raise invalid(f"server tools ('{tool.type[:60]}') are not supported by this server "
                              f"(parameter 'tools[{i}].type').", param=f"tools[{i}].type")
            if tool.input_schema is None:
                raise invalid(f"Missing required parameter: 'tools[{i}].input_schema'.", param=f"tools[{i}].input_schema")
        if self.tool_choice is not None and self.tool_choice.type == "tool" and not self.tool_choice.name:
            raise invalid("tool_choice of type 'tool' needs the tool's name.", param="tool_choice.name")

    def chat_messages(self) -> list[dict[str, Any]]:
        """The conversation as chat messages: the system prompt first; a user turn's tool_result blocks
        become tool messages (before its text), an assistant turn's tool_use blocks its tool_calls."""
        out: list[dict[str, Any]] = []
        if self.system:
            system = self.system if isinstance(self.system, str) else "".join(b.text for b in self.system)
            out.append({"role": "system", "content": system})
        for message in self.messages:
            blocks = [TextBlockParam(type="text", text=message.content)] if isinstance(message.content, str) \
                else message.content
            text = "".join(b.text for b in blocks if isinstance(b, TextBlockParam))
            if message.role == "assistant":
                calls = [{"id": b.id, "type": "function",
                          "function": {"name": b.name, "arguments": pydantic.TypeAdapter(dict).dump_json(b.input).decode()}}
                         for b in blocks if isinstance(b, ToolUseBlockParam)]
                entry: dict[str, Any] = {"role": "assistant", "content": text or None}
                if calls:
                    entry["tool_calls"] = calls
                elif not text:
                    entry["content"] = ""
                out.append(entry)
                continue
            for block in blocks:
                if isinstance(block, ToolResultBlockParam):
                    result = block.text()
                    out.append({"role": "tool", "tool_call_id": block.tool_use_id,
                                "content": f"Error: {result}" if block.is_error else result})
            if text or not any(isinstance(b, ToolResultBlockParam) for b in blocks):
                out.append({"role": "user", "content": text})
        return out

    def chat_request(self) -> ChatCompletionRequest:
        chat: dict[str, Any] = {"model": self.model, "messages": self.chat_messages(),
                                "max_completion_tokens": self.max_tokens}
        for name in ("temperature", "top_p"):
            if getattr(self, name) is not None:
                chat[name] = getattr(self, name)
        if self.stop_sequences:
            chat["stop"] = self.stop_sequences
        if self.user is not None:
            chat["user"] = self.user
        if self.tools:
            chat["tools"] = [{"type": "function", "function": {k: v for k, v in (
                ("name", t.name), ("description", t.description), ("parameters", t.input_schema)) if v is not None}}
                for t in self.tools]
        choice = self.tool_choice
        if choice is not None and (self.tools or choice.type == "none"):
            if choice.type == "tool":
                chat["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
            else:
                chat["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}[choice.type]
            if choice.disable_parallel_tool_use is not None and self.tools:
                chat["parallel_tool_calls"] = not choice.disable_parallel_tool_use
        try:
            return ChatCompletionRequest.model_validate(chat)
        except pydantic.ValidationError as exc:  # the blocks were checked already: a bug's safety net
            first = exc.errors(include_url=False)[0]
            param = messages_param(param_path(first["loc"]))
            raise invalid(f"Invalid value for '{param}': {first['msg']}.", param=param) from exc

    def to_proto(self, caller: common_pb.Caller | None = None) -> pb.GenerateRequest:
        self.check_supported()
        try:
            request = self.chat_request().to_proto(caller)
        except OpenAIError as err:
            raise renamed(err) from None
        if self.top_k:
            request.sampling.top_k = self.top_k
        return request


class CountTokensRequest(_Block):
    """CountMessageTokensParams: what a Messages request would put in the prompt."""

    precise_errors: ClassVar[bool] = True

    model: StrictStr
    messages: list[MessageParam] = Field(min_length=1)
    system: StrictStr | list[TextBlockParam] | None = None
    tools: list[ToolParam] | None = None
    tool_choice: ToolChoiceParam | None = None
    thinking: dict[str, Any] | None = None

    def to_proto(self, caller: common_pb.Caller | None = None) -> pb.GenerateRequest:
        """The prompt's generation, one token long: its first answer says how many tokens the prompt has."""
        full = MessagesRequest.model_validate({
            **self.model_dump(exclude_none=True, by_alias=True), "max_tokens": 1})
        request = full.to_proto(caller)
        request.sampling.temperature = 0
        return request


def messages_param(param: str | None) -> str | None:
    """A chat request's (or the text service's) param name -> the Messages request's."""
    if param is None:
        return None
    if param.startswith("messages"):
        return "messages"
    if param in ("max_tokens", "max_completion_tokens"):
        return "max_tokens"
    if param == "stop":
        return "stop_sequences"
    if param.startswith("tool_choice"):
        return "tool_choice"
    if param.startswith("tools["):
        return param.replace(".function.parameters", ".input_schema").replace(".function.", ".")
    return param


def renamed(err: OpenAIError) -> OpenAIError:
    """The error with the Messages request's param; as Anthropic's errors carry no param, the message
    names it where it does not already."""
    param = messages_param(err.param)
    if param is not None and param != err.param:
        err.message = err.message.replace(f"'{err.param}'", f"'{param}'")
        if param not in err.message:
            err.message = f"{err.message.rstrip('.')} (parameter '{param}')."
    err.param = param
    return err
