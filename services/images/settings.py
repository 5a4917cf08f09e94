"""Settings of the images service, parsed once at its entry point."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DEFAULT_CATALOG = Path(__file__).with_name("catalog.toml")


def _default_store_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "hubmesh", "images")


@dataclass(frozen=True)
class Settings:
    """Where to listen, which Triton to call, which models to serve, where images for URLs live."""

    listen: str = "127.0.0.1:50053"
    triton_url: str = "127.0.0.1:8021"
    catalog: Path = DEFAULT_CATALOG
    store_dir: str = ""
    # How long an image fetched by URL stays available.
    image_ttl_s: float = 3600.0
    triton_timeout_s: float = 300.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Settings:
        """HUBMESH_IMAGES_LISTEN, _TRITON_URL, _CATALOG, _STORE_DIR, _TTL_S, _TRITON_TIMEOUT_S."""
        return cls(
            listen=env.get("HUBMESH_IMAGES_LISTEN", cls.listen),
            triton_url=env.get("HUBMESH_IMAGES_TRITON_URL", cls.triton_url),
            catalog=Path(env.get("HUBMESH_IMAGES_CATALOG", str(DEFAULT_CATALOG))),
            store_dir=env.get("HUBMESH_IMAGES_STORE_DIR") or _default_store_dir(),
            image_ttl_s=float(env.get("HUBMESH_IMAGES_TTL_S", cls.image_ttl_s)),
            triton_timeout_s=float(env.get("HUBMESH_IMAGES_TRITON_TIMEOUT_S", cls.triton_timeout_s)),
        )
