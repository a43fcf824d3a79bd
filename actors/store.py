"""The durable store: SQLite in WAL mode, written only by the journal actor.

Rows mirror what the actors own: workflow definitions, each workflow's current
run and its job states, active leases, log chunks and workers. The ready and
delayed queues are not stored: they are the jobs whose rows say `in_queue`,
re-enqueued in their original order on recovery.

WAL with `synchronous=NORMAL` survives the process being killed at any
point (what a server crash is); a power cut may lose the last commits.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS workflows (
    id TEXT PRIMARY KEY, seq INTEGER NOT NULL, spec TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    workflow_id TEXT PRIMARY KEY, run_id INTEGER NOT NULL, spec TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    workflow_id TEXT NOT NULL, job_id TEXT NOT NULL, run_id INTEGER NOT NULL,
    state TEXT NOT NULL, PRIMARY KEY (workflow_id, job_id)
);
CREATE TABLE IF NOT EXISTS leases (
    lease_id TEXT PRIMARY KEY, lease TEXT NOT NULL, run_id INTEGER NOT NULL,
    deadline_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS logs (
    id INTEGER PRIMARY KEY AUTOINCREMENT, workflow_id TEXT NOT NULL,
    job_id TEXT NOT NULL, run_id INTEGER NOT NULL, chunk TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS logs_by_job ON logs (workflow_id, job_id, run_id);
CREATE TABLE IF NOT EXISTS workers (worker_id TEXT PRIMARY KEY, record TEXT NOT NULL);
"""

Record = tuple[str, tuple[Any, ...]]


class StoreError(RuntimeError):
    """The store cannot be opened or read; the message says which file and why."""


# --- records: what actors hand the journal ------------------------------------


def put_workflow(workflow_id: str, seq: int, spec_json: str) -> Record:
    return ("INSERT OR REPLACE INTO workflows VALUES (?, ?, ?)", (workflow_id, seq, spec_json))


def put_run(workflow_id: str, run_id: int, spec_json: str) -> Record:
    return ("INSERT OR REPLACE INTO runs VALUES (?, ?, ?)", (workflow_id, run_id, spec_json))


def put_job(workflow_id: str, job_id: str, run_id: int, state: dict) -> Record:
    return (
        "INSERT OR REPLACE INTO jobs VALUES (?, ?, ?, ?)",
        (workflow_id, job_id, run_id, json.dumps(state, separators=(",", ":"))),
    )


def put_lease(lease_id: str, lease_json: str, run_id: int, deadline_ms: int) -> Record:
    return (
        "INSERT OR REPLACE INTO leases VALUES (?, ?, ?, ?)",
        (lease_id, lease_json, run_id, deadline_ms),
    )


def drop_lease(lease_id: str) -> Record:
    return ("DELETE FROM leases WHERE lease_id = ?", (lease_id,))


def put_log(workflow_id: str, job_id: str, run_id: int, chunk_json: str) -> Record:
    return (
        "INSERT INTO logs (workflow_id, job_id, run_id, chunk) VALUES (?, ?, ?, ?)",
        (workflow_id, job_id, run_id, chunk_json),
    )


def prune_logs(workflow_id: str, keep_from_run: int) -> Record:
    return (
        "DELETE FROM logs WHERE workflow_id = ? AND run_id < ?",
        (workflow_id, keep_from_run),
    )


def put_worker(worker_id: str, record: dict) -> Record:
    return (
        "INSERT OR REPLACE INTO workers VALUES (?, ?)",
        (worker_id, json.dumps(record, separators=(",", ":"))),
    )


# --- what recovery reads ------------------------------------------------------


@dataclass
class Snapshot:
    """Everything the store holds, as plain data for the actors to restore from."""

    workflows: list[tuple[str, str]] = field(default_factory=list)  # (id, spec json), by seq
    runs: dict[str, tuple[int, str]] = field(default_factory=dict)  # id -> (run_id, spec json)
    jobs: dict[str, dict[str, tuple[int, dict]]] = field(default_factory=dict)
    leases: list[tuple[str, int, int]] = field(default_factory=list)  # (lease json, run, deadline)
    logs: dict[tuple[str, str, int], list[str]] = field(default_factory=dict)
    workers: list[dict] = field(default_factory=list)


class Store:
    """One SQLite database file; `apply` runs a batch of records in one transaction."""

    def __init__(self, data_dir: str | Path) -> None:
        directory = Path(data_dir)
        self.path = directory / "state.db"
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create data directory {directory}: {exc.strerror}") from None
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)
            self._check_version()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cannot open the store {self.path}: {exc}") from None

    def _check_version(self) -> None:
        row = self._db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is None:
            self._db.execute(
                "INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )
        elif row[0] != str(SCHEMA_VERSION):
            raise StoreError(
                f"the store {self.path} has schema version {row[0]}, this server reads "
                f"{SCHEMA_VERSION}"
            )

    def apply(self, records: list[Record]) -> None:
        """Commit the records in order, all or none (runs in a worker thread)."""
        db = self._db
        db.execute("BEGIN")
        try:
            for sql, params in records:
                db.execute(sql, params)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def load(self) -> Snapshot:
        try:
            return self._load()
        except (sqlite3.DatabaseError, ValueError, KeyError) as exc:
            raise StoreError(f"the store {self.path} cannot be read: {exc}") from None

    def _load(self) -> Snapshot:
        db = self._db
        snap = Snapshot()
        snap.workflows = list(db.execute("SELECT id, spec FROM workflows ORDER BY seq"))
        snap.runs = {wf: (run, spec) for wf, run, spec in db.execute("SELECT * FROM runs")}
        for wf, job, run, state in db.execute("SELECT * FROM jobs"):
            snap.jobs.setdefault(wf, {})[job] = (run, json.loads(state))
        snap.leases = [
            (lease, run, deadline) for _, lease, run, deadline in db.execute("SELECT * FROM leases")
        ]
        query = "SELECT workflow_id, job_id, run_id, chunk FROM logs ORDER BY id"
        for wf, job, run, chunk in db.execute(query):
            snap.logs.setdefault((wf, job, run), []).append(chunk)
        snap.workers = [json.loads(r) for (r,) in db.execute("SELECT record FROM workers")]
        return snap

    def next_workflow_seq(self) -> int:
        (seq,) = self._db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM workflows").fetchone()
        return seq

    def close(self) -> None:
        self._db.close()
