"""Settings of the façade, parsed once at its entry point."""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Settings:
    """Where to listen, whom to accept, which services to call."""

    host: str = "127.0.0.1"
    port: int = 8080
    api_keys: tuple[str, ...] = ()
    text_target: str = "127.0.0.1:50051"
    embeddings_target: str = "127.0.0.1:50052"
    # Longest a request may take end to end; becomes the gRPC deadline.
    request_timeout_s: float = 600.0
    # Largest request body read; larger bodies get 413 without being read.
    max_body_bytes: int = 8 * 1024 * 1024
    # Keep-alive comment interval on SSE streams (proxies cut idle connections).
    sse_ping_s: float = 15.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Settings:
        """HUBMESH_HTTP_HOST/PORT, HUBMESH_API_KEY (comma-separated list allowed), HUBMESH_TEXT_TARGET,
        HUBMESH_EMBEDDINGS_TARGET,
        HUBMESH_REQUEST_TIMEOUT_S, HUBMESH_MAX_BODY_BYTES, HUBMESH_SSE_PING_S."""
        keys = tuple(k.strip() for k in env.get("HUBMESH_API_KEY", "").split(",") if k.strip())
        return cls(
            host=env.get("HUBMESH_HTTP_HOST", cls.host),
            port=int(env.get("HUBMESH_HTTP_PORT", cls.port)),
            api_keys=keys,
            text_target=env.get("HUBMESH_TEXT_TARGET", cls.text_target),
            embeddings_target=env.get("HUBMESH_EMBEDDINGS_TARGET", cls.embeddings_target),
            request_timeout_s=float(env.get("HUBMESH_REQUEST_TIMEOUT_S", cls.request_timeout_s)),
            max_body_bytes=int(env.get("HUBMESH_MAX_BODY_BYTES", cls.max_body_bytes)),
            sse_ping_s=float(env.get("HUBMESH_SSE_PING_S", cls.sse_ping_s)),
        )


def generate_api_key() -> str:
    """A fresh local key, for `make run` when none is configured."""
    return "hm-" + secrets.token_urlsafe(24)
