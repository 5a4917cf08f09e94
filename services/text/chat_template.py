"""Rendering chat messages into a prompt with the model's own (Jinja) chat template."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from services.common.errors import InvalidArgument


def _raise_exception(message: str) -> None:
    raise TemplateError(message)


def _tojson(value: Any, indent: int | None = None, separators=None, sort_keys: bool = False,
            ensure_ascii: bool = False) -> str:
    """transformers' `tojson`: plain JSON (Jinja's own escapes <, >, & and ' for HTML)."""
    return json.dumps(value, indent=indent, separators=separators, sort_keys=sort_keys, ensure_ascii=ensure_ascii)


class ChatTemplate:
    """A Hugging Face style chat template, rendered in a sandbox as transformers does.

    As with transformers' apply_chat_template, `tools` (OpenAI-shaped function tools) and any
    extra variables are passed to the template; assistant messages may carry `tool_calls`
    ({"id", "type": "function", "function": {"name", "arguments"}}, arguments a dict when they
    parse) and tool messages `tool_call_id` and `name`.
    """

    def __init__(self, source: str) -> None:
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise_exception
        env.filters["tojson"] = _tojson
        self._template = env.from_string(source)
        # a plain dict, not Jinja's ChainMap over the environment's: every render copies it
        self._template.globals = dict(self._template.globals)

    def render(
        self,
        messages: Sequence[dict[str, Any]],
        add_generation_prompt: bool = True,
        tools: Sequence[dict[str, Any]] | None = None,
        **variables: Any,
    ) -> str:
        """The prompt for `messages`; a template that rejects them is the caller's error."""
        try:
            return self._template.render(
                messages=list(messages),
                add_generation_prompt=add_generation_prompt,
                tools=list(tools) if tools else None,
                **variables,
            )
        except TemplateError as err:
            raise InvalidArgument(f"messages cannot be rendered for this model: {err}", "messages") from err
