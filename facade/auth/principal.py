"""The verified caller, and what it may do."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from facade.limits.policy import LimitClaims

# the scopes: one per endpoint family; "keys" manages the caller's own keys (facade/api/keys); "admin"
# is the operator's (GET /v1/usage of every subject, not only the caller's own; every owner's keys)
FAMILIES = ("models", "chat", "completions", "embeddings", "images", "responses", "keys", "admin")


@dataclass(frozen=True)
class Principal:
    """A caller whose credential was verified. Never holds the credential itself."""

    subject: str
    scopes: frozenset[str]
    models: frozenset[str] | None = None  # None: every model
    # the token's own limits (None fields: the configured ones), overall and per model
    limits: LimitClaims = LimitClaims()
    model_limits: Mapping[str, LimitClaims] = field(default_factory=dict)
    # a key the hub issued (facade/auth/hub_keys.py): its id, the subject that manages it, its own
    # limits beyond the counters (calls in parallel, and its weight in a fair share)
    key_id: str | None = None
    owner: str | None = None
    max_parallel_requests: int | None = None
    # the caller's share when a service is at capacity (services/common/fair_share.py): its weight and
    # priority band, from a key's settings or a token's `weight` / `priority` claims
    weight: int | None = None
    priority: int | None = None

    @property
    def manager(self) -> str:
        """Whose keys this caller manages: a hub key its owner's, anyone else their own."""
        return self.owner if self.owner is not None else self.subject

    @property
    def is_admin(self) -> bool:
        return self.may_use("admin")

    def may_use(self, family: str) -> bool:
        return family in self.scopes or "*" in self.scopes

    def may_use_model(self, model: str) -> bool:
        return self.models is None or model in self.models


