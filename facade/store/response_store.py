"""The Responses API's stored state: each response with its input items, owned by one subject,
visible until its retention period is over.

Ownership is part of every query: a response is found only with its owner's subject, so another
subject's id reads as unknown (the API answers 404, never the content). The owner is kept as the
SHA-256 of the subject, never the subject itself. Expired rows are invisible at once and removed
by sweep(), which the façade runs periodically.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from facade import jsonio
from facade.store.database import Database

DEFAULT_RETENTION_S = 30 * 24 * 3600.0


def owner_of(subject: str) -> str:
    """The stored owner of a subject's responses (any Unicode subject, lone surrogates included)."""
    return hashlib.sha256(subject.encode("utf-8", "surrogatepass")).hexdigest()


def _dumps(value: Any) -> str:
    return jsonio.dumps(value).decode()


class UnknownItem(LookupError):
    """`after` names no input item of the response."""


@dataclass(frozen=True)
class ItemPage:
    items: list[dict]
    has_more: bool


class ResponsesStore:
    def __init__(self, db: Database, retention_s: float = DEFAULT_RETENTION_S,
                 clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.retention_s = retention_s
        self._clock = clock

    async def save(self, subject: str, response: Mapping[str, Any], input_items: Sequence[dict]) -> None:
        """Keeps a response (the API's Response object, with its id) and its input items, in order;
        each item has an `id`."""
        now = self._clock()
        async with self.db.transaction() as tx:
            await tx.execute(
                "INSERT INTO responses (id, owner, created_at, expires_at, previous_response_id, body) "
                "VALUES ($1, $2, $3, $4, $5, $6)",
                response["id"], owner_of(subject), now, now + self.retention_s,
                response.get("previous_response_id"), _dumps(response),
            )
            for position, item in enumerate(input_items):
                await tx.execute(
                    "INSERT INTO response_input_items (response_id, position, item_id, item) VALUES ($1, $2, $3, $4)",
                    response["id"], position, item["id"], _dumps(item),
                )

    async def get(self, response_id: str, subject: str) -> dict | None:
        """The response, if it exists, has not expired and belongs to `subject`; else None."""
        row = await self.db.fetchrow(
            "SELECT body FROM responses WHERE id = $1 AND owner = $2 AND expires_at > $3",
            response_id, owner_of(subject), self._clock(),
        )
        return jsonio.loads(row[0]) if row is not None else None

    async def conversation(self, response_id: str, subject: str) -> tuple[dict, list[dict]] | None:
        """The response and every one of its input items (what a follow-up continues from)."""
        response = await self.get(response_id, subject)
        if response is None:
            return None
        rows = await self.db.fetch(
            "SELECT item FROM response_input_items WHERE response_id = $1 ORDER BY position", response_id,
        )
        return response, [jsonio.loads(row[0]) for row in rows]

    async def input_items(self, response_id: str, subject: str, limit: int = 20,
                          order: Literal["asc", "desc"] = "desc", after: str | None = None) -> ItemPage | None:
        """One page of a response's input items; None when the response is not the subject's (or
        is unknown, or expired); UnknownItem when `after` is no item of it."""
        if await self.get(response_id, subject) is None:
            return None
        if after is None:
            bound = -1 if order == "asc" else 2**31 - 1
        else:
            row = await self.db.fetchrow(
                "SELECT position FROM response_input_items WHERE response_id = $1 AND item_id = $2 "
                "ORDER BY position LIMIT 1", response_id, after,
            )
            if row is None:
                raise UnknownItem(after)
            bound = row[0]
        comparison, direction = (">", "ASC") if order == "asc" else ("<", "DESC")
        rows = await self.db.fetch(
            f"SELECT item FROM response_input_items WHERE response_id = $1 AND position {comparison} $2 "
            f"ORDER BY position {direction} LIMIT $3",
            response_id, bound, limit + 1,
        )
        return ItemPage([jsonio.loads(row[0]) for row in rows[:limit]], has_more=len(rows) > limit)

    async def delete(self, response_id: str, subject: str) -> bool:
        """Deletes the subject's response and its items; False when there is none to delete."""
        async with self.db.transaction() as tx:
            owned = await tx.fetchrow(
                "SELECT 1 FROM responses WHERE id = $1 AND owner = $2 AND expires_at > $3",
                response_id, owner_of(subject), self._clock(),
            )
            if owned is None:
                return False
            await tx.execute("DELETE FROM response_input_items WHERE response_id = $1", response_id)
            await tx.execute("DELETE FROM responses WHERE id = $1", response_id)
        return True

    async def sweep(self) -> int:
        """Removes every expired response and its items; how many responses it removed."""
        now = self._clock()
        async with self.db.transaction() as tx:
            await tx.execute(
                "DELETE FROM response_input_items WHERE response_id IN "
                "(SELECT id FROM responses WHERE expires_at <= $1)", now,
            )
            return await tx.execute("DELETE FROM responses WHERE expires_at <= $1", now)
