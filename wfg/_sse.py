"""A Server-Sent Events parser for the log stream, independent of any I/O."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Event:
    """One dispatched event: its `event:` name, `id:` and joined `data:` lines."""

    event: str
    data: str
    id: str | None = None


@dataclass(slots=True)
class EventParser:
    """Feed it lines (without their line break); it returns events as they complete.

    Follows the SSE rules that matter here: a blank line dispatches, `:` lines
    are comments (the server's keep-alives), several `data:` lines join with a
    newline, and one space after the colon is dropped.
    """

    _event: str = ""
    _id: str | None = None
    _data: list[str] = field(default_factory=list)

    def feed(self, line: str) -> Event | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id":
            self._id = value
        # `retry:` and unknown fields are ignored, as the SSE spec says.
        return None

    def _dispatch(self) -> Event | None:
        event = None
        if self._data:
            event = Event(event=self._event or "message", data="\n".join(self._data), id=self._id)
        self._event, self._data = "", []
        return event
