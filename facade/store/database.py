"""One small interface over the façade's two databases: SQLite (aiosqlite, the embedded default) and
PostgreSQL (asyncpg, for several replicas).

SQL is written once, in the common subset of both dialects, with asyncpg's numbered placeholders
($1, $2, ...); for SQLite they become ?1, ?2 (the same numbering). Every driver failure leaves this
module as a StoreError, so callers have one exception to turn into a 503.

URLs (HUBMESH_DATABASE_URL):
- `sqlite:///relative/path.db`, `sqlite:////absolute/path.db` (SQLAlchemy's spelling; `~` expands),
  `sqlite:///:memory:` (tests);
- `postgresql://user:password@host:5432/dbname?sslmode=require` (also `postgres://`, and
  `postgresql+asyncpg://`); query parameters asyncpg does not know are server settings, e.g.
  `?search_path=hubmesh`.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import os
import re
import sqlite3
from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiosqlite
import asyncpg

log = logging.getLogger(__name__)

Row = tuple[Any, ...]
SQLITE_BUSY_TIMEOUT_S = 10.0
_PLACEHOLDER = re.compile(r"\$(\d+)")
# what a failing database raises, by driver: all of it becomes StoreError
DRIVER_ERRORS: tuple[type[BaseException], ...] = (
    sqlite3.Error, asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError,
)


class StoreError(Exception):
    """The database is unreachable or failed a statement; the message names no credential."""


class Executor(abc.ABC):
    """What runs statements: the database itself (each statement on its own) or one transaction."""

    @abc.abstractmethod
    async def execute(self, sql: str, *args: Any) -> int:
        """Runs a statement; the number of rows it changed."""

    @abc.abstractmethod
    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        """The rows of a query, as tuples."""

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        rows = await self.fetch(sql, *args)
        return rows[0] if rows else None

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """Runs one statement once per row of arguments (a batch insert); the drivers override it
        with their own batch call (one trip to the database rather than one per row)."""
        for args in rows:
            await self.execute(sql, *args)


class Database(Executor):
    """A connection (SQLite) or a pool (PostgreSQL), opened with open_database()."""

    dialect: str

    @abc.abstractmethod
    def transaction(self) -> contextlib.AbstractAsyncContextManager[Executor]:
        """A write transaction: committed when the block ends, rolled back when it raises."""

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """Every row in one transaction: all of them are written, or none."""
        async with self.transaction() as tx:
            await tx.executemany(sql, rows)

    @abc.abstractmethod
    def migration_lock(self) -> contextlib.AbstractAsyncContextManager[Executor]:
        """A transaction that holds the schema-migration lock, so that of several processes
        starting at once exactly one migrates and the others then find the work done."""

    @abc.abstractmethod
    async def close(self) -> None: ...


def redact(url: str) -> str:
    """The URL without its password (for logs and messages)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def parse_url(url: str) -> tuple[str, str]:
    """("sqlite", file path or ":memory:") or ("postgresql", asyncpg DSN); ValueError otherwise."""
    scheme, _, rest = url.partition("://")
    scheme = scheme.lower()
    if scheme == "sqlite":
        path = rest[1:] if rest.startswith("/") else rest  # sqlite:///x -> x, sqlite:////x -> /x
        if path in ("", ":memory:"):
            return "sqlite", ":memory:"
        return "sqlite", os.path.expanduser(path)
    if scheme in ("postgresql", "postgres", "postgresql+asyncpg"):
        return "postgresql", "postgresql://" + rest
    raise ValueError(
        f"HUBMESH_DATABASE_URL: unsupported database {scheme!r}; use sqlite:///PATH or postgresql://..."
    )


async def open_database(url: str, pool_size: int = 10) -> Database:
    """Connects; ValueError for a URL of no known database, StoreError when it cannot be reached."""
    kind, target = parse_url(url)
    try:
        if kind == "sqlite":
            return await SqliteDatabase.open(target)
        return await PostgresDatabase.open(target, pool_size)
    except DRIVER_ERRORS as err:
        raise StoreError(f"cannot open the database {redact(url)}: {err.__class__.__name__}: {err}") from err


@contextlib.asynccontextmanager
async def _driver_errors() -> AsyncIterator[None]:
    try:
        yield
    except DRIVER_ERRORS as err:
        raise StoreError(f"database error: {err.__class__.__name__}: {err}") from err


# -- SQLite ---------------------------------------------------------------------------------------


class _SqliteExecutor(Executor):
    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    async def execute(self, sql: str, *args: Any) -> int:
        async with _driver_errors():
            cursor = await self._conn.execute(_PLACEHOLDER.sub(r"?\1", sql), args)
            count = cursor.rowcount
            await cursor.close()
            return max(count, 0)

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        async with _driver_errors():
            cursor = await self._conn.execute(_PLACEHOLDER.sub(r"?\1", sql), args)
            rows = await cursor.fetchall()
            await cursor.close()
            return [tuple(row) for row in rows]

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        async with _driver_errors():
            # sqlite3's executemany: the whole batch in one call on the connection's thread
            await self._conn.executemany(_PLACEHOLDER.sub(r"?\1", sql), [tuple(args) for args in rows])


class SqliteDatabase(Database):
    """One aiosqlite connection (its own thread), in autocommit mode; statements and transactions
    of this process take turns on it (an asyncio lock), other processes wait on SQLite's file lock
    (WAL journal, busy timeout)."""

    dialect = "sqlite"

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn
        self._executor = _SqliteExecutor(conn)
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: str) -> SqliteDatabase:
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        conn = await aiosqlite.connect(path, isolation_level=None, timeout=SQLITE_BUSY_TIMEOUT_S)
        try:
            await conn.execute(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
            if path != ":memory:":
                await conn.execute("PRAGMA journal_mode = WAL")  # readers never wait for the writer
                await conn.execute("PRAGMA synchronous = NORMAL")  # WAL: a crash of the process loses nothing
        except BaseException:
            await conn.close()
            raise
        return cls(conn)

    async def execute(self, sql: str, *args: Any) -> int:
        async with self._lock:
            return await self._executor.execute(sql, *args)

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        async with self._lock:
            return await self._executor.fetch(sql, *args)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Executor]:
        async with self._lock:
            # IMMEDIATE: the write lock at once, so two processes never deadlock upgrading a read
            await self._executor.execute("BEGIN IMMEDIATE")
            try:
                yield self._executor
            except BaseException:
                with contextlib.suppress(StoreError):
                    await self._executor.execute("ROLLBACK")
                raise
            await self._executor.execute("COMMIT")

    def migration_lock(self) -> contextlib.AbstractAsyncContextManager[Executor]:
        return self.transaction()  # BEGIN IMMEDIATE is the file's one writer lock

    async def close(self) -> None:
        async with self._lock:
            with contextlib.suppress(*DRIVER_ERRORS):
                await self._conn.close()


# -- PostgreSQL -----------------------------------------------------------------------------------


def _rows_changed(status: str) -> int:
    """asyncpg's command status ("DELETE 3", "INSERT 0 1", "CREATE TABLE") -> 3, 1, 0."""
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0


class _PostgresExecutor(Executor):
    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def execute(self, sql: str, *args: Any) -> int:
        async with _driver_errors():
            return _rows_changed(await self._conn.execute(sql, *args))

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        async with _driver_errors():
            return [tuple(row) for row in await self._conn.fetch(sql, *args)]

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        async with _driver_errors():
            # asyncpg prepares the statement once and pipelines every row's arguments
            await self._conn.executemany(sql, [tuple(args) for args in rows])


class PostgresDatabase(Database):
    """An asyncpg pool; each transaction holds one of its connections."""

    dialect = "postgresql"
    # pg_advisory_xact_lock's first key: "hubmesh schema migrations"; the second is the schema's
    MIGRATION_LOCK = 0x68756273

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @classmethod
    async def open(cls, dsn: str, pool_size: int = 10) -> PostgresDatabase:
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=max(1, pool_size), timeout=10,
                                         command_timeout=30)
        return cls(pool)

    async def execute(self, sql: str, *args: Any) -> int:
        async with _driver_errors(), self._pool.acquire() as conn:
            return await _PostgresExecutor(conn).execute(sql, *args)

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        async with _driver_errors(), self._pool.acquire() as conn:
            return await _PostgresExecutor(conn).fetch(sql, *args)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Executor]:
        async with _driver_errors(), self._pool.acquire() as conn, conn.transaction():
            yield _PostgresExecutor(conn)

    @contextlib.asynccontextmanager
    async def migration_lock(self) -> AsyncIterator[Executor]:
        async with self.transaction() as tx:
            # held until the transaction ends; keyed by schema, so schemas migrate independently
            await tx.execute("SELECT pg_advisory_xact_lock($1, hashtext(coalesce(current_schema(), '')))",
                             self.MIGRATION_LOCK)
            yield tx

    async def close(self) -> None:
        with contextlib.suppress(*DRIVER_ERRORS):
            await asyncio.wait_for(self._pool.close(), timeout=10)
