"""The façade's database: the stored state of the Responses API (facade/api/responses/) and
the usage ledger (facade/store/usage.py), one Database for both.

`store_ctx(settings)` opens it with the app (and applies the schema migrations), sweeps expired
responses while the app runs, and closes it at shutdown. A database that cannot be reached does not
stop the façade: chat, completions and the rest keep working, the /v1/responses endpoints answer 503
`store_unavailable`, and the next request after RETRY_S tries to connect again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from aiohttp import web

from facade.store.database import Database, StoreError, open_database, parse_url, redact
from facade.store.migrations import migrate
from facade.store.response_store import ResponsesStore

log = logging.getLogger(__name__)

RETRY_S = 5.0  # between two attempts to reach a database that could not be opened


class StoreHolder:
    """The app's ResponsesStore, opened at start-up or, when that failed, on a later request."""

    def __init__(self, url: str, retention_s: float, pool_size: int = 10) -> None:
        parse_url(url)  # ValueError now for a URL of no known database: a configuration error
        self.url = url
        self.retention_s = retention_s
        self.pool_size = pool_size
        self.store: ResponsesStore | None = None
        self._tried_at = float("-inf")
        self._opening = asyncio.Lock()

    async def open(self) -> ResponsesStore:
        async with self._opening:
            if self.store is not None:
                return self.store
            self._tried_at = time.monotonic()
            db = await open_database(self.url, self.pool_size)
            try:
                await migrate(db)
            except BaseException:
                await db.close()
                raise
            self.store = ResponsesStore(db, self.retention_s)
            log.info("responses store: %s (retention %.0f s)", redact(self.url), self.retention_s)
            return self.store

    async def get(self) -> ResponsesStore:
        """The open store; StoreError while the database cannot be reached."""
        if self.store is not None:
            return self.store
        if time.monotonic() - self._tried_at < RETRY_S:
            raise StoreError("the database could not be reached; retrying shortly")
        try:
            return await self.open()
        except StoreError as err:
            log.error("responses store unavailable: %s", err)
            raise

    async def database(self) -> Database:
        """The open database, shared by everything the façade stores (the usage ledger too): one
        connection or pool per process. StoreError while it cannot be reached."""
        return (await self.get()).db

    async def close(self) -> None:
        if self.store is not None:
            await self.store.db.close()
            self.store = None


RESPONSES_STORE = web.AppKey("responses_store", StoreHolder)


async def _sweep_forever(holder: StoreHolder, interval_s: float) -> None:
    while True:
        await asyncio.sleep(interval_s)
        if holder.store is None:
            continue
        try:
            removed = await holder.store.sweep()
        except StoreError as err:
            log.warning("could not remove expired responses: %s", err)
            continue
        if removed:
            log.info("removed %d expired responses", removed)


def store_ctx(url: str, retention_s: float, sweep_interval_s: float, pool_size: int = 10):
    """cleanup_ctx: opens and migrates the database at start-up, sweeps it, closes it at shutdown."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        holder = app[RESPONSES_STORE] = StoreHolder(url, retention_s, pool_size)
        try:
            store = await holder.open()
            await store.sweep()  # what expired while no façade ran
        except StoreError as err:
            log.error("responses store unavailable at start-up (the /v1/responses endpoints answer 503 "
                      "until it is reachable): %s", err)
        sweeper = asyncio.create_task(_sweep_forever(holder, sweep_interval_s))
        yield
        sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeper
        await holder.close()

    return ctx


__all__ = ["RESPONSES_STORE", "ResponsesStore", "StoreError", "StoreHolder", "store_ctx"]
