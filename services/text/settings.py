"""Settings of the text service (HUBMESH_TEXT_*), parsed once at its entry point."""

from __future__ import annotations

from pathlib import Path

from pydantic_settings import SettingsConfigDict

from services.common.settings import Seconds, ServiceSettings

DEFAULT_CATALOG = Path(__file__).with_name("catalog.toml")


class Settings(ServiceSettings):
    """HUBMESH_TEXT_LISTEN, _TRITON_URL, _CATALOG, _TRITON_TIMEOUT_S."""

    model_config = SettingsConfigDict(env_prefix="HUBMESH_TEXT_")

    listen: str = "127.0.0.1:50051"
    triton_url: str = "127.0.0.1:8001"
    catalog: Path = DEFAULT_CATALOG
    # Longest a single generation may run inside Triton before the service gives up on it.
    triton_timeout_s: Seconds = 600.0
