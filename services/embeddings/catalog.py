"""The catalogue: which served embedding model ids exist and how each maps onto a Triton model."""

from __future__ import annotations

from pathlib import Path

from pydantic import PositiveInt

from services.common import catalog
from services.common.catalog import CatalogEntry, CatalogError

__all__ = ["CatalogError", "EmbeddingModel", "load_catalog"]


class EmbeddingModel(CatalogEntry):
    """One served embedding model."""

    dimensions: PositiveInt  # length of the vectors it returns
    max_input_tokens: PositiveInt  # longest input, in the model's tokens
    # Matryoshka-trained: a request's `dimensions` may shorten the vectors
    supports_dimensions: bool = False


def load_catalog(path: Path) -> dict[str, EmbeddingModel]:
    """Reads a TOML catalogue of [[models]] tables."""
    return catalog.load_catalog(path, EmbeddingModel)
