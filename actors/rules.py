"""The rules of a run: what a start, claim, completion, failure, expiry, cancel or
timeout does to its jobs.

Plain Python that does no I/O and knows no trio or clock: each event function
takes the run's state, changes it, and returns the `Effects` its caller must
carry out (jobs to queue or withdraw, leases to revoke and release, logs to
close, the run's end). Both homes of the engine apply exactly these functions:
the workflow actor in the embedded engine, a transaction holding the run's row
lock on PostgreSQL. A rule exists here once and nowhere else.

Terms. A job is *pending* while `queued` and not in the queue (its needs are
not all terminal yet, or a matrix's `max-parallel` holds it back); *ready*
once in the queue (`in_queue`); *running* under a lease. A *hard* failure is
a `failure` without `continue-on-error`; a *soft* one counts as passed for its
dependents' default condition and does not fail the run.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import plan
from .errors import LeaseNotActive
from .models import (
    RUN_ENDED,
    TERMINAL_STATUSES,
    JobStatus,
    RunStatus,
    backoff_delay_secs,
)
from .plan import EvaluationError, JobInstance, Rendered, Status
from .secrets import context_placeholders
from .spec import WorkflowSpec

LEASE_EXPIRED = "lease expired"
# A running job past its timeout is failed by the server this long after the worker
# should have stopped it itself (its own kill and report take a few seconds).
JOB_TIMEOUT_GRACE_SECS = 30


# --- state --------------------------------------------------------------------


@dataclass(slots=True)
class JobRun:
    """One job's state within one run; a row of the store, field for field."""

    status: JobStatus = JobStatus.queued
    attempt: int = 0
    started_at: int | None = None  # epoch ms of the current attempt's claim
    duration_secs: int | None = None
    output: str | None = None  # the failure's error text
    outputs: dict[str, str] = field(default_factory=dict)
    lease_id: str | None = None
    in_queue: bool = False
    enqueued_at_ms: int = 0
    delayed_until_ms: int = 0
    soft_failed: bool = False  # failed under continue-on-error
    carried: bool = False  # a success carried over from the run this one re-runs
    rendered: Rendered | None = None  # set when it is first queued in this run
    # Deadlines the time-driven duties act on (epoch ms), None when none applies.
    queue_deadline_ms: int | None = None  # queue-timeout: unclaimed by then, it fails
    timeout_at_ms: int | None = None  # job timeout (+ grace) while running

    def to_row(self) -> dict[str, Any]:
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
            "soft_failed": self.soft_failed,
            "carried": self.carried,
            "rendered": self.rendered.to_row() if self.rendered else None,
            "queue_deadline_ms": self.queue_deadline_ms,
            "timeout_at_ms": self.timeout_at_ms,
        }

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> JobRun:
        data = dict(row)
        data["status"] = JobStatus(data["status"])
        rendered = data.get("rendered")
        data["rendered"] = Rendered.from_row(rendered) if rendered else None
        return cls(**data)

    @property
    def hard_failed(self) -> bool:
        return self.status is JobStatus.failure and not self.soft_failed

    @property
    def passed(self) -> bool:
        """Counts as passed for a dependent's `success()`."""
        return self.status is JobStatus.success or (
            self.status is JobStatus.failure and self.soft_failed
        )


@dataclass(slots=True)
class Run:
    """One run of a workflow; the run's row of the store plus its jobs' rows."""

    workflow_id: str
    number: int
    trigger: str = "manual"
    inputs: dict[str, Any] = field(default_factory=dict)
    status: RunStatus = RunStatus.queued
    created_at_ms: int = 0
    started_at_ms: int | None = None
    finished_at_ms: int | None = None
    rerun_of: int | None = None
    group: str | None = None  # concurrency group; None: the workflow is its own
    cancelled: bool = False  # a cancel was asked for
    reason: str | None = None  # why the run failed when no job says it (a timeout)
    deadline_ms: int | None = None  # the run's timeout, once started
    event: dict[str, Any] | None = None  # the triggering event's payload (webhooks)
    jobs: dict[str, JobRun] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        return self.status not in RUN_ENDED

    def to_row(self) -> dict[str, Any]:
        """The run's own fields (its jobs are rows of their own)."""
        return {
            "workflow_id": self.workflow_id,
            "number": self.number,
            "trigger": self.trigger,
            "inputs": self.inputs,
            "status": self.status.value,
            "created_at_ms": self.created_at_ms,
            "started_at_ms": self.started_at_ms,
            "finished_at_ms": self.finished_at_ms,
            "rerun_of": self.rerun_of,
            "group": self.group,
            "cancelled": self.cancelled,
            "reason": self.reason,
            "deadline_ms": self.deadline_ms,
            "event": self.event,
        }

    @classmethod
    def from_row(cls, row: Mapping[str, Any], jobs: Mapping[str, JobRun]) -> Run:
        data = dict(row)
        data["status"] = RunStatus(data["status"])
        return cls(**data, jobs=dict(jobs))


@dataclass(slots=True)
class Effects:
    """What the caller must carry out after an event, in this order of concern."""

    enqueued: list[str] = field(default_factory=list)  # now in the queue (see JobRun)
    withdrawn: list[str] = field(default_factory=list)  # taken out of the queue
    revoked: list[str] = field(default_factory=list)  # leases a worker still holds
    released: list[str] = field(default_factory=list)  # leases over (reported/expired)
    attempt_ended: list[tuple[str, bool]] = field(default_factory=list)  # (job, final)
    changed: set[str] = field(default_factory=set)  # jobs whose row changed
    run_changed: bool = False
    ended: bool = False  # the run just finished; `run.status` says how


# --- the plan of a run ----------------------------------------------------------


class RunPlan:
    """A run's concrete jobs and their graph, derived from (definition, inputs).

    Immutable once built; a run's plan is rebuilt identically after a restart.
    """

    def __init__(self, spec: WorkflowSpec, run: Run) -> None:
        self.spec = spec
        self.context = base_context(spec, run)
        instances = plan.expand(spec, self.context)
        self.instances: dict[str, JobInstance] = {i.id: i for i in instances}
        self.dependents: dict[str, list[str]] = {}
        self.groups: dict[str, list[str]] = {}  # definition job id -> concrete ids
        for inst in instances:
            self.groups.setdefault(inst.group, []).append(inst.id)
            for need in inst.needs:
                self.dependents.setdefault(need, []).append(inst.id)
        self._ancestors: dict[str, frozenset[str]] = {}
        self.timeout_secs = plan.run_timeout_secs(spec)

    def new_jobs(self) -> dict[str, JobRun]:
        return {job_id: JobRun() for job_id in self.instances}

    def ancestors(self, job_id: str) -> frozenset[str]:
        """Every job `job_id` transitively needs."""
        known = self._ancestors.get(job_id)
        if known is not None:
            return known
        # Iterative post-order: deep chains must not hit the recursion limit.
        stack = [(job_id, False)]
        while stack:
            node, expanded = stack.pop()
            if node in self._ancestors:
                continue
            needs = self.instances[node].needs
            if expanded:
                found: set[str] = set(needs)
                for need in needs:
                    found |= self._ancestors[need]
                self._ancestors[node] = frozenset(found)
            else:
                stack.append((node, True))
                stack.extend((n, False) for n in needs if n not in self._ancestors)
        return self._ancestors[job_id]


def base_context(spec: WorkflowSpec, run: Run) -> dict[str, Any]:
    """The expression contexts every job of the run shares."""
    event = run.event or {}
    return {
        "inputs": dict(run.inputs),
        "run": {"number": run.number, "trigger": run.trigger, "rerun_of": run.rerun_of},
        "workflow": {"id": spec.id, "name": spec.name},
        "github": dict(event.get("github", {})) if isinstance(event, dict) else {},
        # Placeholders, not values: a worker's claim alone receives the values.
        "secrets": context_placeholders(spec),
    }


def event_payload(run: Run) -> Any:
    """The payload of the event that started the run (`github.event`), or None: what a
    job reads from the file `GITHUB_EVENT_PATH` names."""
    github = run.event.get("github") if isinstance(run.event, dict) else None
    return github.get("event") if isinstance(github, dict) else None


# --- events -------------------------------------------------------------------


class Transition:
    """One event applied to one run at one instant (`now`, epoch ms).

    `cascade=False` is the embedded API-only mode of the contract: completing a
    job queues nothing and failing one skips nothing.
    """

    def __init__(self, run_plan: RunPlan, run: Run, now: int, *, cascade: bool = True) -> None:
        self.plan = run_plan
        self.run = run
        self.now = now
        self.cascade = cascade
        self.fx = Effects()

    # --- the events ---

    def start(self) -> Effects:
        """The run's turn has come: every job whose needs are met is decided."""
        run = self.run
        run.status = RunStatus.running
        run.started_at_ms = self.now
        if self.plan.timeout_secs:
            run.deadline_ms = self.now + self.plan.timeout_secs * 1000
        self.fx.run_changed = True
        self._settle(job_id for job_id, job in run.jobs.items() if job.status is JobStatus.queued)
        self._check_end()
        return self.fx

    def claimed(self, job_id: str, attempt: int, lease_id: str) -> bool:
        """A worker takes the queued job; False when the claim is stale (another run,
        attempt or a job no longer in the queue), which the caller drops."""
        job = self.run.jobs.get(job_id)
        if job is None or not self.run.active or not claim_job(job, attempt, lease_id, self.now):
            return False
        self.fx.changed.add(job_id)
        return True

    def completed(self, job_id: str, lease_id: str, outputs: Mapping[str, str]) -> Effects:
        job = self._held(job_id, lease_id)
        job.outputs = dict(outputs)
        self._finish(job_id, JobStatus.success)
        self._after_terminal([job_id])
        return self.fx

    def failed(self, job_id: str, lease_id: str, error: str, retryable: bool) -> Effects:
        """A reported failure (or an expiry): retried within the budget, else final."""
        job = self._held(job_id, lease_id)
        spec = self.plan.instances[job_id].spec
        if retryable and job.attempt < spec.retry_policy.max_retries:
            job.status = JobStatus.queued
            self._release(job)
            job.started_at = None
            job.timeout_at_ms = None
            self.fx.attempt_ended.append((job_id, False))
            delay = backoff_delay_secs(spec.retry_policy.backoff, job.attempt + 1)
            self._enqueue(job_id, attempt=job.attempt + 1, delay_secs=delay)
            return self.fx
        self._fail(job_id, error)
        return self.fx

    def expired(self, job_id: str, lease_id: str) -> Effects:
        """The lease's deadline passed: a retryable failure."""
        return self.failed(job_id, lease_id, LEASE_EXPIRED, retryable=True)

    def job_timed_out(self, job_id: str, lease_id: str) -> Effects:
        """Still running past its timeout and grace: failed, not retried, lease revoked."""
        job = self._held(job_id, lease_id)
        timeout = job.rendered.timeout_secs if job.rendered else None
        self.fx.revoked.append(lease_id)
        self._fail(job_id, f"timed out: still running {timeout} s after it started")
        return self.fx

    def queue_timed_out(self, job_id: str) -> Effects:
        """Not claimed within its queue-timeout: failed, not retried."""
        job = self.run.jobs.get(job_id)
        if job is None or not job.in_queue or job.queue_deadline_ms is None:
            return self.fx
        if job.queue_deadline_ms > self.now:
            return self.fx
        labels = list(job.rendered.labels) if job.rendered else []
        timeout = self.plan.instances[job_id].spec.queue_timeout_secs
        self.fx.withdrawn.append(job_id)
        job.in_queue = False
        wanted = f" with labels {labels}" if labels else ""
        self._fail(job_id, f"queue timeout: no worker{wanted} claimed it within {timeout} s")
        return self.fx

    def cancel(self) -> Effects:
        """Cancel the run: every queued or running job is cancelled, except those
        whose condition still holds under `cancelled()` (or `always()`), which run."""
        run = self.run
        if not run.active:
            return self.fx
        run.cancelled = True
        self.fx.run_changed = True
        if run.status is RunStatus.queued:
            # Never started: every job is cancelled, none ran.
            for job_id in run.jobs:
                self._finish(job_id, JobStatus.cancelled)
            self._check_end()
            return self.fx
        for job_id, job in run.jobs.items():
            if job.status not in (JobStatus.queued, JobStatus.running):
                continue
            inst = self.plan.instances[job_id]
            if self._needs_terminal(inst):
                if self._holds_safely(inst):
                    continue  # e.g. `if: always()`: it goes on under the cancel
            elif plan.survives_cancel(inst):
                continue  # decided once its needs are terminal
            self._stop(job_id, JobStatus.cancelled)
        self._settle(self._pending())
        self._check_end()
        return self.fx

    def timed_out(self) -> Effects:
        """The run's own timeout passed: every unfinished job is cancelled, it fails."""
        run = self.run
        if not run.active or run.deadline_ms is None or run.deadline_ms > self.now:
            return self.fx
        run.reason = f"the run timed out after {self.plan.timeout_secs} s"
        self.fx.run_changed = True
        for job_id, job in run.jobs.items():
            if job.status in (JobStatus.queued, JobStatus.running):
                self._stop(job_id, JobStatus.cancelled)
        self._check_end()
        return self.fx

    # --- internals ---

    def _held(self, job_id: str, lease_id: str) -> JobRun:
        job = self.run.jobs.get(job_id)
        if job is None or job.status is not JobStatus.running or job.lease_id != lease_id:
            raise LeaseNotActive(lease_id)
        return job

    def _release(self, job: JobRun) -> None:
        if job.lease_id is not None:
            self.fx.released.append(job.lease_id)
            job.lease_id = None

    def _fail(self, job_id: str, error: str) -> None:
        job = self.run.jobs[job_id]
        job.output = error
        job.soft_failed = bool(job.rendered and job.rendered.continue_on_error)
        self._finish(job_id, JobStatus.failure)
        if job.hard_failed and plan.fail_fast(self.plan.instances[job_id]):
            for sibling in self.plan.groups[self.plan.instances[job_id].group]:
                if self.run.jobs[sibling].status not in TERMINAL_STATUSES:
                    self._stop(sibling, JobStatus.cancelled)
        self._after_terminal([job_id])

    def _stop(self, job_id: str, status: JobStatus) -> None:
        """End a job that may be queued or running now: out of the queue, lease revoked."""
        job = self.run.jobs[job_id]
        if job.in_queue:
            self.fx.withdrawn.append(job_id)
        if job.lease_id is not None:
            self.fx.revoked.append(job.lease_id)
        self._finish(job_id, status)

    def _finish(self, job_id: str, status: JobStatus) -> None:
        job = self.run.jobs[job_id]
        if job.status in TERMINAL_STATUSES:
            return
        job.status = status
        job.in_queue = False
        job.queue_deadline_ms = None
        job.timeout_at_ms = None
        self._release(job)
        if job.started_at is not None:
            job.duration_secs = max(0, round((self.now - job.started_at) / 1000))
        self.fx.changed.add(job_id)
        self.fx.attempt_ended.append((job_id, True))

    def _after_terminal(self, job_ids: Iterable[str]) -> None:
        """Decide what the ended jobs unblock, then whether the run is over."""
        if self.cascade:
            candidates: list[str] = []
            for job_id in job_ids:
                if not self.run.jobs[job_id].passed:
                    self._skip_doomed(job_id)
                candidates.extend(self.plan.dependents.get(job_id, ()))
                inst = self.plan.instances[job_id]
                if plan.max_parallel(inst):
                    candidates.extend(self.plan.groups[inst.group])
            self._settle(candidates)
        self._check_end()

    def _skip_doomed(self, job_id: str) -> None:
        """The job ended without passing: every pending transitive dependent whose
        condition needs `success()` can never run, and is skipped now (the contract's
        "every transitive dependent skipped" at the failure, not at the end)."""
        jobs = self.run.jobs
        stack = list(self.plan.dependents.get(job_id, ()))
        while stack:
            dependent = stack.pop()
            job = jobs[dependent]
            if job.status is not JobStatus.queued or job.in_queue:
                continue
            if not plan.requires_success(self.plan.instances[dependent]):
                continue  # decided by its own condition once its needs are terminal
            self._finish(dependent, JobStatus.skipped)
            stack.extend(self.plan.dependents.get(dependent, ()))

    def _settle(self, candidates: Iterable[str]) -> None:
        """Queue or skip each pending candidate whose needs are all terminal, and
        go on with what those decisions unblock, until nothing more is decided."""
        stack = list(candidates)
        stack.reverse()  # decide in definition order: the queue keeps it
        jobs = self.run.jobs
        while stack:
            job_id = stack.pop()
            job = jobs[job_id]
            if job.status is not JobStatus.queued or job.in_queue:
                continue
            inst = self.plan.instances[job_id]
            if not self._needs_terminal(inst):
                continue
            try:
                runs = self._holds(inst)
            except EvaluationError as exc:
                job.output = f"the job's condition failed: {exc}"
                self._end_unpassed(job_id, JobStatus.failure, stack)
                continue
            if not runs:
                self._end_unpassed(job_id, JobStatus.skipped, stack)
                continue
            limit = plan.max_parallel(inst)
            if limit is not None and self._active_in_group(inst.group) >= limit:
                continue  # held back; decided again when a sibling ends
            try:
                self._enqueue(job_id, attempt=0, delay_secs=0)
            except EvaluationError as exc:
                job.output = str(exc)
                self._end_unpassed(job_id, JobStatus.failure, stack)

    def _end_unpassed(self, job_id: str, status: JobStatus, stack: list[str]) -> None:
        """In `_settle`: the job ends skipped or failed; what it dooms is skipped and
        its dependents become candidates."""
        self._finish(job_id, status)
        self._skip_doomed(job_id)
        stack.extend(reversed(self.plan.dependents.get(job_id, ())))

    def _pending(self) -> list[str]:
        return [
            job_id
            for job_id, job in self.run.jobs.items()
            if job.status is JobStatus.queued and not job.in_queue
        ]

    def _needs_terminal(self, inst: JobInstance) -> bool:
        jobs = self.run.jobs
        return all(jobs[need].status in TERMINAL_STATUSES for need in inst.needs)

    def _active_in_group(self, group: str) -> int:
        jobs = self.run.jobs
        return sum(
            1
            for job_id in self.plan.groups[group]
            if jobs[job_id].in_queue or jobs[job_id].status is JobStatus.running
        )

    def status_of(self, inst: JobInstance) -> Status:
        """The status functions as the job's condition sees them (GitHub's meaning:
        `failure()` looks at every ancestor, `success()` needs every need passed)."""
        jobs = self.run.jobs
        failure = any(jobs[a].hard_failed for a in self.plan.ancestors(inst.id))
        success = (
            not self.run.cancelled and not failure and all(jobs[need].passed for need in inst.needs)
        )
        return Status(success=success, failure=failure, cancelled=self.run.cancelled)

    def _holds(self, inst: JobInstance) -> bool:
        return plan.condition(inst, self.context_for(inst), self.status_of(inst))

    def _holds_safely(self, inst: JobInstance) -> bool:
        """`_holds` where a condition that fails to evaluate counts as false."""
        try:
            return self._holds(inst)
        except EvaluationError:
            return False

    def context_for(self, inst: JobInstance) -> dict[str, Any]:
        """The expression contexts of one job: the run's plus its `needs`."""
        ctx = dict(self.plan.context)
        ctx["needs"] = needs_context(self.plan, self.run, inst)
        return ctx

    def _enqueue(self, job_id: str, attempt: int, delay_secs: int) -> None:
        job = self.run.jobs[job_id]
        if job.rendered is None:
            inst = self.plan.instances[job_id]
            job.rendered = plan.render(inst, self.context_for(inst))
        job.in_queue = True
        job.attempt = attempt
        job.enqueued_at_ms = self.now
        job.delayed_until_ms = self.now + delay_secs * 1000 if delay_secs else 0
        queue_timeout = self.plan.instances[job_id].spec.queue_timeout_secs
        job.queue_deadline_ms = (
            max(self.now, job.delayed_until_ms) + queue_timeout * 1000 if queue_timeout else None
        )
        self.fx.changed.add(job_id)
        self.fx.enqueued.append(job_id)

    def _check_end(self) -> None:
        run = self.run
        # From the end: jobs end roughly in definition order, so an unfinished one is
        # found at once instead of after every finished one (O(1), not O(jobs), per end).
        jobs = reversed(run.jobs.values())
        if not run.active or any(job.status not in TERMINAL_STATUSES for job in jobs):
            return
        if run.reason is not None or any(job.hard_failed for job in run.jobs.values()):
            run.status = RunStatus.failure
        elif run.cancelled:
            run.status = RunStatus.cancelled
        else:
            run.status = RunStatus.success
        run.finished_at_ms = self.now
        run.deadline_ms = None
        self.fx.run_changed = True
        self.fx.ended = True


def claim_job(job: JobRun, attempt: int, lease_id: str, now: int) -> bool:
    """The claim rule on its own (a claim touches one job and no other state): the job
    must be in the queue at that attempt; it becomes `running` under the lease."""
    if not job.in_queue or job.attempt != attempt or job.status is not JobStatus.queued:
        return False
    job.in_queue = False
    job.status = JobStatus.running
    job.lease_id = lease_id
    job.started_at = now
    job.queue_deadline_ms = None
    timeout = job.rendered.timeout_secs if job.rendered else None
    job.timeout_at_ms = now + (timeout + JOB_TIMEOUT_GRACE_SECS) * 1000 if timeout else None
    return True


def needs_context(run_plan: RunPlan, run: Run, inst: JobInstance) -> dict[str, Any]:
    """`needs.<job>.result` and `.outputs` for each job `inst` needs, by definition id;
    a matrix's combinations combine: any failure fails it, later outputs win."""
    by_group: dict[str, list[str]] = {}
    for need in inst.needs:
        by_group.setdefault(run_plan.instances[need].group, []).append(need)
    needs: dict[str, Any] = {}
    for group, members in by_group.items():
        results = [run.jobs[m].status for m in members]
        if JobStatus.failure in results:
            result = "failure"
        elif JobStatus.cancelled in results:
            result = "cancelled"
        elif all(r is JobStatus.skipped for r in results):
            result = "skipped"
        elif all(r in (JobStatus.success, JobStatus.skipped) for r in results):
            result = "success"
        else:
            result = ""  # not all terminal: only seen by a preview
        outputs: dict[str, str] = {}
        for member in members:
            outputs.update(run.jobs[member].outputs)
        needs[group] = {"result": result, "outputs": outputs}
    return needs


def upstream_outputs(run_plan: RunPlan, run: Run, job_id: str) -> dict[str, dict[str, str]]:
    """The contract's `upstream_outputs`: each direct dependency's outputs, by job id."""
    return {need: dict(run.jobs[need].outputs) for need in run_plan.instances[job_id].needs}


def rerun_jobs(previous: Run, run_plan: RunPlan, failed_only: bool) -> dict[str, JobRun]:
    """A re-run's jobs: all fresh, or (failed only) every job that succeeded in
    `previous` carried over as `success` with its outputs and duration."""
    jobs = run_plan.new_jobs()
    if not failed_only:
        return jobs
    for job_id, job in jobs.items():
        before = previous.jobs.get(job_id)
        if before is not None and before.status is JobStatus.success:
            job.status = JobStatus.success
            job.carried = True
            job.attempt = before.attempt
            job.outputs = dict(before.outputs)
            job.started_at = before.started_at
            job.duration_secs = before.duration_secs
            job.rendered = before.rendered
    return jobs
