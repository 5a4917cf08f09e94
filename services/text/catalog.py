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


def load_catalog(path: Path) -> dict[str, ModelEntry]:
    """Reads a TOML catalogue; chat template paths are relative to the catalogue file."""
    data = tomllib.loads(path.read_text())
    entries = {}
    for raw in data.get("models", []):
        template = ChatTemplate((path.parent / raw["chat_template"]).read_text())
        entry = ModelEntry(
            id=raw["id"],
            triton_model=raw["triton_model"],
            chat_template=template,
            context_length=int(raw["context_length"]),
            owned_by=raw.get("owned_by", "hubmesh"),
            created=int(raw.get("created", 0)),
        )
        entries[entry.id] = entry
    if not entries:
        raise ValueError(f"{path}: no [[models]] entries")
    return entries
