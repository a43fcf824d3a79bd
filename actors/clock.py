"""The one clock: epoch milliseconds derived from trio's clock.

Deadlines use `trio.current_time()`; timestamps on the wire use `now_ms()`,
which moves with trio's clock so that a `MockClock` drives both. The epoch is
anchored once per process, the first time it is asked for inside trio.
"""

from __future__ import annotations

import time

import trio

_anchor: tuple[object, float] | None = None


def now_ms() -> int:
    global _anchor
    clock = trio.lowlevel.current_clock()
    if _anchor is None or _anchor[0] is not clock:
        _anchor = (clock, time.time() - trio.current_time())
    return int((_anchor[1] + trio.current_time()) * 1000)


def set_now_ms(epoch_ms: int) -> None:
    """Make `now_ms()` read `epoch_ms` at this instant, trio's clock driving it on from
    there: tests pin the wall clock to a chosen date (a daylight-saving change)."""
    global _anchor
    _anchor = (trio.lowlevel.current_clock(), epoch_ms / 1000 - trio.current_time())
