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
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from .actor import Reply
from .automation import Automation
from .clock import now_ms
from .errors import Conflict, LeaseNotActive, LimitExceeded, NotFound
from .groups import ConcurrencyGroups, Join, Leave, RunKey
from .journal import Journal, StoreFailed
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
from .limits import Limits, stamp_chunks
from .logs import (
    Forget,
    JobEnded,
    LogsActor,
    OpenRun,
    ReadLog,
    Seed,
    Subscribe,
    Subscription,
    stored_log,
    stream,
)
from .metrics import Metrics, QueueState
from .models import (
    TERMINAL_STATUSES,
    Claim,
    JobStatus,
    Lease,
    LogChunk,
    LogChunkIn,
    NotificationStatus,
    QueuedJob,
    Run,
    RunAccepted,
    RunStatus,
    ScheduleInfo,
    WorkerInfo,
    Workflow,
    WorkflowCreate,
)
from .rules import JobRun, RunPlan
from .rules import Run as RunState
from .scheduler import (
    ClaimJob,
    Entry,
    QueueStats,
    ReadQueue,
    Requeue,
    Scheduler,
    StopParking,
    Unpark,
)
from .secrets import SecretStore, job_references
from .spec import (
    DefinitionError,
    JobSpec,
    WorkflowSpec,
    spec_from_create,
    spec_from_json,
    spec_to_json,
)
from .store import (
    Snapshot,
    Store,
    StoredRun,
    drop_lease,
    mark_alive,
    prune_runs,
    put_workflow,
    read_log,
    read_run,
    read_runs,
    spec_hash,
)
from .timers import Timers
from .trigger_store import (
    EmbeddedTriggerStore,
    MemoryTriggerStore,
    RunMark,
    SqliteTriggerStore,
)
from .waiting import WATCH_INTERVAL_SECS, Coverage, WaitingWatch
from .webhooks import Delivery
from .workers import (
    Heartbeat,
    JobHeld,
    ListWorkers,
    ReadCoverage,
    Register,
    Seen,
    WorkerRegistry,
)
from .workflow import (
    CANCELLED_UNRUN,
    AdmitRun,
    CancelRuns,
    CreateRun,
    GetStatus,
    GetStatusCounts,
    IsCancelled,
    JobClaimed,
    LiveRun,
    RestoredRun,
    WorkflowActor,
    no_run_error,
    run_view,
)

log = logging.getLogger("workflow_graph")

DEFAULT_RETAIN_RUNS = 50
READY_CHECK_TIMEOUT_SECS = 2.0


class MemoryHistory:
    """With no store, the retained runs of every workflow live here."""

    def __init__(self) -> None:
        self.runs: dict[str, OrderedDict[int, LiveRun]] = {}

    def add(self, live: LiveRun) -> None:
        self.runs.setdefault(live.state.workflow_id, OrderedDict())[live.state.number] = live

    def prune(self, workflow_id: str, below: int) -> list[int]:
        runs = self.runs.get(workflow_id, OrderedDict())
        gone = [n for n, live in runs.items() if n < below and not live.state.active]
        for number in gone:
            del runs[number]
        return gone

    def page(self, workflow_id: str, limit: int, offset: int) -> list[LiveRun]:
        runs = self.runs.get(workflow_id)
        if not runs:
            return []
        newest_first = reversed(runs.values())
        return list(itertools.islice(newest_first, offset, offset + limit))

    def get(self, workflow_id: str, number: int) -> LiveRun | None:
        runs = self.runs.get(workflow_id)
        return runs.get(number) if runs is not None else None


@dataclass
class System:
    """What actors know of each other: addresses, not state."""

    scheduler: Scheduler
    logs: LogsActor
    workers: WorkerRegistry
    timers: Timers
    api_only: bool
    journal: Journal | None = None  # None: nothing is stored
    retain_runs: int = DEFAULT_RETAIN_RUNS  # runs per workflow the store keeps
    leases: dict[str, LeaseActor] = field(default_factory=dict)
    workflows: dict[str, WorkflowActor] = field(default_factory=dict)
    groups: ConcurrencyGroups | None = None
    history: MemoryHistory | None = None  # with no store
    trigger_store: EmbeddedTriggerStore = field(default_factory=MemoryTriggerStore)
    automation: Automation | None = None  # schedules, webhook deliveries, notifications
    metrics: Metrics = field(default_factory=Metrics)
    secrets: SecretStore = field(default_factory=SecretStore)
    _run_seq: int = 1
    _specs: dict[str, WorkflowSpec] = field(default_factory=dict)  # by digest
    _digests: dict[int, tuple[WorkflowSpec, str, str]] = field(default_factory=dict)

    def revoke_lease(self, lease_id: str) -> None:
        lease = self.leases.get(lease_id)
        if lease is not None:
            lease.tell(Revoke())

    def lease_ended(self, lease_id: str) -> None:
        self.leases.pop(lease_id, None)

    # --- runs ---

    def next_run_seq(self) -> int:
        seq, self._run_seq = self._run_seq, self._run_seq + 1
        return seq

    def run_plan(self, spec: WorkflowSpec, state: RunState) -> RunPlan:
        return RunPlan(spec, state)

    def spec_digest(self, spec: WorkflowSpec) -> tuple[str, str]:
        """(digest, json) of a definition, computed once per definition object."""
        known = self._digests.get(id(spec))
        if known is not None and known[0] is spec:
            return known[1], known[2]
        text = spec_to_json(spec)
        digest = spec_hash(text)
        self._digests[id(spec)] = (spec, digest, text)
        self._specs.setdefault(digest, spec)
        return digest, text

    def spec_from_store(self, digest: str, text: str) -> WorkflowSpec:
        spec = self._specs.get(digest)
        if spec is None:
            spec = self._specs[digest] = spec_from_json(text)
        return spec

    def history_add(self, live: LiveRun) -> None:
        if self.history is not None:
            self.history.add(live)

    def prune_history(self, workflow_id: str, newest: int) -> None:
        """Keep the last `retain_runs` runs of the workflow (never an unfinished one)."""
        below = newest - self.retain_runs + 1
        if below <= 1:
            return
        if self.history is not None:
            gone = self.history.prune(workflow_id, below)
            if gone:
                self.logs.tell(Forget(workflow_id, gone))
        elif self.journal is not None:
            self.journal.submit(prune_runs(workflow_id, below))

    def run_ended(self, state: RunState, actor: WorkflowActor) -> None:
        if state.group is not None and self.groups is not None:
            self.groups.tell(Leave(state.group, (state.workflow_id, state.number)))
        if self.automation is not None:
            self.notify_run_end(state, actor)

    def notify_run_end(self, state: RunState, actor: WorkflowActor) -> None:
        """The notifications the run owes: committed with its end, then sent."""
        assert self.automation is not None
        spec = next(
            (live.plan.spec for live in actor.live_runs() if live.state.number == state.number),
            actor.spec,
        )
        for notification in self.automation.due_notifications(state, spec):
            for record in self.trigger_store.records(notification):
                actor.record(record)
            self.trigger_store.committed(notification)
            self.automation.notifier.enqueue(notification)

    def run_left_memory(self, workflow_id: str, number: int) -> None:
        if self.history is None:  # the store keeps its logs; memory need not
            self.logs.tell(Forget(workflow_id, [number]))

    # --- logs ---

    def logs_open_run(self, workflow_id: str, number: int, job_ids: list[str]) -> None:
        self.logs.tell(OpenRun(workflow_id, number, job_ids))

    def logs_seed(self, workflow_id: str, number: int, job_id: str, chunks: list[LogChunk]) -> None:
        self.logs.tell(Seed((workflow_id, number, job_id), chunks))

    def logs_job_ended(self, workflow_id: str, number: int, job_id: str, final: bool) -> None:
        self.logs.tell(JobEnded((workflow_id, number, job_id), final))

    # --- concurrency groups ---

    def admit(self, key: RunKey) -> None:
        actor = self.workflows.get(key[0])
        if actor is not None:
            actor.tell(AdmitRun(key[1]))

    def cancel_run(self, key: RunKey) -> None:
        actor = self.workflows.get(key[0])
        if actor is not None:
            actor.tell(CancelRuns(key[1]))


class Runtime:
    """Typed entry points to the actor system. Create with `open_runtime`."""

    def __init__(self, nursery: trio.Nursery, system: System, limits: Limits) -> None:
        self._nursery = nursery
        self._system = system
        self.limits = limits
        self._next_seq = 1  # creation order of API-created workflows, as stored
        # The directory of workflow actors, in creation order (files first, by name).
        self._workflows = system.workflows
        self._waiting = WaitingWatch()
        self._started = False
        self._stopping = False

    @property
    def api_only(self) -> bool:
        return self._system.api_only

    @property
    def metrics(self) -> Metrics:
        return self._system.metrics

    @property
    def secret_names(self) -> frozenset[str]:
        """The secrets a definition may read (`${{ secrets.NAME }}`)."""
        return self._system.secrets.names

    @property
    def workflow_count(self) -> int:
        return len(self._workflows)

    @property
    def retain_runs(self) -> int:
        return self._system.retain_runs

    # --- workflows ---

    def add_workflow(
        self,
        spec: WorkflowSpec,
        restored: list[RestoredRun] | None = None,
        next_number: int = 1,
        cancelled_unrun: bool = False,
    ) -> WorkflowActor:
        if spec.id in self._workflows:
            raise DefinitionError(f"duplicate workflow id '{spec.id}'")
        self._check_room()
        # Started on its first message: thousands of idle workflows cost no tasks.
        actor = WorkflowActor(
            spec,
            self._system,
            restored or [],
            next_number=next_number,
            cancelled_unrun=cancelled_unrun,
            spawn=self._nursery.start_soon,
        )
        self._workflows[spec.id] = actor
        return actor

    def _check_room(self) -> None:
        self.limits.check_room(len(self._workflows))

    def _workflow(self, workflow_id: str) -> WorkflowActor:
        try:
            return self._workflows[workflow_id]
        except KeyError:
            raise NotFound(f"workflow '{workflow_id}' not found") from None

    async def create_workflow(self, body: WorkflowCreate) -> Workflow:
        self.limits.check_create(body)
        spec = spec_from_create(str(uuid.uuid4()), body, secrets=self.secret_names)
        self.check_definition(spec)
        self._check_room()  # before the store commit: a refused create leaves no trace
        if self._system.journal is not None:
            seq, self._next_seq = self._next_seq, self._next_seq + 1
            with trio.CancelScope(shield=True):
                await self._system.journal.commit([put_workflow(spec.id, seq, spec_to_json(spec))])
        self.add_workflow(spec)
        if self._system.automation is not None:
            await self._system.automation.clock.add(spec)
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
        coverage = await self._coverage() if page else None
        return await self._ask_all(page, lambda: GetStatus(coverage))

    async def _ask_all(self, actors: list[WorkflowActor], make_message) -> list:
        """Ask many actors at once and gather the answers in order."""
        replies = [actor.post(make_message()) for actor in actors]
        return [await r.wait() for r in replies]

    async def get_status(self, workflow_id: str) -> Workflow:
        actor = self._workflow(workflow_id)
        return await actor.ask(GetStatus(await self._coverage()))

    async def _coverage(self) -> Coverage:
        """The live workers' label sets now, for the `waiting` of the jobs in a view."""
        reading = await self._system.workers.ask(ReadCoverage())
        watch = self._waiting
        return Coverage(reading.live_label_sets, now_ms(), watch.since, watch.last_look_ms)

    async def get_definition(self, workflow_id: str) -> WorkflowSpec:
        """The definition new runs of the workflow start with (immutable)."""
        return self._workflow(workflow_id).spec

    # --- runs ---

    async def run_workflow(
        self,
        workflow_id: str,
        inputs: dict[str, Any] | None = None,
        *,
        trigger: str = "manual",
        event: dict[str, Any] | None = None,
        mark: RunMark | None = None,
    ) -> RunAccepted:
        """Start a run, or queue it behind its concurrency group. Conflict when the
        workflow is its own group and a run is active; Invalid for bad inputs.
        `mark` (what started the run: a schedule's due time, a webhook delivery)
        is stored in the run's own commit."""
        actor = self._workflow(workflow_id)
        self._system.secrets.check_spec(actor.spec)
        store = self._system.trigger_store
        records = store.records(mark) if mark is not None else []
        created = await actor.ask(
            CreateRun(inputs=dict(inputs or {}), trigger=trigger, event=event, records=records)
        )
        if mark is not None:
            store.committed(mark)
        return await self._join(actor, created)

    async def rerun(self, workflow_id: str, number: int, failed_only: bool = False) -> RunAccepted:
        """Run run `number` again with its inputs; `failed_only` keeps what succeeded."""
        actor = self._workflow(workflow_id)
        previous, spec = await self._run_state(actor, number)
        if previous.active:
            raise Conflict(f"run {number} of workflow '{workflow_id}' has not finished")
        self._system.secrets.check_spec(spec)
        carried: dict[str, list[LogChunk]] = {}
        if failed_only:
            for job_id, job in previous.jobs.items():
                if job.status is JobStatus.success:
                    carried[job_id] = await self.get_logs(workflow_id, job_id, number)
        created = await actor.ask(
            CreateRun(
                trigger="rerun",
                previous=previous,
                previous_spec=spec,
                failed_only=failed_only,
                carried_logs=carried,
            )
        )
        return await self._join(actor, created)

    async def _join(self, actor: WorkflowActor, created) -> RunAccepted:
        status = created.status
        if created.group is not None:
            assert self._system.groups is not None
            key = (actor.spec.id, created.number)
            started = await self._system.groups.ask(
                Join(created.group, key, created.cancel_in_progress)
            )
            status = RunStatus.running if started else RunStatus.queued
        return RunAccepted(workflow_id=actor.spec.id, number=created.number, status=status)

    async def cancel_workflow(self, workflow_id: str) -> None:
        """Cancel every unfinished run of the workflow (the contract's cancel)."""
        await self._workflow(workflow_id).ask(CancelRuns())

    async def cancel_run(self, workflow_id: str, number: int) -> Run:
        actor = self._workflow(workflow_id)
        await self._run_state(actor, number)  # 404 for an unknown or pruned run
        await actor.ask(CancelRuns(number))
        return await self.get_run(workflow_id, number)

    async def list_runs(self, workflow_id: str, limit: int = 20, offset: int = 0) -> list[Run]:
        """The workflow's retained runs, newest first."""
        actor = self._workflow(workflow_id)
        system = self._system
        if system.history is not None:
            page = system.history.page(workflow_id, limit, offset)
            coverage = await self._coverage() if page else None
            return [run_view(live.state, live.plan, coverage) for live in page]
        if system.journal is None:
            return []
        stored = await system.journal.read(lambda db: read_runs(db, workflow_id, limit, offset))
        runs = []
        held = {live.state.number: live for live in actor.live_runs()}
        coverage = await self._coverage() if held else None
        for row in stored:
            live = held.get(row.row["number"])
            if live is not None:
                runs.append(run_view(live.state, live.plan, coverage))
            else:
                runs.append(self._stored_view(row))
        return runs

    async def get_run(self, workflow_id: str, number: int) -> Run:
        actor = self._workflow(workflow_id)
        state, spec = await self._run_state(actor, number)
        coverage = await self._coverage() if state.active else None
        return run_view(state, self._system.run_plan(spec, state), coverage)

    async def _run_state(self, actor: WorkflowActor, number: int) -> tuple[RunState, WorkflowSpec]:
        """A run's state and definition, from memory or the store; NotFound says whether
        the run never existed or was pruned."""
        for live in actor.live_runs():
            if live.state.number == number:
                return live.state, live.plan.spec
        system = self._system
        if system.history is not None:
            kept_run = system.history.get(actor.spec.id, number)
            if kept_run is not None:
                return kept_run.state, kept_run.plan.spec
        elif system.journal is not None and 0 < number < actor.next_number:
            workflow_id = actor.spec.id
            stored = await system.journal.read(lambda db: read_run(db, workflow_id, number))
            if stored is not None:
                return self._stored_state(stored)
        raise self._no_run(actor, number)

    def _no_run(self, actor: WorkflowActor, number: int) -> NotFound:
        return no_run_error(actor.spec.id, number, actor.next_number, self._system.retain_runs)

    def _stored_state(self, stored: StoredRun) -> tuple[RunState, WorkflowSpec]:
        spec = self._system.spec_from_store(stored.spec_hash, stored.spec_json)
        jobs = {job_id: JobRun.from_row(row) for job_id, row in stored.jobs.items()}
        return RunState.from_row(stored.row, jobs), spec

    def _stored_view(self, stored: StoredRun) -> Run:
        state, spec = self._stored_state(stored)
        return run_view(state, self._system.run_plan(spec, state))

    # --- triggers ---

    async def definitions(self) -> list[WorkflowSpec]:
        """Every workflow's current definition, in creation order."""
        return [actor.spec for actor in self._workflows.values()]

    def _automation(self) -> Automation:
        assert self._system.automation is not None, "open the runtime with open_runtime"
        return self._system.automation

    async def schedules(self, workflow_id: str) -> list[ScheduleInfo]:
        """The workflow's schedules with their next and last due times."""
        return self._automation().clock.view(self._workflow(workflow_id).spec)

    async def deliver(self, delivery_id: str, delivery: Delivery) -> list[RunAccepted]:
        """Start every run a webhook delivery matches; a delivery id seen before starts none."""
        return await self._automation().intake.deliver(delivery_id, delivery)

    async def run_notifications(self, workflow_id: str, number: int) -> list[NotificationStatus]:
        """How each notification of the run's end went (none before it ended)."""
        self._workflow(workflow_id)
        return await self._automation().run_notifications(workflow_id, number)

    async def is_cancelled(self, workflow_id: str, job_id: str, number: int | None = None) -> bool:
        return await self._workflow(workflow_id).ask(IsCancelled(job_id, number))

    # --- workers ---

    async def register_worker(self, worker_id: str, labels: list[str]) -> WorkerInfo:
        self.limits.check_labels(labels)
        return await self._system.workers.ask(Register(worker_id, list(labels)))

    async def worker_heartbeat(self, worker_id: str) -> WorkerInfo:
        return await self._system.workers.ask(Heartbeat(worker_id))

    async def list_workers(self) -> list[WorkerInfo]:
        return await self._system.workers.ask(ListWorkers())

    def check_definition(self, spec: WorkflowSpec) -> None:
        """The limits a definition must keep (see `Limits.check_definition`)."""
        self.limits.check_definition(spec)

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
        self.limits.check_labels(labels)
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
                if entry.woke_claim:
                    self.metrics.claim_dispatched(trio.current_time() - entry.due)
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
        workflow_id, number, job_id = entry.key
        actor = self._workflows.get(workflow_id)
        if actor is None:
            return None
        lease_id = str(uuid.uuid4())
        now = now_ms()
        lease = Lease(
            lease_id=lease_id,
            job_id=job_id,
            workflow_id=workflow_id,
            worker_id=worker_id,
            ttl_secs=ttl_secs,
            granted_at_ms=now,
        )
        job, secrets = self._reveal(actor, number, entry.job)
        try:
            # Shielded: a job is either leased or back in the queue, never lost between.
            with trio.CancelScope(shield=True):
                lease_actor = LeaseActor(
                    lease, number, actor, self._system, attempt=entry.attempt, secrets=secrets
                )
                claimed = JobClaimed(
                    number, job_id, entry.attempt, lease, deadline_ms(lease_actor.deadline)
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
        claimable_ms = max(job.enqueued_at_ms, job.delayed_until_ms)
        self.metrics.job_claimed(workflow_id, (now - claimable_ms) / 1000)
        return Claim(job=job, lease=lease)

    def _reveal(self, actor: WorkflowActor, number: int, job: QueuedJob) -> tuple[QueuedJob, list]:
        """The job as its claim carries it: the secrets its definition reads, in its env
        (and the values given, to mask its logs with)."""
        if not any("secrets" in value for value in job.env.values()):
            return job, []
        spec = self._job_spec(actor, number, job.job_id)
        allowed = job_references(spec) if spec is not None else frozenset()
        env, values = self._system.secrets.reveal(job.env, allowed)
        return job.model_copy(update={"env": env}), values

    def _job_spec(self, actor: WorkflowActor, number: int, job_id: str) -> JobSpec | None:
        """The definition of a job of a run the workflow holds (immutable, safe to read)."""
        for live in actor.live_runs():
            if live.state.number == number:
                inst = live.plan.instances.get(job_id)
                return inst.spec if inst is not None else None
        return None

    def _lease_secrets(self, actor: WorkflowActor, number: int, job_id: str) -> list[str]:
        """The secret values a restored lease's job was given."""
        spec = self._job_spec(actor, number, job_id)
        if spec is None:
            return []
        values = self._system.secrets.values
        return [values[name] for name in job_references(spec) if name in values]

    def _restore(self, snapshot: Snapshot, file_specs: list[WorkflowSpec]) -> None:
        """Before serving: workflows, runs, queue, groups, leases, logs and workers."""
        system = self._system
        specs = list(file_specs)
        for _, text in snapshot.workflows:
            specs.append(spec_from_json(text))
        self._next_seq = len(snapshot.workflows) + 1
        system._run_seq = snapshot.next_run_seq
        queued: list[tuple[int, int, int, str, WorkflowActor]] = []
        ended_logs: list[tuple[str, int, str]] = []
        holders: dict[str, RunKey] = {}
        waiting: list[tuple[int, str, RunKey]] = []
        for order, spec in enumerate(specs):
            restored = []
            for stored in snapshot.runs.get(spec.id, {}).values():
                state, run_spec = self._stored_state(stored)
                restored.append(RestoredRun(state, run_spec, stored.seq, stored.spec_hash))
            try:
                actor = self.add_workflow(
                    spec,
                    restored,
                    next_number=snapshot.next_numbers.get(spec.id, 1),
                    cancelled_unrun=(spec.id, CANCELLED_UNRUN) in snapshot.flags,
                )
            except (DefinitionError, LimitExceeded) as exc:
                log.warning("not restoring workflow %s: %s", spec.id, exc)
                continue
            for live in actor.live_runs():
                state = live.state
                for job_id, job in state.jobs.items():
                    if job.status in TERMINAL_STATUSES:
                        ended_logs.append((spec.id, state.number, job_id))
                if state.group is not None and state.status is RunStatus.running:
                    holders[state.group] = (spec.id, state.number)
                elif state.group is not None and state.status is RunStatus.queued:
                    waiting.append((live.seq, state.group, (spec.id, state.number)))
            queued.extend(
                (at, order, number, job_id, actor) for at, number, job_id in actor.restored_queue()
            )
        # One queue in the order jobs first entered it, across all workflows.
        for _, _, number, job_id, actor in sorted(queued, key=lambda w: w[:4]):
            actor.requeue_restored(number, job_id)
        system.logs.restore(snapshot.logs, ended_logs)
        system.workers.restore(snapshot.workers)
        groups_waiting: dict[str, list[RunKey]] = {}
        for _, group, key in sorted(waiting):
            groups_waiting.setdefault(group, []).append(key)
        assert system.groups is not None
        system.groups.restore(holders, groups_waiting)
        for actor in self._workflows.values():
            actor.rearm_deadlines()
        stale = []
        for lease_json, number, stored_deadline in snapshot.leases:
            lease = Lease.model_validate_json(lease_json)
            owner = self._workflows.get(lease.workflow_id)
            held = owner.restored_leases().get(lease.lease_id) if owner is not None else None
            if owner is None or held != (number, lease.job_id):
                stale.append(drop_lease(lease.lease_id))
                continue
            attempt = owner.live_attempt(number, lease.job_id)
            # A deadline that passed while the server was down expires at once.
            lease_actor = LeaseActor(
                lease,
                number,
                owner,
                system,
                deadline=deadline_from_ms(stored_deadline),
                attempt=attempt,
                secrets=self._lease_secrets(owner, number, lease.job_id),
                claimed_at_ms=owner.live_started_at(number, lease.job_id),
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
        self.limits.check_push(chunks)
        lease_actor = self._lease(lease_id)
        lease = lease_actor.lease
        stored = stamp_chunks(
            lease.workflow_id, lease.job_id, chunks, now_ms(), lease_actor.attempt
        )
        await self._ask_lease(lease_id, PushLogs(stored))

    # --- logs ---

    async def _log_key(
        self, workflow_id: str, job_id: str, number: int | None
    ) -> tuple[WorkflowActor, int]:
        """The run a log request means (the latest when `number` is None), checked."""
        actor = self._workflow(workflow_id)
        if number is None:
            if not actor.has_job(job_id):
                raise NotFound(f"job '{job_id}' not found in workflow '{workflow_id}'")
            return actor, actor.latest_number
        state, _ = await self._run_state(actor, number)
        if job_id not in state.jobs:
            raise NotFound(f"job '{job_id}' not found in run {number} of workflow '{workflow_id}'")
        return actor, number

    async def get_logs(
        self, workflow_id: str, job_id: str, number: int | None = None
    ) -> list[LogChunk]:
        """Every stored chunk of the job in run `number` (default: the latest run)."""
        actor, number = await self._log_key(workflow_id, job_id, number)
        if number == 0:
            return []  # never ran
        chunks = await self._system.logs.ask(ReadLog((workflow_id, number, job_id)))
        if chunks is not None:
            return chunks
        return await self._stored_log(workflow_id, number, job_id)

    async def _stored_log(self, workflow_id: str, number: int, job_id: str) -> list[LogChunk]:
        journal = self._system.journal
        if journal is None:
            return []
        return [chunk for _, chunk in await self._stored_log_indexed(workflow_id, number, job_id)]

    async def _stored_log_indexed(
        self, workflow_id: str, number: int, job_id: str, after: int = -1
    ) -> list[tuple[int, LogChunk]]:
        journal = self._system.journal
        if journal is None:
            return []
        texts = await journal.read(lambda db: read_log(db, workflow_id, number, job_id))
        chunks = [LogChunk.model_validate_json(t) for t in texts]
        return stored_log(chunks, self.limits.max_log_bytes_per_job, after)

    async def subscribe_logs(
        self, workflow_id: str, job_id: str, number: int | None = None, after: int = -1
    ) -> Subscription:
        """Replay (of the chunks indexed after `after`) plus a live channel that closes
        after the job's last chunk; both give each chunk with its index in the run."""
        actor, number = await self._log_key(workflow_id, job_id, number)
        key = (workflow_id, number, job_id)
        subscription = await self._system.logs.ask(Subscribe(key, after))
        if subscription is not None:
            return subscription
        # A run no longer in memory has ended: its stream is the replay alone.
        send, receive = trio.open_memory_channel[tuple[int, LogChunk]](0)
        send.close()
        replay = await self._stored_log_indexed(workflow_id, number, job_id, after)
        return Subscription(replay, receive)

    async def stream_logs(
        self, workflow_id: str, job_id: str, number: int | None = None
    ) -> AsyncIterator[LogChunk]:
        async for chunk in stream(await self.subscribe_logs(workflow_id, job_id, number)):
            yield chunk

    async def stop_parking(self) -> None:
        """Answer every parked claim with None now and park no more (for shutdown)."""
        self._stopping = True
        await self._system.scheduler.ask(StopParking())

    async def queue_stats(self) -> dict[str, int]:
        return await self._system.scheduler.ask(QueueStats())

    # --- operations ---

    async def scrape(self) -> bytes:
        """Every metric in the Prometheus text format, the gauges read now."""
        system = self._system
        queue = await system.scheduler.ask(ReadQueue())
        workers = await system.workers.ask(ReadCoverage())
        state = QueueState(
            ready=queue.ready,
            delayed=queue.delayed,
            active_leases=len(system.leases),
            parked_claims=queue.parked,
            workers=workers.by_status,
            live_label_sets=workers.live_label_sets,
            now_ms=now_ms(),
        )
        return self.metrics.exposition(state)

    async def readiness(self) -> str | None:
        """None when the runtime serves (started, store writable); else why not."""
        if not self._started:
            return "the runtime is starting"
        if self._stopping:
            return "the server is shutting down"
        journal = self._system.journal
        if journal is None:
            return None
        with trio.move_on_after(READY_CHECK_TIMEOUT_SECS):
            try:
                await journal.commit([mark_alive(now_ms())])
            except StoreFailed as exc:
                return str(exc)
            return None
        return f"the store did not commit a write within {READY_CHECK_TIMEOUT_SECS:g} s"

    async def watch_waiting(self, interval_secs: float = WATCH_INTERVAL_SECS) -> None:
        """Every few seconds: which ready label sets no live worker can take (one
        warning as each starts waiting; `since_ms` of the jobs' `waiting`)."""
        while True:
            queue = await self._system.scheduler.ask(ReadQueue())
            workers = await self._system.workers.ask(ReadCoverage())
            self._waiting.update(queue.ready, workers.live_label_sets, now_ms())
            await trio.sleep(interval_secs)


@asynccontextmanager
async def open_runtime(
    workflows_dir: str | Path | None = None,
    *,
    specs: Iterable[WorkflowSpec] = (),
    api_only: bool = False,
    limits: Limits | None = None,
    data_dir: str | Path | None = None,
    retain_runs: int = DEFAULT_RETAIN_RUNS,
    webhook_secret: str | None = None,
    warn=None,
    secrets: SecretStore | None = None,
    metrics: Metrics | None = None,
    database_url: str | None = None,
    reap_interval_secs: float = 5.0,
    say=None,
) -> AsyncIterator[Any]:
    """Start the actors, recover or load definitions, and yield the `Runtime`.

    With `data_dir` (not ":memory:"), every change is committed to SQLite there
    before it is acknowledged, and a restart recovers it. Raises `StoreError`
    when the store cannot be opened or read. Every actor stops on exit.
    Schedules fire while it is open; notifications are signed with
    `webhook_secret` when it is given.

    `secrets` are what definitions may read as `${{ secrets.NAME }}`; `metrics`
    (default: a fresh registry) is what `/metrics` serves.

    With `database_url`, the state lives in PostgreSQL instead and the runtime is
    a `PgRuntime` (same API), one node of any number; `api_only` then means the
    node takes none of the time-driven duties (`data_dir` is not used).
    """
    if database_url:
        from .pg import open_pg_runtime

        async with open_pg_runtime(
            database_url,
            workflows_dir,
            specs=specs,
            duties=not api_only,
            limits=limits,
            retain_runs=retain_runs,
            reap_interval_secs=reap_interval_secs,
            warn=warn,
            say=say,
            secrets=secrets,
            metrics=metrics,
            webhook_secret=webhook_secret,
        ) as pg_runtime:
            yield pg_runtime
        return
    limits = limits or Limits()
    secrets = secrets or SecretStore()
    store = None
    if data_dir is not None and str(data_dir) != ":memory:":
        store = Store(data_dir)
    loaded = list(specs)
    if workflows_dir is not None:
        from .definitions import load_workflows_dir

        kwargs = {"warn": warn} if warn is not None else {}
        loaded.extend(load_workflows_dir(Path(workflows_dir), secrets=secrets.names, **kwargs))
    snapshot = store.load() if store is not None else Snapshot()
    try:
        async with trio.open_nursery() as nursery:
            journal = Journal(store) if store is not None else None
            system = System(
                scheduler=Scheduler(),
                logs=LogsActor(limits.max_log_bytes_per_job),
                workers=WorkerRegistry(),
                timers=Timers(),
                api_only=api_only,
                journal=journal,
                retain_runs=max(1, retain_runs),
                history=MemoryHistory() if store is None else None,
                metrics=metrics or Metrics(),
                secrets=secrets,
                trigger_store=SqliteTriggerStore(journal) if journal else MemoryTriggerStore(),
            )
            system.groups = ConcurrencyGroups(system.admit, system.cancel_run)
            system.logs.journal = system.workers.journal = journal
            runtime = Runtime(nursery, system, limits)
            runtime._restore(snapshot, loaded)
            for actor in (
                system.scheduler,
                system.logs,
                system.workers,
                system.timers,
                system.groups,
                journal,
            ):
                if actor is not None:
                    nursery.start_soon(actor.run)
            system.automation = Automation(
                runtime, system.trigger_store, system.metrics, webhook_secret
            )
            await system.automation.start(nursery, await runtime.definitions())
            nursery.start_soon(runtime.watch_waiting)
            runtime._started = True
            try:
                yield runtime
            finally:
                nursery.cancel_scope.cancel()
    finally:
        if store is not None:
            store.close()
