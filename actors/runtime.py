"""The runtime: opens the actors' nursery and is the only way into them.

`web/` and any program embedding workflow-graph call these typed methods;
they turn each call into messages and await the replies.

    async with open_runtime(workflows_dir="workflows") as runtime:
        await runtime.run_workflow("ci-1")
"""

from __future__ import annotations

import itertools
import logging
import math
import uuid
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import trio

from .actor import Reply
from .clock import now_ms
from .errors import LeaseNotActive, LimitExceeded, NotFound
from .journal import Journal
from .lease import (
    LeaseActor,
    PushLogs,
    RenewLease,
    ReportFailure,
    ReportSuccess,
    Revoke,
    deadline_from_ms,
    deadline_ms,
)
from .logs import JobEnded, LogsActor, ReadLog, ResetWorkflow, Subscribe, Subscription
from .models import (
    Claim,
    JobStatus,
    Lease,
    LogChunk,
    LogChunkIn,
    WorkerInfo,
    Workflow,
    WorkflowCreate,
)
from .scheduler import ClaimJob, Entry, QueueStats, Requeue, Scheduler, StopParking, Unpark
from .spec import DefinitionError, WorkflowSpec, spec_from_create, spec_from_json, spec_to_json
from .store import Snapshot, Store, drop_lease, put_workflow
from .workers import Heartbeat, JobHeld, ListWorkers, Register, Seen, WorkerRegistry
from .workflow import (
    CancelRun,
    GetStatus,
    GetStatusCounts,
    IsCancelled,
    JobClaimed,
    JobState,
    RestoredRun,
    StartRun,
    WorkflowActor,
)

log = logging.getLogger("workflow_graph")


@dataclass(frozen=True)
class Limits:
    """Bounds on what one request or the whole server may hold; each names itself."""

    max_workflows: int = 100_000
    max_jobs_per_workflow: int = 5_000
    max_labels: int = 64
    max_log_bytes_per_job: int = 16 * 1024 * 1024
    # A longer `wait_secs` is shortened to this; the protocol's own bound is 60.
    max_wait_secs: float = 60.0
    max_log_chunks_per_push: int = 10_000


@dataclass
class System:
    """What actors know of each other: addresses, not state."""

    scheduler: Scheduler
    logs: LogsActor
    workers: WorkerRegistry
    api_only: bool
    journal: Journal | None = None  # None: nothing is stored
    retain_runs: int = 3  # runs per workflow whose logs the store keeps
    leases: dict[str, LeaseActor] = field(default_factory=dict)

    def revoke_lease(self, lease_id: str) -> None:
        lease = self.leases.get(lease_id)
        if lease is not None:
            lease.tell(Revoke())

    def lease_ended(self, lease_id: str) -> None:
        self.leases.pop(lease_id, None)

    def logs_reset(self, workflow_id: str, job_ids: Iterable[str], run_id: int) -> None:
        self.logs.tell(ResetWorkflow(workflow_id, list(job_ids), run_id))

    def logs_job_ended(self, workflow_id: str, job_id: str, final: bool) -> None:
        self.logs.tell(JobEnded((workflow_id, job_id), final))


class Runtime:
    """Typed entry points to the actor system. Create with `open_runtime`."""

    def __init__(self, nursery: trio.Nursery, system: System, limits: Limits) -> None:
        self._nursery = nursery
        self._system = system
        self.limits = limits
        self._next_seq = 1  # creation order of API-created workflows, as stored
        # The directory of workflow actors, in creation order (files first, by name).
        self._workflows: dict[str, WorkflowActor] = {}

    @property
    def api_only(self) -> bool:
        return self._system.api_only

    @property
    def workflow_count(self) -> int:
        return len(self._workflows)

    # --- workflows ---

    def add_workflow(
        self, spec: WorkflowSpec, restored: RestoredRun | None = None
    ) -> WorkflowActor:
        if spec.id in self._workflows:
            raise DefinitionError(f"duplicate workflow id '{spec.id}'")
        self._check_room()
        # Started on its first message: thousands of idle workflows cost no tasks.
        actor = WorkflowActor(spec, self._system, restored, spawn=self._nursery.start_soon)
        self._workflows[spec.id] = actor
        return actor

    def _check_room(self) -> None:
        if len(self._workflows) >= self.limits.max_workflows:
            raise LimitExceeded(f"limit max_workflows ({self.limits.max_workflows}) reached")

    def _workflow(self, workflow_id: str) -> WorkflowActor:
        try:
            return self._workflows[workflow_id]
        except KeyError:
            raise NotFound(f"workflow '{workflow_id}' not found") from None

    def _job_key(self, workflow_id: str, job_id: str) -> tuple[str, str]:
        actor = self._workflow(workflow_id)
        if job_id not in actor.job_ids:
            raise NotFound(f"job '{job_id}' not found in workflow '{workflow_id}'")
        return (workflow_id, job_id)

    async def create_workflow(self, body: WorkflowCreate) -> Workflow:
        if len(body.jobs) > self.limits.max_jobs_per_workflow:
            raise LimitExceeded(
                f"limit max_jobs_per_workflow ({self.limits.max_jobs_per_workflow}) exceeded"
            )
        for job in body.jobs:
            self._check_labels(job.required_labels, where=f"job '{job.id}': ")
        spec = spec_from_create(str(uuid.uuid4()), body)
        self._check_room()  # before the store commit: a refused create leaves no trace
        if self._system.journal is not None:
            seq, self._next_seq = self._next_seq, self._next_seq + 1
            with trio.CancelScope(shield=True):
                await self._system.journal.commit([put_workflow(spec.id, seq, spec_to_json(spec))])
        self.add_workflow(spec)
        return spec.as_workflow()

    async def list_workflows(
        self, limit: int = 100, offset: int = 0, status: JobStatus | None = None
    ) -> list[Workflow]:
        if status is None:
            # Only the page is touched: the cost does not grow with the number of workflows.
            page = list(itertools.islice(self._workflows.values(), offset, offset + limit))
        else:
            actors = list(self._workflows.values())
            counts = await self._ask_all(actors, GetStatusCounts)
            matching = [a for a, c in zip(actors, counts, strict=True) if c.get(status)]
            page = matching[offset : offset + limit]
        return await self._ask_all(page, GetStatus)

    async def _ask_all(self, actors: list[WorkflowActor], message_type) -> list:
        """Ask many actors at once and gather the answers in order."""
        replies = [actor.post(message_type()) for actor in actors]
        return [await r.wait() for r in replies]

    async def get_status(self, workflow_id: str) -> Workflow:
        return await self._workflow(workflow_id).ask(GetStatus())

    async def run_workflow(self, workflow_id: str) -> int:
        """Start a run; returns its run id. Conflict while a run is active."""
        return await self._workflow(workflow_id).ask(StartRun())

    async def cancel_workflow(self, workflow_id: str) -> None:
        await self._workflow(workflow_id).ask(CancelRun())

    async def is_cancelled(self, workflow_id: str, job_id: str) -> bool:
        return await self._workflow(workflow_id).ask(IsCancelled(job_id))

    # --- workers ---

    async def register_worker(self, worker_id: str, labels: list[str]) -> WorkerInfo:
        self._check_labels(labels)
        return await self._system.workers.ask(Register(worker_id, list(labels)))

    async def worker_heartbeat(self, worker_id: str) -> WorkerInfo:
        return await self._system.workers.ask(Heartbeat(worker_id))

    async def list_workers(self) -> list[WorkerInfo]:
        return await self._system.workers.ask(ListWorkers())

    def _check_labels(self, labels: list[str], where: str = "") -> None:
        if len(labels) > self.limits.max_labels:
            raise LimitExceeded(f"{where}limit max_labels ({self.limits.max_labels}) exceeded")

    # --- the worker protocol ---

    async def claim(
        self,
        worker_id: str,
        labels: list[str],
        lease_ttl_secs: int = 30,
        wait_secs: float = 0,
    ) -> Claim | None:
        """The oldest claimable job whose labels the worker has, under a new lease.

        With `wait_secs`, park until such a job arrives or the wait ends (None).
        A job offered to a claimer that has gone away goes back to the queue.
        """
        self._check_labels(labels)
        self._system.workers.tell(Seen(worker_id, list(labels), lease_ttl_secs))
        label_set = frozenset(labels)
        park = wait_secs > 0
        deadline = trio.current_time() + min(wait_secs, self.limits.max_wait_secs)
        while True:
            reply: Reply[Entry | None] = Reply()
            request = ClaimJob(label_set, reply, park)
            self._system.scheduler.tell(request)
            try:
                with trio.move_on_at(deadline if park else math.inf):
                    await reply.wait()
                # A claimer cancelled while its job was on the way must not be granted it.
                await trio.lowlevel.checkpoint_if_cancelled()
            except BaseException:
                self._give_back(request)
                raise
            if not reply.is_set:  # the wait ended with no job
                self._give_back(request)
                return None
            entry = reply.value
            if entry is None:
                return None
            claim = await self._grant(entry, worker_id, lease_ttl_secs)
            if claim is not None:
                return claim
            # The entry was stale (its run was cancelled or replaced): look again.

    def _give_back(self, request: ClaimJob) -> None:
        """A claimer stopped waiting: unpark it, or requeue what it was just handed."""
        request.reply.abandoned = True
        if request.reply.is_set and request.reply.value is not None:
            self._system.scheduler.tell(Requeue(request.reply.value))
        else:
            self._system.scheduler.tell(Unpark(request.token))

    async def _grant(self, entry: Entry, worker_id: str, ttl_secs: int) -> Claim | None:
        """Turn a taken entry into a lease, or give the entry back if we were cancelled."""
        workflow_id, job_id = entry.key
        actor = self._workflows.get(workflow_id)
        if actor is None:
            return None
        lease_id = str(uuid.uuid4())
        lease = Lease(
            lease_id=lease_id,
            job_id=job_id,
            workflow_id=workflow_id,
            worker_id=worker_id,
            ttl_secs=ttl_secs,
            granted_at_ms=now_ms(),
        )
        try:
            # Shielded: a job is either leased or back in the queue, never lost between.
            with trio.CancelScope(shield=True):
                lease_actor = LeaseActor(
                    lease, entry.run_id, actor, self._system, attempt=entry.attempt
                )
                claimed = JobClaimed(
                    entry.run_id, job_id, entry.attempt, lease, deadline_ms(lease_actor.deadline)
                )
                if not await actor.ask(claimed):
                    return None
                self._system.leases[lease_id] = lease_actor
                # Told before the claim is answered, so the worker reads busy at once.
                self._system.workers.tell(JobHeld(worker_id, job_id, held=True))
                self._nursery.start_soon(lease_actor.run)
        except BaseException:
            self._system.scheduler.tell(Requeue(entry))
            raise
        return Claim(job=entry.job, lease=lease)

    def _restore(self, snapshot: Snapshot, file_specs: list[WorkflowSpec]) -> None:
        """Before serving: workflows, runs, queue, leases, logs and workers from the store."""
        system = self._system
        specs = list(file_specs)
        for _, text in snapshot.workflows:
            specs.append(spec_from_json(text))
        self._next_seq = len(snapshot.workflows) + 1
        job_runs: dict[tuple[str, str], int] = {}
        ended: list[tuple[str, str]] = []
        waiting: list[tuple[int, int, str, WorkflowActor]] = []
        for order, spec in enumerate(specs):
            restored = None
            if spec.id in snapshot.runs:
                run_id, run_spec = snapshot.runs[spec.id]
                rows = snapshot.jobs.get(spec.id, {})
                states = {j: JobState.from_row(r) for j, (run, r) in rows.items() if run == run_id}
                restored = RestoredRun(run_id, spec_from_json(run_spec), states)
            try:
                actor = self.add_workflow(spec, restored)
            except (DefinitionError, LimitExceeded) as exc:
                log.warning("not restoring workflow %s: %s", spec.id, exc)
                continue
            for job_id in actor.job_ids:
                job_runs[(spec.id, job_id)] = actor.run_id
            ended.extend((spec.id, j) for j in actor.terminal_jobs())
            waiting.extend((at, order, job_id, actor) for at, job_id in actor.queued_on_restore())
        # One queue in the order jobs first entered it, across all workflows.
        for _, _, job_id, actor in sorted(waiting, key=lambda w: w[:3]):
            actor.requeue_restored(job_id)
        system.logs.restore(snapshot.logs, job_runs, ended)
        system.workers.restore(snapshot.workers)
        stale = []
        for lease_json, run_id, stored_deadline in snapshot.leases:
            lease = Lease.model_validate_json(lease_json)
            actor = self._workflows.get(lease.workflow_id)
            if (
                actor is None
                or actor.run_id != run_id
                or (actor.restored_leases().get(lease.lease_id) != lease.job_id)
            ):
                stale.append(drop_lease(lease.lease_id))
                continue
            # A deadline that passed while the server was down expires at once.
            job_row = snapshot.jobs.get(lease.workflow_id, {}).get(lease.job_id)
            lease_actor = LeaseActor(
                lease,
                run_id,
                actor,
                system,
                deadline=deadline_from_ms(stored_deadline),
                attempt=job_row[1].get("attempt", 0) if job_row else 0,
            )
            system.leases[lease.lease_id] = lease_actor
            system.workers.tell(JobHeld(lease.worker_id, lease.job_id, held=True))
            self._nursery.start_soon(lease_actor.run)
        if stale and system.journal is not None:
            system.journal.submit(stale)

    def _lease(self, lease_id: str) -> LeaseActor:
        lease = self._system.leases.get(lease_id)
        if lease is None:
            raise LeaseNotActive(lease_id)
        return lease

    async def _ask_lease(self, lease_id: str, message):
        try:
            return await self._lease(lease_id).ask(message)
        except trio.ClosedResourceError:
            raise LeaseNotActive(lease_id) from None

    async def heartbeat(self, lease_id: str) -> Lease:
        return await self._ask_lease(lease_id, RenewLease())

    async def complete(self, lease_id: str, outputs: dict[str, str]) -> None:
        await self._ask_lease(lease_id, ReportSuccess(dict(outputs)))

    async def fail(self, lease_id: str, error: str, retryable: bool = False) -> None:
        await self._ask_lease(lease_id, ReportFailure(error, retryable))

    async def push_logs(self, lease_id: str, chunks: Iterable[LogChunkIn]) -> None:
        """Store chunks as the lease's job's, whatever ids they carry."""
        chunks = list(chunks)
        if len(chunks) > self.limits.max_log_chunks_per_push:
            limit = self.limits.max_log_chunks_per_push
            raise LimitExceeded(f"limit max_log_chunks_per_push ({limit}) exceeded")
        lease_actor = self._lease(lease_id)
        lease = lease_actor.lease
        now = now_ms()
        stored = [
            LogChunk(
                workflow_id=lease.workflow_id,
                job_id=lease.job_id,
                sequence=c.sequence,
                data=c.data,
                timestamp_ms=c.timestamp_ms if c.timestamp_ms is not None else now,
                stream=c.stream,
                attempt=lease_actor.attempt,
            )
            for c in chunks
        ]
        await self._ask_lease(lease_id, PushLogs(stored))

    # --- logs ---

    async def get_logs(self, workflow_id: str, job_id: str) -> list[LogChunk]:
        return await self._system.logs.ask(ReadLog(self._job_key(workflow_id, job_id)))

    async def subscribe_logs(self, workflow_id: str, job_id: str, after: int = -1) -> Subscription:
        """Replay (of the chunks indexed after `after`) plus a live channel that closes
        after the job's last chunk; both give each chunk with its index in the run."""
        key = self._job_key(workflow_id, job_id)
        return await self._system.logs.ask(Subscribe(key, after))

    async def stream_logs(self, workflow_id: str, job_id: str) -> AsyncIterator[LogChunk]:
        subscription = await self.subscribe_logs(workflow_id, job_id)
        for _, chunk in subscription.replay:
            yield chunk
        async with subscription.live:
            async for _, chunk in subscription.live:
                yield chunk

    async def stop_parking(self) -> None:
        """Answer every parked claim with None now and park no more (for shutdown)."""
        await self._system.scheduler.ask(StopParking())

    async def queue_stats(self) -> dict[str, int]:
        return await self._system.scheduler.ask(QueueStats())


@asynccontextmanager
async def open_runtime(
    workflows_dir: str | Path | None = None,
    *,
    specs: Iterable[WorkflowSpec] = (),
    api_only: bool = False,
    limits: Limits | None = None,
    data_dir: str | Path | None = None,
    retain_runs: int = 3,
    warn=None,
) -> AsyncIterator[Runtime]:
    """Start the actors, recover or load definitions, and yield the `Runtime`.

    With `data_dir` (not ":memory:"), every change is committed to SQLite there
    before it is acknowledged, and a restart recovers it. Raises `StoreError`
    when the store cannot be opened or read. Every actor stops on exit.
    """
    limits = limits or Limits()
    store = None
    if data_dir is not None and str(data_dir) != ":memory:":
        store = Store(data_dir)
    loaded = list(specs)
    if workflows_dir is not None:
        from .definitions import load_workflows_dir

        kwargs = {"warn": warn} if warn is not None else {}
        loaded.extend(load_workflows_dir(Path(workflows_dir), **kwargs))
    snapshot = store.load() if store is not None else Snapshot()
    try:
        async with trio.open_nursery() as nursery:
            journal = Journal(store) if store is not None else None
            system = System(
                scheduler=Scheduler(),
                logs=LogsActor(limits.max_log_bytes_per_job),
                workers=WorkerRegistry(),
                api_only=api_only,
                journal=journal,
                retain_runs=max(1, retain_runs),
            )
            system.logs.journal = system.workers.journal = journal
            runtime = Runtime(nursery, system, limits)
            runtime._restore(snapshot, loaded)
            for actor in (system.scheduler, system.logs, system.workers, journal):
                if actor is not None:
                    nursery.start_soon(actor.run)
            try:
                yield runtime
            finally:
                nursery.cancel_scope.cancel()
    finally:
        if store is not None:
            store.close()
