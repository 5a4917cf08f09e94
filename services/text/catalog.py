"""The catalogue: which served model ids exist and how each maps onto a Triton model."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from services.text.chat_template import ChatTemplate


@dataclass(frozen=True)
class ModelEntry:
    """One served model."""

    id: str  # what OpenAI clients send as `model`
    triton_model: str  # model name in Triton's repository (vLLM-backend tensor contract)
    chat_template: ChatTemplate
    context_length: int
    owned_by: str = "hubmesh"
    created: int = 0
    # renders tools, tool calls and tool results; None: chat_template does (it knows tools itself)
    tool_chat_template: ChatTemplate | None = None

    @property
    def tool_template(self) -> ChatTemplate:
        """The template for conversations with tools, tool calls or tool results."""
        return self.tool_chat_template or self.chat_template


def load_catalog(path: Path) -> dict[str, ModelEntry]:
    """Reads a TOML catalogue; chat template paths are relative to the catalogue file."""
    data = tomllib.loads(path.read_text())
    entries = {}
    for raw in data.get("models", []):
        template = ChatTemplate((path.parent / raw["chat_template"]).read_text())
        tool_template = raw.get("tool_chat_template")
        entry = ModelEntry(
            id=raw["id"],
            triton_model=raw["triton_model"],
            chat_template=template,
            context_length=int(raw["context_length"]),
            owned_by=raw.get("owned_by", "hubmesh"),
            created=int(raw.get("created", 0)),
            tool_chat_template=ChatTemplate((path.parent / tool_template).read_text()) if tool_template else None,
        )
        entries[entry.id] = entry
    if not entries:
        raise ValueError(f"{path}: no [[models]] entries")
    return entries
