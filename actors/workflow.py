"""The workflow actor: one per workflow, owner of its definition and its live runs.

It holds the runs not yet finished (running, or queued for their concurrency
group) and the latest run; older finished runs live in the store (or, with no
store, in `System.history`). Every message that changes a run names the run
(`number`) and, for a job held by a worker, the lease; a message for another
run or lease is refused with `LeaseNotActive`, never applied. The transitions
themselves are `rules.Transition`'s: this actor applies them and carries out
their effects (queue, leases, logs, store, concurrency group).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from . import plan
from .actor import Actor, Spawn
from .clock import now_ms
from .errors import Conflict, Invalid, LeaseNotActive, NotFound
from .models import (
    Job,
    JobStatus,
    Lease,
    LogChunk,
    QueuedJob,
    Run,
    RunRef,
    RunStatus,
    Workflow,
)
from .rules import (
    Effects,
    JobRun,
    RunPlan,
    Transition,
    event_payload,
    rerun_jobs,
    upstream_outputs,
)
from .rules import Run as RunState
from .scheduler import Enqueue, Entry, Withdraw
from .spec import WorkflowSpec, validate_inputs
from .store import (
    Record,
    copy_logs,
    drop_lease,
    put_definition,
    put_job,
    put_lease,
    put_run,
    put_run_event,
    set_flag,
)
from .waiting import Coverage, waiting_mark

if TYPE_CHECKING:
    from .runtime import System

log = logging.getLogger("workflow_graph")

CANCELLED_UNRUN = "cancelled_unrun"  # the flag of a workflow cancelled before any run


@dataclass(slots=True)
class LiveRun:
    """A run the actor holds: its state, its plan, and where it sits in the store."""

    state: RunState
    plan: RunPlan
    seq: int  # global creation order, across workflows
    spec_hash: str


# --- messages ---------------------------------------------------------------


@dataclass(slots=True)
class CreateRun:
    """Start (or queue) a run. `previous` is the run a re-run repeats."""

    inputs: dict[str, Any] = field(default_factory=dict)
    trigger: str = "manual"
    previous: RunState | None = None
    previous_spec: WorkflowSpec | None = None
    failed_only: bool = False
    carried_logs: dict[str, list[LogChunk]] = field(default_factory=dict)
    event: dict[str, Any] | None = None
    # Stored in the run's own commit: what started it (a schedule's due time, a delivery).
    records: list[Record] = field(default_factory=list)


@dataclass(slots=True)
class RunCreated:
    number: int
    status: RunStatus
    group: str | None
    cancel_in_progress: bool


@dataclass(slots=True)
class AdmitRun:
    """Told by the concurrency groups: the queued run's turn has come."""

    number: int


@dataclass(slots=True)
class CancelRuns:
    """Cancel one run, or (number None) every unfinished run of the workflow."""

    number: int | None = None


@dataclass(slots=True)
class GetStatus:
    coverage: Coverage | None = None  # the live workers, for the jobs' `waiting`


@dataclass(slots=True)
class GetStatusCounts:
    pass


@dataclass(slots=True)
class IsCancelled:
    job_id: str
    number: int | None = None


@dataclass(slots=True)
class JobClaimed:
    number: int
    job_id: str
    attempt: int
    lease: Lease
    deadline_ms: int


@dataclass(slots=True)
class JobCompleted:
    number: int
    job_id: str
    lease_id: str
    outputs: dict[str, str]


@dataclass(slots=True)
class JobFailed:
    number: int
    job_id: str
    lease_id: str
    error: str
    retryable: bool


@dataclass(slots=True)
class LeaseExpired:
    number: int
    job_id: str
    lease_id: str


@dataclass(slots=True)
class Deadline:
    """Told by the timers: a run timeout, a job timeout or a queue timeout is due."""

    number: int
    kind: str  # "run", "job" or "queue"
    job_id: str = ""
    lease_id: str = ""


@dataclass(slots=True)
class RestoredRun:
    """A run read back from the store."""

    state: RunState
    spec: WorkflowSpec
    seq: int
    spec_hash: str


class WorkflowActor(Actor):
    def __init__(
        self,
        spec: WorkflowSpec,
        system: System,
        restored: list[RestoredRun] = (),  # type: ignore[assignment]
        next_number: int = 1,
        cancelled_unrun: bool = False,
        spawn: Spawn | None = None,
    ) -> None:
        super().__init__(spawn)
        self.journal = system.journal
        self._system = system
        self.spec = spec  # immutable: new runs start with it; safe for others to read
        self.name = f"workflow {spec.id}"
        self._live: dict[int, LiveRun] = {}
        self._latest = 0
        self._next_number = next_number
        self._cancelled_unrun = cancelled_unrun
        for stored in restored:
            run_plan = system.run_plan(stored.spec, stored.state)
            self._live[stored.state.number] = LiveRun(
                stored.state, run_plan, stored.seq, stored.spec_hash
            )
            self._latest = max(self._latest, stored.state.number)
            self._next_number = max(self._next_number, stored.state.number + 1)

    @property
    def job_ids(self):
        """The ids a job of this workflow can have (its latest run's, else the definition's)."""
        latest = self._live.get(self._latest)
        if latest is not None:
            return latest.plan.instances.keys()
        return {j.id for j in self.spec.jobs}

    def has_job(self, job_id: str, number: int | None = None) -> bool:
        live = self._live.get(number if number is not None else self._latest)
        if live is not None:
            return job_id in live.plan.instances
        return any(j.id == job_id for j in self.spec.jobs)

    @property
    def latest_number(self) -> int:
        return self._latest

    @property
    def next_number(self) -> int:
        return self._next_number

    def live_runs(self) -> list[LiveRun]:
        return list(self._live.values())

    # --- recovery (before the actor runs) ---

    def restored_queue(self) -> list[tuple[int, int, str]]:
        """(enqueued_at_ms, number, job_id) of the jobs that were in the queue."""
        return [
            (job.enqueued_at_ms, live.state.number, job_id)
            for live in self._live.values()
            if live.state.active
            for job_id, job in live.state.jobs.items()
            if job.in_queue
        ]

    def requeue_restored(self, number: int, job_id: str) -> None:
        self._offer(self._live[number], job_id)

    def restored_leases(self) -> dict[str, tuple[int, str]]:
        """lease_id -> (number, job_id) of the jobs that were running."""
        return {
            job.lease_id: (live.state.number, job_id)
            for live in self._live.values()
            for job_id, job in live.state.jobs.items()
            if job.status is JobStatus.running and job.lease_id
        }

    def live_attempt(self, number: int, job_id: str) -> int:
        return self._live[number].state.jobs[job_id].attempt

    def live_started_at(self, number: int, job_id: str) -> int | None:
        return self._live[number].state.jobs[job_id].started_at

    def rearm_deadlines(self) -> None:
        for live in self._live.values():
            if live.state.active:
                self._arm(live, live.state.jobs)

    # --- messages ---

    def handle(self, message):
        match message:
            case GetStatus(coverage):
                return self._status(coverage)
            case GetStatusCounts():
                return self._counts()
            case IsCancelled(job_id, number):
                return self._is_cancelled(job_id, number)
            case JobClaimed():
                return self._claimed(message)
            case JobCompleted(number, job_id, lease_id, outputs):
                live = self._run_of(number, lease_id)
                self._apply(live, self._transition(live).completed(job_id, lease_id, outputs))
            case JobFailed(number, job_id, lease_id, error, retryable):
                live = self._run_of(number, lease_id)
                fx = self._transition(live).failed(job_id, lease_id, error, retryable)
                self._apply(live, fx)
            case LeaseExpired(number, job_id, lease_id):
                live = self._run_of(number, lease_id)
                self._apply(live, self._transition(live).expired(job_id, lease_id))
            case Deadline():
                self._deadline(message)
            case CreateRun():
                return self._create(message)
            case AdmitRun(number):
                self._admit(number)
            case CancelRuns(number):
                self._cancel(number)
            case _:
                raise TypeError(f"{self.name} cannot handle {message!r}")
        return None

    # --- queries ---

    def _status(self, coverage: Coverage | None = None) -> Workflow:
        live = self._live.get(self._latest)
        if live is None:
            return workflow_view(self.spec, None, None, self._cancelled_unrun)
        return workflow_view(self.spec, live.state, live.plan, coverage=coverage)

    def _counts(self) -> Counter:
        live = self._live.get(self._latest)
        return status_counts(self.spec, live.state if live else None, self._cancelled_unrun)

    def _is_cancelled(self, job_id: str, number: int | None) -> bool:
        live = self._live.get(number if number is not None else self._latest)
        if live is None:
            if number is not None:
                raise NotFound(f"run {number} of workflow '{self.spec.id}' is not live")
            if not self.has_job(job_id):
                raise NotFound(f"job '{job_id}' not found in workflow '{self.spec.id}'")
            return self._cancelled_unrun
        job = live.state.jobs.get(job_id)
        if job is None:
            raise NotFound(f"job '{job_id}' not found in workflow '{self.spec.id}'")
        return job.status is JobStatus.cancelled

    # --- runs ---

    def _create(self, m: CreateRun) -> RunCreated:
        system = self._system
        previous = m.previous
        spec = m.previous_spec if previous is not None and m.previous_spec else self.spec
        number = self._next_number
        state, run_plan = new_run(
            spec,
            number,
            now_ms(),
            inputs=m.inputs,
            trigger=m.trigger,
            event=m.event,
            previous=previous,
            failed_only=m.failed_only,
        )
        group = state.group
        if group is None and any(live.state.active for live in self._live.values()):
            raise Conflict(f"workflow '{self.spec.id}' already has an active run")
        self._next_number += 1
        digest, spec_json = system.spec_digest(spec)
        live = LiveRun(state, run_plan, system.next_run_seq(), digest)
        self._live[number] = live
        system.history_add(live)
        previous_latest = self._latest
        self._latest = number
        self.record(put_definition(digest, spec_json))
        if state.event is not None:
            self.record(put_run_event(spec.id, number, state.event))
        for record in m.records:
            self.record(record)
        if self._cancelled_unrun:
            self._cancelled_unrun = False
            self.record(set_flag(self.spec.id, CANCELLED_UNRUN, False))
        system.logs_open_run(spec.id, number, list(state.jobs))
        for job_id, chunks in m.carried_logs.items():
            if state.jobs.get(job_id) is not None and state.jobs[job_id].carried:
                system.logs_seed(spec.id, number, job_id, chunks)
                if previous is not None:
                    self.record(copy_logs(spec.id, previous.number, number, job_id))
        self._forget(previous_latest)
        fx = Effects(run_changed=True, changed=set(state.jobs))
        if group is None:
            fx = self._merge(fx, self._transition(live).start())
        self._apply(live, fx)
        system.prune_history(spec.id, number)
        cancel_in_progress = bool(spec.concurrency and spec.concurrency.cancel_in_progress)
        return RunCreated(number, state.status, group, cancel_in_progress)

    def _admit(self, number: int) -> None:
        live = self._live.get(number)
        if live is None or live.state.status is not RunStatus.queued:
            return  # cancelled meanwhile: its end already left the group
        self._apply(live, self._transition(live).start())

    def _cancel(self, number: int | None) -> None:
        if number is None:
            targets = [live for live in self._live.values() if live.state.active]
            if not targets and not self._live and not self._cancelled_unrun:
                # The contract: cancel turns every queued job to cancelled, even unrun.
                self._cancelled_unrun = True
                self.record(set_flag(self.spec.id, CANCELLED_UNRUN, True))
        else:
            live = self._live.get(number)
            targets = [live] if live is not None and live.state.active else []
        for live in targets:
            self._apply(live, self._transition(live).cancel())

    def _deadline(self, m: Deadline) -> None:
        live = self._live.get(m.number)
        if live is None or not live.state.active:
            return
        step = self._transition(live)
        if m.kind == "run":
            fx = step.timed_out()
        elif m.kind == "queue":
            fx = step.queue_timed_out(m.job_id)
            if fx.changed:
                log.warning(
                    "job %s (workflow %s, run %d) failed: %s",
                    m.job_id,
                    self.spec.id,
                    m.number,
                    live.state.jobs[m.job_id].output,
                    extra={"workflow_id": self.spec.id, "run_id": m.number, "job_id": m.job_id},
                )
        else:
            job = live.state.jobs.get(m.job_id)
            if job is None or job.lease_id != m.lease_id or job.timeout_at_ms is None:
                return
            if job.timeout_at_ms > step.now:
                return
            fx = step.job_timed_out(m.job_id, m.lease_id)
        self._apply(live, fx)

    # --- the worker protocol ---

    def _claimed(self, m: JobClaimed) -> bool:
        live = self._live.get(m.number)
        if live is None:
            return False
        step = self._transition(live)
        if not step.claimed(m.job_id, m.attempt, m.lease.lease_id):
            return False
        self.record(put_lease(m.lease.lease_id, m.lease.model_dump_json(), m.number, m.deadline_ms))
        self._apply(live, step.fx)
        return True

    def _run_of(self, number: int, lease_id: str) -> LiveRun:
        live = self._live.get(number)
        if live is None or not live.state.active:
            raise LeaseNotActive(lease_id)
        return live

    # --- carrying out effects ---

    def _transition(self, live: LiveRun) -> Transition:
        return Transition(live.plan, live.state, now_ms(), cascade=not self._system.api_only)

    @staticmethod
    def _merge(first: Effects, second: Effects) -> Effects:
        second.changed |= first.changed
        second.run_changed = second.run_changed or first.run_changed
        return second

    def _apply(self, live: LiveRun, fx: Effects) -> None:
        system = self._system
        state = live.state
        workflow_id = state.workflow_id
        for job_id in fx.changed:
            self.record(put_job(workflow_id, state.number, job_id, state.jobs[job_id].to_row()))
        if fx.run_changed or fx.changed:
            self.record(put_run(live.seq, live.spec_hash, state.to_row()))
        for lease_id in fx.released:
            self.record(drop_lease(lease_id))
        for lease_id in fx.revoked:
            system.revoke_lease(lease_id)
        if fx.withdrawn:
            system.scheduler.tell(
                Withdraw([(workflow_id, state.number, job_id) for job_id in fx.withdrawn])
            )
        for job_id in fx.enqueued:
            self._offer(live, job_id)
        for job_id, final in fx.attempt_ended:
            system.logs_job_ended(workflow_id, state.number, job_id, final)
        self._arm(live, {job_id: state.jobs[job_id] for job_id in fx.changed})
        if fx.run_changed and state.started_at_ms is not None and state.deadline_ms:
            system.timers.at(state.deadline_ms, self, Deadline(state.number, "run"))
        system.metrics.effects_applied(state, fx)
        if fx.ended:
            system.run_ended(state, self)
            self._forget_finished()

    def _arm(self, live: LiveRun, jobs: dict[str, JobRun]) -> None:
        timers = self._system.timers
        number = live.state.number
        for job_id, job in jobs.items():
            if job.in_queue and job.queue_deadline_ms is not None:
                timers.at(job.queue_deadline_ms, self, Deadline(number, "queue", job_id))
            if job.lease_id and job.timeout_at_ms is not None:
                timers.at(job.timeout_at_ms, self, Deadline(number, "job", job_id, job.lease_id))
        state = live.state
        if state.status is RunStatus.running and state.deadline_ms:
            timers.at(state.deadline_ms, self, Deadline(number, "run"))

    def _offer(self, live: LiveRun, job_id: str) -> None:
        """Hand the scheduler the job as its state says: attempt, enqueue time, delay."""
        state = live.state
        job = state.jobs[job_id]
        rendered = job.rendered
        assert rendered is not None
        delay_secs = max(0, job.delayed_until_ms - now_ms()) / 1000
        queued = queued_job(state, live.plan, job_id)
        self._system.scheduler.tell(
            Enqueue(
                Entry(
                    key=(state.workflow_id, state.number, job_id),
                    run_id=state.number,
                    attempt=job.attempt,
                    labels=frozenset(rendered.labels),
                    job=queued,
                    due=trio.current_time() + delay_secs,
                )
            )
        )

    def _forget(self, number: int) -> None:
        """A finished run that is no longer the latest leaves memory (the store keeps it)."""
        live = self._live.get(number)
        if live is not None and not live.state.active and number != self._latest:
            del self._live[number]
            self._system.run_left_memory(self.spec.id, number)

    def _forget_finished(self) -> None:
        for number in [n for n, live in self._live.items() if not live.state.active]:
            self._forget(number)


# --- views ------------------------------------------------------------------


def jobs_view(state: RunState, run_plan: RunPlan, coverage: Coverage | None = None) -> list[Job]:
    """The run's jobs in the contract's `Job` shape, in plan order; with `coverage`,
    a claimable job no live worker can take is marked `waiting`."""
    jobs = []
    for job_id, inst in run_plan.instances.items():
        job_state = state.jobs.get(job_id) or JobRun()
        spec = inst.spec
        rendered = job_state.rendered
        jobs.append(
            Job(
                id=job_id,
                name=rendered.name if rendered else inst.name,
                status=job_state.status,
                command=rendered.command if rendered else spec.command,
                duration_secs=job_state.duration_secs,
                started_at=job_state.started_at,
                depends_on=list(inst.needs),
                output=job_state.output,
                required_labels=list(rendered.labels if rendered else spec.required_labels),
                max_retries=spec.retry_policy.max_retries,
                attempt=job_state.attempt,
                metadata=spec.metadata,
                waiting=waiting_mark(state, job_state, coverage),
                **spec.visual,
            )
        )
    return jobs


def new_run(
    spec: WorkflowSpec,
    number: int,
    now: int,
    *,
    inputs: dict[str, Any],
    trigger: str,
    event: dict[str, Any] | None,
    previous: RunState | None = None,
    failed_only: bool = False,
) -> tuple[RunState, RunPlan]:
    """A new run (a re-run when `previous` is given) and its plan, not yet started.

    Invalid for bad inputs or a concurrency group that cannot be evaluated or is empty.
    """
    inputs = validate_inputs(spec, inputs) if previous is None else dict(previous.inputs)
    state = RunState(
        workflow_id=spec.id,
        number=number,
        trigger=trigger,
        inputs=inputs,
        created_at_ms=now,
        rerun_of=previous.number if previous is not None else None,
        event=event if previous is None else previous.event,
    )
    try:
        run_plan = RunPlan(spec, state)
        group = plan.concurrency_group(spec, run_plan.context)
    except plan.EvaluationError as exc:
        raise Invalid(f"the run cannot start: {exc}") from None
    if group is not None and not group.strip():
        raise Invalid("the run cannot start: its concurrency group is empty")
    state.group = group
    if previous is not None:
        state.jobs = rerun_jobs(previous, run_plan, failed_only)
    else:
        state.jobs = run_plan.new_jobs()
    return state, run_plan


def no_run_error(workflow_id: str, number: int, next_number: int, retain_runs: int) -> NotFound:
    """The 404 for a run that is not there: pruned, or never created."""
    if 0 < number < next_number:
        return NotFound(
            f"run {number} of workflow '{workflow_id}' was pruned "
            f"(the last {retain_runs} runs are kept)"
        )
    return NotFound(f"workflow '{workflow_id}' has no run {number}")


def workflow_view(
    spec: WorkflowSpec,
    state: RunState | None,
    run_plan: RunPlan | None,
    cancelled_unrun: bool = False,
    coverage: Coverage | None = None,
) -> Workflow:
    """The contract's `Workflow`: its latest run's jobs, or the definition's before any run
    (all `cancelled` when the workflow was cancelled before it ever ran)."""
    if state is None or run_plan is None:
        workflow = spec.as_workflow()
        if cancelled_unrun:
            for job in workflow.jobs:
                job.status = JobStatus.cancelled
        return workflow
    return Workflow(
        id=spec.id,
        name=spec.name,
        trigger=spec.trigger,
        jobs=jobs_view(state, run_plan, coverage),
        run=RunRef(number=state.number, status=state.status),
    )


def status_counts(spec: WorkflowSpec, state: RunState | None, cancelled_unrun: bool) -> Counter:
    """How many jobs of the workflow's latest run have each status (the list filter)."""
    if state is None:
        status = JobStatus.cancelled if cancelled_unrun else JobStatus.queued
        return Counter({status: len(spec.jobs)})
    return Counter(job.status for job in state.jobs.values())


def queued_job(state: RunState, run_plan: RunPlan, job_id: str) -> QueuedJob:
    """What a worker's claim receives for a job in the queue, as its state says."""
    job = state.jobs[job_id]
    inst = run_plan.instances[job_id]
    rendered = job.rendered
    assert rendered is not None
    return QueuedJob(
        job_id=job_id,
        workflow_id=state.workflow_id,
        command=rendered.command,
        required_labels=list(rendered.labels),
        retry_policy=inst.spec.retry_policy,
        attempt=job.attempt,
        upstream_outputs=upstream_outputs(run_plan, state, job_id),
        enqueued_at_ms=job.enqueued_at_ms,
        delayed_until_ms=job.delayed_until_ms,
        run_id=state.number,
        timeout_secs=rendered.timeout_secs,
        env=dict(rendered.env) if rendered.env else {},
        event=event_payload(state),
    )


def run_view(state: RunState, run_plan: RunPlan, coverage: Coverage | None = None) -> Run:
    return Run(
        workflow_id=state.workflow_id,
        number=state.number,
        status=state.status,
        trigger=state.trigger,
        inputs=state.inputs,
        created_at_ms=state.created_at_ms,
        started_at_ms=state.started_at_ms,
        finished_at_ms=state.finished_at_ms,
        rerun_of=state.rerun_of,
        jobs=jobs_view(state, run_plan, coverage),
        reason=state.reason,
    )
