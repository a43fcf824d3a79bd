"""What the triggers keep on the PostgreSQL home: schedules' marks, deliveries handled,
the notification outbox. The `TriggerStore` of `actors.trigger_store`, as rows.

A run's mark (`RunMark`) and the notifications of its end are written in the run's own
transaction (`put_run_mark`, `put_notifications`), never before or after it. The mark
is a compare-and-set: a schedule's due time moves only forward, a delivery is handled
once per workflow; when another node (or a second leader) stored it first, the
transaction raises `AlreadyHandled` and rolls back, so the run is not created twice.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from psycopg.types.json import Jsonb

from ..notify import Notification
from ..schedules import ScheduleKey, ScheduleMark
from ..trigger_store import AlreadyHandled, DeliveryHandled, RunMark, ScheduleFired
from .db import Database, Tx

PUT_SCHEDULE = (
    "INSERT INTO schedules VALUES (%s, %s, %s, %s, %s, %s) "
    "ON CONFLICT (workflow_id, cron, timezone) DO UPDATE SET seen_ms = excluded.seen_ms, "
    "last_ms = excluded.last_ms, skipped = excluded.skipped"
)
PUT_DELIVERY = "INSERT INTO deliveries VALUES (%s, %s, %s) ON CONFLICT DO NOTHING"
PUT_NOTIFICATION = (
    "INSERT INTO notifications (id, workflow_id, number, state, record) "
    "VALUES (%s, %s, %s, %s, %s) "
    "ON CONFLICT (id) DO UPDATE SET state = excluded.state, record = excluded.record"
)


def put_run_mark(tx: Tx, mark: RunMark) -> None:
    """Store what started a run, in the run's transaction; AlreadyHandled when it was
    stored before (the due time fired, the delivery handled for this workflow)."""
    if isinstance(mark, ScheduleFired):
        key = mark.key
        stored = tx.exec(
            "INSERT INTO schedules VALUES (%s, %s, %s, %s, %s, 0) "
            "ON CONFLICT (workflow_id, cron, timezone) DO UPDATE SET last_ms = excluded.last_ms "
            "WHERE schedules.last_ms IS NULL OR schedules.last_ms < excluded.last_ms",
            (key.workflow_id, key.cron, key.timezone, mark.due_ms, mark.due_ms),
        )
    else:
        stored = tx.exec(PUT_DELIVERY, (mark.delivery_id, mark.workflow_id, mark.at_ms))
    if not stored:
        raise AlreadyHandled(f"{mark} was stored by another node first")


def put_notifications(tx: Tx, notifications: list[Notification]) -> None:
    """The notifications a run's end owes, in the transaction that ends it; the leader
    hears of them at commit (`["n"]`)."""
    if not notifications:
        return
    tx.many(PUT_NOTIFICATION, [_notification_row(n) for n in notifications])
    tx.notify("n")


def _notification_row(n: Notification) -> tuple:
    return (n.id, n.workflow_id, n.number, n.state, Jsonb(n.to_row()))


def schedule_marks(tx: Tx) -> dict[ScheduleKey, ScheduleMark]:
    rows = tx.all("SELECT workflow_id, cron, timezone, seen_ms, last_ms, skipped FROM schedules")
    return {
        ScheduleKey(w, cron, zone): ScheduleMark(seen, last, skipped)
        for w, cron, zone, seen, last, skipped in rows
    }


class PgTriggerStore:
    """The `TriggerStore` on PostgreSQL: each call one transaction."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def schedule_marks(self) -> dict[ScheduleKey, ScheduleMark]:
        return await self._db.run(schedule_marks)

    async def put_schedule_marks(self, marks: Mapping[ScheduleKey, ScheduleMark]) -> None:
        """Marks of schedules first seen (kept if another node stored one first) or of
        due times skipped (never moving a mark back)."""
        rows = [
            (k.workflow_id, k.cron, k.timezone, m.seen_ms, m.last_ms, m.skipped)
            for k, m in marks.items()
        ]
        if rows:
            sql = PUT_SCHEDULE + (
                " WHERE excluded.last_ms IS NOT NULL "
                "AND (schedules.last_ms IS NULL OR schedules.last_ms < excluded.last_ms)"
            )
            await self._db.run(lambda tx: tx.many(sql, rows))

    async def forget_schedules(self, keys: Iterable[ScheduleKey]) -> None:
        rows = [(k.workflow_id, k.cron, k.timezone) for k in keys]
        if rows:
            sql = "DELETE FROM schedules WHERE workflow_id = %s AND cron = %s AND timezone = %s"
            await self._db.run(lambda tx: tx.many(sql, rows))

    async def delivery(self, delivery_id: str) -> frozenset[str] | None:
        def read(tx: Tx) -> frozenset[str] | None:
            rows = tx.all(
                "SELECT workflow_id FROM deliveries WHERE delivery_id = %s", (delivery_id,)
            )
            return frozenset(w for (w,) in rows) if rows else None

        return await self._db.run(read)

    async def put_deliveries(self, handled: Iterable[DeliveryHandled], before_ms: int) -> None:
        rows = [(h.delivery_id, h.workflow_id, h.at_ms) for h in handled]

        def put(tx: Tx) -> None:
            tx.many(PUT_DELIVERY, rows)
            tx.exec("DELETE FROM deliveries WHERE at_ms < %s", (before_ms,))

        await self._db.run(put)

    async def pending_notifications(self) -> list[Notification]:
        return await self._db.run(
            lambda tx: _notifications(tx, "state = 'pending' ORDER BY seq", ())
        )

    async def put_notification(self, notification: Notification) -> None:
        row = _notification_row(notification)
        await self._db.run(lambda tx: tx.exec(PUT_NOTIFICATION, row), single=True)

    async def run_notifications(self, workflow_id: str, number: int) -> list[Notification]:
        return await self._db.run(
            lambda tx: _notifications(
                tx, "workflow_id = %s AND number = %s ORDER BY seq", (workflow_id, number)
            )
        )

    async def settled(self) -> None:
        pass  # every notification's row is committed before the leader hears of it


def _notifications(tx: Tx, where: str, params: tuple) -> list[Notification]:
    rows = tx.all(f"SELECT record FROM notifications WHERE {where}", params)
    return [Notification.from_row(record) for (record,) in rows]


__all__ = ["PgTriggerStore", "put_notifications", "put_run_mark", "schedule_marks"]
