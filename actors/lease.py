"""The lease actor: one per claimed job, owner of the lease and its deadline.

The lease's expiry is its own receive deadline, which a heartbeat moves
forward; no sweep over all leases exists. Once the lease ends (reported,
expired or revoked) every later message answers `LeaseNotActive`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from .actor import Actor, Reply
from .clock import now_ms
from .errors import LeaseNotActive
from .logs import AppendChunks
from .models import Lease, LogChunk
from .store import put_lease
from .workers import JobHeld, Seen
from .workflow import JobCompleted, JobFailed

if TYPE_CHECKING:
    from .runtime import System
    from .workflow import WorkflowActor


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
    ) -> None:
        super().__init__()
        self.lease = lease
        # The job's attempt this lease runs (0 first), stamped on the logs it pushes.
        self.attempt = attempt
        self.name = f"lease {lease.lease_id}"
        self._run_id = run_id
        self._workflow = workflow
        self._system = system
        self._deadline = self._next_deadline() if deadline is None else deadline

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
                self._workflow.lease_expired(self._run_id, lease.job_id, lease.lease_id)
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
                        await self._system.logs.ask(
                            AppendChunks((lease.workflow_id, lease.job_id), chunks)
                        )
                except Exception as exc:  # noqa: BLE001 - the pusher learns why
                    if reply is not None:
                        reply.fail(exc)
                else:
                    _answer(reply, None)
                return False
            case ReportSuccess(outputs):
                report = JobCompleted(self._run_id, lease.job_id, lease.lease_id, outputs)
            case ReportFailure(error, retryable):
                report = JobFailed(self._run_id, lease.job_id, lease.lease_id, error, retryable)
            case Revoke():
                _answer(reply, None)
                return True
            case _:
                raise TypeError(f"{self.name} cannot handle {message!r}")
        self._seen()
        try:
            # Shielded: once a report is on its way to the workflow it is applied or refused.
            with trio.CancelScope(shield=True):
                await self._workflow.ask(report)
        except Exception as exc:  # noqa: BLE001 - the reporter learns why
            if reply is not None:
                reply.fail(exc)
        else:
            _answer(reply, None)
        return True

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
