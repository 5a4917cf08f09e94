"""Settings of the text service, parsed once at its entry point."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DEFAULT_CATALOG = Path(__file__).with_name("catalog.toml")


@dataclass(frozen=True)
class Settings:
    """Where to listen, which Triton to call, which models to serve."""

    listen: str = "127.0.0.1:50051"
    triton_url: str = "127.0.0.1:8001"
    catalog: Path = DEFAULT_CATALOG
    # Longest a single generation may run inside Triton before the service gives up on it.
    triton_timeout_s: float = 600.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Settings:
        """HUBMESH_TEXT_LISTEN, HUBMESH_TEXT_TRITON_URL, HUBMESH_TEXT_CATALOG, HUBMESH_TEXT_TRITON_TIMEOUT_S."""
        return cls(
            listen=env.get("HUBMESH_TEXT_LISTEN", cls.listen),
            triton_url=env.get("HUBMESH_TEXT_TRITON_URL", cls.triton_url),
            catalog=Path(env.get("HUBMESH_TEXT_CATALOG", str(DEFAULT_CATALOG))),
            triton_timeout_s=float(env.get("HUBMESH_TEXT_TRITON_TIMEOUT_S", cls.triton_timeout_s)),
        )
