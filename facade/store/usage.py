"""The usage ledger: one durable record per request on an API route (who, for which `user`, which
model and endpoint, tokens, images, status, latency, request id), what a platform team bills from
and what GET /v1/usage totals (facade/api/usage.py).

`record()` is what the request path calls (facade/observability.py, once per request whatever its
outcome): synchronous, O(1), it never blocks and never raises; it appends to a bounded buffer. A
background task writes the buffer every `flush_interval_s`, or as soon as `batch_records` are
waiting: each batch is one multi-row INSERT in one transaction, into the façade's one database
(the Responses store's, facade/store/__init__.py: SQLite, or PostgreSQL for several replicas).
While that database cannot be reached (or has not been opened yet) the records stay buffered and
are retried; beyond `buffer_records` the oldest are dropped, counted in
hubmesh_usage_records_dropped_total and logged. `close()` stops the writer and writes what is left:
the app calls it at shutdown once the last request has ended, before the database closes
(usage_ctx).

Never twice: a record's id is made with it, and the insert skips ids already stored
(`ON CONFLICT (id) DO NOTHING`, the same in SQLite and PostgreSQL), so a batch retried after a
failure that had committed after all is not written again.

Days: each row keeps its UTC date as text (`day`, YYYY-MM-DD), computed when it is written, so that
totals per day are a plain GROUP BY on both databases, with no date function of either dialect
(SQLite's strftime, PostgreSQL's to_timestamp) and an index-friendly column.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from prometheus_client import Counter

from facade.store import RESPONSES_STORE
from facade.store.database import Database, StoreError

log = logging.getLogger(__name__)

DEFAULT_FLUSH_INTERVAL_S = 1.0
DEFAULT_BUFFER_RECORDS = 100_000
BATCH_RECORDS = 500  # waiting records that start a write before the interval is over
MAX_BATCH_RECORDS = 5_000  # records of one transaction when a backlog is written
MAX_TEXT = 512  # characters kept of each text field (OpenAI's `user` may be any length)

DROPPED = Counter(
    "hubmesh_usage_records_dropped",
    "Usage records lost: the ledger's buffer was full while the database could not be reached, or they "
    "could not be written at shutdown",
)

# what GET /v1/usage may group by, and the column each name is
GROUPS: dict[str, str] = {
    "subject": "subject", "user": "user_id", "model": "model", "day": "day", "endpoint": "endpoint",
    "status": "status", "hour": "hour",
}
# hour: the UTC hour a request arrived in, counted from the epoch (whole hours: floor(created_at / 3600),
# each dialect's own way of writing it), shown as YYYY-MM-DDTHH:00Z
_HOUR_SQL = {"sqlite": "CAST(created_at / 3600 AS INTEGER)", "postgresql": "CAST(FLOOR(created_at / 3600) AS BIGINT)"}
TOTALS = ("requests", "prompt_tokens", "completion_tokens", "cached_tokens", "total_tokens", "images", "errors")
_TOTALS_SQL = (
    "COUNT(*), SUM(prompt_tokens), SUM(completion_tokens), SUM(cached_tokens), "
    "SUM(prompt_tokens + completion_tokens), SUM(images), SUM(CASE WHEN status >= 400 THEN 1 ELSE 0 END)"
)
_COLUMNS = ("id", "created_at", "day", "subject", "user_id", "model", "endpoint", "method", "status",
            "prompt_tokens", "completion_tokens", "cached_tokens", "images", "latency_ms", "request_id")
INSERT = (
    f"INSERT INTO usage_records ({', '.join(_COLUMNS)}) "
    f"VALUES ({', '.join(f'${i}' for i in range(1, len(_COLUMNS) + 1))}) ON CONFLICT (id) DO NOTHING"
)


def utc_day(epoch_s: float) -> str:
    """The UTC date of an instant, YYYY-MM-DD."""
    return datetime.fromtimestamp(epoch_s, UTC).date().isoformat()


def utc_hour(hours: int) -> str:
    """Whole hours since the epoch as that hour's UTC start, YYYY-MM-DDTHH:00Z."""
    return datetime.fromtimestamp(int(hours) * 3600, UTC).strftime("%Y-%m-%dT%H:00Z")


def storable(text: str) -> str:
    """Text either database stores as given: NUL (which PostgreSQL's TEXT refuses) and lone
    surrogates (a JWT's `sub` may hold one; they are no UTF-8) become U+FFFD. Also what a
    Prometheus label or a query filter is made of, so that each finds the stored value."""
    if text.isascii() and "\x00" not in text:
        return text
    return text.replace("\x00", "\ufffd").encode("utf-8", "surrogatepass").decode("utf-8", "replace")


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """One request's use, as the ledger keeps it (a row of usage_records); text fields are cut to
    MAX_TEXT characters when the record is made, so the buffer's memory stays bounded."""

    created_at: float  # when the request arrived, epoch seconds
    subject: str  # the verified caller (jwt:<sub>, key:<hash>); "" when the credential was refused
    user: str  # OpenAI's `user` field; "" when the request gave none
    model: str
    endpoint: str  # the route's path, e.g. /v1/chat/completions, /v1/models/{model}
    method: str
    status: int  # the HTTP status; 499 when the client went away
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    images: int = 0
    latency_ms: float = 0.0
    request_id: str = ""
    id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def __post_init__(self) -> None:
        for name in ("subject", "user", "model", "endpoint", "method", "request_id"):
            value = getattr(self, name)
            if len(value) > MAX_TEXT:
                object.__setattr__(self, name, value[:MAX_TEXT])

    def row(self) -> tuple[Any, ...]:
        """The values of INSERT, in its column order."""
        return (
            self.id, float(self.created_at), utc_day(self.created_at), storable(self.subject), storable(self.user),
            storable(self.model), storable(self.endpoint), storable(self.method), int(self.status),
            int(self.prompt_tokens), int(self.completion_tokens), int(self.cached_tokens), int(self.images),
            float(self.latency_ms), storable(self.request_id),
        )


class UsageLedger:
    """Buffers usage records and writes them in batches in the background (see the module's doc).

    `database` is how to reach the database: a coroutine function that returns it, or raises
    StoreError while it cannot be reached (StoreHolder.database, shared with the Responses store).
    """

    def __init__(self, database: Callable[[], Awaitable[Database]],
                 flush_interval_s: float = DEFAULT_FLUSH_INTERVAL_S,
                 buffer_records: int = DEFAULT_BUFFER_RECORDS, batch_records: int = BATCH_RECORDS,
                 max_batch_records: int = MAX_BATCH_RECORDS) -> None:
        self._database = database
        self.flush_interval_s = flush_interval_s
        self.buffer_records = buffer_records
        self.batch_records = batch_records
        self.max_batch_records = max_batch_records
        self._pending: deque[UsageRecord] = deque()
        self._wake = asyncio.Event()  # enough records wait, or close() was called
        self._stopping = asyncio.Event()
        self._writing = asyncio.Lock()  # one flush at a time: the writer's, the endpoint's, the last
        self._writer: asyncio.Task | None = None
        self._closed = False
        self._failing = False  # the last write failed (logged once, until one succeeds)
        self._dropped_unlogged = 0
        self.dropped = 0  # records lost since the ledger was made
        self.written = 0  # records written
        self.transactions = 0  # batches written (one transaction each)

    @property
    def pending(self) -> int:
        """Records waiting to be written."""
        return len(self._pending)

    def record(self, record: UsageRecord) -> None:
        """Takes a request's record; never blocks, never raises."""
        if self._closed:
            self._drop(1, "it came after the ledger was closed")
            return
        if len(self._pending) >= self.buffer_records:
            self._pending.popleft()
            self._drop(1, f"the buffer is full ({self.buffer_records} records) while the database cannot be "
                          "reached: the oldest are dropped")
        self._pending.append(record)
        if len(self._pending) >= self.batch_records:
            self._wake.set()

    def _drop(self, count: int, why: str) -> None:
        self.dropped += count
        DROPPED.inc(count)
        if not self._dropped_unlogged:
            log.error("usage ledger: dropping records: %s", why)
        self._dropped_unlogged += count

    # -- writing ------------------------------------------------------------------------------------

    def start(self) -> None:
        """Starts the background writer (in the running event loop)."""
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_forever(), name="usage-ledger-writer")

    async def flush(self) -> int:
        """Writes every record that was pending when called, in transactions of at most
        max_batch_records; how many it wrote. StoreError when the database cannot be reached or
        fails: what was not written stays pending, to be retried."""
        async with self._writing:
            todo, written = len(self._pending), 0
            while written < todo and self._pending:
                count = min(self.max_batch_records, todo - written, len(self._pending))
                await self._write(count)
                written += count
            return written

    async def _write(self, count: int) -> None:
        batch = [self._pending.popleft() for _ in range(count)]
        try:
            db = await self._database()
            await db.executemany(INSERT, [record.row() for record in batch])
        except BaseException:  # a failure, or a cancelled flush: the batch waits for the next one
            self._pending.extendleft(reversed(batch))
            overflow = len(self._pending) - self.buffer_records
            if overflow > 0:
                for _ in range(overflow):
                    self._pending.popleft()
                self._drop(overflow, f"the buffer is full ({self.buffer_records} records) while the database "
                                     "cannot be reached: the oldest are dropped")
            raise
        self.written += count
        self.transactions += 1
        if self._failing or self._dropped_unlogged:
            log.warning("usage ledger: writing again (%d records lost meanwhile)", self._dropped_unlogged)
            self._failing, self._dropped_unlogged = False, 0

    async def _write_forever(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.flush_interval_s)
            self._wake.clear()
            if self._stopping.is_set():
                return  # close() writes what is left
            try:
                await self.flush()
                continue
            except StoreError as err:
                if not self._failing:
                    log.warning("usage ledger: %d records wait for the database: %s", self.pending, err)
            except Exception:
                log.exception("usage ledger: writing failed; %d records wait", self.pending)
            self._failing = True
            # a full interval before the next try, however many records arrive meanwhile
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=self.flush_interval_s)

    async def close(self) -> None:
        """Stops the writer, then writes every record left (also those that arrive meanwhile);
        what cannot be written is logged and counted as dropped. Records that come later are
        dropped too (and counted): call it once the last request has ended."""
        self._stopping.set()
        self._wake.set()
        if self._writer is not None:
            await self._writer  # it ends after the write it is doing, if any
        try:
            while self._pending:
                await self.flush()
        except StoreError as err:
            lost = len(self._pending)
            self._pending.clear()
            self._drop(lost, f"the database could not be reached at shutdown ({err})")
        finally:
            self._closed = True

    # -- reading ------------------------------------------------------------------------------------

    async def query(self, group_by: Sequence[str], start: float, end: float, *, subject: str | None = None,
                    user: str | None = None, model: str | None = None, limit: int = 1000,
                    subjects: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Totals of the records that arrived in [start, end), one dict per group (the group's
        values under its names in `group_by`, then TOTALS), ordered by the groups; filtered on
        subject, user and model when given, and on `subjects` (any of them) when given; at most
        `limit` groups. It reads what is written: call flush() first to count this process's pending
        records. StoreError when the database fails."""
        if not group_by or set(group_by) - set(GROUPS):
            raise ValueError(f"group_by: one or more of {', '.join(GROUPS)}")
        db = await self._database()
        columns = ", ".join(_HOUR_SQL[db.dialect] if name == "hour" else GROUPS[name] for name in group_by)
        args: list[Any] = [float(start), float(end)]
        where = ["created_at >= $1", "created_at < $2"]
        for column, value in (("subject", subject), ("user_id", user), ("model", model)):
            if value is not None:
                args.append(storable(value))
                where.append(f"{column} = ${len(args)}")
        if subjects is not None:
            if not subjects:
                return []
            first = len(args) + 1
            args.extend(storable(value) for value in subjects)
            where.append(f"subject IN ({', '.join(f'${n}' for n in range(first, len(args) + 1))})")
        args.append(int(limit))
        rows = await db.fetch(
            f"SELECT {columns}, {_TOTALS_SQL} FROM usage_records WHERE {' AND '.join(where)} "
            f"GROUP BY {columns} ORDER BY {columns} LIMIT ${len(args)}",
            *args,
        )
        width = len(group_by)
        return [{**{name: utc_hour(value) if name == "hour" else value
                    for name, value in zip(group_by, row[:width], strict=True)},
                 **dict(zip(TOTALS, (int(v or 0) for v in row[width:]), strict=True))}
                for row in rows]


USAGE_LEDGER = web.AppKey("usage_ledger", UsageLedger)


def usage_ctx(flush_interval_s: float = DEFAULT_FLUSH_INTERVAL_S, buffer_records: int = DEFAULT_BUFFER_RECORDS):
    """cleanup_ctx, appended after store_ctx: the ledger starts once the database holder exists and,
    as aiohttp ends contexts in reverse order, closes (its last write) before the database closes.
    aiohttp runs the cleanup contexts only after every request handler has ended (graceful stop:
    facade/__main__.py drains first), so the last write holds every request's record."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        ledger = app[USAGE_LEDGER] = UsageLedger(app[RESPONSES_STORE].database, flush_interval_s, buffer_records)
        ledger.start()
        yield
        await ledger.close()

    return ctx


__all__ = ["GROUPS", "TOTALS", "USAGE_LEDGER", "UsageLedger", "UsageRecord", "storable", "usage_ctx", "utc_day", "utc_hour"]
