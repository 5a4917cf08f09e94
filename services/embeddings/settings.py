"""Settings of the embeddings service (HUBMESH_EMBEDDINGS_*), parsed once at its entry point."""

from __future__ import annotations

from pathlib import Path

from pydantic import PositiveInt
from pydantic_settings import SettingsConfigDict

from services.common.settings import Seconds, ServiceSettings

DEFAULT_CATALOG = Path(__file__).with_name("catalog.toml")


class Settings(ServiceSettings):
    """HUBMESH_EMBEDDINGS_LISTEN, _TRITON_URL, _CATALOG, _TRITON_TIMEOUT_S, _CHUNK_SIZE."""

    model_config = SettingsConfigDict(env_prefix="HUBMESH_EMBEDDINGS_")

    listen: str = "127.0.0.1:50052"
    triton_url: str = "127.0.0.1:8011"
    catalog: Path = DEFAULT_CATALOG
    triton_timeout_s: Seconds = 60.0
    # Inputs per Triton request: big lists go out as concurrent chunks, which Triton's dynamic
    # batcher merges with other clients' work.
    chunk_size: PositiveInt = 32
