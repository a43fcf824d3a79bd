"""The durable store: SQLite in WAL mode, written only by the journal actor.

Rows mirror what the actors own: workflow definitions, every retained run with
its jobs' states, the definitions runs ran with, active leases, log chunks and
workers. The ready and delayed queues are not stored: they are the jobs whose
rows say `in_queue`, re-enqueued in their original order on recovery.

WAL with `synchronous=NORMAL` survives the process being killed at any
point (what a server crash is); a power cut may lose the last commits.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 3

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS workflows (
    id TEXT PRIMARY KEY, seq INTEGER NOT NULL, spec TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS definitions (hash TEXT PRIMARY KEY, spec TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    workflow_id TEXT NOT NULL, number INTEGER NOT NULL, seq INTEGER NOT NULL,
    status TEXT NOT NULL, spec_hash TEXT NOT NULL, record TEXT NOT NULL,
    PRIMARY KEY (workflow_id, number)
);
CREATE INDEX IF NOT EXISTS runs_unfinished ON runs (status)
    WHERE status IN ('queued', 'running');
CREATE TABLE IF NOT EXISTS jobs (
    workflow_id TEXT NOT NULL, number INTEGER NOT NULL, job_id TEXT NOT NULL,
    state TEXT NOT NULL, PRIMARY KEY (workflow_id, number, job_id)
);
CREATE TABLE IF NOT EXISTS leases (
    lease_id TEXT PRIMARY KEY, lease TEXT NOT NULL, number INTEGER NOT NULL,
    deadline_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS logs (
    id INTEGER PRIMARY KEY AUTOINCREMENT, workflow_id TEXT NOT NULL,
    number INTEGER NOT NULL, job_id TEXT NOT NULL, chunk TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS logs_by_job ON logs (workflow_id, number, job_id);
CREATE TABLE IF NOT EXISTS workers (worker_id TEXT PRIMARY KEY, record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS flags (
    workflow_id TEXT NOT NULL, name TEXT NOT NULL, PRIMARY KEY (workflow_id, name)
);
CREATE TABLE IF NOT EXISTS run_events (
    workflow_id TEXT NOT NULL, number INTEGER NOT NULL, event TEXT NOT NULL,
    PRIMARY KEY (workflow_id, number)
);
CREATE TABLE IF NOT EXISTS schedules (
    workflow_id TEXT NOT NULL, cron TEXT NOT NULL, timezone TEXT NOT NULL,
    seen_ms INTEGER NOT NULL, last_ms INTEGER, skipped INTEGER NOT NULL,
    PRIMARY KEY (workflow_id, cron, timezone)
);
CREATE TABLE IF NOT EXISTS deliveries (
    delivery_id TEXT NOT NULL, workflow_id TEXT NOT NULL, at_ms INTEGER NOT NULL,
    PRIMARY KEY (delivery_id, workflow_id)
);
CREATE INDEX IF NOT EXISTS deliveries_by_time ON deliveries (at_ms);
CREATE TABLE IF NOT EXISTS notifications (
    id TEXT PRIMARY KEY, workflow_id TEXT NOT NULL, number INTEGER NOT NULL,
    state TEXT NOT NULL, record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS notifications_by_run ON notifications (workflow_id, number);
CREATE INDEX IF NOT EXISTS notifications_pending ON notifications (state)
    WHERE state = 'pending';
"""

Record = tuple[str, tuple[Any, ...]]


class StoreError(RuntimeError):
    """The store cannot be opened or read; the message says which file and why."""


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def spec_hash(spec_json: str) -> str:
    """The key a definition is stored under; equal texts share one row."""
    return hashlib.sha256(spec_json.encode()).hexdigest()[:32]


# --- records: what actors hand the journal ------------------------------------


def put_workflow(workflow_id: str, seq: int, spec_json: str) -> Record:
    return ("INSERT OR REPLACE INTO workflows VALUES (?, ?, ?)", (workflow_id, seq, spec_json))


def mark_alive(now_ms: int) -> Record:
    """A write whose commit shows the store is writable (the readiness check)."""
    return ("INSERT OR REPLACE INTO meta VALUES ('last_ready_check_ms', ?)", (str(now_ms),))


def put_definition(digest: str, spec_json: str) -> Record:
    return ("INSERT OR IGNORE INTO definitions VALUES (?, ?)", (digest, spec_json))


def put_run(seq: int, digest: str, run_row: dict[str, Any]) -> Record:
    """The run's row, without its event: that is stored once (`put_run_event`), not
    again with every change of the run."""
    row = {k: v for k, v in run_row.items() if k != "event"}
    return (
        "INSERT OR REPLACE INTO runs VALUES (?, ?, ?, ?, ?, ?)",
        (row["workflow_id"], row["number"], seq, row["status"], digest, _json(row)),
    )


def put_run_event(workflow_id: str, number: int, event: dict[str, Any]) -> Record:
    """The payload of the event that started a run (a webhook's can be large)."""
    return (
        "INSERT OR REPLACE INTO run_events VALUES (?, ?, ?)",
        (workflow_id, number, _json(event)),
    )


def put_job(workflow_id: str, number: int, job_id: str, state: dict) -> Record:
    return (
        "INSERT OR REPLACE INTO jobs VALUES (?, ?, ?, ?)",
        (workflow_id, number, job_id, _json(state)),
    )


def put_lease(lease_id: str, lease_json: str, number: int, deadline_ms: int) -> Record:
    return (
        "INSERT OR REPLACE INTO leases VALUES (?, ?, ?, ?)",
        (lease_id, lease_json, number, deadline_ms),
    )


def drop_lease(lease_id: str) -> Record:
    return ("DELETE FROM leases WHERE lease_id = ?", (lease_id,))


def put_log(workflow_id: str, number: int, job_id: str, chunk_json: str) -> Record:
    return (
        "INSERT INTO logs (workflow_id, number, job_id, chunk) VALUES (?, ?, ?, ?)",
        (workflow_id, number, job_id, chunk_json),
    )


def copy_logs(workflow_id: str, source: int, target: int, job_id: str) -> Record:
    """A job carried into a re-run keeps its log: the source run's chunks, copied."""
    return (
        "INSERT INTO logs (workflow_id, number, job_id, chunk) SELECT workflow_id, ?, job_id, "
        "chunk FROM logs WHERE workflow_id = ? AND number = ? AND job_id = ? ORDER BY id",
        (target, workflow_id, source, job_id),
    )


def prune_runs(workflow_id: str, below: int) -> list[Record]:
    """Forget the finished runs numbered below `below`, with their jobs and logs."""
    finished = "status NOT IN ('queued', 'running')"
    return [
        (
            f"DELETE FROM jobs WHERE workflow_id = ?1 AND number IN (SELECT number FROM runs "
            f"WHERE workflow_id = ?1 AND number < ?2 AND {finished})",
            (workflow_id, below),
        ),
        (
            f"DELETE FROM logs WHERE workflow_id = ?1 AND number IN (SELECT number FROM runs "
            f"WHERE workflow_id = ?1 AND number < ?2 AND {finished})",
            (workflow_id, below),
        ),
        (
            f"DELETE FROM run_events WHERE workflow_id = ?1 AND number IN (SELECT number FROM "
            f"runs WHERE workflow_id = ?1 AND number < ?2 AND {finished})",
            (workflow_id, below),
        ),
        (
            # A notification still being retried outlives its run's record.
            f"DELETE FROM notifications WHERE workflow_id = ?1 AND state != 'pending' AND "
            f"number IN (SELECT number FROM runs WHERE workflow_id = ?1 AND number < ?2 "
            f"AND {finished})",
            (workflow_id, below),
        ),
        (
            f"DELETE FROM runs WHERE workflow_id = ? AND number < ? AND {finished}",
            (workflow_id, below),
        ),
    ]


def put_worker(worker_id: str, record: dict) -> Record:
    return ("INSERT OR REPLACE INTO workers VALUES (?, ?)", (worker_id, _json(record)))


def set_flag(workflow_id: str, name: str, on: bool) -> Record:
    if on:
        return ("INSERT OR IGNORE INTO flags VALUES (?, ?)", (workflow_id, name))
    return ("DELETE FROM flags WHERE workflow_id = ? AND name = ?", (workflow_id, name))


# --- what recovery and history read -------------------------------------------------


@dataclass
class StoredRun:
    """A run as stored: its row, the definition it ran with, its jobs' rows."""

    seq: int
    spec_hash: str
    spec_json: str
    row: dict[str, Any]
    jobs: dict[str, dict[str, Any]]


@dataclass
class Snapshot:
    """What recovery restores: definitions, unfinished and latest runs, leases, logs."""

    workflows: list[tuple[str, str]] = field(default_factory=list)  # (id, spec json), by seq
    # Per workflow: its unfinished runs and its latest run, by number.
    runs: dict[str, dict[int, StoredRun]] = field(default_factory=dict)
    next_numbers: dict[str, int] = field(default_factory=dict)  # workflow -> next run number
    next_run_seq: int = 1
    leases: list[tuple[str, int, int]] = field(
        default_factory=list
    )  # (lease json, number, deadline)
    logs: dict[tuple[str, int, str], list[str]] = field(default_factory=dict)
    workers: list[dict] = field(default_factory=list)
    flags: set[tuple[str, str]] = field(default_factory=set)


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
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cannot open the store {self.path}: {exc}") from None

    def _migrate(self) -> None:
        db = self._db
        db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        version = int(row[0]) if row else None
        if version is not None and version > SCHEMA_VERSION:
            raise StoreError(
                f"the store {self.path} has schema version {version}, this server reads "
                f"{SCHEMA_VERSION} (it was written by a newer version)"
            )
        db.execute("BEGIN IMMEDIATE")
        try:
            if version == 1:
                _migrate_v1(db)
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            if version == 2:
                _migrate_v2(db)
            db.execute(
                "INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

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

    def read(self, query: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run a read against the committed state (in the journal's thread, in order)."""
        return query(self._db)

    def load(self) -> Snapshot:
        try:
            return self._load()
        except (sqlite3.DatabaseError, ValueError, KeyError) as exc:
            raise StoreError(f"the store {self.path} cannot be read: {exc}") from None

    def _load(self) -> Snapshot:
        db = self._db
        snap = Snapshot()
        snap.workflows = list(db.execute("SELECT id, spec FROM workflows ORDER BY seq"))
        for workflow_id, top in db.execute(
            "SELECT workflow_id, MAX(number) FROM runs GROUP BY workflow_id"
        ):
            snap.next_numbers[workflow_id] = top + 1
        (top_seq,) = db.execute("SELECT COALESCE(MAX(seq), 0) FROM runs").fetchone()
        snap.next_run_seq = top_seq + 1
        wanted = list(
            db.execute(
                "SELECT workflow_id, number FROM runs WHERE status IN ('queued', 'running') "
                "UNION SELECT workflow_id, MAX(number) FROM runs GROUP BY workflow_id"
            )
        )
        for workflow_id, number in wanted:
            stored = read_run(db, workflow_id, number)
            if stored is not None:
                snap.runs.setdefault(workflow_id, {})[number] = stored
                for job_id in stored.jobs:
                    chunks = read_log(db, workflow_id, number, job_id)
                    if chunks:
                        snap.logs[(workflow_id, number, job_id)] = chunks
        snap.leases = [
            (lease, number, deadline)
            for _, lease, number, deadline in db.execute("SELECT * FROM leases")
        ]
        snap.workers = [json.loads(r) for (r,) in db.execute("SELECT record FROM workers")]
        snap.flags = {(w, n) for w, n in db.execute("SELECT workflow_id, name FROM flags")}
        return snap

    def close(self) -> None:
        self._db.close()


def read_run(db: sqlite3.Connection, workflow_id: str, number: int) -> StoredRun | None:
    row = db.execute(
        "SELECT runs.seq, runs.spec_hash, definitions.spec, runs.record FROM runs JOIN definitions "
        "ON definitions.hash = runs.spec_hash WHERE workflow_id = ? AND number = ?",
        (workflow_id, number),
    ).fetchone()
    if row is None:
        return None
    seq, digest, spec_json, record = row
    run_row = json.loads(record)
    event = db.execute(
        "SELECT event FROM run_events WHERE workflow_id = ? AND number = ?", (workflow_id, number)
    ).fetchone()
    if event is not None:
        run_row["event"] = json.loads(event[0])
    jobs = {
        job_id: json.loads(state)
        for job_id, state in db.execute(
            "SELECT job_id, state FROM jobs WHERE workflow_id = ? AND number = ?",
            (workflow_id, number),
        )
    }
    return StoredRun(seq, digest, spec_json, run_row, jobs)


def read_runs(db: sqlite3.Connection, workflow_id: str, limit: int, offset: int) -> list[StoredRun]:
    """A page of the workflow's runs, newest first (an index range scan: the cost
    does not grow with how many runs are retained)."""
    numbers = [
        n
        for (n,) in db.execute(
            "SELECT number FROM runs WHERE workflow_id = ? ORDER BY number DESC LIMIT ? OFFSET ?",
            (workflow_id, limit, offset),
        )
    ]
    return [r for n in numbers if (r := read_run(db, workflow_id, n)) is not None]


def oldest_retained(db: sqlite3.Connection, workflow_id: str) -> int | None:
    row = db.execute("SELECT MIN(number) FROM runs WHERE workflow_id = ?", (workflow_id,))
    return row.fetchone()[0]


def read_log(db: sqlite3.Connection, workflow_id: str, number: int, job_id: str) -> list[str]:
    return [
        chunk
        for (chunk,) in db.execute(
            "SELECT chunk FROM logs WHERE workflow_id = ? AND number = ? AND job_id = ? "
            "ORDER BY id",
            (workflow_id, number, job_id),
        )
    ]


def _migrate_v2(db: sqlite3.Connection) -> None:
    """Schema 2 kept a run's event in its record; it moves to `run_events`, which
    `put_run` leaves alone."""
    for workflow_id, number, record in db.execute(
        "SELECT workflow_id, number, record FROM runs"
    ).fetchall():
        row = json.loads(record)
        event = row.pop("event", None)
        if event is not None:
            db.execute(*put_run_event(workflow_id, number, event))
            db.execute(
                "UPDATE runs SET record = ? WHERE workflow_id = ? AND number = ?",
                (_json(row), workflow_id, number),
            )


_V1_TERMINAL = {"success", "failure", "skipped", "cancelled"}


def _migrate_v1(db: sqlite3.Connection) -> None:
    """Schema 1 kept one run per workflow; each becomes that workflow's run record."""
    old_runs = list(db.execute("SELECT workflow_id, run_id, spec FROM runs"))
    old_jobs = list(db.execute("SELECT workflow_id, job_id, run_id, state FROM jobs"))
    old_leases = list(db.execute("SELECT lease_id, lease, run_id, deadline_ms FROM leases"))
    old_logs = list(db.execute("SELECT id, workflow_id, job_id, run_id, chunk FROM logs"))
    for table in ("runs", "jobs", "leases", "logs"):
        db.execute(f"DROP TABLE {table}")
    for statement in SCHEMA.split(";"):
        if statement.strip():
            db.execute(statement)
    for seq, (workflow_id, number, spec_json) in enumerate(old_runs, start=1):
        states = {j: json.loads(s) for w, j, n, s in old_jobs if w == workflow_id and n == number}
        for state in states.values():
            state.setdefault("soft_failed", False)
        statuses = {s["status"] for s in states.values()}
        if statuses - _V1_TERMINAL:
            status = "running"
        elif "failure" in statuses:
            status = "failure"
        elif "cancelled" in statuses:
            status = "cancelled"
        else:
            status = "success"
        started = [s["started_at"] for s in states.values() if s.get("started_at")]
        row = {
            "workflow_id": workflow_id,
            "number": number,
            "trigger": "manual",
            "inputs": {},
            "status": status,
            "created_at_ms": min(started, default=0),
            "started_at_ms": min(started, default=0),
            "finished_at_ms": None,
            "rerun_of": None,
            "group": None,
            "cancelled": status == "cancelled",
            "reason": None,
            "deadline_ms": None,
            "event": None,
        }
        digest = spec_hash(spec_json)
        for sql, params in (put_definition(digest, spec_json), put_run(seq, digest, row)):
            db.execute(sql, params)
        for job_id, state in states.items():
            db.execute(*put_job(workflow_id, number, job_id, state))
    for lease_id, lease, number, deadline in old_leases:
        db.execute(*put_lease(lease_id, lease, number, deadline))
    for _, workflow_id, job_id, number, chunk in sorted(old_logs):
        db.execute(*put_log(workflow_id, number, job_id, chunk))
