"""The Response object: the outcome of a Responses request, with the request's settings (defaults
filled in), its output items and usage."""

from __future__ import annotations

from typing import Literal

from facade.api.response_bodies import (
    ItemStatus,
    Response,
    ResponseError,
    ResponseFunctionTool,
    ResponseFunctionToolCall,
    ResponseOutputItem,
    ResponseOutputMessage,
    ResponseTextConfig,
    ResponseToolChoiceFunction,
    ResponseUsage,
)
from facade.api.responses.protocol import ResponseRequest, ResponsesToolChoiceFunction, new_id, output_text
from facade.api.text.generation import now
from facade.errors import OpenAIError
from hubmesh.text.v1 import text_generation_pb2 as pb

ResponseStatus = Literal["in_progress", "completed", "incomplete", "failed"]  # Response's status


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


def response_json(body: ResponseRequest, response_id: str, created_at: int, *, status: ResponseStatus,
                  output: list[ResponseOutputItem], usage: ResponseUsage | None, model: str,
                  error: ResponseError | None = None) -> Response:
    """The Response object: the outcome, and the request's settings with the defaults filled in."""
    text: ResponseTextConfig = {"format": body.format.echo() if body.format is not None else {"type": "text"}}
    tool_choice: Literal["none", "auto", "required"] | ResponseToolChoiceFunction | None
    if isinstance(body.tool_choice, ResponsesToolChoiceFunction):
        tool_choice = {"type": "function", "name": body.tool_choice.name}
    else:
        tool_choice = body.tool_choice
    response: Response = {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "completed_at": now() if status == "completed" else None,
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


def message_item(text: str, status: ItemStatus, item_id: str | None = None) -> ResponseOutputMessage:
    return {"type": "message", "id": item_id or new_id("msg"), "status": status, "role": "assistant",
            "content": [output_text(text)]}


def output_items(choice: pb.Choice) -> tuple[list[ResponseOutputItem], ResponseStatus]:
    """A finished choice as output items (text first, then each call), and the response's status."""
    incomplete = choice.finish_reason == pb.FINISH_REASON_LENGTH
    status: ResponseStatus = "incomplete" if incomplete else "completed"
    output: list[ResponseOutputItem] = []
    if choice.text or not choice.tool_calls:
        output.append(message_item(choice.text, "incomplete" if incomplete and not choice.tool_calls else "completed"))
    for i, call in enumerate(choice.tool_calls):
        cut = incomplete and i == len(choice.tool_calls) - 1
        item: ResponseFunctionToolCall = {"type": "function_call", "id": new_id("fc"), "call_id": call.id,
                                          "name": call.name, "arguments": call.arguments,
                                          "status": "incomplete" if cut else "completed"}
        output.append(item)
    return output, status


def failure(err: OpenAIError) -> ResponseError:
    code = "rate_limit_exceeded" if err.status == 429 else "invalid_prompt" if err.status < 500 else "server_error"
    return {"code": code, "message": err.message}
