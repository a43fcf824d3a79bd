"""The PostgreSQL schema: created and migrated on start under an advisory lock.

Tables live in the connection's current schema (the first of its `search_path`),
so one database can hold several independent engines (the tests use one schema
each). `wfg_now_ms()` is the one clock of every node: `clock_timestamp()` plus an
offset kept in a one-row table, which tests shift instead of sleeping (or a
frozen instant, which they move forward: time that passes only when a test says).
"""

from __future__ import annotations

import hashlib

import psycopg

SCHEMA_VERSION = 2  # 2: schedules, deliveries, notifications (triggers); leases.held

DDL = """
CREATE TABLE IF NOT EXISTS meta (key text PRIMARY KEY, value text NOT NULL);
CREATE TABLE IF NOT EXISTS clock (
    id int PRIMARY KEY CHECK (id = 1), offset_ms bigint NOT NULL, frozen_ms bigint
);
INSERT INTO clock VALUES (1, 0, NULL) ON CONFLICT DO NOTHING;
CREATE OR REPLACE FUNCTION wfg_now_ms() RETURNS bigint LANGUAGE sql VOLATILE AS $$
    SELECT coalesce(frozen_ms, (extract(epoch FROM clock_timestamp()) * 1000)::bigint + offset_ms)
    FROM clock WHERE id = 1
$$;
CREATE SEQUENCE IF NOT EXISTS enqueue_seq;
CREATE SEQUENCE IF NOT EXISTS run_seq;
CREATE TABLE IF NOT EXISTS definitions (hash text PRIMARY KEY, spec text NOT NULL);
CREATE TABLE IF NOT EXISTS workflows (
    id text PRIMARY KEY,
    seq bigint GENERATED ALWAYS AS IDENTITY,
    spec_hash text NOT NULL,
    from_file boolean NOT NULL DEFAULT false,
    next_number int NOT NULL DEFAULT 1,
    latest int NOT NULL DEFAULT 0,
    cancelled_unrun boolean NOT NULL DEFAULT false
);
CREATE UNIQUE INDEX IF NOT EXISTS workflows_seq ON workflows (seq);
CREATE TABLE IF NOT EXISTS runs (
    workflow_id text NOT NULL,
    number int NOT NULL,
    seq bigint NOT NULL DEFAULT nextval('run_seq'),
    status text NOT NULL,
    grp text,
    spec_hash text NOT NULL,
    record jsonb NOT NULL,
    deadline_ms bigint,
    PRIMARY KEY (workflow_id, number)
);
CREATE INDEX IF NOT EXISTS runs_active ON runs (workflow_id)
    WHERE status IN ('queued', 'running');
CREATE INDEX IF NOT EXISTS runs_group ON runs (grp, seq)
    WHERE grp IS NOT NULL AND status IN ('queued', 'running');
CREATE INDEX IF NOT EXISTS runs_deadline ON runs (deadline_ms)
    WHERE deadline_ms IS NOT NULL AND status = 'running';
CREATE TABLE IF NOT EXISTS jobs (
    workflow_id text NOT NULL,
    number int NOT NULL,
    job_id text NOT NULL,
    state jsonb NOT NULL,
    ready boolean NOT NULL DEFAULT false,
    label_key text,
    enqueue_seq bigint,
    due_ms bigint,
    payload text,
    queue_deadline_ms bigint,
    timeout_at_ms bigint,
    version int NOT NULL DEFAULT 0,
    PRIMARY KEY (workflow_id, number, job_id)
);
CREATE INDEX IF NOT EXISTS jobs_ready ON jobs (label_key, enqueue_seq) WHERE ready;
CREATE INDEX IF NOT EXISTS jobs_delayed ON jobs (due_ms) WHERE due_ms IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_queue_deadline ON jobs (queue_deadline_ms)
    WHERE queue_deadline_ms IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_timeout ON jobs (timeout_at_ms) WHERE timeout_at_ms IS NOT NULL;
CREATE TABLE IF NOT EXISTS label_sets (label_key text PRIMARY KEY, labels text[] NOT NULL);
CREATE TABLE IF NOT EXISTS leases (
    lease_id text PRIMARY KEY,
    workflow_id text NOT NULL,
    number int NOT NULL,
    job_id text NOT NULL,
    worker_id text NOT NULL,
    ttl_secs int NOT NULL,
    attempt int NOT NULL,
    claimed_ms bigint NOT NULL,
    granted_at_ms bigint NOT NULL,
    deadline_ms bigint NOT NULL
) WITH (fillfactor = 50);
CREATE TABLE IF NOT EXISTS logs (
    id bigserial PRIMARY KEY,
    workflow_id text NOT NULL,
    number int NOT NULL,
    job_id text NOT NULL,
    chunk text NOT NULL
);
CREATE INDEX IF NOT EXISTS logs_by_job ON logs (workflow_id, number, job_id, id);
CREATE TABLE IF NOT EXISTS prune_queue (workflow_id text PRIMARY KEY);
CREATE TABLE IF NOT EXISTS workers (
    worker_id text PRIMARY KEY,
    seq bigint GENERATED ALWAYS AS IDENTITY,
    labels jsonb NOT NULL,
    registered_at_ms bigint NOT NULL,
    last_heartbeat_ms bigint NOT NULL,
    ttl_secs int NOT NULL
) WITH (fillfactor = 50);
-- The end of a log a secret may begin in, held back until the next push or the attempt's end.
ALTER TABLE leases ADD COLUMN IF NOT EXISTS held jsonb;
CREATE TABLE IF NOT EXISTS schedules (
    workflow_id text NOT NULL,
    cron text NOT NULL,
    timezone text NOT NULL,
    seen_ms bigint NOT NULL,
    last_ms bigint,
    skipped int NOT NULL DEFAULT 0,
    PRIMARY KEY (workflow_id, cron, timezone)
);
CREATE TABLE IF NOT EXISTS deliveries (
    delivery_id text NOT NULL,
    workflow_id text NOT NULL,
    at_ms bigint NOT NULL,
    PRIMARY KEY (delivery_id, workflow_id)
);
CREATE INDEX IF NOT EXISTS deliveries_by_time ON deliveries (at_ms);
CREATE TABLE IF NOT EXISTS notifications (
    id text PRIMARY KEY,
    seq bigint GENERATED ALWAYS AS IDENTITY,
    workflow_id text NOT NULL,
    number int NOT NULL,
    state text NOT NULL,
    record jsonb NOT NULL
);
CREATE INDEX IF NOT EXISTS notifications_by_run ON notifications (workflow_id, number, seq);
CREATE INDEX IF NOT EXISTS notifications_pending ON notifications (seq) WHERE state = 'pending';
"""
# No index on `leases.deadline_ms` nor `workers.last_heartbeat_ms`: a heartbeat then
# touches no index and stays a HOT update, in the room the fillfactor leaves. The
# leader's expiry scan reads the whole (small: one row per running job) lease table.


class SchemaError(RuntimeError):
    """The database holds a schema this version cannot use; the message says why."""


def lock_key(schema: str, name: str) -> int:
    """A 64-bit advisory lock key for `name` within one schema's engine."""
    digest = hashlib.blake2b(f"wfg:{schema}:{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def migrate(conn: psycopg.Connection) -> int:
    """Create or upgrade the schema in the connection's current schema; returns the
    version. Safe to run from many nodes at once: they queue on an advisory lock."""
    (schema,) = conn.execute("SELECT current_schema()").fetchone() or (None,)
    if schema is None:
        raise SchemaError("the connection has no current schema (check search_path)")
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key(schema, "migrate"),))
        exists = conn.execute("SELECT to_regclass('meta') IS NOT NULL").fetchone()
        version = None
        if exists and exists[0]:
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            version = int(row[0]) if row else None
        if version is not None and version > SCHEMA_VERSION:
            raise SchemaError(
                f"the database has schema version {version}, this server reads "
                f"{SCHEMA_VERSION} (it was written by a newer version)"
            )
        if version != SCHEMA_VERSION:
            conn.execute(DDL)
            conn.execute(
                "INSERT INTO meta VALUES ('schema_version', %s) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (str(SCHEMA_VERSION),),
            )
    return SCHEMA_VERSION
