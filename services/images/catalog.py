"""The catalogue: which served image model ids exist, their sizes, and their Triton models."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, PositiveInt, field_validator

from services.common import catalog
from services.common.catalog import CatalogEntry, CatalogError

__all__ = ["CatalogError", "ImageModel", "load_catalog", "parse_size"]

Size = tuple[PositiveInt, PositiveInt]  # (width, height)


class ImageModel(CatalogEntry):
    """One served image model; in the TOML, `sizes` are "WxH" strings."""

    sizes: Annotated[tuple[Size, ...], Field(min_length=1)]  # (width, height) pairs the model draws

    @field_validator("sizes", mode="before")
    @classmethod
    def _parse_sizes(cls, value: Any) -> Any:
        if isinstance(value, list):
            return tuple(parse_size(size) if isinstance(size, str) else size for size in value)
        return value


def parse_size(text: str) -> tuple[int, int]:
    """"1024x1024" -> (1024, 1024); ValueError for anything else."""
    match = re.fullmatch(r"([0-9]+)x([0-9]+)", text)
    size = (int(match[1]), int(match[2])) if match else (0, 0)
    if 0 in size:
        raise ValueError(f"size {text!r} is not WIDTHxHEIGHT in pixels, e.g. \"1024x1024\"")
    return size


def load_catalog(path: Path) -> dict[str, ImageModel]:
    """Reads a TOML catalogue of [[models]] tables."""
    return catalog.load_catalog(path, ImageModel)
