"""Settings of the façade, parsed once at its entry point."""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field, NonNegativeInt, PositiveInt, field_validator
from pydantic_settings import SettingsConfigDict

from facade.aliases import aliases_from
from facade.limits.policy import LimitClaims, model_limits_from
from services.common.settings import EnvSettings, NonNegativeSeconds, Port, Seconds, split_list


class Settings(EnvSettings):
    """Where to listen, whom to accept, which services to call.

    Each field is read from HUBMESH_<FIELD NAME> (HUBMESH_TEXT_TARGET, HUBMESH_JWT_LEEWAY_S, ...),
    except host, port and api_keys: HUBMESH_HTTP_HOST, HUBMESH_HTTP_PORT, HUBMESH_API_KEY.
    """

    model_config = SettingsConfigDict(env_prefix="HUBMESH_")

    host: str = Field("127.0.0.1", validation_alias="HUBMESH_HTTP_HOST")
    port: Port = Field(8080, validation_alias="HUBMESH_HTTP_PORT")
    # accepted Bearer keys; in the environment one comma-separated list
    api_keys: tuple[str, ...] = Field((), validation_alias="HUBMESH_API_KEY", repr=False)
    # JWT verification: an HS256 secret and/or a JWKS (file path or URL) of RS256/ES256/EdDSA keys
    jwt_secret: str = Field("", repr=False)  # secrets stay out of repr() (and so out of logs)
    jwks: str = ""
    jwt_issuer: str = ""
    jwt_audience: str = ""
    jwt_leeway_s: NonNegativeSeconds = 30.0
    jwks_refresh_s: Seconds = 300.0
    # JWTs' default scopes (the token verifier says when they apply); in the environment space- or
    # comma-separated scope names.
    jwt_default_scopes: tuple[str, ...] = ()
    # Per-subject limits and budgets (0 = unlimited); a token's claims of the same names (`rpm`, `tpm`,
    # `tokens_per_day`, `tokens_per_month`) override them. facade/limits/policy.py says what each means.
    rate_limit_rpm: NonNegativeInt = 0
    rate_limit_tpm: NonNegativeInt = 0
    budget_tokens_per_day: NonNegativeInt = 0
    budget_tokens_per_month: NonNegativeInt = 0
    # Limits per subject and model, JSON: {"model-id": {"rpm": 10, "tpm": 20000, "tokens_per_day": ...}};
    # a token's `model_limits` claim overrides them.
    model_limits: dict[str, LimitClaims] = {}
    # Completion tokens reserved per choice for a request that sets no max_tokens, while a token
    # limit applies; such a request generates at least this many (the cap of its reservation).
    limits_reserve_tokens: PositiveInt = 4096
    # Where the limits' counters live: empty, in each façade process (one replica, or development);
    # redis://host:6379/0 (rediss:// for TLS), shared by every replica. May hold a password.
    redis_url: str = Field("", repr=False)
    # While Redis cannot answer: fail_open (serve, count in this process) or fail_closed (503).
    limits_fail_mode: Literal["fail_open", "fail_closed"] = "fail_open"
    redis_timeout_s: Seconds = 0.25  # per limiter call; slower counts as an outage
    redis_retry_s: Seconds = 1.0  # after an outage, how long before Redis is tried again
    limits_local_max_keys: PositiveInt = 100_000  # counters the in-process store keeps at most (LRU)
    text_target: str = "127.0.0.1:50051"
    # Generations (streamed or not) ride on this many long-lived GenerateMany calls to the text service
    # (facade/text_streams.py; at least its replica count, so that every replica gets streams), each
    # retired after text_link_max_age_s so that they follow replicas added or removed.
    text_links: PositiveInt = 4
    text_link_max_age_s: Seconds = 60.0
    embeddings_target: str = "127.0.0.1:50052"
    images_target: str = "127.0.0.1:50053"
    # Shared secret the services require on every call (HUBMESH_INTERNAL_SECRET on both sides).
    internal_secret: str = Field("", repr=False)
    # Signs image download links (`response_format: url`); replicas must share it. Empty: random per process.
    url_signing_key: str = Field("", repr=False)
    # Base of absolute URLs handed to clients (e.g. https://ai.example.com); empty: taken from the request.
    public_url: str = ""
    # Longest a request may take end to end; becomes the gRPC deadline.
    request_timeout_s: Seconds = 600.0
    # Largest request body read; larger bodies get 413 without being read.
    max_body_bytes: PositiveInt = 8 * 1024 * 1024
    # Keep-alive comment interval on SSE streams (proxies cut idle connections).
    sse_ping_s: Seconds = 15.0
    # Requests in flight in this worker before new ones get 429 (0 = no limit).
    max_in_flight: NonNegativeInt = 256
    # On SIGTERM: how long in-flight requests and streams may take to finish.
    grace_s: NonNegativeSeconds = 10.0
    # The Responses API's stored state: sqlite:///PATH (one file, one host) or postgresql://... (shared
    # by every replica). Unset or empty: default_database_url(). May hold a password: never in repr().
    database_url: str = Field("", repr=False)
    # PostgreSQL: connections each façade process keeps at most.
    database_pool_size: PositiveInt = 10
    # How long a stored response is kept (OpenAI's 30 days); expired ones are invisible at once and
    # removed every responses_sweep_interval_s.
    responses_retention_s: Seconds = 30 * 24 * 3600.0
    responses_sweep_interval_s: Seconds = 600.0
    # The usage ledger (one record per API request, in the same database): how often its buffer is
    # written (sooner when 500 records wait), and how many records it keeps while the database cannot
    # be reached (beyond, the oldest are dropped and counted in hubmesh_usage_records_dropped_total).
    usage_flush_interval_s: Seconds = 1.0
    usage_buffer_records: PositiveInt = 100_000
    # Subjects with their own label in hubmesh_subject_{requests,tokens}_total; later ones count as "other".
    usage_metric_subjects: NonNegativeInt = 50
    # Keys the hub issues (facade/auth/hub_keys.py): every replica reloads them all this often (what
    # bounds a revocation's delay where Redis's change channel is missing or down), and an owner has
    # at most keys_max_per_owner of them (IONOS's Auth API allows 100).
    keys_refresh_s: Seconds = 5.0
    keys_max_per_owner: PositiveInt = 100
    # Model aliases with fallback chains (facade/aliases.py), JSON: {"chat-default": ["large/model",
    # "small/model"]}: a request naming the alias is served by the first model of its chain that is not
    # at capacity or unavailable. A model refused is skipped for model_alias_cooldown_s (in each
    # process), except when it is the last of its chain.
    model_aliases: dict[str, tuple[str, ...]] = {}
    model_alias_cooldown_s: NonNegativeSeconds = 5.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Settings:
        """As every settings class; an unset or empty HUBMESH_DATABASE_URL is default_database_url(env)."""
        if not env.get("HUBMESH_DATABASE_URL"):
            env = {**env, "HUBMESH_DATABASE_URL": default_database_url(env)}
        return super().from_env(env)

    @field_validator("database_url")
    @classmethod
    def _default_database_url(cls, value: str) -> str:
        return value or default_database_url()  # Settings(...) built in code

    @field_validator("model_limits", mode="before")
    @classmethod
    def _model_limits(cls, value: Any) -> Any:
        return model_limits_from(value, "HUBMESH_MODEL_LIMITS")

    @field_validator("model_aliases", mode="before")
    @classmethod
    def _model_aliases(cls, value: Any) -> Any:
        return aliases_from(value, "HUBMESH_MODEL_ALIASES")

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: Any) -> Any:
        """ "k1, k2" -> ("k1", "k2"): comma-separated (a key never holds a comma), blanks dropped."""
        if isinstance(value, str):
            return tuple(key.strip() for key in value.split(",") if key.strip())
        return value

    @field_validator("jwt_default_scopes", mode="before")
    @classmethod
    def _split_scopes(cls, value: Any) -> Any:
        return split_list(value)

    @field_validator("public_url")
    @classmethod
    def _no_trailing_slash(cls, value: str) -> str:
        return value.rstrip("/")


def default_database_url(env: Mapping[str, str] = os.environ) -> str:
    """SQLite in $XDG_CACHE_HOME/hubmesh/hubmesh.db (~/.cache/hubmesh/hubmesh.db when XDG_CACHE_HOME is
    unset or empty), beside the images store's default; `make run` uses run/hubmesh.db instead."""
    base = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return "sqlite:///" + os.path.join(base, "hubmesh", "hubmesh.db")


def generate_api_key() -> str:
    """A fresh local key, for `make run` when none is configured."""
    return "hm-" + secrets.token_urlsafe(24)


def generate_secret() -> str:
    """A fresh HS256 secret, for `make run` when none is configured."""
    return secrets.token_urlsafe(48)
