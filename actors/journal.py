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
from typing import Any

import trio

from .actor import Reply
from .errors import WorkflowGraphError
from .store import Record, Store

log = logging.getLogger("workflow_graph")

MAX_BATCH = 512  # submissions per transaction


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

    async def run(self) -> None:
        while True:
            batch = [await self._inbox.receive()]
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(self._inbox.receive_nowait())
                except trio.WouldBlock:
                    break
            records = [record for item in batch for record in item[0]]
            failure: BaseException | None = None
            try:
                await trio.to_thread.run_sync(self.store.apply, records)
            except Exception as exc:  # noqa: BLE001 - every waiting request learns of it
                log.exception("could not store %d changes", len(records))
                failure = StoreFailed(f"the change could not be stored: {exc}")
            for _, reply, value, error in batch:
                if reply is None:
                    continue
                if failure is not None or error is not None:
                    reply.fail(failure or error)
                else:
                    reply.set(value)
