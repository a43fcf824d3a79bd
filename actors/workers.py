"""The worker registry: registered workers and when each was last heard from."""

from __future__ import annotations

from dataclasses import dataclass, field

from .actor import Actor
from .clock import now_ms
from .errors import NotFound
from .models import WorkerInfo, WorkerStatus
from .store import put_worker

DEFAULT_TTL_SECS = 30
OFFLINE_AFTER_TTLS = 3  # contract: offline when unheard for longer than 3 x its lease TTL


@dataclass(slots=True)
class WorkerRecord:
    worker_id: str
    labels: list[str]
    registered_at_ms: int
    last_heartbeat_ms: int
    ttl_secs: int = DEFAULT_TTL_SECS
    jobs: list[str] = field(default_factory=list)  # held jobs, most recent last

    def to_row(self) -> dict:
        return {
            "worker_id": self.worker_id,
            "labels": self.labels,
            "registered_at_ms": self.registered_at_ms,
            "last_heartbeat_ms": self.last_heartbeat_ms,
            "ttl_secs": self.ttl_secs,
        }

    def status(self, now: int) -> WorkerStatus:
        if now - self.last_heartbeat_ms > self.ttl_secs * OFFLINE_AFTER_TTLS * 1000:
            return WorkerStatus.offline
        return WorkerStatus.busy if self.jobs else WorkerStatus.idle

    def info(self, now: int) -> WorkerInfo:
        status = self.status(now)
        return WorkerInfo(
            worker_id=self.worker_id,
            labels=list(self.labels),
            registered_at_ms=self.registered_at_ms,
            last_heartbeat_ms=self.last_heartbeat_ms,
            current_job=self.jobs[-1] if self.jobs else None,
            status=status,
        )


# --- messages ---------------------------------------------------------------


@dataclass(slots=True)
class Register:
    worker_id: str
    labels: list[str]


@dataclass(slots=True)
class Seen:
    """The worker was heard from; a claim also refreshes its labels and TTL."""

    worker_id: str
    labels: list[str] | None = None
    ttl_secs: int | None = None


@dataclass(slots=True)
class Heartbeat:
    worker_id: str


@dataclass(slots=True)
class JobHeld:
    worker_id: str
    job: str
    held: bool


@dataclass(slots=True)
class ListWorkers:
    pass


@dataclass(slots=True)
class ReadCoverage:
    """How many workers have each status, and the label sets of those not offline."""


@dataclass(slots=True)
class WorkerReading:
    by_status: dict[str, int]
    live_label_sets: frozenset[frozenset[str]]


class WorkerRegistry(Actor):
    name = "worker registry"

    def __init__(self) -> None:
        super().__init__()
        self._workers: dict[str, WorkerRecord] = {}

    def handle(self, message):
        self._dirty = False
        result = self._handle(message)
        if self._dirty and self.journal is not None:
            worker_id = message.worker_id
            self.record(put_worker(worker_id, self._workers[worker_id].to_row()))
        return result

    def _handle(self, message):
        match message:
            case Register(worker_id, labels):
                record = self._touch(worker_id, labels)
                return record.info(now_ms())
            case Seen(worker_id, labels, ttl_secs):
                record = self._touch(worker_id, labels)
                if ttl_secs is not None:
                    record.ttl_secs = ttl_secs
                    self._dirty = True
            case Heartbeat(worker_id):
                if worker_id not in self._workers:
                    raise NotFound(f"worker '{worker_id}' is not registered")
                return self._touch(worker_id, None).info(now_ms())
            case JobHeld(worker_id, job, held):
                record = self._workers.get(worker_id)
                if record is not None:
                    if held:
                        record.jobs.append(job)
                    elif job in record.jobs:
                        record.jobs.remove(job)
            case ListWorkers():
                now = now_ms()
                return [r.info(now) for r in self._workers.values()]
            case ReadCoverage():
                return self._reading(now_ms())
            case _:
                raise TypeError(f"worker registry cannot handle {message!r}")
        return None

    def _reading(self, now: int) -> WorkerReading:
        by_status = {status.value: 0 for status in WorkerStatus}
        live: set[frozenset[str]] = set()
        for record in self._workers.values():
            status = record.status(now)
            by_status[status.value] += 1
            if status is not WorkerStatus.offline:
                live.add(frozenset(record.labels))
        return WorkerReading(by_status, frozenset(live))

    def restore(self, rows: list[dict]) -> None:
        """Before the actor starts: the workers read back from the store."""
        for row in rows:
            self._workers[row["worker_id"]] = WorkerRecord(**row)

    def _touch(self, worker_id: str, labels: list[str] | None) -> WorkerRecord:
        now = now_ms()
        record = self._workers.get(worker_id)
        if record is None:
            record = WorkerRecord(worker_id, list(labels or []), now, now)
            self._workers[worker_id] = record
        else:
            record.last_heartbeat_ms = now
            if labels is not None:
                record.labels = list(labels)
        self._dirty = True
        return record
