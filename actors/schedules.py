"""When a schedule fires: what is due given the last time it fired and now.

Pure: no I/O, no trio, no clock; the caller passes epoch milliseconds. Both
homes of the engine decide with these functions (the embedded schedule clock,
the PostgreSQL leader), so a restart or a failover fires the same times.

A schedule's *cursor* is the last due time it handled (fired, or skipped
because its workflow was busy), else the instant the server first knew it:
no due time at or before the cursor ever fires. After downtime only the
latest missed due time fires, never the ones before it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from .spec import WorkflowSpec
from .triggers import Schedule, next_fire, previous_fire

__all__ = [
    "ScheduleKey",
    "ScheduleMark",
    "due_at",
    "next_at",
    "schedule_keys",
]


@dataclass(frozen=True, slots=True)
class ScheduleKey:
    """One schedule of one workflow. A schedule whose line or zone changes is a new one."""

    workflow_id: str
    cron: str
    timezone: str

    @property
    def schedule(self) -> Schedule:
        return Schedule(cron=self.cron, timezone=self.timezone)


@dataclass(frozen=True, slots=True)
class ScheduleMark:
    """What the store keeps of one schedule."""

    seen_ms: int  # when the server first knew it: nothing due before this fires
    last_ms: int | None = None  # the last due time handled (fired or skipped)
    skipped: int = 0  # due times skipped because the workflow could not start a run

    @property
    def cursor_ms(self) -> int:
        return self.last_ms if self.last_ms is not None else self.seen_ms

    def fired(self, due_ms: int) -> ScheduleMark:
        return ScheduleMark(self.seen_ms, due_ms, self.skipped)

    def skip(self, due_ms: int) -> ScheduleMark:
        return ScheduleMark(self.seen_ms, due_ms, self.skipped + 1)


def schedule_keys(spec: WorkflowSpec) -> list[ScheduleKey]:
    """The workflow's schedules, each once (a line listed twice fires once)."""
    keys = (ScheduleKey(spec.id, s.cron, s.timezone) for s in spec.triggers.schedule)
    return list(dict.fromkeys(keys))


def _at(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def _ms(moment: datetime) -> int:
    return round(moment.timestamp() * 1000)


def due_at(schedule: Schedule, mark: ScheduleMark, now_ms: int) -> int | None:
    """The due time to fire now: the latest at or before `now_ms` and after the
    cursor, or None when nothing is due."""
    latest = _ms(previous_fire(schedule, _at(now_ms)))
    return latest if latest > mark.cursor_ms else None


def next_at(schedule: Schedule, mark: ScheduleMark, now_ms: int) -> int:
    """The next due time after both `now_ms` and the cursor."""
    return _ms(next_fire(schedule, _at(max(now_ms, mark.cursor_ms))))
