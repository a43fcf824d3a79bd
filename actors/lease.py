"""The lease actor: one per claimed job, owner of the lease and its deadline.

The lease's expiry is its own receive deadline, which a heartbeat moves
forward; no sweep over all leases exists. Once the lease ends (reported,
expired or revoked) every later message answers `LeaseNotActive`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from .actor import Actor, Reply
from .clock import now_ms
from .errors import LeaseNotActive
from .logs import AppendChunks
from .models import Lease, LogChunk
from .secrets import Masker, held_tail, mask_chunks
from .store import put_lease
from .workers import JobHeld, Seen
from .workflow import JobCompleted, JobFailed, LeaseExpired

if TYPE_CHECKING:
    from .runtime import System
    from .workflow import WorkflowActor

log = logging.getLogger("workflow_graph")


@dataclass(slots=True)
class RenewLease:
    pass


@dataclass(slots=True)
class ReportSuccess:
    outputs: dict[str, str]


@dataclass(slots=True)
class ReportFailure:
    error: str
    retryable: bool


@dataclass(slots=True)
class PushLogs:
    chunks: list[LogChunk]


@dataclass(slots=True)
class Revoke:
    pass


class LeaseActor(Actor):
    def __init__(
        self,
        lease: Lease,
        run_id: int,
        workflow: WorkflowActor,
        system: System,
        deadline: float | None = None,
        attempt: int = 0,
        secrets: Iterable[str] = (),
        claimed_at_ms: int | None = None,
    ) -> None:
        super().__init__()
        self.lease = lease
        self.attempt = attempt  # of the job it holds: 0 for the first try
        self.name = f"lease {lease.lease_id}"
        self._run_id = run_id
        self._workflow = workflow
        self._system = system
        self._deadline = self._next_deadline() if deadline is None else deadline
        self._claimed_at_ms = lease.granted_at_ms if claimed_at_ms is None else claimed_at_ms
        # The secret values the job received; its logs, error and outputs are masked.
        secrets = list(secrets)
        self._masker = Masker(secrets) if secrets else None
        # Per stream, the end of the pushed text that may be the start of a secret.
        self._held: dict[str, str] = {}  # per stream: held back from the log (secrets)
        self._last_sequence = -1

    @property
    def deadline(self) -> float:
        return self._deadline

    def _next_deadline(self) -> float:
        if self._system.api_only:  # API-only mode has no lease expiry
            return math.inf
        return trio.current_time() + self.lease.ttl_secs

    async def run(self) -> None:
        lease = self.lease
        try:
            await self._serve()
        finally:
            self._system.lease_ended(lease.lease_id)
            self._system.workers.tell(JobHeld(lease.worker_id, lease.job_id, held=False))
            if self._outbox is not None:
                self._outbox.close()
            # Anyone who asked after the end learns the lease is gone.
            while True:
                try:
                    _, reply = self._inbox.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
                if reply is not None:
                    reply.fail(LeaseNotActive(lease.lease_id))

    async def _serve(self) -> None:
        while True:
            try:
                # A message already waiting wins over a deadline passing meanwhile.
                message, reply = self._inbox.receive_nowait()
            except trio.WouldBlock:
                message, reply = _EXPIRED, None
                with trio.move_on_at(self._deadline):
                    message, reply = await self._inbox.receive()
            if message is _EXPIRED:
                lease = self.lease
                await self._flush_held()
                log.warning(
                    "lease %s of job %s (workflow %s, run %d) expired without a heartbeat",
                    lease.lease_id,
                    lease.job_id,
                    lease.workflow_id,
                    self._run_id,
                    extra=self._ids(),
                )
                self._system.metrics.lease_expired(lease.workflow_id)
                self._workflow.tell(LeaseExpired(self._run_id, lease.job_id, lease.lease_id))
                return
            if await self._handle(message, reply):
                return

    async def _handle(self, message, reply: Reply | None) -> bool:
        """Apply one message; True when the lease has ended."""
        lease = self.lease
        match message:
            case RenewLease():
                self._deadline = self._next_deadline()
                self.lease = lease = lease.model_copy(update={"granted_at_ms": now_ms()})
                self._seen()
                await self._store_lease()
                _answer(reply, lease)
                return False
            case PushLogs(chunks):
                self._seen()
                try:
                    # Asked, not told: the push is answered once the chunks are stored.
                    with trio.CancelScope(shield=True):
                        masker = self._masker
                        await self._append(self._masked(masker, chunks) if masker else chunks)
                except Exception as exc:  # noqa: BLE001 - the pusher learns why
                    if reply is not None:
                        reply.fail(exc)
                else:
                    _answer(reply, None)
                return False
            case ReportSuccess(outputs):
                if self._masker is not None:
                    outputs = self._masker.mask_mapping(outputs)
                report: JobCompleted | JobFailed = JobCompleted(
                    self._run_id, lease.job_id, lease.lease_id, outputs
                )
            case ReportFailure(error, retryable):
                if self._masker is not None:
                    error = self._masker.mask(error)
                report = JobFailed(self._run_id, lease.job_id, lease.lease_id, error, retryable)
            case Revoke():
                with trio.CancelScope(shield=True):
                    await self._flush_held()
                _answer(reply, None)
                return True
            case _:
                raise TypeError(f"{self.name} cannot handle {message!r}")
        self._seen()
        try:
            # Shielded: once a report is on its way to the workflow it is applied or refused.
            with trio.CancelScope(shield=True):
                await self._flush_held()
                await self._workflow.ask(report)
        except Exception as exc:  # noqa: BLE001 - the reporter learns why
            if reply is not None:
                reply.fail(exc)
        else:
            self._count(report)
            _answer(reply, None)
        return True

    def _count(self, report: JobCompleted | JobFailed) -> None:
        metrics = self._system.metrics
        secs = max(0, now_ms() - self._claimed_at_ms) / 1000
        if isinstance(report, JobCompleted):
            metrics.job_completed(self.lease.workflow_id, secs)
        else:
            metrics.job_failed(self.lease.workflow_id, report.retryable, secs)

    def _ids(self) -> dict[str, object]:
        """The ids a log line about this lease carries (`LOG_FORMAT=json` shows them)."""
        lease = self.lease
        return {
            "workflow_id": lease.workflow_id,
            "run_id": self._run_id,
            "job_id": lease.job_id,
            "lease_id": lease.lease_id,
        }

    # --- logs ---

    async def _append(self, chunks: list[LogChunk]) -> None:
        key = (self.lease.workflow_id, self._run_id, self.lease.job_id)
        await self._system.logs.ask(AppendChunks(key, chunks))

    def _masked(self, masker: Masker, chunks: list[LogChunk]) -> list[LogChunk]:
        masked, self._last_sequence = mask_chunks(masker, self._held, chunks, self._last_sequence)
        return masked

    async def _flush_held(self) -> None:
        """The attempt is over: what was held back is no secret after all; store it."""
        lease = self.lease
        chunks = held_tail(
            self._held,
            self._last_sequence,
            lease.workflow_id,
            lease.job_id,
            self.attempt,
            now_ms(),
        )
        self._last_sequence += len(chunks)
        self._held.clear()
        if chunks:
            try:
                await self._append(chunks)
            except Exception:  # noqa: BLE001 - the report goes on; the store logged why
                log.warning("could not store the end of the log of %s", self.name)

    async def _store_lease(self) -> None:
        journal = self._system.journal
        if journal is not None:
            record = put_lease(
                self.lease.lease_id,
                self.lease.model_dump_json(),
                self._run_id,
                deadline_ms(self._deadline),
            )
            with trio.CancelScope(shield=True):
                await journal.commit([record])

    def _seen(self) -> None:
        self._system.workers.tell(Seen(self.lease.worker_id))


_EXPIRED = object()
NEVER_MS = 2**62  # a deadline that never passes (API-only mode), as stored


def deadline_ms(deadline: float) -> int:
    """A trio-clock deadline as epoch milliseconds, for the store."""
    if deadline == math.inf:
        return NEVER_MS
    return now_ms() + int((deadline - trio.current_time()) * 1000)


def deadline_from_ms(stored_ms: int) -> float:
    """A stored deadline back on the trio clock; one already past stays past."""
    if stored_ms >= NEVER_MS:
        return math.inf
    return trio.current_time() + (stored_ms - now_ms()) / 1000


def _answer(reply: Reply | None, value) -> None:
    if reply is not None:
        reply.set(value)
