"""The concurrency groups actor: runs naming one group run one at a time.

A run whose definition names a `concurrency` group joins it: it starts at once
when the group is free, else it waits as a `queued` run and starts, in request
order, when the holder finishes. With `cancel-in-progress`, joining cancels the
holder and the runs waiting ahead, so the newcomer is next. The rule of the
embedded engine and of PostgreSQL is the same: `admission` below.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .actor import Actor

RunKey = tuple[str, int]  # (workflow_id, number)


@dataclass(slots=True)
class Join:
    group: str
    key: RunKey
    cancel_in_progress: bool


@dataclass(slots=True)
class Leave:
    """The run ended (or was cancelled while queued): the group moves on."""

    group: str
    key: RunKey


@dataclass(slots=True)
class Admission:
    start: bool  # the newcomer starts now
    cancel: list[RunKey]  # runs to cancel: the holder and those queued ahead


def admission(holder: RunKey | None, waiting: list[RunKey], cancel_in_progress: bool) -> Admission:
    """What joining a group does, given its holder and the runs waiting in order."""
    if holder is None and not waiting:
        return Admission(start=True, cancel=[])
    if cancel_in_progress:
        return Admission(start=False, cancel=([holder] if holder else []) + list(waiting))
    return Admission(start=False, cancel=[])


class ConcurrencyGroups(Actor):
    name = "concurrency groups"

    def __init__(self, admit: Callable[[RunKey], None], cancel: Callable[[RunKey], None]) -> None:
        super().__init__()
        self._admit = admit  # tells the run's workflow actor its turn has come
        self._cancel = cancel
        self._holders: dict[str, RunKey] = {}
        self._waiting: dict[str, deque[RunKey]] = {}

    def restore(self, holders: dict[str, RunKey], waiting: dict[str, list[RunKey]]) -> None:
        """Before the actor runs: the groups as the stored runs say; a free group with
        runs waiting admits the first at once."""
        self._holders = dict(holders)
        self._waiting = {g: deque(keys) for g, keys in waiting.items() if keys}
        for group in list(self._waiting):
            if group not in self._holders:
                self._next(group)

    def handle(self, message) -> Any:
        match message:
            case Join(group, key, cancel_in_progress):
                waiting = self._waiting.setdefault(group, deque())
                decision = admission(self._holders.get(group), list(waiting), cancel_in_progress)
                for other in decision.cancel:
                    self._cancel(other)
                    if other in waiting:
                        waiting.remove(other)
                if decision.start:
                    self._holders[group] = key
                    self._admit(key)
                    return True
                waiting.append(key)
                return False
            case Leave(group, key):
                if self._holders.get(group) == key:
                    del self._holders[group]
                    self._next(group)
                else:
                    queued = self._waiting.get(group)
                    if queued is not None and key in queued:
                        queued.remove(key)
                        if not queued:
                            del self._waiting[group]
                return None
            case _:
                raise TypeError(f"concurrency groups cannot handle {message!r}")

    def _next(self, group: str) -> None:
        waiting = self._waiting.get(group)
        if waiting:
            key = waiting.popleft()
            self._holders[group] = key
            self._admit(key)
        if waiting is not None and not waiting:
            del self._waiting[group]
