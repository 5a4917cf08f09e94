"""The request models of the keys API (facade/api/keys/handler.py) and of its IONOS-shaped twin
(facade/api/keys/ionos.py)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, field_validator

from facade.auth.principal import FAMILIES

MAX_TTL_S = 10 * 365 * 24 * 3600
MAX_GRACE_S = 30 * 24 * 3600
MAX_METADATA_BYTES = 16 * 1024
SCOPES = (*FAMILIES, "*")
Count = Annotated[StrictInt, Field(ge=0, le=2**31 - 1)]
Name = Annotated[StrictStr, Field(max_length=256)]


class KeyLimits(BaseModel):
    """A key's own limits (null: the deployment's)."""

    model_config = ConfigDict(extra="ignore", strict=True)
    rpm: Count | None = Field(None, description="Requests per minute.")
    tpm: Count | None = Field(None, description="Tokens per minute.")
    tokens_per_day: Count | None = Field(None, description="A token budget, renewed every UTC day.")
    tokens_per_month: Count | None = Field(None, description="A token budget, renewed every UTC month.")
    max_parallel_requests: Annotated[StrictInt, Field(ge=1, le=100_000)] | None = Field(
        None, description="Requests of this key in flight at once (per façade replica).")
    weight: Annotated[StrictInt, Field(ge=1, le=100)] | None = Field(
        None, description="The key's weight in the fair share of a modality at capacity (default 1).")
    priority: Annotated[StrictInt, Field(ge=-10, le=10)] | None = Field(
        None, description="The key's priority band at capacity: higher first (interactive over batch; default 0).")

    def stored(self) -> dict[str, int]:
        """The limits that are set (a subclass's other fields are not limits)."""
        values = ((name, getattr(self, name)) for name in KeyLimits.model_fields)
        return {name: value for name, value in values if value is not None}


def _scopes(value: list[str] | None) -> list[str] | None:
    if value is not None:
        for scope in value:
            if scope not in SCOPES:
                raise ValueError(f"unknown scope {scope[:40]!r}; use {', '.join(SCOPES)}")
    return value


def _metadata(value: dict[str, Any] | None) -> dict[str, Any] | None:
    if value is not None and len(pydantic.TypeAdapter(dict).dump_json(value)) > MAX_METADATA_BYTES:
        raise ValueError(f"at most {MAX_METADATA_BYTES} bytes of JSON")
    return value


class KeyCreate(KeyLimits):
    """POST /v1/keys."""

    name: Name = ""
    ttl_s: Annotated[StrictInt, Field(ge=60, le=MAX_TTL_S)] | None = Field(
        None, description="Seconds until the key expires; null: it never does.")
    scopes: list[StrictStr] | None = Field(None, description="Endpoint families (default: the creator's).")
    models: list[Annotated[StrictStr, Field(max_length=256)]] | None = Field(
        None, max_length=1000, description="Models the key may use (default: the creator's; null: every model).")
    metadata: dict[str, Any] | None = Field(None, description="Free JSON, kept and shown with the key.")
    owner: Name | None = Field(None, description="Who manages the key (an admin only; default: the caller).")

    _check_scopes = field_validator("scopes")(_scopes)
    _check_metadata = field_validator("metadata")(_metadata)


class KeyUpdate(BaseModel):
    """PATCH /v1/keys/{key_id}: the fields given change (limits: null removes one)."""

    model_config = ConfigDict(extra="ignore", strict=True)
    name: Name | None = None
    ttl_s: Annotated[StrictInt, Field(ge=60, le=MAX_TTL_S)] | None = Field(
        None, description="A new expiry, counted from now.")
    blocked: StrictBool | None = None
    scopes: list[StrictStr] | None = None
    models: list[Annotated[StrictStr, Field(max_length=256)]] | None = Field(None, max_length=1000)
    limits: KeyLimits | None = Field(None, description="Replaces the key's limits.")
    metadata: dict[str, Any] | None = None

    _check_scopes = field_validator("scopes")(_scopes)
    _check_metadata = field_validator("metadata")(_metadata)


class KeyRegenerate(BaseModel):
    """POST /v1/keys/{key_id}/regenerate."""

    model_config = ConfigDict(extra="ignore", strict=True)
    grace_period_s: Annotated[StrictInt, Field(ge=0, le=MAX_GRACE_S)] = Field(
        0, description="Seconds the old secret keeps working beside the new one.")


class KeyListQuery(BaseModel):
    """GET /v1/keys."""

    model_config = ConfigDict(extra="ignore")
    owner: str | None = Field(None, max_length=256, description="Only this owner's keys (an admin only).")


class KeyDeleteQuery(BaseModel):
    """DELETE /v1/keys."""

    model_config = ConfigDict(extra="ignore")
    which: Literal["all", "expired"] = Field(description="Delete every key of the owner, or its expired ones.")
    owner: str | None = Field(None, max_length=256, description="Whose keys (an admin only; default: the caller's).")


class IonosGenerateQuery(BaseModel):
    """GET /auth/v1/tokens/generate (IONOS's Auth API)."""

    model_config = ConfigDict(extra="ignore")
    ttl: int = Field(31_536_000, ge=60, le=31_536_000, description="Seconds the token lives (60 to a year).")


class IonosDeleteQuery(BaseModel):
    """DELETE /auth/v1/tokens (IONOS's Auth API)."""

    model_config = ConfigDict(extra="ignore")
    criteria: Literal["ALL", "EXPIRED", "CURRENT"]
