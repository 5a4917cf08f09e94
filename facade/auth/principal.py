"""The verified caller, and what it may do."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from facade.limits.policy import LimitClaims

# the scopes: one per endpoint family; "admin" is the operator's (GET /v1/usage: every subject's use)
FAMILIES = ("models", "chat", "completions", "embeddings", "images", "responses", "admin")


@dataclass(frozen=True)
class Principal:
    """A caller whose credential was verified. Never holds the credential itself."""

    subject: str
    scopes: frozenset[str]
    models: frozenset[str] | None = None  # None: every model
    # the token's own limits (None fields: the configured ones), overall and per model
    limits: LimitClaims = LimitClaims()
    model_limits: Mapping[str, LimitClaims] = field(default_factory=dict)

    def may_use(self, family: str) -> bool:
        return family in self.scopes or "*" in self.scopes

    def may_use_model(self, model: str) -> bool:
        return self.models is None or model in self.models


