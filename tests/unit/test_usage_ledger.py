"""The usage ledger (facade/store/usage.py) on SQLite and on a real PostgreSQL (the schema-per-test
fixture of test_responses_store.py): batches, retries while the database is down, the buffer's bound,
the last write at close, never a record twice, and the totals GET /v1/usage answers.

No test sleeps to wait for a write: each calls flush() or close(), or awaits the batch itself."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

import pytest
from prometheus_client import REGISTRY

from facade.store import StoreHolder
from facade.store.database import StoreError, open_database
from facade.store.migrations import migrate
from facade.store.usage import UsageLedger, UsageRecord, storable, utc_day, utc_hour
from tests.unit.test_responses_store import database_url  # noqa: F401 (the fixture: each kind of database)

T0 = datetime(2024, 5, 31, 23, 0, tzinfo=timezone.utc).timestamp()  # an hour before a UTC midnight


def rec(n: int = 0, **fields) -> UsageRecord:
    values = {"created_at": T0 + n, "subject": "jwt:alice", "user": "", "model": "m1", "endpoint": "/v1/chat/completions",
              "method": "POST", "status": 200, "prompt_tokens": 10, "completion_tokens": 5, "request_id": f"r{n}"}
    return UsageRecord(**{**values, **fields})


def dropped_total() -> float:
    return REGISTRY.get_sample_value("hubmesh_usage_records_dropped_total") or 0.0


class Door:
    """A ledger's way to its database: open or down, and every batch it wrote (each one transaction)."""

    def __init__(self, db) -> None:
        self.db = db
        self.dialect = db.dialect
        self.down = False
        self.fail_after_commit = False  # the batch commits, then the caller hears of a failure
        self.batches: list[int] = []
        self.wrote = asyncio.Event()
        self.refused = asyncio.Event()  # someone tried while it was down

    async def __call__(self):
        if self.down:
            self.refused.set()
            raise StoreError("the database could not be reached")
        return self

    async def executemany(self, sql, rows):
        rows = list(rows)
        await self.db.executemany(sql, rows)
        self.batches.append(len(rows))
        self.wrote.set()
        if self.fail_after_commit:
            self.fail_after_commit = False
            raise StoreError("connection lost after COMMIT")

    async def fetch(self, sql, *args):
        return await self.db.fetch(sql, *args)


@pytest.fixture
async def db(database_url):  # noqa: F811
    database = await open_database(database_url)
    await migrate(database)
    yield database
    await database.close()


@pytest.fixture
def door(db):
    return Door(db)


async def stored(db) -> list[tuple]:
    return await db.fetch("SELECT id, subject, user_id, status, prompt_tokens, day FROM usage_records ORDER BY created_at")


# -- writing ---------------------------------------------------------------------------------------


async def test_many_records_are_few_transactions(door, db):
    ledger = UsageLedger(door, buffer_records=10_000, max_batch_records=500)
    records = [rec(i) for i in range(1200)]
    for record in records:
        ledger.record(record)
    assert ledger.pending == 1200 and door.batches == []  # record() writes nothing itself
    assert await ledger.flush() == 1200
    assert door.batches == [500, 500, 200] and ledger.transactions == 3 and ledger.pending == 0
    rows = await stored(db)
    assert [r[0] for r in rows] == [r.id for r in records]
    assert await ledger.flush() == 0 and door.batches == [500, 500, 200]  # nothing pending: no write


async def test_the_writer_starts_at_the_batch_size_or_the_interval(door):
    by_count = UsageLedger(door, flush_interval_s=3600, batch_records=10)
    by_count.start()
    try:
        for i in range(9):
            by_count.record(rec(i))
        await asyncio.sleep(0)
        assert door.batches == []  # 9 wait for the interval (an hour)
        by_count.record(rec(9))
        await asyncio.wait_for(door.wrote.wait(), 10)
        assert door.batches == [10]
    finally:
        await by_count.close()

    door.wrote.clear()
    by_time = UsageLedger(door, flush_interval_s=0.01, batch_records=500)
    by_time.start()
    try:
        by_time.record(rec(100))
        await asyncio.wait_for(door.wrote.wait(), 10)
        assert door.batches == [10, 1]
    finally:
        await by_time.close()


async def test_records_wait_while_the_database_is_down(door, db):
    door.down = True
    ledger = UsageLedger(door, flush_interval_s=0.01)
    for i in range(5):
        ledger.record(rec(i))
    with pytest.raises(StoreError):
        await ledger.flush()
    assert ledger.pending == 5 and ledger.dropped == 0
    door.refused.clear()
    ledger.start()  # the writer tries, fails, and tries again an interval later
    await asyncio.wait_for(door.refused.wait(), 10)
    door.down = False
    await asyncio.wait_for(door.wrote.wait(), 10)
    assert len(await stored(db)) == 5
    await ledger.close()


async def test_the_holder_opens_the_database_for_the_ledger_when_it_is_back(tmp_path, monkeypatch):
    """At start-up the database could not be opened: the ledger keeps its records until the
    Responses store's holder (shared, one connection) opens and migrates it."""
    import facade.store as store_module

    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the database's directory should be")
    holder = StoreHolder(f"sqlite:///{blocked / 'hubmesh.db'}", retention_s=10)
    with pytest.raises(StoreError):
        await holder.open()
    ledger = UsageLedger(holder.database)
    ledger.record(rec(1))
    with pytest.raises(StoreError):
        await ledger.flush()
    blocked.unlink()
    monkeypatch.setattr(store_module, "RETRY_S", 0.0)
    assert await ledger.flush() == 1
    assert await ledger.query(["subject"], T0, T0 + 10) == [
        {"subject": "jwt:alice", "requests": 1, "prompt_tokens": 10, "completion_tokens": 5, "cached_tokens": 0,
         "total_tokens": 15, "images": 0, "errors": 0}]
    assert await holder.database() is holder.store.db
    await holder.close()


async def test_a_batch_retried_after_it_committed_is_not_written_twice(door, db):
    ledger = UsageLedger(door)
    for i in range(3):
        ledger.record(rec(i))
    door.fail_after_commit = True
    with pytest.raises(StoreError):
        await ledger.flush()
    assert ledger.pending == 3  # it cannot know the batch was kept
    ledger.record(rec(3))
    assert await ledger.flush() == 4
    assert door.batches == [3, 4]  # the three again, and the one more
    rows = await stored(db)
    assert len(rows) == 4 and len({row[0] for row in rows}) == 4


async def test_the_buffer_is_bounded_and_drops_the_oldest(door, db):
    door.down = True
    ledger = UsageLedger(door, buffer_records=5)
    before = dropped_total()
    records = [rec(i) for i in range(8)]
    for record in records:
        ledger.record(record)
    assert ledger.pending == 5 and ledger.dropped == 3 and dropped_total() == before + 3
    with pytest.raises(StoreError):  # a failed write gives the batch back, still within the bound
        await ledger.flush()
    assert ledger.pending == 5 and ledger.dropped == 3
    door.down = False
    await ledger.flush()
    assert [r[0] for r in await stored(db)] == [r.id for r in records[3:]]


async def test_close_writes_what_is_left_then_drops_latecomers(door, db):
    ledger = UsageLedger(door, flush_interval_s=3600)
    ledger.start()
    for i in range(7):
        ledger.record(rec(i))
    await ledger.close()
    assert len(await stored(db)) == 7 and door.batches == [7]
    before = dropped_total()
    ledger.record(rec(8))  # after the last write: counted, never silently lost
    assert ledger.dropped == 1 and dropped_total() == before + 1 and ledger.pending == 0


async def test_close_with_the_database_down_counts_what_is_lost(door):
    door.down = True
    ledger = UsageLedger(door)
    ledger.start()
    ledger.record(rec(1))
    ledger.record(rec(2))
    before = dropped_total()
    await ledger.close()
    assert ledger.dropped == 2 and dropped_total() == before + 2


async def test_any_text_is_stored(door, db):
    odd = "jwt:\ud800 \u0000 élan"  # a lone surrogate and NUL: a JWT's sub may hold either
    ledger = UsageLedger(door)
    ledger.record(rec(1, subject=odd, user="ann@example.com \U0001f600", model="m" * 2000))
    await ledger.flush()
    [(_, subject, user, *_)] = await stored(db)
    assert subject == storable(odd) == "jwt:\ufffd\ufffd\ufffd \ufffd élan" and user == "ann@example.com \U0001f600"
    [row] = await ledger.query(["subject", "model"], T0, T0 + 10, subject=odd)
    assert row["subject"] == storable(odd) and len(row["model"]) == 512  # text fields are cut to MAX_TEXT


# -- totals ----------------------------------------------------------------------------------------


@pytest.fixture
async def filled(door):
    ledger = UsageLedger(door)
    for record in (
        rec(0),  # 2024-05-31
        rec(1, user="ann", cached_tokens=4),
        rec(2, model="m2", status=429, prompt_tokens=0, completion_tokens=0),
        rec(3600, subject="key:ops", endpoint="/v1/images/generations", model="img", images=3, prompt_tokens=0,
            completion_tokens=0),  # 2024-06-01 00:00 UTC
        rec(3700, user="ann", status=499, completion_tokens=1),
        rec(7200, subject="", status=401, model="", prompt_tokens=0, completion_tokens=0),
    ):
        ledger.record(record)
    await ledger.flush()
    return ledger


def totals(requests, prompt=0, completion=0, cached=0, images=0, errors=0) -> dict:
    return {"requests": requests, "prompt_tokens": prompt, "completion_tokens": completion, "cached_tokens": cached,
            "total_tokens": prompt + completion, "images": images, "errors": errors}


async def test_totals_per_subject_model_and_day(filled):
    assert await filled.query(["subject"], T0, T0 + 10_000) == [
        {"subject": "", **totals(1, errors=1)},
        {"subject": "jwt:alice", **totals(4, prompt=30, completion=11, cached=4, errors=2)},
        {"subject": "key:ops", **totals(1, images=3)},
    ]
    assert await filled.query(["day"], T0, T0 + 10_000) == [
        {"day": "2024-05-31", **totals(3, prompt=20, completion=10, cached=4, errors=1)},
        {"day": "2024-06-01", **totals(3, prompt=10, completion=1, images=3, errors=2)},
    ]
    by_model_day = await filled.query(["model", "day"], T0, T0 + 10_000)
    assert [(r["model"], r["day"], r["requests"]) for r in by_model_day] == [
        ("", "2024-06-01", 1), ("img", "2024-06-01", 1), ("m1", "2024-05-31", 2), ("m1", "2024-06-01", 1),
        ("m2", "2024-05-31", 1)]
    by_status = await filled.query(["endpoint", "status"], T0, T0 + 10_000)
    assert [(r["endpoint"], r["status"]) for r in by_status] == [
        ("/v1/chat/completions", 200), ("/v1/chat/completions", 401), ("/v1/chat/completions", 429),
        ("/v1/chat/completions", 499), ("/v1/images/generations", 200)]
    assert utc_day(T0 + 3600) == "2024-06-01"


async def test_filters_time_range_and_limit(filled):
    assert await filled.query(["user"], T0, T0 + 10_000, subject="jwt:alice") == [
        {"user": "", **totals(2, prompt=10, completion=5, errors=1)},
        {"user": "ann", **totals(2, prompt=20, completion=6, cached=4, errors=1)},
    ]
    assert await filled.query(["subject"], T0, T0 + 10_000, user="ann", model="m1") == [
        {"subject": "jwt:alice", **totals(2, prompt=20, completion=6, cached=4, errors=1)}]
    # [start, end): a record at `end` is the next range's
    assert [r["requests"] for r in await filled.query(["day"], T0 + 1, T0 + 3600)] == [2]
    assert await filled.query(["subject"], T0 + 20_000, T0 + 30_000) == []
    assert [r["subject"] for r in await filled.query(["subject"], T0, T0 + 10_000, limit=2)] == ["", "jwt:alice"]
    with pytest.raises(ValueError):
        await filled.query(["subject", "nothing"], T0, T0 + 1)
    with pytest.raises(ValueError):
        await filled.query([], T0, T0 + 1)


async def test_totals_per_hour_on_either_database(filled):
    filled.record(rec(3599.9))  # the last instant of T0's hour: floor, never rounded up
    await filled.flush()
    by_hour = await filled.query(["hour", "model"], T0, T0 + 10_000)
    assert [(r["hour"], r["model"], r["requests"]) for r in by_hour] == [
        ("2024-05-31T23:00Z", "m1", 3), ("2024-05-31T23:00Z", "m2", 1),
        ("2024-06-01T00:00Z", "img", 1), ("2024-06-01T00:00Z", "m1", 1), ("2024-06-01T01:00Z", "", 1)]
    assert utc_hour(int(T0 // 3600)) == "2024-05-31T23:00Z"


async def test_a_set_of_subjects_on_either_database(filled):
    """What a caller that is not an admin reads: its own subjects only (GET /v1/usage)."""
    rows = await filled.query(["subject"], T0, T0 + 10_000, subjects=["key:ops", "jwt:nobody", ""])
    assert [(r["subject"], r["requests"]) for r in rows] == [("", 1), ("key:ops", 1)]
    assert await filled.query(["subject"], T0, T0 + 10_000, subjects=[]) == []
    both = await filled.query(["subject"], T0, T0 + 10_000, subject="jwt:alice", subjects=["jwt:alice", "key:ops"])
    assert [(r["subject"], r["requests"]) for r in both] == [("jwt:alice", 4)]
