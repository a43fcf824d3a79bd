"""The scheduler actor: the ready queue, the delayed (backoff) jobs, parked claimers.

Claims cost time independent of queue length: ready jobs sit in one FIFO per
distinct required-label set, and a claim looks only at the heads of the sets
that are subsets of the worker's labels, taking the oldest. Delayed jobs wait
in a heap keyed by due time; the actor's own receive deadline promotes them.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import OrderedDict
from dataclasses import dataclass, field

import trio

from .actor import Actor, Reply
from .models import QueuedJob

JobKey = tuple[str, int, str]  # (workflow_id, run number, job_id)


@dataclass(slots=True)
class Entry:
    """A job waiting to be claimed, stamped with the run it belongs to."""

    key: JobKey
    run_id: int  # the run's number
    attempt: int
    labels: frozenset[str]
    job: QueuedJob
    due: float = 0.0  # trio time when it becomes claimable
    seq: int = 0  # claim order: lower is older
    woke_claim: bool = False  # handed to a parked claim, rather than taken from the queue


# --- messages ---------------------------------------------------------------


@dataclass(slots=True)
class Enqueue:
    entry: Entry


@dataclass(slots=True)
class Requeue:
    """An entry handed to a claimer that went away: it goes back to the front."""

    entry: Entry


@dataclass(slots=True)
class Withdraw:
    keys: list[JobKey]


@dataclass(slots=True)
class ClaimJob:
    labels: frozenset[str]
    reply: Reply
    park: bool
    token: object = field(default_factory=object)


@dataclass(slots=True)
class Unpark:
    token: object


@dataclass(slots=True)
class QueueStats:
    pass


@dataclass(slots=True)
class ReadQueue:
    """For the gauges and the waiting watch: per ready label set (jobs, the head's
    claimable-since epoch ms), and how many jobs are delayed and claims parked."""


@dataclass(slots=True)
class QueueReading:
    ready: dict[frozenset[str], tuple[int, int]]
    delayed: int
    parked: int


@dataclass(slots=True)
class StopParking:
    """Shutting down: answer every parked claim with None, and park no more."""


@dataclass(slots=True)
class _Parked:
    labels: frozenset[str]
    reply: Reply


class Scheduler(Actor):
    name = "scheduler"

    def __init__(self) -> None:
        super().__init__()
        self._ready: dict[frozenset[str], OrderedDict[JobKey, Entry]] = {}
        self._ready_label: dict[JobKey, frozenset[str]] = {}
        self._delayed: list[tuple[float, int, JobKey]] = []
        self._delayed_entries: dict[JobKey, Entry] = {}
        self._parked: OrderedDict[object, _Parked] = OrderedDict()
        self._seq = itertools.count()
        self._parking = True

    async def run(self) -> None:
        while True:
            deadline = self._delayed[0][0] if self._delayed else math.inf
            with trio.move_on_at(deadline):
                message, reply = await self._inbox.receive()
                self.deliver(message, reply)
            self._promote_due()

    def handle(self, message):
        match message:
            case Enqueue(entry):
                self._add(entry)
            case ClaimJob(labels, reply, park, token):
                entry = self._take(labels)
                if entry is not None or not park or not self._parking:
                    reply.set(entry)
                else:
                    self._parked[token] = _Parked(labels, reply)
            case Requeue(entry):
                self._make_ready(entry, front=True)
            case Unpark(token):
                self._parked.pop(token, None)
            case Withdraw(keys):
                for key in keys:
                    self._remove(key)
            case ReadQueue():
                return QueueReading(
                    {labels: _head_reading(fifo) for labels, fifo in self._ready.items()},
                    len(self._delayed_entries),
                    len(self._parked),
                )
            case StopParking():
                self._parking = False
                for parked in self._parked.values():
                    parked.reply.set(None)
                self._parked.clear()
            case QueueStats():
                return {
                    "ready": len(self._ready_label),
                    "delayed": len(self._delayed_entries),
                    "parked_claims": len(self._parked),
                }
            case _:
                raise TypeError(f"scheduler cannot handle {message!r}")
        return None

    # --- internals ---

    def _add(self, entry: Entry) -> None:
        self._remove(entry.key)  # one entry per job: a newer one replaces it
        if entry.due > trio.current_time():
            self._delayed_entries[entry.key] = entry
            heapq.heappush(self._delayed, (entry.due, next(self._seq), entry.key))
        else:
            self._make_ready(entry)

    def _promote_due(self) -> None:
        now = trio.current_time()
        while self._delayed and self._delayed[0][0] <= now:
            due, _, key = heapq.heappop(self._delayed)
            entry = self._delayed_entries.get(key)
            # A heap item is stale when its entry was withdrawn or replaced.
            if entry is not None and entry.due == due:
                del self._delayed_entries[key]
                self._make_ready(entry)

    def _make_ready(self, entry: Entry, front: bool = False) -> None:
        """Hand the entry to the oldest parked claimer that fits, else queue it."""
        for token, parked in self._parked.items():
            if parked.reply.abandoned:
                continue
            if entry.labels <= parked.labels:
                del self._parked[token]
                entry.woke_claim = True
                parked.reply.set(entry)
                return
        entry.seq = -next(self._seq) if front else next(self._seq)
        fifo = self._ready.setdefault(entry.labels, OrderedDict())
        fifo[entry.key] = entry
        if front:
            fifo.move_to_end(entry.key, last=False)
        self._ready_label[entry.key] = entry.labels
        self._drop_abandoned_parked()

    def _drop_abandoned_parked(self) -> None:
        while self._parked:
            token, parked = next(iter(self._parked.items()))
            if not parked.reply.abandoned:
                break
            del self._parked[token]

    def _take(self, labels: frozenset[str]) -> Entry | None:
        best: OrderedDict[JobKey, Entry] | None = None
        best_seq = math.inf
        for label_set, fifo in self._ready.items():
            if label_set <= labels:
                head = next(iter(fifo.values()))
                if head.seq < best_seq:
                    best, best_seq = fifo, head.seq
        if best is None:
            return None
        _, entry = best.popitem(last=False)
        entry.woke_claim = False
        del self._ready_label[entry.key]
        if not best:
            del self._ready[entry.labels]
        return entry

    def _remove(self, key: JobKey) -> None:
        label_set = self._ready_label.pop(key, None)
        if label_set is not None:
            fifo = self._ready[label_set]
            del fifo[key]
            if not fifo:
                del self._ready[label_set]
        self._delayed_entries.pop(key, None)


def _head_reading(fifo: OrderedDict[JobKey, Entry]) -> tuple[int, int]:
    """(jobs in the FIFO, when its head, the next to be claimed, became claimable)."""
    head = next(iter(fifo.values())).job
    return len(fifo), max(head.enqueued_at_ms, head.delayed_until_ms)
