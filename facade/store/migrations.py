"""Schema migrations: versioned SQL files (facade/store/migrations/NNNN_name.sql), applied in order
at start-up and recorded in the table schema_migrations.

Applying is idempotent and safe with several façade replicas starting at once: everything happens
in one transaction that first takes the database's migration lock (PostgreSQL: an advisory
transaction lock; SQLite: BEGIN IMMEDIATE, the file's single writer lock). The first process applies
what is missing; the others wait, then find every version recorded and apply nothing. Both
databases run DDL inside transactions, so a failing migration leaves no half-made schema.

A migration file is never edited once released: a change is a new file. Each applied version keeps
the SHA-256 of its file, and a file that no longer matches is reported in the log.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

from facade.store.database import Database

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_COMMENT = re.compile(r"--[^\n]*")

CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    checksum TEXT NOT NULL,
    applied_at DOUBLE PRECISION NOT NULL
)"""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    checksum: str
    statements: tuple[str, ...]


def split_statements(sql: str) -> tuple[str, ...]:
    """The statements of a file: `--` comments dropped, split at semicolons (the files hold no
    string literal with either)."""
    text = _COMMENT.sub("", sql)
    return tuple(s.strip() for s in text.split(";") if s.strip())


def load_migrations(directory: Path = MIGRATIONS_DIR) -> tuple[Migration, ...]:
    """Every NNNN_name.sql of `directory`, by version; versions are unique and start at 1."""
    migrations = []
    for path in sorted(directory.glob("*.sql")):
        match = _FILE.match(path.name)
        if match is None:
            raise ValueError(f"{path}: a migration file is named NNNN_name.sql")
        raw = path.read_bytes()
        migrations.append(Migration(int(match[1]), match[2], hashlib.sha256(raw).hexdigest(),
                                    split_statements(raw.decode())))
    versions = [m.version for m in migrations]
    if versions != list(range(1, len(versions) + 1)):
        raise ValueError(f"migration versions must be 1, 2, 3, ... without gaps; found {versions}")
    return tuple(migrations)


async def migrate(db: Database, migrations: tuple[Migration, ...] | None = None) -> list[int]:
    """Applies the migrations the database lacks; the versions it applied (none when up to date)."""
    migrations = load_migrations() if migrations is None else migrations
    applied_now = []
    async with db.migration_lock() as tx:
        await tx.execute(CREATE_TABLE)
        recorded = {version: checksum for version, checksum in
                    await tx.fetch("SELECT version, checksum FROM schema_migrations")}
        for migration in migrations:
            if migration.version in recorded:
                if recorded[migration.version] != migration.checksum:
                    log.warning("schema migration %04d_%s was changed after it was applied; the database "
                                "keeps the version it applied", migration.version, migration.name)
                continue
            for statement in migration.statements:
                await tx.execute(statement)
            await tx.execute(
                "INSERT INTO schema_migrations (version, name, checksum, applied_at) VALUES ($1, $2, $3, $4)",
                migration.version, migration.name, migration.checksum, time.time(),
            )
            applied_now.append(migration.version)
        newer = sorted(set(recorded) - {m.version for m in migrations})
    if newer:
        log.warning("the database has schema versions this façade does not know (%s): a newer release "
                    "migrated it", newer)
    if applied_now:
        log.info("database schema migrated to version %d (applied %s)", migrations[-1].version, applied_now)
    return applied_now
