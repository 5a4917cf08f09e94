"""The Responses API's database (facade/store): the same tests on SQLite and on a real PostgreSQL.

PostgreSQL is the server these machines run on 127.0.0.1:5432 (trust auth, database `test`), or
HUBMESH_TEST_POSTGRES_URL. Each test gets a schema of its own (search_path), dropped afterwards.
A PostgreSQL that cannot be reached FAILS these tests with the reason: they are never skipped.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import uuid

import asyncpg
import pytest

from facade.store import StoreHolder, store_ctx
from facade.store.database import StoreError, open_database, parse_url, redact
from facade.store.migrations import load_migrations, migrate, split_statements
from facade.store.response_store import ResponsesStore, UnknownItem, owner_of

POSTGRES_URL = os.environ.get("HUBMESH_TEST_POSTGRES_URL", "postgresql://127.0.0.1:5432/test")


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def _postgres_admin() -> asyncpg.Connection:
    try:
        return await asyncpg.connect(POSTGRES_URL, timeout=10)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as err:
        pytest.fail(
            f"PostgreSQL is not reachable at {redact(POSTGRES_URL)} ({err.__class__.__name__}: {err}). The storage "
            "tests run on SQLite and on a real PostgreSQL; start one (on these machines it listens on "
            "127.0.0.1:5432, database `test`) or point HUBMESH_TEST_POSTGRES_URL at one.",
            pytrace=False,
        )


@pytest.fixture(params=["sqlite", "postgresql"])
async def database_url(request, tmp_path):
    """A URL of an empty database of each kind."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'responses.db'}"
        return
    admin = await _postgres_admin()
    schema = f"hm_test_{uuid.uuid4().hex[:12]}"
    await admin.execute(f'CREATE SCHEMA "{schema}"')
    separator = "&" if "?" in POSTGRES_URL else "?"
    try:
        yield f"{POSTGRES_URL}{separator}search_path={schema}"
    finally:
        await admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await admin.close()


@pytest.fixture
async def db(database_url):
    database = await open_database(database_url)
    await migrate(database)
    yield database
    await database.close()


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def store(db, clock):
    return ResponsesStore(db, retention_s=100.0, clock=clock)


def response(response_id: str = "resp_1", **extra) -> dict:
    return {"id": response_id, "object": "response", "status": "completed", "output": [
        {"type": "message", "id": "msg_out", "status": "completed", "role": "assistant",
         "content": [{"type": "output_text", "text": "hi", "annotations": [], "logprobs": []}]}],
        "previous_response_id": None, **extra}


def items(*texts: str) -> list[dict]:
    return [{"type": "message", "id": f"msg_{i}", "status": "completed", "role": "user",
             "content": [{"type": "input_text", "text": text}]} for i, text in enumerate(texts)]


# -- URLs ------------------------------------------------------------------------------------------


def test_urls():
    assert parse_url("sqlite:////abs/x.db") == ("sqlite", "/abs/x.db")
    assert parse_url("sqlite:///rel/x.db") == ("sqlite", "rel/x.db")
    assert parse_url("sqlite:///:memory:") == ("sqlite", ":memory:")
    assert parse_url("sqlite:///~/x.db")[1] == os.path.expanduser("~/x.db")
    assert parse_url("postgres://u:p@h/db") == ("postgresql", "postgresql://u:p@h/db")
    assert parse_url("postgresql+asyncpg://h/db") == ("postgresql", "postgresql://h/db")
    with pytest.raises(ValueError, match="unsupported database 'mysql'"):
        parse_url("mysql://u:secret@h/db")
    assert redact("postgresql://user:s3cret@db.example.com:5432/app") == "postgresql://user:***@db.example.com:5432/app"
    assert redact("postgresql://db/app") == "postgresql://db/app"


# -- migrations ------------------------------------------------------------------------------------


def test_migration_files_are_versioned_sql():
    migrations = load_migrations()
    assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))
    assert all(m.statements and all(";" not in s for s in m.statements) for m in migrations)
    assert split_statements("-- a; comment\nCREATE TABLE a (x INTEGER);\n\n-- b\nCREATE INDEX i ON a (x);") == (
        "CREATE TABLE a (x INTEGER)", "CREATE INDEX i ON a (x)")


async def test_migrations_are_recorded_and_idempotent(database_url):
    db = await open_database(database_url)
    try:
        assert await migrate(db) == [m.version for m in load_migrations()]
        assert await migrate(db) == []  # a restart applies nothing
        rows = await db.fetch("SELECT version, name, checksum FROM schema_migrations ORDER BY version")
        assert [(v, n, c) for v, n, c in rows] == [(m.version, m.name, m.checksum) for m in load_migrations()]
        assert await db.fetch("SELECT id FROM responses") == []
    finally:
        await db.close()


async def test_replicas_starting_at_once_migrate_exactly_once(database_url):
    """Four façade processes' databases (each its own connection or pool) migrating together."""
    databases = [await open_database(database_url) for _ in range(4)]
    try:
        applied = await asyncio.gather(*(migrate(db) for db in databases))
        assert sorted(map(len, applied)) == [0, 0, 0, len(load_migrations())]
        rows = await databases[0].fetch("SELECT version FROM schema_migrations")
        assert sorted(r[0] for r in rows) == [m.version for m in load_migrations()]
    finally:
        for db in databases:
            await db.close()


async def test_a_failing_migration_leaves_nothing_behind(database_url, tmp_path):
    (tmp_path / "0001_good.sql").write_text("CREATE TABLE a (x INTEGER);")
    (tmp_path / "0002_bad.sql").write_text("CREATE TABLE b (x INTEGER);\nTHIS IS NOT SQL;")
    db = await open_database(database_url)
    try:
        with pytest.raises(StoreError):
            await migrate(db, load_migrations(tmp_path))
        # one transaction: neither table, nor any record, was kept
        with pytest.raises(StoreError):
            await db.fetch("SELECT x FROM a")
        (tmp_path / "0002_bad.sql").write_text("CREATE TABLE b (x INTEGER);")
        assert await migrate(db, load_migrations(tmp_path)) == [1, 2]
    finally:
        await db.close()


def test_migration_names_must_be_versioned(tmp_path):
    (tmp_path / "0001_a.sql").write_text("SELECT 1;")
    (tmp_path / "0003_c.sql").write_text("SELECT 1;")
    with pytest.raises(ValueError, match="without gaps"):
        load_migrations(tmp_path)
    (tmp_path / "later.sql").write_text("SELECT 1;")
    with pytest.raises(ValueError, match="NNNN_name.sql"):
        load_migrations(tmp_path)


# -- the store -------------------------------------------------------------------------------------


async def test_save_and_read_back(store):
    body = response(metadata={"k": "v \u0000 \U0001f600"})  # NUL and emoji survive (JSON as TEXT)
    await store.save("key:alice", body, items("one", "two"))
    assert await store.get("resp_1", "key:alice") == body
    found = await store.conversation("resp_1", "key:alice")
    assert found == (body, items("one", "two"))


async def test_another_subject_sees_nothing(store):
    await store.save("jwt:alice", response(), items("secret"))
    assert await store.get("resp_1", "jwt:bob") is None
    assert await store.conversation("resp_1", "jwt:bob") is None
    assert await store.input_items("resp_1", "jwt:bob") is None
    assert await store.delete("resp_1", "jwt:bob") is False
    assert await store.get("resp_1", "jwt:alice") is not None  # bob's delete did nothing


async def test_owner_is_a_hash_of_any_subject(store, db):
    odd = "jwt:\ud800 \u0000 élan"  # a lone surrogate and NUL: a JWT's sub may hold either
    await store.save(odd, response(), items("x"))
    assert await store.get("resp_1", odd) is not None
    rows = await db.fetch("SELECT owner FROM responses")
    assert rows == [(owner_of(odd),)] and len(rows[0][0]) == 64


async def test_delete_removes_the_response_and_its_items(store, db):
    await store.save("s", response(), items("a", "b"))
    assert await store.delete("resp_1", "s") is True
    assert await store.get("resp_1", "s") is None
    assert await store.delete("resp_1", "s") is False
    assert await db.fetch("SELECT item_id FROM response_input_items") == []


async def test_input_items_pages(store):
    await store.save("s", response(), items(*"abcde"))
    ids = [f"msg_{i}" for i in range(5)]
    page = await store.input_items("resp_1", "s", limit=2, order="asc")
    assert [i["id"] for i in page.items] == ids[:2] and page.has_more
    page = await store.input_items("resp_1", "s", limit=2, order="asc", after="msg_1")
    assert [i["id"] for i in page.items] == ids[2:4] and page.has_more
    page = await store.input_items("resp_1", "s", limit=2, order="asc", after="msg_3")
    assert [i["id"] for i in page.items] == ids[4:] and not page.has_more
    page = await store.input_items("resp_1", "s")  # OpenAI's default: newest first, 20
    assert [i["id"] for i in page.items] == ids[::-1] and not page.has_more
    page = await store.input_items("resp_1", "s", limit=3, order="desc", after="msg_3")
    assert [i["id"] for i in page.items] == ["msg_2", "msg_1", "msg_0"] and not page.has_more
    page = await store.input_items("resp_1", "s", limit=5, order="asc", after="msg_4")
    assert page.items == [] and not page.has_more
    with pytest.raises(UnknownItem):
        await store.input_items("resp_1", "s", after="msg_nope")


async def test_retention_hides_then_sweeps(store, db, clock):
    await store.save("s", response("resp_old"), items("a"))
    clock.now += 60
    await store.save("s", response("resp_new"), items("b"))
    clock.now += 50  # resp_old is 110 s old: past the 100 s retention; resp_new is 50 s old
    assert await store.get("resp_old", "s") is None  # invisible at once, before any sweep
    assert await store.input_items("resp_old", "s") is None
    assert await store.delete("resp_old", "s") is False
    assert await store.get("resp_new", "s") is not None
    assert await store.sweep() == 1
    assert [r[0] for r in await db.fetch("SELECT id FROM responses")] == ["resp_new"]
    assert [r[0] for r in await db.fetch("SELECT response_id FROM response_input_items")] == ["resp_new"]
    assert await store.sweep() == 0


async def test_a_new_process_reads_what_an_earlier_one_stored(database_url, clock):
    """Restarts and replicas: whatever opens the same database sees the same responses."""
    first = await open_database(database_url)
    await migrate(first)
    await ResponsesStore(first, clock=clock).save("s", response(), items("a"))
    second = await open_database(database_url)
    try:
        assert await migrate(second) == []
        assert (await ResponsesStore(second, clock=clock).get("resp_1", "s"))["id"] == "resp_1"
    finally:
        await first.close()
        await second.close()


async def test_a_failed_save_keeps_nothing(store, db):
    await store.save("s", response(), items("a"))
    with pytest.raises(StoreError):  # the same id again: the transaction is rolled back whole
        await store.save("s", response(), items("b", "c"))
    assert [r[0] for r in await db.fetch("SELECT item_id FROM response_input_items")] == ["msg_0"]


async def test_concurrent_saves_and_reads(store):
    await asyncio.gather(*(store.save("s", response(f"resp_{i}"), items(str(i))) for i in range(20)))
    found = await asyncio.gather(*(store.get(f"resp_{i}", "s") for i in range(20)))
    assert [f["id"] for f in found] == [f"resp_{i}" for i in range(20)]


# -- unreachable databases -------------------------------------------------------------------------


async def test_an_unreachable_postgres_is_a_store_error_naming_no_password():
    from local.processes import free_port

    url = f"postgresql://hubmesh:hunter2@127.0.0.1:{free_port()}/nothing"
    with pytest.raises(StoreError) as info:
        await open_database(url)
    assert "hunter2" not in str(info.value) and "***" in str(info.value)


async def test_the_holder_retries_a_database_that_was_down(tmp_path, monkeypatch):
    import facade.store as store_module

    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the database's directory should be")
    holder = StoreHolder(f"sqlite:///{blocked / 'x.db'}", retention_s=10)
    with pytest.raises(StoreError):
        await holder.open()
    with pytest.raises(StoreError):  # too soon to try again
        await holder.get()
    blocked.unlink()
    monkeypatch.setattr(store_module, "RETRY_S", 0.0)
    store = await holder.get()
    assert isinstance(store, ResponsesStore)
    await holder.close()


def test_a_url_of_no_known_database_is_a_configuration_error():
    with pytest.raises(ValueError, match="HUBMESH_DATABASE_URL"):
        StoreHolder("mysql://x/y", retention_s=1)


async def test_store_ctx_opens_migrates_and_closes(tmp_path):
    from aiohttp import web

    from facade.store import RESPONSES_STORE

    app = web.Application()
    path = tmp_path / "sub" / "hubmesh.db"
    app.cleanup_ctx.append(store_ctx(f"sqlite:///{path}", 100.0, 0.05))
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        store = await app[RESPONSES_STORE].get()
        await store.save("s", response(), items("a"))
        store.retention_s = 0.0  # everything saved from now on expires at once
        await store.save("s", response("resp_gone"), items("b"))
        for _ in range(100):  # the sweeper removes it
            if len(await store.db.fetch("SELECT id FROM responses")) == 1:
                break
            await asyncio.sleep(0.05)
        assert [r[0] for r in await store.db.fetch("SELECT id FROM responses")] == ["resp_1"]
    finally:
        await runner.cleanup()
    assert app[RESPONSES_STORE].store is None
    with sqlite3.connect(path) as conn:  # a plain file any SQLite reads
        assert conn.execute("SELECT count(*) FROM schema_migrations").fetchone() == (len(load_migrations()),)
