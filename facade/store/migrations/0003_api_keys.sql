-- Keys the hub issues (facade/store/key_store.py, facade/auth/hub_keys.py). The same dialect rules
-- as 0001: TEXT, INTEGER, DOUBLE PRECISION and plain indexes mean the same in SQLite and PostgreSQL.

-- id is the key's public identifier (it is part of the secret the client holds: sk-hm-<id>.<secret>);
-- secret_hash the SHA-256 of the secret part (never the secret), previous_hash the one it replaced
-- while a regeneration's grace period lasts (until previous_until, epoch seconds). owner is the
-- subject that manages the key (`jwt:alice`, or the owner of the key that created it); the key
-- itself calls as `hubkey:<id>`. expires_at NULL: never. blocked 0/1. scopes and models are JSON
-- lists (models NULL: every model); limits a JSON object (rpm, tpm, tokens_per_day,
-- tokens_per_month, max_parallel_requests, weight, priority); metadata the client's JSON object.
CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    name TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    previous_hash TEXT,
    previous_until DOUBLE PRECISION,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION,
    blocked INTEGER NOT NULL,
    scopes TEXT NOT NULL,
    models TEXT,
    limits TEXT NOT NULL,
    metadata TEXT NOT NULL
);

-- one owner's keys (list, the count limit, delete all or expired)
CREATE INDEX api_keys_owner ON api_keys (owner, created_at);
