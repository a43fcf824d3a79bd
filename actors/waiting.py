"""Why a queued job waits: no worker for its labels, a retry's backoff, its run's group.

A job is marked when a status or run view is built, from a `Coverage`: the
label sets of the workers that are not `offline` at that instant (on
PostgreSQL, of every node's workers). `WaitingWatch` looks every few seconds
at the label sets of the ready jobs, remembers since when each has had no
worker, and logs one warning when a set starts waiting, not one per job or
per look. Both homes use these functions; nothing here does I/O.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .models import JobStatus, RunStatus, Waiting

if TYPE_CHECKING:
    from .rules import JobRun
    from .rules import Run as RunState

log = logging.getLogger("workflow_graph")

WATCH_INTERVAL_SECS = 5.0


def covers(labels: Iterable[str], live: Collection[frozenset[str]]) -> bool:
    """Whether some live worker has every label of the set."""
    wanted = labels if isinstance(labels, frozenset) else frozenset(labels)
    return any(wanted <= worker for worker in live)


@dataclass(frozen=True)
class Coverage:
    """The live workers' label sets at one instant, and since when each uncovered
    label set has waited (from `WaitingWatch`: its `since` and its last look)."""

    live: frozenset[frozenset[str]]
    now_ms: int
    since: Mapping[frozenset[str], int] = field(default_factory=dict)
    last_look_ms: int = 0
    _known: dict[frozenset[str], bool] = field(default_factory=dict, compare=False, repr=False)

    def covers(self, labels: frozenset[str]) -> bool:
        known = self._known.get(labels)
        if known is None:
            known = self._known[labels] = covers(labels, self.live)
        return known


def waiting_mark(run: RunState, job: JobRun, coverage: Coverage | None) -> Waiting | None:
    """The `waiting` of one job of `run`, or None when it is not waiting for anything
    but its needs (or the view has no coverage to judge workers by)."""
    if job.status is not JobStatus.queued:
        return None
    if run.status is RunStatus.queued:
        return Waiting(reason="concurrency", group=run.group, since_ms=run.created_at_ms)
    if not job.in_queue or coverage is None:
        return None
    if job.delayed_until_ms > coverage.now_ms:
        return Waiting(reason="delayed", until_ms=job.delayed_until_ms)
    labels = frozenset(job.rendered.labels if job.rendered else ())
    if coverage.covers(labels):
        return None
    # Not seen waiting at the watch's last look: it was served then, or not yet queued.
    since = coverage.since.get(labels, coverage.last_look_ms)
    claimable = max(job.enqueued_at_ms, job.delayed_until_ms)
    return Waiting(reason="no_worker", labels=sorted(labels), since_ms=max(claimable, since))


class WaitingWatch:
    """Since when each ready label set has had no live worker; one warning as it starts.

    `update` is called every `WATCH_INTERVAL_SECS` with the ready label sets
    (`(count, oldest claimable epoch ms)` each) and the live workers' label sets.
    """

    def __init__(self) -> None:
        self.since: dict[frozenset[str], int] = {}
        self.last_look_ms = 0

    def update(
        self,
        ready: Mapping[frozenset[str], tuple[int, int]],
        live: Collection[frozenset[str]],
        now_ms: int,
    ) -> None:
        uncovered = {
            labels: entry
            for labels, entry in ready.items()
            if entry[0] and not covers(labels, live)
        }
        for labels in [known for known in self.since if known not in uncovered]:
            del self.since[labels]
        for labels, (count, oldest_ms) in uncovered.items():
            if labels in self.since:
                continue
            # Covered (or empty) at the last look: it started waiting after it.
            self.since[labels] = max(oldest_ms, self.last_look_ms)
            if labels:
                shown = ", ".join(sorted(labels))
                message = f"need a worker with labels [{shown}] and no live worker has them"
            else:
                message = "wait for a worker and no live worker is registered"
            ids = {"labels": sorted(labels), "jobs": count}
            log.warning("%d queued job(s) %s", count, message, extra=ids)
        self.last_look_ms = now_ms


__all__ = ["Coverage", "WaitingWatch", "covers", "waiting_mark"]
