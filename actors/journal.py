"""The journal actor: group commit of every actor's changes, write-ahead.

An actor that changed state while handling a message hands its records and
its reply to the journal instead of answering at once. The journal commits
the records of many actors in one transaction, off the trio thread, and only
then releases the replies: an answer the server gives implies a commit.
Commits happen in submission order, so a later answer implies every earlier
change is stored too.
"""

from __future__ import annotations

import logging
import math
import sqlite3
from collections.abc import Callable
from typing import Any, TypeVar

import trio

from .actor import Reply
from .errors import WorkflowGraphError
from .store import Record, Store

log = logging.getLogger("workflow_graph")

MAX_BATCH = 512  # submissions per transaction
T = TypeVar("T")


class StoreFailed(WorkflowGraphError):
    """The change could not be stored; the request it belongs to fails."""


class Journal:
    name = "journal"

    def __init__(self, store: Store) -> None:
        self.store = store
        self._outbox, self._inbox = trio.open_memory_channel[tuple](math.inf)

    def submit(
        self,
        records: list[Record],
        reply: Reply | None = None,
        value: Any = None,
        error: BaseException | None = None,
    ) -> None:
        """Store `records`, then answer `reply` with `value` (or `error`)."""
        self._outbox.send_nowait((records, reply, value, error))

    async def commit(self, records: list[Record]) -> None:
        """Store `records` and return once they are committed."""
        reply: Reply = Reply()
        self.submit(records, reply)
        await reply.wait()

    async def read(self, query: Callable[[sqlite3.Connection], T]) -> T:
        """Run `query` on the store after every change submitted before it is committed,
        so a read never misses a change the server has acknowledged."""
        reply: Reply = Reply()
        self._outbox.send_nowait((_Read(query), reply, None, None))
        return await reply.wait()

    async def run(self) -> None:
        while True:
            batch = [await self._inbox.receive()]
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(self._inbox.receive_nowait())
                except trio.WouldBlock:
                    break
            writes = [item for item in batch if not isinstance(item[0], _Read)]
            reads = [item for item in batch if isinstance(item[0], _Read)]
            records = [record for item in writes for record in item[0]]
            failure: BaseException | None = None
            try:
                # Writes first, then the reads of the batch: each read sees at least
                # every write submitted before it.
                answers = await trio.to_thread.run_sync(self._apply, records, reads)
            except Exception as exc:  # noqa: BLE001 - every waiting request learns of it
                log.exception("could not store %d changes", len(records))
                failure = StoreFailed(f"the change could not be stored: {exc}")
                answers = []
            for _, reply, value, error in writes:
                if reply is None:
                    continue
                if failure is not None or error is not None:
                    reply.fail(failure or error)
                else:
                    reply.set(value)
            for (_, reply, _, _), answer in zip(reads, answers, strict=False):
                if isinstance(answer, BaseException):
                    reply.fail(answer)
                else:
                    reply.set(answer)
            if failure is not None:
                for _, reply, _, _ in reads:
                    if not reply.is_set:
                        reply.fail(failure)

    def _apply(self, records: list[Record], reads: list[tuple]) -> list[Any]:
        if records:
            self.store.apply(records)
        answers: list[Any] = []
        for item in reads:
            try:
                answers.append(self.store.read(item[0].query))
            except Exception as exc:  # noqa: BLE001 - the reader learns why
                log.exception("a read of the store failed")
                answers.append(StoreFailed(f"the store could not be read: {exc}"))
        return answers


class _Read:
    """A read submitted to the journal, answered in order with the writes."""

    __slots__ = ("query",)

    def __init__(self, query: Callable[[sqlite3.Connection], Any]) -> None:
        self.query = query
