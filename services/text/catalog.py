"""The catalogue: which served model ids exist and how each maps onto a Triton model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jinja2 import TemplateSyntaxError
from pydantic import PositiveInt, ValidationInfo, field_validator

from services.common import catalog
from services.common.catalog import CatalogEntry, CatalogError
from services.text.chat_template import ChatTemplate

__all__ = ["CatalogError", "ModelEntry", "load_catalog"]


class ModelEntry(CatalogEntry):
    """One served model; `triton_model` speaks the vLLM-backend tensor contract.

    In the TOML, `chat_template` and `tool_chat_template` are paths relative to the catalogue file;
    the entry holds the loaded templates.
    """

    chat_template: ChatTemplate
    context_length: PositiveInt
    # renders tools, tool calls and tool results; None: chat_template does (it knows tools itself)
    tool_chat_template: ChatTemplate | None = None

    @field_validator("chat_template", "tool_chat_template", mode="before")
    @classmethod
    def _read_template(cls, value: Any, info: ValidationInfo) -> Any:
        if not isinstance(value, str):
            return value  # already a ChatTemplate (or a type error for pydantic to report)
        folder = (info.context or {}).get("catalog_dir")
        if folder is None:
            raise ValueError("a template path needs the catalogue's folder: load the entry with load_catalog")
        path = Path(folder) / value
        try:
            source = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
            raise ValueError(f"cannot read the template {path}: {reason}") from None
        try:
            return ChatTemplate(source)
        except TemplateSyntaxError as err:
            raise ValueError(f"the template {path} does not parse: line {err.lineno}: {err.message}") from None

    @property
    def tool_template(self) -> ChatTemplate:
        """The template for conversations with tools, tool calls or tool results."""
        return self.tool_chat_template or self.chat_template


def load_catalog(path: Path) -> dict[str, ModelEntry]:
    """Reads a TOML catalogue; chat template paths are relative to the catalogue file."""
    return catalog.load_catalog(path, ModelEntry)
