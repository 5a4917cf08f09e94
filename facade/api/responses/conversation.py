"""A Responses request as the chat request it runs as: the conversation (what it continues from, then
its own input items), as chat messages, tools and format through chat's own request model
(facade/api/chat/protocol.py), so the text service serves it with the same enforcement as a chat
completion. There is no second generation path. Errors name the Responses request's params."""

from __future__ import annotations

import re
from typing import Any

import pydantic

from facade.api.chat.protocol import ChatCompletionRequest
from facade.api.responses.protocol import ResponseRequest, ResponsesToolChoiceFunction, new_id
from facade.api.validation import param_path
from facade.errors import OpenAIError, invalid
from hubmesh.common.v1 import common_pb2 as common_pb
from hubmesh.text.v1 import text_generation_pb2 as pb


def conversation(prior: list[dict], new: list[dict]) -> list[dict]:
    """The input items of a response: what it continues from, then its own input; an id that
    repeats one already in the conversation is replaced (so `after` names one item)."""
    seen = {item["id"] for item in prior}
    items = list(prior)
    for item in new:
        if item["id"] in seen:
            item = {**item, "id": new_id(item["id"].split("_", 1)[0] if "_" in item["id"] else "item")}
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


def to_proto(body: ResponseRequest, items: list[dict], caller: common_pb.Caller | None = None) -> pb.GenerateRequest:
    """The text service's GenerateRequest for a Responses request whose conversation is `items`."""
    chat = chat_request(body, items)
    try:
        return chat.to_proto(caller)
    except OpenAIError as err:
        raise renamed(err) from None
