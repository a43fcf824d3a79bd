"""The timers actor: tells an actor a message when a deadline (epoch ms) comes.

Run timeouts, job timeouts and queue timeouts are deadlines that the rules
store in a run's state; this actor only wakes their owner at that instant.
A timer whose moment has lost its meaning (the job ended meanwhile) is
harmless: the rules check the state again when it arrives.
"""

from __future__ import annotations

import heapq
import itertools
import math
from typing import Any

import trio

from .actor import Actor
from .clock import now_ms


class Timers(Actor):
    name = "timers"

    def __init__(self) -> None:
        super().__init__()
        self._heap: list[tuple[float, int, Actor, Any]] = []
        self._seq = itertools.count()

    def at(self, when_ms: int, target: Actor, message: Any) -> None:
        """Tell `target` the `message` at epoch ms `when_ms` (at once if it passed)."""
        due = trio.current_time() + max(0, when_ms - now_ms()) / 1000
        self.tell((due, target, message))

    def handle(self, message) -> None:
        due, target, payload = message
        heapq.heappush(self._heap, (due, next(self._seq), target, payload))

    async def run(self) -> None:
        while True:
            deadline = self._heap[0][0] if self._heap else math.inf
            with trio.move_on_at(deadline):
                message, reply = await self._inbox.receive()
                self.deliver(message, reply)
            now = trio.current_time()
            while self._heap and self._heap[0][0] <= now:
                _, _, target, payload = heapq.heappop(self._heap)
                target.tell(payload)

    def __len__(self) -> int:
        return len(self._heap)
