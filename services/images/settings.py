"""Settings of the images service (HUBMESH_IMAGES_*), parsed once at its entry point."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from services.common.settings import Seconds, ServiceSettings

DEFAULT_CATALOG = Path(__file__).with_name("catalog.toml")


def default_store_dir(env: Mapping[str, str] = os.environ) -> str:
    """$XDG_CACHE_HOME/hubmesh/images, ~/.cache/hubmesh/images when XDG_CACHE_HOME is unset or empty."""
    base = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "hubmesh", "images")


class Settings(ServiceSettings):
    """HUBMESH_IMAGES_LISTEN, _TRITON_URL, _CATALOG, _TRITON_TIMEOUT_S, _STORE_DIR, and HUBMESH_IMAGES_TTL_S."""

    model_config = SettingsConfigDict(env_prefix="HUBMESH_IMAGES_")

    listen: str = "127.0.0.1:50053"
    triton_url: str = "127.0.0.1:8021"
    catalog: Path = DEFAULT_CATALOG
    triton_timeout_s: Seconds = 300.0
    # Where images for `response_format: url` are kept; unset or empty: default_store_dir().
    store_dir: str = ""
    # How long an image fetched by URL stays available.
    image_ttl_s: Seconds = Field(3600.0, validation_alias="HUBMESH_IMAGES_TTL_S")

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Settings:
        """As every settings class; an unset or empty HUBMESH_IMAGES_STORE_DIR is default_store_dir(env)."""
        if not env.get("HUBMESH_IMAGES_STORE_DIR"):
            env = {**env, "HUBMESH_IMAGES_STORE_DIR": default_store_dir(env)}
        return super().from_env(env)

    @field_validator("store_dir")
    @classmethod
    def _default_store_dir(cls, value: str) -> str:
        return value or default_store_dir()  # Settings(...) built in code
