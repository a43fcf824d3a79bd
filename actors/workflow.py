"""The workflow actor: one per workflow, owner of its definition and current run.

Every message that changes a run names the run (`run_id`) and, for a job held
by a worker, the lease; a message for another run or lease is refused with
`LeaseNotActive`, never applied. This actor decides every job transition; the
scheduler and the leases only carry out what it says.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from .actor import Actor, Spawn
from .clock import now_ms
from .errors import Conflict, LeaseNotActive, NotFound
from .models import (
    TERMINAL_STATUSES,
    JobStatus,
    Lease,
    QueuedJob,
    Workflow,
    backoff_delay_secs,
)
from .scheduler import Enqueue, Entry, Withdraw
from .spec import JobSpec, WorkflowSpec, spec_to_json
from .store import drop_lease, prune_logs, put_job, put_lease, put_run

if TYPE_CHECKING:
    from .runtime import System

LEASE_EXPIRED = "lease expired"


@dataclass(slots=True)
class JobState:
    status: JobStatus = JobStatus.queued
    attempt: int = 0
    started_at: int | None = None
    duration_secs: int | None = None
    output: str | None = None
    outputs: dict[str, str] = field(default_factory=dict)
    lease_id: str | None = None
    in_queue: bool = False
    enqueued_at_ms: int = 0
    delayed_until_ms: int = 0

    def to_row(self) -> dict:
        return {
            "status": self.status.value,
            "attempt": self.attempt,
            "started_at": self.started_at,
            "duration_secs": self.duration_secs,
            "output": self.output,
            "outputs": self.outputs,
            "lease_id": self.lease_id,
            "in_queue": self.in_queue,
            "enqueued_at_ms": self.enqueued_at_ms,
            "delayed_until_ms": self.delayed_until_ms,
        }

    @classmethod
    def from_row(cls, row: dict) -> JobState:
        return cls(**{**row, "status": JobStatus(row["status"])})


NEVER_RUN = JobState()  # read-only: the state of every job before the first run


# --- messages ---------------------------------------------------------------


@dataclass(slots=True)
class StartRun:
    pass


@dataclass(slots=True)
class CancelRun:
    pass


@dataclass(slots=True)
class GetStatus:
    pass


@dataclass(slots=True)
class GetStatusCounts:
    pass


@dataclass(slots=True)
class IsCancelled:
    job_id: str


@dataclass(slots=True)
class JobClaimed:
    run_id: int
    job_id: str
    attempt: int
    lease: Lease
    deadline_ms: int


@dataclass(slots=True)
class JobCompleted:
    run_id: int
    job_id: str
    lease_id: str
    outputs: dict[str, str]


@dataclass(slots=True)
class JobFailed:
    run_id: int
    job_id: str
    lease_id: str
    error: str
    retryable: bool


@dataclass(slots=True)
class RestoredRun:
    """A run read back from the store: its id, definition and job states."""

    run_id: int
    spec: WorkflowSpec
    states: dict[str, JobState]


class WorkflowActor(Actor):
    def __init__(
        self,
        spec: WorkflowSpec,
        system: System,
        restored: RestoredRun | None = None,
        spawn: Spawn | None = None,
    ) -> None:
        super().__init__(spawn)
        self.journal = system.journal
        self._system = system
        self._run_id = 0
        self._unfinished = 0  # jobs of the current run not yet terminal
        self._dirty: set[str] = set()  # jobs changed by the message being handled
        self._next_spec: WorkflowSpec | None = None
        self._adopt(spec)
        if restored is not None:
            self._restore(spec, restored)

    @property
    def name(self) -> str:
        return f"workflow {self.spec.id}"

    def _adopt(self, spec: WorkflowSpec) -> None:
        self.spec = spec  # immutable: safe for others to read
        self._jobs: dict[str, JobSpec] = {j.id: j for j in spec.jobs}
        # Only jobs that have dependents get an entry: idle workflows stay small.
        self._dependents: dict[str, list[str]] = {}
        for j in spec.jobs:
            for dep in j.depends_on:
                self._dependents.setdefault(dep, []).append(j.id)
        # Empty until the first run: a workflow that never ran shows every job queued.
        self._state: dict[str, JobState] = {}
        # Per job of the current run, how many dependencies have not yet succeeded.
        self._waiting: dict[str, int] = {}

    def _materialize(self) -> dict[str, JobState]:
        if not self._state:
            self._state = {j.id: JobState() for j in self.spec.jobs}
        return self._state

    def _restore(self, spec: WorkflowSpec, restored: RestoredRun) -> None:
        active = any(s.status not in TERMINAL_STATUSES for s in restored.states.values())
        if restored.spec != spec:
            if not active:
                return  # the definition changed after the run ended: show it fresh
            # A run in progress keeps the definition it started with.
            self._adopt(restored.spec)
            self._next_spec = spec
        self._run_id = restored.run_id
        states = self._materialize()
        for job_id, state in restored.states.items():
            if job_id in states:
                states[job_id] = state
        self._count_waiting()
        if active:
            self._unfinished = sum(
                1 for s in self._state.values() if s.status not in TERMINAL_STATUSES
            )

    def queued_on_restore(self) -> list[tuple[int, str]]:
        """(enqueued_at_ms, job_id) of the jobs that were waiting in the queue."""
        return [(s.enqueued_at_ms, j) for j, s in self._state.items() if s.in_queue]

    def requeue_restored(self, job_id: str) -> None:
        self._offer(self._jobs[job_id])

    def restored_leases(self) -> dict[str, str]:
        """lease_id -> job_id of the jobs that were running."""
        return {
            s.lease_id: j
            for j, s in self._state.items()
            if s.status is JobStatus.running and s.lease_id
        }

    def terminal_jobs(self) -> list[str]:
        return [j for j, s in self._state.items() if s.status in TERMINAL_STATUSES]

    @property
    def run_id(self) -> int:
        return self._run_id

    @property
    def job_ids(self):
        return self._jobs.keys()

    def handle(self, message):
        try:
            return self._handle(message)
        finally:
            if self._dirty and self.journal is not None:
                for job_id in self._dirty:
                    state = self._state[job_id].to_row()
                    self.record(put_job(self.spec.id, job_id, self._run_id, state))
            self._dirty.clear()

    def _handle(self, message):
        match message:
            case GetStatus():
                return self._status()
            case GetStatusCounts():
                if not self._state:
                    return Counter({JobStatus.queued: len(self._jobs)})
                return Counter(s.status for s in self._state.values())
            case IsCancelled(job_id):
                return self._job_state(job_id).status is JobStatus.cancelled
            case JobClaimed():
                return self._claimed(message)
            case JobCompleted():
                self._completed(message)
            case JobFailed():
                self._failed(message)
            case StartRun():
                return self._start_run()
            case CancelRun():
                self._cancel()
            case _:
                raise TypeError(f"{self.name} cannot handle {message!r}")
        return None

    # --- queries ---

    def _release(self, state: JobState) -> None:
        """The job's lease is over: forget it here and in the store."""
        if state.lease_id is not None:
            self.record(drop_lease(state.lease_id))
            state.lease_id = None

    def _job_state(self, job_id: str) -> JobState:
        if job_id not in self._jobs:
            raise NotFound(f"job '{job_id}' not found in workflow '{self.spec.id}'")
        return self._state.get(job_id, NEVER_RUN)

    def _status(self) -> Workflow:
        jobs = []
        for spec in self.spec.jobs:
            s = self._state.get(spec.id, NEVER_RUN)
            job = spec.as_job()
            job.status = s.status
            job.attempt = s.attempt
            job.started_at = s.started_at
            job.duration_secs = s.duration_secs
            job.output = s.output
            jobs.append(job)
        return Workflow(id=self.spec.id, name=self.spec.name, trigger=self.spec.trigger, jobs=jobs)

    # --- transitions ---

    def _start_run(self) -> int:
        if self._unfinished:
            raise Conflict(f"workflow '{self.spec.id}' already has an active run")
        if self._next_spec is not None:
            self._adopt(self._next_spec)
            self._next_spec = None
        self._run_id += 1
        self._state = {j.id: JobState() for j in self.spec.jobs}
        self._dirty.update(self._state)
        self._unfinished = len(self._state)
        self._count_waiting()
        self.record(put_run(self.spec.id, self._run_id, spec_to_json(self.spec)))
        self.record(prune_logs(self.spec.id, self._run_id - self._system.retain_runs + 1))
        self._system.logs_reset(self.spec.id, self._jobs, self._run_id)
        for spec in self.spec.jobs:
            if not spec.depends_on:
                self._enqueue(spec, attempt=0, delay_secs=0)
        return self._run_id

    def _enqueue(self, spec: JobSpec, attempt: int, delay_secs: int) -> None:
        state = self._state[spec.id]
        state.in_queue = True
        state.attempt = attempt
        state.enqueued_at_ms = now = now_ms()
        state.delayed_until_ms = now + delay_secs * 1000 if delay_secs else 0
        self._dirty.add(spec.id)
        self._offer(spec)

    def _offer(self, spec: JobSpec) -> None:
        """Hand the scheduler the job as its state says: attempt, enqueue time, delay."""
        state = self._state[spec.id]
        delay_secs = max(0, state.delayed_until_ms - now_ms()) / 1000
        job = QueuedJob(
            job_id=spec.id,
            workflow_id=self.spec.id,
            command=spec.command,
            required_labels=list(spec.required_labels),
            retry_policy=spec.retry_policy,
            attempt=state.attempt,
            upstream_outputs={d: dict(self._state[d].outputs) for d in spec.depends_on},
            enqueued_at_ms=state.enqueued_at_ms,
            delayed_until_ms=state.delayed_until_ms,
            run_id=self._run_id,
            timeout_secs=spec.timeout_secs,
            env=spec.env,
        )
        self._system.scheduler.tell(
            Enqueue(
                Entry(
                    key=(self.spec.id, spec.id),
                    run_id=self._run_id,
                    attempt=state.attempt,
                    labels=frozenset(spec.required_labels),
                    job=job,
                    due=trio.current_time() + delay_secs,
                )
            )
        )

    def _claimed(self, m: JobClaimed) -> bool:
        """Accept a claim only for the job's current run, attempt, and queue slot."""
        state = self._state.get(m.job_id)
        if (
            state is None
            or m.run_id != self._run_id
            or not state.in_queue
            or state.attempt != m.attempt
            or state.status is not JobStatus.queued
        ):
            return False
        state.in_queue = False
        state.status = JobStatus.running
        state.lease_id = m.lease.lease_id
        state.started_at = now_ms()
        self._dirty.add(m.job_id)
        self.record(put_lease(m.lease.lease_id, m.lease.model_dump_json(), m.run_id, m.deadline_ms))
        return True

    def _held(self, run_id: int, job_id: str, lease_id: str) -> JobState:
        state = self._state.get(job_id)
        if (
            state is None
            or run_id != self._run_id
            or state.status is not JobStatus.running
            or state.lease_id != lease_id
        ):
            raise LeaseNotActive(lease_id)
        return state

    def _completed(self, m: JobCompleted) -> None:
        state = self._held(m.run_id, m.job_id, m.lease_id)
        state.outputs = dict(m.outputs)
        self._finish(m.job_id, JobStatus.success)
        if self._system.api_only:
            return
        for dependent in self._dependents.get(m.job_id, ()):
            self._waiting[dependent] -= 1
            d_state = self._state[dependent]
            if (
                not self._waiting[dependent]
                and d_state.status is JobStatus.queued
                and not d_state.in_queue
            ):
                self._enqueue(self._jobs[dependent], attempt=0, delay_secs=0)

    def _failed(self, m: JobFailed) -> None:
        state = self._held(m.run_id, m.job_id, m.lease_id)
        spec = self._jobs[m.job_id]
        if m.retryable and state.attempt < spec.retry_policy.max_retries:
            state.status = JobStatus.queued
            self._release(state)
            state.started_at = None
            self._system.logs_job_ended(self.spec.id, m.job_id, final=False)
            delay = backoff_delay_secs(spec.retry_policy.backoff, state.attempt + 1)
            self._enqueue(spec, attempt=state.attempt + 1, delay_secs=delay)
            return
        state.output = m.error
        self._finish(m.job_id, JobStatus.failure)
        if not self._system.api_only:
            self._skip_dependents_of(m.job_id)

    def lease_expired(self, run_id: int, job_id: str, lease_id: str) -> None:
        """Told by a lease whose deadline passed: a retryable failure."""
        self.tell(JobFailed(run_id, job_id, lease_id, LEASE_EXPIRED, retryable=True))

    def _count_waiting(self) -> None:
        success = JobStatus.success
        self._waiting = {
            j.id: sum(1 for d in j.depends_on if self._state[d].status is not success)
            for j in self.spec.jobs
            if j.depends_on
        }

    def _skip_dependents_of(self, job_id: str) -> None:
        pending = list(self._dependents.get(job_id, ()))
        while pending:
            dependent = pending.pop()
            if self._state[dependent].status in TERMINAL_STATUSES:
                continue
            self._finish(dependent, JobStatus.skipped)
            pending.extend(self._dependents.get(dependent, ()))

    def _cancel(self) -> None:
        withdrawn = []
        for job_id, state in self._materialize().items():
            if state.status not in (JobStatus.queued, JobStatus.running):
                continue
            if state.in_queue:
                withdrawn.append((self.spec.id, job_id))
            if state.lease_id is not None:
                self._system.revoke_lease(state.lease_id)
            self._finish(job_id, JobStatus.cancelled)
        if withdrawn:
            self._system.scheduler.tell(Withdraw(withdrawn))

    def _finish(self, job_id: str, status: JobStatus) -> None:
        state = self._state[job_id]
        if state.status in TERMINAL_STATUSES:
            return
        state.status = status
        state.in_queue = False
        self._release(state)
        self._dirty.add(job_id)
        if state.started_at is not None:
            state.duration_secs = max(0, round((now_ms() - state.started_at) / 1000))
        if self._unfinished:
            self._unfinished -= 1
        self._system.logs_job_ended(self.spec.id, job_id, final=True)
