"""The catalogue: which served image model ids exist, their sizes, and their Triton models."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ImageModel:
    """One served image model."""

    id: str
    triton_model: str
    sizes: tuple[tuple[int, int], ...]  # (width, height) pairs the model draws
    description: str = ""
    owned_by: str = "hubmesh"
    created: int = 0


def parse_size(text: str) -> tuple[int, int]:
    """"1024x1024" -> (1024, 1024)."""
    width, _, height = text.partition("x")
    return int(width), int(height)


def load_catalog(path: Path) -> dict[str, ImageModel]:
    """Reads a TOML catalogue of [[models]] tables."""
    entries = {}
    for raw in tomllib.loads(path.read_text()).get("models", []):
        entry = ImageModel(**{**raw, "sizes": tuple(parse_size(s) for s in raw["sizes"])})
        entries[entry.id] = entry
    if not entries:
        raise ValueError(f"{path}: no [[models]] entries")
    return entries
