"""The actor primitive: a trio task that owns its state and reads a mailbox.

Nobody but the actor touches its state. `tell` posts a message and returns at
once; `ask` posts one with a `Reply` and waits for the answer. An actor handles
one message at a time, so each state transition is atomic without a lock.
Asks flow one way only (web -> runtime -> lease -> workflow; everyone else is
told), so no two actors can wait on each other.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import trio

if TYPE_CHECKING:
    from .journal import Journal
    from .store import Record

log = logging.getLogger("workflow_graph")

T = TypeVar("T")
Spawn = Callable[[Callable[[], Awaitable[None]]], None]  # a nursery's start_soon


class Reply(Generic[T]):
    """A one-shot answer slot: set once by the actor, read once by the asker.

    `abandoned` is set by an asker that stopped waiting, so an actor holding
    the reply (a parked claim) knows to offer its answer to someone else.
    """

    __slots__ = ("_event", "value", "error", "abandoned")

    def __init__(self) -> None:
        self._event = trio.Event()
        self.value: Any = None
        self.error: BaseException | None = None
        self.abandoned = False

    @property
    def is_set(self) -> bool:
        return self._event.is_set()

    def set(self, value: T) -> None:
        self.value = value
        self._event.set()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self._event.set()

    async def wait(self) -> T:
        await self._event.wait()
        if self.error is not None:
            raise self.error
        return self.value


class Actor:
    """Base class: subclasses implement `handle(message)` synchronously.

    A domain error raised by `handle` goes back to the asker; for a told
    message it is logged, never swallowed silently.
    """

    name = "actor"
    journal: Journal | None = None  # set when state is durable

    def __init__(self, spawn: Spawn | None = None) -> None:
        """With `spawn` (a nursery's `start_soon`), the mailbox and the task that reads
        it are made on the first message: an actor never spoken to costs no task."""
        self._spawn = spawn
        self._outbox: trio.MemorySendChannel | None = None
        if spawn is None:
            self._open_mailbox()
        self._records: list[Record] = []

    def _open_mailbox(self) -> None:
        self._outbox, self._inbox = trio.open_memory_channel[tuple[Any, Reply | None]](math.inf)

    def _send(self, item: tuple[Any, Reply | None]) -> None:
        if self._outbox is None:
            self._open_mailbox()
            assert self._spawn is not None  # an actor without a mailbox was given `spawn`
            self._spawn(self.run)
        assert self._outbox is not None
        self._outbox.send_nowait(item)

    def record(self, record: Record) -> None:
        """Note a change to store before the current message is answered."""
        if self.journal is not None:
            self._records.append(record)

    def take_records(self) -> list[Record]:
        records, self._records = self._records, []
        return records

    def tell(self, message: Any) -> None:
        try:
            self._send((message, None))
        except (trio.ClosedResourceError, trio.BrokenResourceError, RuntimeError):
            log.debug("%s is stopped; dropped %r", self.name, message)

    def post(self, message: Any) -> Reply:
        """Send a message that wants an answer; await the returned `Reply` for it."""
        reply: Reply = Reply()
        try:
            self._send((message, reply))
        except (trio.ClosedResourceError, trio.BrokenResourceError, RuntimeError):
            raise trio.ClosedResourceError(f"{self.name} is stopped") from None
        return reply

    async def ask(self, message: Any) -> Any:
        return await self.post(message).wait()

    def handle(self, message: Any) -> Any:
        raise NotImplementedError

    def deliver(self, message: Any, reply: Reply | None) -> None:
        result = error = None
        try:
            result = self.handle(message)
        except Exception as exc:  # noqa: BLE001 - the asker gets it; a tell is logged
            error = exc
            if reply is None:
                log.warning("%s: %r failed: %s", self.name, message, exc)
        if self._records:
            # Write-ahead: the answer goes out once the change is committed (records
            # are only kept when there is a journal: see `record`).
            assert self.journal is not None
            self.journal.submit(self.take_records(), reply, result, error)
        elif reply is not None:
            if error is not None:
                reply.fail(error)
            else:
                reply.set(result)

    async def run(self) -> None:
        async for message, reply in self._inbox:
            self.deliver(message, reply)
