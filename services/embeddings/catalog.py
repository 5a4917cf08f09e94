"""The catalogue: which served embedding model ids exist and how each maps onto a Triton model."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class EmbeddingModel:
    """One served embedding model."""

    id: str
    triton_model: str
    dimensions: int
    max_input_tokens: int
    supports_dimensions: bool = False
    owned_by: str = "hubmesh"
    created: int = 0


def load_catalog(path: Path) -> dict[str, EmbeddingModel]:
    """Reads a TOML catalogue of [[models]] tables."""
    entries = {}
    for raw in tomllib.loads(path.read_text()).get("models", []):
        entry = EmbeddingModel(**raw)
        entries[entry.id] = entry
    if not entries:
        raise ValueError(f"{path}: no [[models]] entries")
    return entries
