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
    # JWT verification: an HS256 secret and/or a JWKS (file path or URL) of RS256/ES256/EdDSA keys
    jwt_secret: str = ""
    jwks: str = ""
    jwt_issuer: str = ""
    jwt_audience: str = ""
    jwt_leeway_s: float = 30.0
    jwks_refresh_s: float = 300.0
    # Per-subject limits (0 = unlimited); a token's `rpm`/`tpm` claims override them.
    rate_limit_rpm: int = 0
    rate_limit_tpm: int = 0
    text_target: str = "127.0.0.1:50051"
    embeddings_target: str = "127.0.0.1:50052"
    images_target: str = "127.0.0.1:50053"
    # Shared secret the services require on every call (HUBMESH_INTERNAL_SECRET on both sides).
    internal_secret: str = ""
    # Signs image download links (`response_format: url`); replicas must share it. Empty: random per process.
    url_signing_key: str = ""
    # Base of absolute URLs handed to clients (e.g. https://ai.example.com); empty: taken from the request.
    public_url: str = ""
    # Longest a request may take end to end; becomes the gRPC deadline.
    request_timeout_s: float = 600.0
    # Largest request body read; larger bodies get 413 without being read.
    max_body_bytes: int = 8 * 1024 * 1024
    # Keep-alive comment interval on SSE streams (proxies cut idle connections).
    sse_ping_s: float = 15.0
    # Requests in flight in this worker before new ones get 429 (0 = no limit).
    max_in_flight: int = 256
    # On SIGTERM: how long in-flight requests and streams may take to finish.
    grace_s: float = 10.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Settings:
        """HUBMESH_HTTP_HOST/PORT, HUBMESH_API_KEY (comma-separated list allowed), HUBMESH_JWT_SECRET,
        HUBMESH_JWKS, HUBMESH_JWT_ISSUER, HUBMESH_JWT_AUDIENCE, HUBMESH_JWT_LEEWAY_S, HUBMESH_JWKS_REFRESH_S,
        HUBMESH_RATE_LIMIT_RPM, HUBMESH_RATE_LIMIT_TPM, HUBMESH_TEXT_TARGET,
        HUBMESH_EMBEDDINGS_TARGET, HUBMESH_IMAGES_TARGET, HUBMESH_URL_SIGNING_KEY, HUBMESH_PUBLIC_URL, HUBMESH_INTERNAL_SECRET,
        HUBMESH_REQUEST_TIMEOUT_S, HUBMESH_MAX_BODY_BYTES, HUBMESH_SSE_PING_S, HUBMESH_MAX_IN_FLIGHT, HUBMESH_GRACE_S."""
        keys = tuple(k.strip() for k in env.get("HUBMESH_API_KEY", "").split(",") if k.strip())
        return cls(
            host=env.get("HUBMESH_HTTP_HOST", cls.host),
            port=int(env.get("HUBMESH_HTTP_PORT", cls.port)),
            api_keys=keys,
            jwt_secret=env.get("HUBMESH_JWT_SECRET", ""),
            jwks=env.get("HUBMESH_JWKS", ""),
            jwt_issuer=env.get("HUBMESH_JWT_ISSUER", ""),
            jwt_audience=env.get("HUBMESH_JWT_AUDIENCE", ""),
            jwt_leeway_s=float(env.get("HUBMESH_JWT_LEEWAY_S", cls.jwt_leeway_s)),
            jwks_refresh_s=float(env.get("HUBMESH_JWKS_REFRESH_S", cls.jwks_refresh_s)),
            rate_limit_rpm=int(env.get("HUBMESH_RATE_LIMIT_RPM", cls.rate_limit_rpm)),
            rate_limit_tpm=int(env.get("HUBMESH_RATE_LIMIT_TPM", cls.rate_limit_tpm)),
            text_target=env.get("HUBMESH_TEXT_TARGET", cls.text_target),
            embeddings_target=env.get("HUBMESH_EMBEDDINGS_TARGET", cls.embeddings_target),
            images_target=env.get("HUBMESH_IMAGES_TARGET", cls.images_target),
            url_signing_key=env.get("HUBMESH_URL_SIGNING_KEY", ""),
            internal_secret=env.get("HUBMESH_INTERNAL_SECRET", ""),
            public_url=env.get("HUBMESH_PUBLIC_URL", "").rstrip("/"),
            request_timeout_s=float(env.get("HUBMESH_REQUEST_TIMEOUT_S", cls.request_timeout_s)),
            max_body_bytes=int(env.get("HUBMESH_MAX_BODY_BYTES", cls.max_body_bytes)),
            sse_ping_s=float(env.get("HUBMESH_SSE_PING_S", cls.sse_ping_s)),
            max_in_flight=int(env.get("HUBMESH_MAX_IN_FLIGHT", cls.max_in_flight)),
            grace_s=float(env.get("HUBMESH_GRACE_S", cls.grace_s)),
        )


def generate_api_key() -> str:
    """A fresh local key, for `make run` when none is configured."""
    return "hm-" + secrets.token_urlsafe(24)


def generate_secret() -> str:
    """A fresh HS256 secret, for `make run` when none is configured."""
    return secrets.token_urlsafe(48)
