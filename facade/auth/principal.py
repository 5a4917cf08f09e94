"""The verified caller, and what it may do."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

FAMILIES = ("models", "chat", "completions", "embeddings", "images", "responses")


@dataclass(frozen=True)
class Principal:
    """A caller whose credential was verified. Never holds the credential itself."""

    subject: str
    scopes: frozenset[str]
    models: frozenset[str] | None = None  # None: every model
    rpm: int | None = None  # None: the configured default
    tpm: int | None = None

    def may_use(self, family: str) -> bool:
        return family in self.scopes or "*" in self.scopes

    def may_use_model(self, model: str) -> bool:
        return self.models is None or model in self.models


PRINCIPAL = web.RequestKey("principal", Principal)
