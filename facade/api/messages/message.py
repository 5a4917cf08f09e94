"""Anthropic's Message object from a generation: content blocks, stop reason, usage."""

from __future__ import annotations

import json
import uuid

from facade.api.response_bodies import (
    AnthropicMessage,
    AnthropicStopReason,
    AnthropicTextBlock,
    AnthropicToolUseBlock,
    AnthropicUsage,
)
from hubmesh.text.v1 import text_generation_pb2 as pb

# The vLLM-backend contract says "stop" both for the end of a turn and for a stop sequence met (the
# engine drops the sequence): the two cannot be told apart, and a stop is reported as end_turn.
STOP_REASONS: dict[int, AnthropicStopReason] = {
    pb.FINISH_REASON_STOP: "end_turn", pb.FINISH_REASON_LENGTH: "max_tokens", pb.FINISH_REASON_TOOL_CALLS: "tool_use",
}


def stop_reason(finish: int) -> AnthropicStopReason:
    return STOP_REASONS.get(finish, "end_turn")


def usage_json(usage: pb.Usage) -> AnthropicUsage:
    """Anthropic counts the prompt tokens read from the cache apart from input_tokens."""
    cached = usage.cached_tokens if usage.HasField("cached_tokens") else 0
    return {"input_tokens": usage.prompt_tokens - cached, "output_tokens": usage.completion_tokens,
            "cache_creation_input_tokens": 0, "cache_read_input_tokens": cached, "cache_creation": None,
            "server_tool_use": None, "service_tier": "standard", "inference_geo": None,
            "output_tokens_details": None}


def _input(arguments: str) -> dict:
    """A tool call's arguments as the tool_use block's input (an object; a call cut short by max_tokens
    has arguments that do not parse: {})."""
    try:
        value = json.loads(arguments)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def content_blocks(choice: pb.Choice) -> list[AnthropicTextBlock | AnthropicToolUseBlock]:
    blocks: list[AnthropicTextBlock | AnthropicToolUseBlock] = []
    if choice.text:
        blocks.append({"type": "text", "text": choice.text, "citations": None})
    for call in choice.tool_calls:
        blocks.append({"type": "tool_use", "id": call.id, "name": call.name, "input": _input(call.arguments)})
    return blocks


def new_message(model: str, content: list[AnthropicTextBlock | AnthropicToolUseBlock],
                stop: AnthropicStopReason | None, usage: pb.Usage) -> AnthropicMessage:
    return {"id": f"msg_{uuid.uuid4().hex}", "type": "message", "role": "assistant", "content": content,
            "model": model, "stop_reason": stop, "stop_sequence": None, "stop_details": None,
            "usage": usage_json(usage), "container": None}
