"""Rendering chat messages into a prompt with the model's own (Jinja) chat template."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from services.common.errors import InvalidArgument


def _raise_exception(message: str) -> None:
    raise TemplateError(message)


class ChatTemplate:
    """A Hugging Face style chat template, rendered in a sandbox as transformers does."""

    def __init__(self, source: str) -> None:
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise_exception
        self._template = env.from_string(source)

    def render(self, messages: Sequence[dict[str, Any]], add_generation_prompt: bool = True) -> str:
        """The prompt for `messages`; a template that rejects them is the caller's error."""
        try:
            return self._template.render(
                messages=list(messages), add_generation_prompt=add_generation_prompt
            )
        except TemplateError as err:
            raise InvalidArgument(f"messages cannot be rendered for this model: {err}", "messages") from err
