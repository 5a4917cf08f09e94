"""Settings of the embeddings service, parsed once at its entry point."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DEFAULT_CATALOG = Path(__file__).with_name("catalog.toml")


@dataclass(frozen=True)
class Settings:
    """Where to listen, which Triton to call, which models to serve, how to split work."""

    listen: str = "127.0.0.1:50052"
    triton_url: str = "127.0.0.1:8011"
    catalog: Path = DEFAULT_CATALOG
    # Inputs per Triton request: big lists go out as concurrent chunks, which Triton's dynamic
    # batcher merges with other clients' work.
    chunk_size: int = 32
    triton_timeout_s: float = 60.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Settings:
        """HUBMESH_EMBEDDINGS_LISTEN, _TRITON_URL, _CATALOG, _CHUNK_SIZE, _TRITON_TIMEOUT_S."""
        return cls(
            listen=env.get("HUBMESH_EMBEDDINGS_LISTEN", cls.listen),
            triton_url=env.get("HUBMESH_EMBEDDINGS_TRITON_URL", cls.triton_url),
            catalog=Path(env.get("HUBMESH_EMBEDDINGS_CATALOG", str(DEFAULT_CATALOG))),
            chunk_size=int(env.get("HUBMESH_EMBEDDINGS_CHUNK_SIZE", cls.chunk_size)),
            triton_timeout_s=float(env.get("HUBMESH_EMBEDDINGS_TRITON_TIMEOUT_S", cls.triton_timeout_s)),
        )
