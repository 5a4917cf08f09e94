"""The keys the hub issues, in the façade's database (migration 0003_api_keys): one row per key,
the SHA-256 of its secret and never the secret itself. Reads here are for management and for the
verifier's cache (facade/auth/hub_keys.py); no request's verification reads the database."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from facade.store.database import Database, Row

COLUMNS = ("id, owner, name, secret_hash, previous_hash, previous_until, created_at, updated_at, expires_at, "
           "blocked, scopes, models, limits, metadata")
LIMIT_FIELDS = ("rpm", "tpm", "tokens_per_day", "tokens_per_month", "max_parallel_requests", "weight", "priority")


@dataclass(frozen=True)
class KeyRecord:
    """One issued key, as stored."""

    id: str
    owner: str
    name: str
    secret_hash: str
    created_at: float
    updated_at: float
    expires_at: float | None = None
    blocked: bool = False
    scopes: tuple[str, ...] = ()
    models: tuple[str, ...] | None = None  # None: every model the owner may use
    limits: dict[str, int] = field(default_factory=dict)  # LIMIT_FIELDS that are set
    metadata: dict[str, Any] = field(default_factory=dict)
    previous_hash: str | None = None  # the replaced secret's, during a regeneration's grace period
    previous_until: float | None = None

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and self.expires_at <= now

    def with_changes(self, **changes: Any) -> KeyRecord:
        return replace(self, **changes)


def _record(row: Row) -> KeyRecord:
    (key_id, owner, name, secret_hash, previous_hash, previous_until, created_at, updated_at, expires_at,
     blocked, scopes, models, limits, metadata) = row
    return KeyRecord(
        id=key_id, owner=owner, name=name, secret_hash=secret_hash, previous_hash=previous_hash,
        previous_until=previous_until, created_at=created_at, updated_at=updated_at, expires_at=expires_at,
        blocked=bool(blocked), scopes=tuple(json.loads(scopes)),
        models=tuple(json.loads(models)) if models is not None else None,
        limits=json.loads(limits), metadata=json.loads(metadata),
    )


def _values(record: KeyRecord) -> tuple[Any, ...]:
    return (record.id, record.owner, record.name, record.secret_hash, record.previous_hash, record.previous_until,
            record.created_at, record.updated_at, record.expires_at, int(record.blocked),
            json.dumps(list(record.scopes)), json.dumps(list(record.models)) if record.models is not None else None,
            json.dumps(record.limits), json.dumps(record.metadata))


class KeyStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def insert(self, record: KeyRecord, max_per_owner: int) -> bool:
        """Adds a key; False (nothing added) when its owner has `max_per_owner` keys already."""
        async with self.db.transaction() as tx:
            count = await tx.fetchrow("SELECT COUNT(*) FROM api_keys WHERE owner = $1", record.owner)
            if count is not None and int(count[0]) >= max_per_owner:
                return False
            await tx.execute(f"INSERT INTO api_keys ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, "
                             "$11, $12, $13, $14)", *_values(record))
        return True

    async def update(self, record: KeyRecord) -> bool:
        """Writes every field of an existing key; False when it is gone."""
        values = _values(record)
        changed = await self.db.execute(
            "UPDATE api_keys SET owner = $2, name = $3, secret_hash = $4, previous_hash = $5, previous_until = $6, "
            "created_at = $7, updated_at = $8, expires_at = $9, blocked = $10, scopes = $11, models = $12, "
            "limits = $13, metadata = $14 WHERE id = $1", *values)
        return changed > 0

    async def get(self, key_id: str) -> KeyRecord | None:
        row = await self.db.fetchrow(f"SELECT {COLUMNS} FROM api_keys WHERE id = $1", key_id)
        return _record(row) if row is not None else None

    async def list(self, owner: str | None = None) -> list[KeyRecord]:
        """Every key (owner None), or one owner's, oldest first."""
        if owner is None:
            rows = await self.db.fetch(f"SELECT {COLUMNS} FROM api_keys ORDER BY created_at, id")
        else:
            rows = await self.db.fetch(f"SELECT {COLUMNS} FROM api_keys WHERE owner = $1 ORDER BY created_at, id",
                                       owner)
        return [_record(row) for row in rows]

    async def delete(self, key_ids: Sequence[str]) -> int:
        """Deletes these keys; how many there were."""
        deleted = 0
        async with self.db.transaction() as tx:
            for key_id in key_ids:
                deleted += await tx.execute("DELETE FROM api_keys WHERE id = $1", key_id)
        return deleted
