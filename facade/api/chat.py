"""POST /v1/chat/completions."""

from __future__ import annotations

from typing import Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, field_validator, model_validator

from facade.api import text_common as tc
from facade.api.validation import parse_body
from facade.errors import invalid
from hubmesh.text.v1 import text_generation_pb2 as pb

ROLES = ("system", "developer", "user", "assistant", "tool")


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    type: StrictStr
    text: StrictStr | None = None


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    role: StrictStr
    content: StrictStr | list[TextPart] | None = None
    name: StrictStr | None = None

    @field_validator("role")
    @classmethod
    def _role(cls, value: str) -> str:
        if value not in ROLES:
            raise ValueError(f"'{value}' is not a supported role; use one of {', '.join(ROLES)}")
        return value

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
        return self

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text or "" for part in self.content)
        return self.content or ""


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    type: Literal["text", "json_object", "json_schema"]


class ChatCompletionRequest(tc.SamplingFields):
    """OpenAI's CreateChatCompletionRequest (the fields this server honours)."""

    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: StrictInt | None = Field(default=None, ge=1)
    logprobs: bool | None = None
    response_format: ResponseFormat | None = None
    tool_choice: StrictStr | dict | None = None
    tools: list[dict] | None = None

    def to_proto(self) -> pb.GenerateRequest:
        self.check_stream_options()
        if self.logprobs:
            raise invalid("logprobs are not supported by this server.", param="logprobs")
        if self.response_format is not None and self.response_format.type != "text":
            raise invalid(
                f"response_format '{self.response_format.type}' is not supported yet.", param="response_format"
            )
        if self.tools and self.tool_choice not in (None, "none"):
            raise invalid("tool calls are not supported yet; send tool_choice 'none'.", param="tools")
        messages = [
            pb.ChatMessage(role=m.role, content=m.text(), **({"name": m.name} if m.name else {}))
            for m in self.messages
        ]
        return pb.GenerateRequest(
            model=self.model,
            chat=pb.ChatInput(messages=messages),
            sampling=self.sampling_proto(tc.max_tokens_of(self, self.max_completion_tokens, default=None)),
            user=self.user or "",
        )


def _choice_json(choice: pb.Choice) -> dict:
    return {
        "index": choice.index,
        "message": {"role": "assistant", "content": choice.text, "refusal": None},
        "logprobs": None,
        "finish_reason": tc.FINISH_REASONS.get(choice.finish_reason, "stop"),
    }


async def create_chat_completion(request: web.Request) -> web.StreamResponse:
    """Creates a model response for the given chat conversation (JSON or SSE)."""
    body = await parse_body(request, ChatCompletionRequest)
    proto = body.to_proto()
    if body.stream:
        return await _stream(request, body, proto)
    result = await tc.generate(request, proto, input_param="messages")
    return web.json_response(
        {
            "id": tc.new_id("chatcmpl"),
            "object": "chat.completion",
            "created": tc.now(),
            "model": result.model,
            "system_fingerprint": tc.SYSTEM_FINGERPRINT,
            "choices": [_choice_json(c) for c in result.choices],
            "usage": tc.usage_json(result.usage),
        }
    )


async def _stream(request: web.Request, body: ChatCompletionRequest, proto: pb.GenerateRequest) -> web.StreamResponse:
    base = {
        "id": tc.new_id("chatcmpl"),
        "object": "chat.completion.chunk",
        "created": tc.now(),
        "model": body.model,
        "system_fingerprint": tc.SYSTEM_FINGERPRINT,
    }
    opening = [
        {"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
        for i in range(body.n or 1)
    ]
    upstream = tc.GenerationStream(request, proto, input_param="messages")
    return await tc.respond_with_stream(request, [(0, upstream)], base, body.include_usage, _render, opening)


def _render(delta: pb.ChoiceDelta, offset: int) -> list[dict]:
    choices = []
    if delta.text:
        choices.append({"index": delta.index, "delta": {"content": delta.text}, "logprobs": None, "finish_reason": None})
    if delta.finish_reason:
        reason = tc.FINISH_REASONS.get(delta.finish_reason, "stop")
        choices.append({"index": delta.index, "delta": {}, "logprobs": None, "finish_reason": reason})
    return choices
