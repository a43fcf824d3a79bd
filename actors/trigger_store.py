"""What triggers must not forget, behind the few methods both homes implement.

- each schedule's mark (when it was first seen, the last due time it handled),
  so a restart never fires a due time twice;
- each webhook delivery id with the workflows it was handled for, for three
  days (GitHub lets a delivery be redelivered that long), so a replay starts
  nothing;
- the notification outbox: every notification with its attempts, so one due
  when the server dies is still sent after it restarts.

Two things must be stored *with* a run, in the same commit, never before or
after it: the mark of what started the run (`RunMark`: a schedule's due time
or a delivery's workflow) and the notifications due when the run ends.
A home does that inside its own transaction: the embedded one by handing the
workflow actor `records()` to commit with the run (`SqliteTriggerStore`), or
by remembering them once the run exists (`MemoryTriggerStore`, which keeps
nothing across a restart).
"""

from __future__ import annotations

import json
import sqlite3
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from .errors import WorkflowGraphError
from .journal import Journal
from .notify import Notification
from .schedules import ScheduleKey, ScheduleMark
from .store import Record

__all__ = [
    "AlreadyHandled",
    "DELIVERY_DONE",
    "DELIVERY_RETENTION_MS",
    "DeliveryHandled",
    "EmbeddedTriggerStore",
    "MemoryTriggerStore",
    "RunMark",
    "ScheduleFired",
    "SqliteTriggerStore",
    "TriggerStore",
]

# GitHub keeps a delivery redeliverable for three days; a replay within them starts nothing.
DELIVERY_RETENTION_MS = 3 * 24 * 3600 * 1000
# The workflow id of the row that says a delivery was handled for every workflow it matched.
DELIVERY_DONE = ""
# With no store, finished notifications kept for the run records (the oldest go first).
MEMORY_NOTIFICATIONS = 10_000


@dataclass(frozen=True, slots=True)
class ScheduleFired:
    """A run started for a schedule's due time: the schedule's mark moves to it."""

    key: ScheduleKey
    due_ms: int


@dataclass(frozen=True, slots=True)
class DeliveryHandled:
    """A delivery was handled for a workflow (a run started, or none could)."""

    delivery_id: str
    workflow_id: str
    at_ms: int


RunMark = ScheduleFired | DeliveryHandled


class AlreadyHandled(WorkflowGraphError):
    """The run's mark was stored by someone else first (another node, a second leader):
    the run was not created. A home with one writer (the embedded one) never raises it;
    a shared database does, from the unique key or the compare-and-set of the mark."""


class TriggerStore(Protocol):
    """The storage the schedule clock, the delivery intake and the notifier use."""

    async def schedule_marks(self) -> dict[ScheduleKey, ScheduleMark]:
        """Every stored schedule's mark."""
        ...

    async def put_schedule_marks(self, marks: Mapping[ScheduleKey, ScheduleMark]) -> None:
        """Store marks of schedules first seen, or of due times skipped."""
        ...

    async def forget_schedules(self, keys: Iterable[ScheduleKey]) -> None:
        """Drop the marks of schedules no definition has any more."""
        ...

    async def delivery(self, delivery_id: str) -> frozenset[str] | None:
        """The workflows a delivery was handled for (`DELIVERY_DONE` among them once it
        was handled in full), or None for a delivery never seen."""
        ...

    async def put_deliveries(self, handled: Iterable[DeliveryHandled], before_ms: int) -> None:
        """Remember `handled`, and forget deliveries handled before `before_ms`."""
        ...

    async def pending_notifications(self) -> list[Notification]:
        """Every notification not yet delivered nor given up."""
        ...

    async def put_notification(self, notification: Notification) -> None:
        """Store a notification's new state after an attempt."""
        ...

    async def run_notifications(self, workflow_id: str, number: int) -> list[Notification]:
        """A run's notifications, in the order they were made."""
        ...

    async def settled(self) -> None:
        """Return once every change handed to the store so far is committed."""
        ...


class EmbeddedTriggerStore(TriggerStore, Protocol):
    """The embedded home's store: what a run's commit must carry."""

    def records(self, item: RunMark | Notification) -> list[Record]:
        """Records to commit with the run (none when nothing is stored)."""
        ...

    def committed(self, item: RunMark | Notification) -> None:
        """The run that `item` goes with exists now."""
        ...


# --- SQLite ------------------------------------------------------------------------------


def _put_schedule(key: ScheduleKey, mark: ScheduleMark) -> Record:
    return (
        "INSERT OR REPLACE INTO schedules VALUES (?, ?, ?, ?, ?, ?)",
        (key.workflow_id, key.cron, key.timezone, mark.seen_ms, mark.last_ms, mark.skipped),
    )


def _schedule_fired(key: ScheduleKey, due_ms: int) -> Record:
    return (
        "UPDATE schedules SET last_ms = ? WHERE workflow_id = ? AND cron = ? AND timezone = ?",
        (due_ms, key.workflow_id, key.cron, key.timezone),
    )


def _put_delivery(handled: DeliveryHandled) -> Record:
    return (
        "INSERT OR IGNORE INTO deliveries VALUES (?, ?, ?)",
        (handled.delivery_id, handled.workflow_id, handled.at_ms),
    )


def _put_notification(n: Notification) -> Record:
    return (
        "INSERT OR REPLACE INTO notifications VALUES (?, ?, ?, ?, ?)",
        (n.id, n.workflow_id, n.number, n.state, json.dumps(n.to_row(), separators=(",", ":"))),
    )


def _notifications(db: sqlite3.Connection, where: str, params: tuple) -> list[Notification]:
    rows = db.execute(f"SELECT record FROM notifications WHERE {where} ORDER BY rowid", params)
    return [Notification.from_row(json.loads(record)) for (record,) in rows]


class SqliteTriggerStore:
    """The embedded home's store: tables of `store.SCHEMA`, written through the journal."""

    def __init__(self, journal: Journal) -> None:
        self._journal = journal

    def records(self, item: RunMark | Notification) -> list[Record]:
        if isinstance(item, ScheduleFired):
            return [_schedule_fired(item.key, item.due_ms)]
        if isinstance(item, DeliveryHandled):
            return [_put_delivery(item)]
        return [_put_notification(item)]

    def committed(self, item: RunMark | Notification) -> None:
        pass  # the records went with the run's commit

    async def schedule_marks(self) -> dict[ScheduleKey, ScheduleMark]:
        def read(db: sqlite3.Connection) -> dict[ScheduleKey, ScheduleMark]:
            rows = db.execute("SELECT * FROM schedules")
            return {
                ScheduleKey(w, cron, zone): ScheduleMark(seen, last, skipped)
                for w, cron, zone, seen, last, skipped in rows
            }

        return await self._journal.read(read)

    async def put_schedule_marks(self, marks: Mapping[ScheduleKey, ScheduleMark]) -> None:
        if marks:
            await self._journal.commit([_put_schedule(k, m) for k, m in marks.items()])

    async def forget_schedules(self, keys: Iterable[ScheduleKey]) -> None:
        records: list[Record] = [
            (
                "DELETE FROM schedules WHERE workflow_id = ? AND cron = ? AND timezone = ?",
                (k.workflow_id, k.cron, k.timezone),
            )
            for k in keys
        ]
        if records:
            await self._journal.commit(records)

    async def delivery(self, delivery_id: str) -> frozenset[str] | None:
        def read(db: sqlite3.Connection) -> frozenset[str] | None:
            rows = db.execute(
                "SELECT workflow_id FROM deliveries WHERE delivery_id = ?", (delivery_id,)
            ).fetchall()
            return frozenset(w for (w,) in rows) if rows else None

        return await self._journal.read(read)

    async def put_deliveries(self, handled: Iterable[DeliveryHandled], before_ms: int) -> None:
        records = [_put_delivery(h) for h in handled]
        records.append(("DELETE FROM deliveries WHERE at_ms < ?", (before_ms,)))
        await self._journal.commit(records)

    async def pending_notifications(self) -> list[Notification]:
        return await self._journal.read(lambda db: _notifications(db, "state = 'pending'", ()))

    async def put_notification(self, notification: Notification) -> None:
        await self._journal.commit([_put_notification(notification)])

    async def run_notifications(self, workflow_id: str, number: int) -> list[Notification]:
        return await self._journal.read(
            lambda db: _notifications(db, "workflow_id = ? AND number = ?", (workflow_id, number))
        )

    async def settled(self) -> None:
        await self._journal.read(lambda db: None)


# --- memory ------------------------------------------------------------------------------


class MemoryTriggerStore:
    """With no store (`DATA_DIR=:memory:`): the same answers, kept until the server stops."""

    def __init__(self) -> None:
        self._schedules: dict[ScheduleKey, ScheduleMark] = {}
        self._deliveries: dict[str, tuple[int, set[str]]] = {}  # id -> (first at, workflows)
        self._notifications: OrderedDict[str, Notification] = OrderedDict()

    def records(self, item: RunMark | Notification) -> list[Record]:
        return []

    def committed(self, item: RunMark | Notification) -> None:
        if isinstance(item, ScheduleFired):
            mark = self._schedules.get(item.key)
            if mark is not None:
                self._schedules[item.key] = mark.fired(item.due_ms)
        elif isinstance(item, DeliveryHandled):
            at, workflows = self._deliveries.setdefault(item.delivery_id, (item.at_ms, set()))
            workflows.add(item.workflow_id)
        else:
            self._keep(item)

    def _keep(self, notification: Notification) -> None:
        self._notifications[notification.id] = notification
        finished = [k for k, n in self._notifications.items() if n.state != "pending"]
        for key in finished[: max(0, len(finished) - MEMORY_NOTIFICATIONS)]:
            del self._notifications[key]

    async def schedule_marks(self) -> dict[ScheduleKey, ScheduleMark]:
        return dict(self._schedules)

    async def put_schedule_marks(self, marks: Mapping[ScheduleKey, ScheduleMark]) -> None:
        self._schedules.update(marks)

    async def forget_schedules(self, keys: Iterable[ScheduleKey]) -> None:
        for key in keys:
            self._schedules.pop(key, None)

    async def delivery(self, delivery_id: str) -> frozenset[str] | None:
        found = self._deliveries.get(delivery_id)
        return frozenset(found[1]) if found is not None else None

    async def put_deliveries(self, handled: Iterable[DeliveryHandled], before_ms: int) -> None:
        for item in handled:
            self.committed(item)
        for delivery_id in [d for d, (at, _) in self._deliveries.items() if at < before_ms]:
            del self._deliveries[delivery_id]

    async def pending_notifications(self) -> list[Notification]:
        return [n for n in self._notifications.values() if n.state == "pending"]

    async def put_notification(self, notification: Notification) -> None:
        self._keep(notification)

    async def run_notifications(self, workflow_id: str, number: int) -> list[Notification]:
        return [
            n
            for n in self._notifications.values()
            if n.workflow_id == workflow_id and n.number == number
        ]

    async def settled(self) -> None:
        pass
