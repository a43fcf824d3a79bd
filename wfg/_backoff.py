"""Capped exponential delays with jitter, for anything that retries a server."""

from __future__ import annotations

import random


class Backoff:
    """Delays that double from `base` up to `cap`, jittered so restarted servers are not
    stampeded by clients retrying in lockstep."""

    def __init__(self, base: float = 0.1, cap: float = 5.0) -> None:
        self.base = base
        self.cap = cap
        self._failures = 0

    def next(self) -> float:
        ceiling = min(self.cap, self.base * 2 ** min(self._failures, 30))
        self._failures += 1
        # "Equal jitter": never shorter than half the step, never in lockstep.
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    def reset(self) -> None:
        self._failures = 0
