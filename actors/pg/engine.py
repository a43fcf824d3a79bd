"""The transactions of the PostgreSQL home: each a plain function of an open `Tx`.

A change to a run happens in one transaction that holds the run's locks, in one
order everywhere: the concurrency group's advisory lock (when the run has a
group; the group never changes, so it is read first), then the run's row
(`FOR UPDATE`), then the lease, then the run's jobs. The transaction loads the
run (`rules.Run` and its `RunPlan`), applies one `rules.Transition` and writes
back what the `Effects` say. No rule of a run is written here.

Claims, heartbeats and log pushes are plain SQL on single rows and take no run
lock: a claim takes the oldest ready head among the label sets the worker can
serve (`FOR UPDATE SKIP LOCKED`), marks it with `rules.claim_job` and inserts
the lease. A run transaction does not lock its jobs' rows as it reads them (a
claim would skip every ready job of a run being changed and answer null): each
row carries a version, bumped by every write, and the transaction writes a job
back only at the version it read. A claim is the only change to a job without
the run's lock, and it changes no decision about the run's other jobs; should it
have taken a job the transaction changes, the write finds another version and
the whole transaction runs again (`Stale`).

Notifications (sent at commit, once per payload per transaction):
`["r", label_key]` a job became claimable; `["l", wf, number, job]` log chunks;
`["e", wf, number, job]` a job ended; `["w"]` a new deadline for the leader;
`["n"]` a run's end owes notifications (the leader sends them); `["s"]` a definition
was added or changed (the leader's schedule clock loads them again).
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from psycopg.types.json import Jsonb

from .. import groups, notify
from ..errors import Conflict, LeaseNotActive, NotFound
from ..limits import stamp_chunks
from ..logs import Indexed, stored_log
from ..metrics import Metrics
from ..models import (
    TERMINAL_STATUSES,
    Claim,
    JobStatus,
    Lease,
    LogChunk,
    LogChunkIn,
    QueuedJob,
    RunAccepted,
    RunStatus,
    WorkerInfo,
    WorkerStatus,
)
from ..rules import Effects, JobRun, RunPlan, Transition, claim_job
from ..rules import Run as RunState
from ..secrets import Masker, SecretStore, held_tail, job_references, mask_chunks
from ..spec import WorkflowSpec, spec_from_json, spec_to_json
from ..store import spec_hash
from ..trigger_store import RunMark
from ..workers import DEFAULT_TTL_SECS, WorkerRecord
from ..workflow import new_run, no_run_error, queued_job
from .db import Stale, Tx
from .schema import lock_key
from .triggers import put_notifications, put_run_mark

# A worker heard from, with the labels and lease TTL of its claim (the last parameter:
# whether to write it at all).
UPSERT_WORKER = (
    "INSERT INTO workers (worker_id, labels, registered_at_ms, last_heartbeat_ms, ttl_secs) "
    "SELECT %s, %s, %s, %s, %s WHERE %s ON CONFLICT (worker_id) DO UPDATE SET "
    "labels = excluded.labels, last_heartbeat_ms = excluded.last_heartbeat_ms, "
    "ttl_secs = excluded.ttl_secs"
)
DUTY_BATCH = 200


def label_key(labels) -> str:
    """The one spelling of a required-label set: its sorted labels as JSON."""
    return json.dumps(sorted(set(labels)), separators=(",", ":"))


@dataclass(slots=True)
class Loaded:
    """A run as a transaction holds it: locked, with its plan."""

    seq: int
    spec_hash: str
    state: RunState
    plan: RunPlan
    versions: dict[str, int] = field(default_factory=dict)  # of the job rows, as read


class Engine:
    """The transactions, with the per-node caches of what never changes: definitions by
    hash, run plans, runs' concurrency groups, and the label sets already recorded."""

    def __init__(
        self,
        schema: str,
        retain_runs: int,
        secrets: SecretStore | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.schema = schema
        self.retain_runs = retain_runs
        self.secrets = secrets or SecretStore()
        self.metrics = metrics
        self._specs: dict[str, WorkflowSpec] = {}
        self._plans: dict[tuple[str, int, str], RunPlan] = {}
        self._groups: dict[tuple[str, int], str | None] = {}
        self._label_keys: set[str] = set()
        self._lock = threading.Lock()

    # --- caches ---

    def spec(self, tx: Tx, digest: str) -> WorkflowSpec:
        spec = self._specs.get(digest)
        if spec is None:
            row = tx.one("SELECT spec FROM definitions WHERE hash = %s", (digest,))
            if row is None:
                raise NotFound(f"definition {digest} is missing")
            spec = self._specs.setdefault(digest, spec_from_json(row[0]))
        return spec

    def put_spec(self, tx: Tx, spec: WorkflowSpec) -> str:
        text = spec_to_json(spec)
        digest = spec_hash(text)
        # Always written: a cached definition may come from a transaction rolled back.
        tx.exec("INSERT INTO definitions VALUES (%s, %s) ON CONFLICT DO NOTHING", (digest, text))
        self._specs.setdefault(digest, spec)
        return digest

    def plan(self, spec: WorkflowSpec, digest: str, state: RunState) -> RunPlan:
        key = (state.workflow_id, state.number, digest)
        run_plan = self._plans.get(key)
        if run_plan is None:
            run_plan = RunPlan(spec, state)
            with self._lock:
                if len(self._plans) > 4096:
                    self._plans.clear()
                self._plans[key] = run_plan
        return run_plan

    def group_lock(self, tx: Tx, group: str) -> None:
        tx.exec("SELECT pg_advisory_xact_lock(%s)", (lock_key(self.schema, "group:" + group),))

    # --- loading and locking a run ---

    def lock_run(self, tx: Tx, workflow_id: str, number: int) -> Loaded | None:
        """Group lock, then the run's row `FOR UPDATE`, then (by the caller: the lease,
        then) `load_jobs`. None when the run does not exist."""
        key = (workflow_id, number)
        if key not in self._groups:
            row = tx.one(
                "SELECT grp FROM runs WHERE workflow_id = %s AND number = %s", (workflow_id, number)
            )
            if row is None:
                return None
            if len(self._groups) > 100_000:
                self._groups.clear()
            self._groups[key] = row[0]
        group = self._groups[key]
        if group is not None:
            self.group_lock(tx, group)
        row = tx.one(
            "SELECT seq, spec_hash, record FROM runs WHERE workflow_id = %s AND number = %s "
            "FOR UPDATE",
            (workflow_id, number),
        )
        if row is None:
            return None
        seq, digest, record = row
        state = RunState.from_row(record, {})
        spec = self.spec(tx, digest)
        return Loaded(seq, digest, state, self.plan(spec, digest, state))

    def load_jobs(self, tx: Tx, loaded: Loaded) -> None:
        state = loaded.state
        rows = tx.all(
            "SELECT job_id, state, version FROM jobs WHERE workflow_id = %s AND number = %s",
            (state.workflow_id, state.number),
        )
        found = {job_id: row for job_id, row, _ in rows}
        # In the plan's order, as the embedded engine holds them: the rules decide jobs
        # in this order (which of two jobs a cancel queues first, say).
        order = [j for j in loaded.plan.instances if j in found]
        order += [j for j in found if j not in loaded.plan.instances]
        state.jobs = {job_id: JobRun.from_row(found[job_id]) for job_id in order}
        loaded.versions = {job_id: version for job_id, _, version in rows}

    def locked(self, tx: Tx, workflow_id: str, number: int) -> Loaded | None:
        loaded = self.lock_run(tx, workflow_id, number)
        if loaded is not None:
            self.load_jobs(tx, loaded)
        return loaded

    def read_run(self, tx: Tx, workflow_id: str, number: int) -> Loaded | None:
        """A run as committed, without locks (for views)."""
        row = tx.one(
            "SELECT seq, spec_hash, record FROM runs WHERE workflow_id = %s AND number = %s",
            (workflow_id, number),
        )
        if row is None:
            return None
        seq, digest, record = row
        state = RunState.from_row(record, {})
        loaded = Loaded(seq, digest, state, self.plan(self.spec(tx, digest), digest, state))
        self.load_jobs(tx, loaded)
        return loaded

    # --- writing back what a transition did ---

    def transition(self, tx: Tx, loaded: Loaded) -> Transition:
        return Transition(loaded.plan, loaded.state, tx.now)

    def write(self, tx: Tx, loaded: Loaded, fx: Effects, admit: bool = True) -> None:
        """Carry out the effects: job rows (the enqueued made ready with their claim
        payload, in order), the run's row, ended leases, notifications, the
        notifications the run's end owes, and (`admit`) the next run of the group when
        this one ended."""
        state, run_plan, now = loaded.state, loaded.plan, tx.now
        wf, number = state.workflow_id, state.number
        enqueued = list(dict.fromkeys(j for j in fx.enqueued if state.jobs[j].in_queue))
        ready_keys: list[str] = []
        queued_rows = []
        for job_id in enqueued:
            job = state.jobs[job_id]
            assert job.rendered is not None
            key = label_key(job.rendered.labels)
            delayed = job.delayed_until_ms > now
            if delayed:
                tx.notify("w")
            else:
                ready_keys.append(key)
            payload = queued_job_json(state, run_plan, job_id)
            queued_rows.append(
                (
                    Jsonb(job.to_row()),
                    not delayed,
                    key,
                    not delayed,
                    job.delayed_until_ms if delayed else None,
                    payload,
                    job.queue_deadline_ms,
                    wf,
                    number,
                    job_id,
                    loaded.versions.get(job_id, 0),
                )
            )
            if job.queue_deadline_ms is not None:
                tx.notify("w")
        written = tx.many(
            "UPDATE jobs SET state = %s, ready = %s, label_key = %s, "
            "enqueue_seq = CASE WHEN %s THEN nextval('enqueue_seq') END, due_ms = %s, "
            "payload = %s, queue_deadline_ms = %s, timeout_at_ms = NULL, version = version + 1 "
            "WHERE workflow_id = %s AND number = %s AND job_id = %s AND version = %s",
            queued_rows,
        )
        done = set(enqueued)
        other_rows = []
        for job_id in fx.changed:
            if job_id in done:
                continue
            job = state.jobs[job_id]
            running = job.status is JobStatus.running and job.lease_id is not None
            other_rows.append(
                (
                    Jsonb(job.to_row()),
                    job.queue_deadline_ms if job.in_queue else None,
                    job.timeout_at_ms if running else None,
                    job.in_queue,
                    job.in_queue,
                    wf,
                    number,
                    job_id,
                    loaded.versions.get(job_id, 0),
                )
            )
        # A job still in the queue keeps its place (ready, due time, payload); any
        # other loses it.
        written += tx.many(
            "UPDATE jobs SET state = %s, queue_deadline_ms = %s, timeout_at_ms = %s, "
            "ready = ready AND %s, due_ms = CASE WHEN %s THEN due_ms END, version = version + 1 "
            "WHERE workflow_id = %s AND number = %s AND job_id = %s AND version = %s",
            other_rows,
        )
        if written != len(queued_rows) + len(other_rows):
            raise Stale(f"a job of run {number} of {wf} changed meanwhile")
        for job_id in done.union(row[-2] for row in other_rows):
            loaded.versions[job_id] = loaded.versions.get(job_id, 0) + 1
        for key in dict.fromkeys(ready_keys):
            self._record_label_set(tx, key)
            tx.notify("r", key)
        if fx.run_changed:
            self.write_run(tx, state)
        ended_leases = fx.released + fx.revoked
        if ended_leases:
            if self.secrets.values:
                self._flush_held(tx, ended_leases)
            tx.last("DELETE FROM leases WHERE lease_id = ANY(%s)", (ended_leases,))
        for job_id, final in fx.attempt_ended:
            if final:
                tx.notify("e", wf, number, job_id)
        if self.metrics is not None:
            self.metrics.effects_applied(state, fx)
        if fx.ended:
            owed = notify.notifications_for(
                run_plan.spec.notify, state, now, lambda: str(uuid.uuid4())
            )
            put_notifications(tx, owed)
            if admit and state.group is not None:
                self.admit_next(tx, state.group)

    def write_run(self, tx: Tx, state: RunState) -> None:
        running = state.status is RunStatus.running
        if running and state.deadline_ms:
            tx.notify("w")
        tx.exec(
            "UPDATE runs SET status = %s, record = %s, deadline_ms = %s "
            "WHERE workflow_id = %s AND number = %s",
            (
                state.status.value,
                Jsonb(state.to_row()),
                state.deadline_ms if running else None,
                state.workflow_id,
                state.number,
            ),
        )

    def _record_label_set(self, tx: Tx, key: str) -> None:
        if key in self._label_keys:
            return
        tx.exec(
            "INSERT INTO label_sets VALUES (%s, %s) ON CONFLICT DO NOTHING",
            (key, json.loads(key)),
        )
        self._label_keys.add(key)

    def apply(self, tx: Tx, loaded: Loaded, event: Callable[[Transition], Effects]) -> Effects:
        fx = event(self.transition(tx, loaded))
        self.write(tx, loaded, fx)
        return fx

    # --- concurrency groups ---

    def admit_next(self, tx: Tx, group: str) -> None:
        """The group is free when no run of it is running: start its oldest queued run
        (and the next, should that one end at once)."""
        while True:
            rows = tx.all(
                "SELECT workflow_id, number, status FROM runs WHERE grp = %s "
                "AND status IN ('queued', 'running') ORDER BY seq",
                (group,),
            )
            holder = next(((w, n) for w, n, s in rows if s == "running"), None)
            waiting = [(w, n) for w, n, s in rows if s == "queued"]
            if holder is not None or not waiting:
                return
            loaded = self.locked(tx, *waiting[0])
            assert loaded is not None
            fx = self.transition(tx, loaded).start()
            self.write(tx, loaded, fx)
            if not fx.ended:
                return

    # --- workflows ---

    def put_workflow(self, tx: Tx, spec: WorkflowSpec, from_file: bool) -> None:
        digest = self.put_spec(tx, spec)
        changed = tx.exec(
            "INSERT INTO workflows (id, spec_hash, from_file) VALUES (%s, %s, %s) "
            "ON CONFLICT (id) DO UPDATE SET spec_hash = excluded.spec_hash "
            "WHERE workflows.spec_hash <> excluded.spec_hash",
            (spec.id, digest, from_file),
        )
        if changed:
            tx.notify("s")  # the leader's schedule clock loads the definitions again

    def create_workflow(self, tx: Tx, spec: WorkflowSpec, check_room) -> None:
        # One creation at a time counts the workflows, so the limit holds across nodes.
        tx.exec("SELECT pg_advisory_xact_lock(%s)", (lock_key(self.schema, "create"),))
        (count,) = tx.one("SELECT count(*) FROM workflows")
        check_room(count)
        self.put_workflow(tx, spec, from_file=False)

    def workflow_row(self, tx: Tx, workflow_id: str, lock: bool = False):
        row = tx.one(
            "SELECT spec_hash, next_number, latest, cancelled_unrun FROM workflows WHERE id = %s"
            + (" FOR UPDATE" if lock else ""),
            (workflow_id,),
        )
        if row is None:
            raise NotFound(f"workflow '{workflow_id}' not found")
        return row

    # --- runs ---

    def create_run(
        self,
        tx: Tx,
        workflow_id: str,
        inputs: dict[str, Any],
        trigger: str,
        event: dict[str, Any] | None,
        rerun_of: int | None = None,
        failed_only: bool = False,
        mark: RunMark | None = None,
    ) -> RunAccepted:
        """A new run (`mark`: what started it, stored with it or AlreadyHandled)."""
        if mark is not None:
            put_run_mark(tx, mark)
        digest, number, _, _ = self.workflow_row(tx, workflow_id)
        previous = None
        if rerun_of is not None:
            previous = self.read_run(tx, workflow_id, rerun_of)
            if previous is None:
                raise no_run_error(workflow_id, rerun_of, number, self.retain_runs)
            if previous.state.active:
                raise Conflict(f"run {rerun_of} of workflow '{workflow_id}' has not finished")
            digest = previous.spec_hash
        spec = self.spec(tx, digest)
        self.secrets.check_spec(spec)
        held: set[str] = set()
        while True:
            state, run_plan = new_run(
                spec,
                number,
                tx.now,
                inputs=inputs,
                trigger=trigger,
                event=event,
                previous=previous.state if previous else None,
                failed_only=failed_only,
            )
            if state.group is not None and state.group not in held:
                self.group_lock(tx, state.group)
                held.add(state.group)
            current, number, _, _ = self.workflow_row(tx, workflow_id, lock=True)
            if number == state.number and (previous is not None or current == digest):
                break
            if previous is None:  # the definition changed meanwhile: new runs use the new one
                digest = current
                spec = self.spec(tx, digest)
        if state.group is None and tx.one(
            "SELECT 1 FROM runs WHERE workflow_id = %s AND status IN ('queued', 'running')",
            (workflow_id,),
        ):
            raise Conflict(f"workflow '{workflow_id}' already has an active run")
        cancel_in_progress = bool(spec.concurrency and spec.concurrency.cancel_in_progress)
        admission = None
        if state.group is not None:
            rows = tx.all(
                "SELECT workflow_id, number, status FROM runs WHERE grp = %s "
                "AND status IN ('queued', 'running') ORDER BY seq",
                (state.group,),
            )
            holder = next(((w, n) for w, n, s in rows if s == "running"), None)
            waiting = [(w, n) for w, n, s in rows if s == "queued"]
            admission = groups.admission(holder, waiting, cancel_in_progress)
        self._insert_run(tx, state, digest)
        if previous is not None:
            carried = [j for j, job in state.jobs.items() if job.carried]
            if carried:
                tx.exec(
                    "INSERT INTO logs (workflow_id, number, job_id, chunk) SELECT workflow_id, "
                    "%s, job_id, chunk FROM logs WHERE workflow_id = %s AND number = %s "
                    "AND job_id = ANY(%s) ORDER BY id",
                    (state.number, workflow_id, previous.state.number, carried),
                )
        tx.exec(
            "UPDATE workflows SET next_number = %s, latest = %s, cancelled_unrun = false "
            "WHERE id = %s",
            (state.number + 1, state.number, workflow_id),
        )
        if state.number > self.retain_runs:
            tx.exec("INSERT INTO prune_queue VALUES (%s) ON CONFLICT DO NOTHING", (workflow_id,))
        self._groups[(workflow_id, state.number)] = state.group
        loaded = Loaded(0, digest, state, self.plan(spec, digest, state))
        if admission is None:
            self.apply(tx, loaded, Transition.start)
            return RunAccepted(workflow_id=workflow_id, number=state.number, status=state.status)
        assert state.group is not None
        for other in admission.cancel:
            victim = self.locked(tx, *other)
            if victim is not None and victim.state.active:
                fx = self.transition(tx, victim).cancel()
                self.write(tx, victim, fx, admit=False)  # the group moves on below, once
        self.admit_next(tx, state.group)
        # The answer is the admission's, as the embedded engine gives it: a run that
        # waited for the holder it cancelled reads `queued`, though it may start at once.
        status = RunStatus.running if admission.start else RunStatus.queued
        return RunAccepted(workflow_id=workflow_id, number=state.number, status=status)

    def _insert_run(self, tx: Tx, state: RunState, digest: str) -> None:
        tx.exec(
            "INSERT INTO runs (workflow_id, number, status, grp, spec_hash, record) "
            "VALUES (%s, %s, %s, %s, %s, %s)",
            (
                state.workflow_id,
                state.number,
                state.status.value,
                state.group,
                digest,
                Jsonb(state.to_row()),
            ),
        )
        tx.many(
            "INSERT INTO jobs (workflow_id, number, job_id, state) VALUES (%s, %s, %s, %s)",
            [
                (state.workflow_id, state.number, job_id, Jsonb(job.to_row()))
                for job_id, job in state.jobs.items()
            ],
        )

    def cancel_run(self, tx: Tx, workflow_id: str, number: int) -> bool:
        loaded = self.locked(tx, workflow_id, number)
        if loaded is None or not loaded.state.active:
            return False
        self.apply(tx, loaded, Transition.cancel)
        return True

    def mark_cancelled_unrun(self, tx: Tx, workflow_id: str) -> None:
        """The contract's cancel of a workflow that never ran: its jobs read cancelled."""
        tx.exec(
            "UPDATE workflows SET cancelled_unrun = true WHERE id = %s AND latest = 0",
            (workflow_id,),
        )

    def active_runs(self, tx: Tx, workflow_id: str) -> list[int]:
        self.workflow_row(tx, workflow_id)
        rows = tx.all(
            "SELECT number FROM runs WHERE workflow_id = %s AND status IN ('queued', 'running') "
            "ORDER BY number",
            (workflow_id,),
        )
        return [n for (n,) in rows]

    # --- the worker protocol ---

    def claim(
        self, tx: Tx, worker_id: str, labels: list[str], ttl_secs: int, seen: bool
    ) -> tuple[Claim, dict[str, Any]] | None:
        """The oldest ready job among the label sets the worker serves, under a new lease;
        with it the job's row as it was, for `give_back`. Two statements: the head, then
        the job, the lease and the worker written at once."""
        row = tx.one(
            "SELECT wfg_now_ms(), h.workflow_id, h.number, h.job_id, h.state, h.payload "
            "FROM (SELECT 1) one LEFT JOIN LATERAL (SELECT j.* FROM label_sets s CROSS JOIN "
            "LATERAL (SELECT workflow_id, number, job_id, state, payload, enqueue_seq FROM jobs "
            "WHERE ready AND label_key = s.label_key ORDER BY enqueue_seq LIMIT 1 "
            "FOR UPDATE SKIP LOCKED) j WHERE s.labels <@ %s::text[] ORDER BY j.enqueue_seq "
            "LIMIT 1) h ON true",
            (list(labels),),
        )
        now, workflow_id, number, job_id, before, payload = row
        tx.set_now(now)
        worker = (worker_id, Jsonb(list(labels)), now, now, ttl_secs, seen)
        if workflow_id is None:
            if seen:
                tx.exec(UPSERT_WORKER, worker)
            return None
        job = JobRun.from_row(before)
        lease_id = str(uuid.uuid4())
        if not claim_job(job, job.attempt, lease_id, now):
            # A ready row always holds a queued job; one that does not is not claimable.
            tx.exec(
                "UPDATE jobs SET ready = false WHERE workflow_id = %s AND number = %s "
                "AND job_id = %s",
                (workflow_id, number, job_id),
            )
            return None
        if job.timeout_at_ms is not None:
            tx.notify("w")
        tx.exec(
            "WITH w AS (" + UPSERT_WORKER + "), j AS (UPDATE jobs SET state = %s, ready = false, "
            "queue_deadline_ms = NULL, timeout_at_ms = %s, version = version + 1 "
            "WHERE workflow_id = %s AND number = %s AND job_id = %s) "
            "INSERT INTO leases VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (
                *worker,
                Jsonb(job.to_row()),
                job.timeout_at_ms,
                workflow_id,
                number,
                job_id,
                lease_id,
                workflow_id,
                number,
                job_id,
                worker_id,
                ttl_secs,
                job.attempt,
                now,
                now,
                now + ttl_secs * 1000,
            ),
        )
        lease = Lease(
            lease_id=lease_id,
            job_id=job_id,
            workflow_id=workflow_id,
            worker_id=worker_id,
            ttl_secs=ttl_secs,
            granted_at_ms=now,
        )
        job_view = QueuedJob.model_validate_json(payload)
        if any("secrets" in value for value in job_view.env.values()):
            spec = self._job_spec(tx, workflow_id, number, job_id)
            allowed = job_references(spec) if spec is not None else frozenset()
            env, _ = self.secrets.reveal(job_view.env, allowed)
            job_view = job_view.model_copy(update={"env": env})
        return Claim(job=job_view, lease=lease), before

    def _job_spec(self, tx: Tx, workflow_id: str, number: int, job_id: str):
        """The definition of one job of a run (from the run's own definition)."""
        row = tx.one(
            "SELECT spec_hash, record FROM runs WHERE workflow_id = %s AND number = %s",
            (workflow_id, number),
        )
        if row is None:
            return None
        state = RunState.from_row(row[1], {})
        inst = self.plan(self.spec(tx, row[0]), row[0], state).instances.get(job_id)
        return inst.spec if inst is not None else None

    def masker(self, run_plan: RunPlan, job_id: str) -> Masker | None:
        """What masks the secret values the job was given, in all it reports; None when
        it was given none."""
        if not self.secrets.values:
            return None
        inst = run_plan.instances.get(job_id)
        if inst is None:
            return None
        values = self.secrets.values
        given = [values[name] for name in job_references(inst.spec) if name in values]
        return Masker(given) if given else None

    def give_back(self, tx: Tx, claim: Claim, before: dict[str, Any]) -> None:
        """Undo a claim whose claimer went away before its answer: the job returns to
        its place at the head of its queue, exactly as it was, and the lease is gone."""
        lease = claim.lease
        loaded = self.lock_run(tx, lease.workflow_id, claim.job.run_id)
        if loaded is None:
            return
        if tx.exec("DELETE FROM leases WHERE lease_id = %s", (lease.lease_id,)) == 0:
            return  # already ended (expired, revoked): the run has moved on
        row = tx.one(
            "SELECT state FROM jobs WHERE workflow_id = %s AND number = %s AND job_id = %s "
            "FOR UPDATE",
            (lease.workflow_id, claim.job.run_id, lease.job_id),
        )
        if row is None or row[0].get("lease_id") != lease.lease_id:
            return
        job = JobRun.from_row(before)
        tx.exec(
            "UPDATE jobs SET state = %s, ready = true, queue_deadline_ms = %s, "
            "timeout_at_ms = NULL, version = version + 1 "
            "WHERE workflow_id = %s AND number = %s AND job_id = %s",
            (
                Jsonb(before),
                job.queue_deadline_ms,
                lease.workflow_id,
                claim.job.run_id,
                lease.job_id,
            ),
        )
        key = label_key(claim.job.required_labels)
        tx.notify("r", key)

    def heartbeat(self, tx: Tx, lease_id: str) -> Lease:
        row = tx.one(
            "WITH n AS (SELECT wfg_now_ms() AS now), l AS (UPDATE leases SET granted_at_ms = "
            "n.now, deadline_ms = n.now + ttl_secs * 1000 "
            "FROM n WHERE lease_id = %s AND deadline_ms > n.now RETURNING leases.*), "
            "w AS (UPDATE workers SET last_heartbeat_ms = n.now FROM n, l "
            "WHERE workers.worker_id = l.worker_id) "
            "SELECT job_id, workflow_id, worker_id, ttl_secs, granted_at_ms FROM l",
            (lease_id,),
        )
        if row is None:
            raise LeaseNotActive(lease_id)
        job_id, workflow_id, worker_id, ttl_secs, granted = row
        return Lease(
            lease_id=lease_id,
            job_id=job_id,
            workflow_id=workflow_id,
            worker_id=worker_id,
            ttl_secs=ttl_secs,
            granted_at_ms=granted,
        )

    def report(self, tx: Tx, lease_id: str, event: Callable[..., Effects]) -> str:
        """A completion or failure on a lease: the run's transaction, under the lease."""
        row = tx.one(
            "SELECT l.workflow_id, l.number, l.job_id, r.grp FROM leases l JOIN runs r "
            "ON r.workflow_id = l.workflow_id AND r.number = l.number WHERE l.lease_id = %s",
            (lease_id,),
        )
        if row is None:
            raise LeaseNotActive(lease_id)
        workflow_id, number, job_id, group = row
        if group is not None:
            self.group_lock(tx, group)
        # The run's row, then the lease's: no transaction locks them the other way round.
        locked = tx.one(
            "SELECT r.seq, r.spec_hash, r.record, l.worker_id, l.deadline_ms, wfg_now_ms() "
            "FROM runs r JOIN leases l ON l.lease_id = %s WHERE r.workflow_id = %s "
            "AND r.number = %s FOR UPDATE OF r, l",
            (lease_id, workflow_id, number),
        )
        if locked is None or locked[4] <= locked[5]:
            raise LeaseNotActive(lease_id)  # past its deadline: the leader expires it
        seq, digest, record, worker_id, _, now = locked
        tx.set_now(now)
        state = RunState.from_row(record, {})
        loaded = Loaded(seq, digest, state, self.plan(self.spec(tx, digest), digest, state))
        self.load_jobs(tx, loaded)
        mask = self.masker(loaded.plan, job_id)
        self.apply(tx, loaded, lambda step: event(step, job_id, lease_id, mask))
        tx.last("UPDATE workers SET last_heartbeat_ms = %s WHERE worker_id = %s", (now, worker_id))
        return workflow_id

    def push_logs(self, tx: Tx, lease_id: str, chunks: list[LogChunkIn]) -> None:
        # The lease row is locked: pushes for one job commit in the order of their ids,
        # so a follower reading past the last id it saw misses none.
        row = tx.one(
            "SELECT workflow_id, number, job_id, worker_id, attempt, held, wfg_now_ms() "
            "FROM leases WHERE lease_id = %s AND deadline_ms > wfg_now_ms() FOR UPDATE",
            (lease_id,),
        )
        if row is None:
            raise LeaseNotActive(lease_id)
        workflow_id, number, job_id, worker_id, attempt, held, now = row
        stored = stamp_chunks(workflow_id, job_id, chunks, now, attempt)
        if self.secrets.values:
            spec = self._job_spec(tx, workflow_id, number, job_id)
            values = self.secrets.values
            given = [values[n] for n in job_references(spec) if n in values] if spec else []
            if given:
                stored, kept = _mask_held(Masker(given), held, stored)
                if kept != held:
                    tx.exec("UPDATE leases SET held = %s WHERE lease_id = %s", (kept, lease_id))
        tx.many(
            "INSERT INTO logs (workflow_id, number, job_id, chunk) VALUES (%s, %s, %s, %s)",
            [(workflow_id, number, job_id, c.model_dump_json()) for c in stored],
        )
        tx.last("UPDATE workers SET last_heartbeat_ms = %s WHERE worker_id = %s", (now, worker_id))
        if stored:
            tx.notify("l", workflow_id, number, job_id)

    def _flush_held(self, tx: Tx, lease_ids: list[str]) -> None:
        """The attempts are over: what their pushes held back is no secret after all;
        store it as each stream's last chunk."""
        rows = tx.all(
            "SELECT workflow_id, number, job_id, attempt, held FROM leases "
            "WHERE lease_id = ANY(%s) AND held IS NOT NULL",
            (lease_ids,),
        )
        for workflow_id, number, job_id, attempt, held in rows:
            tail = held_tail(
                held["streams"], held["sequence"], workflow_id, job_id, attempt, tx.now
            )
            tx.many(
                "INSERT INTO logs (workflow_id, number, job_id, chunk) VALUES (%s, %s, %s, %s)",
                [(workflow_id, number, job_id, c.model_dump_json()) for c in tail],
            )
            tx.notify("l", workflow_id, number, job_id)

    # --- time-driven duties (the leader's; each a conditional change) ---

    def expire_lease(self, tx: Tx, lease_id: str) -> None:
        """Exactly once per lease: the lease row goes in the same transaction."""
        row = tx.one(
            "SELECT workflow_id, number, job_id FROM leases WHERE lease_id = %s", (lease_id,)
        )
        if row is None:
            return
        workflow_id, number, job_id = row
        loaded = self.lock_run(tx, workflow_id, number)
        lease = tx.one("SELECT deadline_ms FROM leases WHERE lease_id = %s FOR UPDATE", (lease_id,))
        if lease is None or lease[0] > tx.now:
            return  # reported or heartbeated meanwhile
        if loaded is None:
            tx.exec("DELETE FROM leases WHERE lease_id = %s", (lease_id,))
            return
        self.load_jobs(tx, loaded)
        job = loaded.state.jobs.get(job_id)
        if job is None or job.lease_id != lease_id or not loaded.state.active:
            tx.exec("DELETE FROM leases WHERE lease_id = %s", (lease_id,))
            return
        self.apply(tx, loaded, lambda step: step.expired(job_id, lease_id))
        if self.metrics is not None:
            self.metrics.lease_expired(workflow_id)

    def due(self, tx: Tx) -> dict[str, list[Any]]:
        """What is due now: expired leases, queue, job and run timeouts."""
        now = tx.now
        return {
            "leases": [
                r[0]
                for r in tx.all(
                    "SELECT lease_id FROM leases WHERE deadline_ms <= %s LIMIT %s",
                    (now, DUTY_BATCH),
                )
            ],
            "queue": tx.all(
                "SELECT workflow_id, number, job_id FROM jobs WHERE queue_deadline_ms <= %s "
                "LIMIT %s",
                (now, DUTY_BATCH),
            ),
            "job": tx.all(
                "SELECT workflow_id, number, job_id, state->>'lease_id' FROM jobs "
                "WHERE timeout_at_ms <= %s LIMIT %s",
                (now, DUTY_BATCH),
            ),
            "run": tx.all(
                "SELECT workflow_id, number FROM runs WHERE deadline_ms <= %s "
                "AND status = 'running' LIMIT %s",
                (now, DUTY_BATCH),
            ),
        }

    def promote_due(self, tx: Tx) -> int:
        """Backoff over: delayed jobs become claimable, in the order they fell due."""
        rows = tx.all(
            "UPDATE jobs SET ready = true, due_ms = NULL, enqueue_seq = nextval('enqueue_seq') "
            "FROM (SELECT workflow_id, number, job_id FROM jobs WHERE due_ms <= wfg_now_ms() "
            "ORDER BY due_ms LIMIT %s FOR UPDATE SKIP LOCKED) d WHERE jobs.workflow_id = "
            "d.workflow_id AND jobs.number = d.number AND jobs.job_id = d.job_id "
            "RETURNING jobs.label_key",
            (DUTY_BATCH,),
        )
        for key in dict.fromkeys(r[0] for r in rows):
            self._record_label_set(tx, key)
            tx.notify("r", key)
        return len(rows)

    def deadline(
        self,
        tx: Tx,
        kind: str,
        workflow_id: str,
        number: int,
        job_id: str = "",
        lease_id: str | None = None,
    ) -> None:
        """A queue, job or run timeout, applied only if it is still due."""
        loaded = self.lock_run(tx, workflow_id, number)
        if loaded is None:
            return
        if kind == "job" and lease_id:
            tx.one("SELECT 1 FROM leases WHERE lease_id = %s FOR UPDATE", (lease_id,))
        self.load_jobs(tx, loaded)
        state = loaded.state
        if not state.active:
            return
        step = self.transition(tx, loaded)
        if kind == "run":
            fx = step.timed_out()
        elif kind == "queue":
            fx = step.queue_timed_out(job_id)
        else:
            job = state.jobs.get(job_id)
            if job is None or job.lease_id is None or job.lease_id != lease_id:
                return
            if job.timeout_at_ms is None or job.timeout_at_ms > step.now:
                return
            fx = step.job_timed_out(job_id, job.lease_id)
        self.write(tx, loaded, fx)

    def prune(self, tx: Tx) -> int:
        """Keep the last `retain_runs` runs of each workflow that has more; never an
        unfinished one."""
        rows = tx.all(
            "DELETE FROM prune_queue WHERE workflow_id IN (SELECT workflow_id FROM prune_queue "
            "LIMIT %s FOR UPDATE SKIP LOCKED) RETURNING workflow_id",
            (DUTY_BATCH,),
        )
        gone = 0
        for (workflow_id,) in rows:
            numbers = tx.all(
                "DELETE FROM runs USING workflows w WHERE runs.workflow_id = %s AND w.id = "
                "runs.workflow_id AND runs.number <= w.latest - %s AND runs.status NOT IN "
                "('queued', 'running') RETURNING runs.number",
                (workflow_id, self.retain_runs),
            )
            doomed = [n for (n,) in numbers]
            if doomed:
                params = (workflow_id, doomed)
                tx.exec("DELETE FROM jobs WHERE workflow_id = %s AND number = ANY(%s)", params)
                tx.exec("DELETE FROM logs WHERE workflow_id = %s AND number = ANY(%s)", params)
                # A notification still being retried outlives its run's record.
                tx.exec(
                    "DELETE FROM notifications WHERE workflow_id = %s AND number = ANY(%s) "
                    "AND state <> 'pending'",
                    params,
                )
                gone += len(doomed)
        return gone

    def next_deadline_ms(self, tx: Tx) -> int | None:
        """Milliseconds until the earliest deadline the database holds, if any."""
        row = tx.one(
            "SELECT least((SELECT min(deadline_ms) FROM leases), "
            "(SELECT min(due_ms) FROM jobs WHERE due_ms IS NOT NULL), "
            "(SELECT min(queue_deadline_ms) FROM jobs WHERE queue_deadline_ms IS NOT NULL), "
            "(SELECT min(timeout_at_ms) FROM jobs WHERE timeout_at_ms IS NOT NULL), "
            "(SELECT min(deadline_ms) FROM runs WHERE deadline_ms IS NOT NULL "
            "AND status = 'running')) - wfg_now_ms()"
        )
        return None if row is None or row[0] is None else int(row[0])

    # --- reads ---

    def worker_info(self, tx: Tx, where: str, params: tuple[Any, ...]) -> list[WorkerInfo]:
        rows = tx.all(
            "SELECT w.worker_id, w.labels, w.registered_at_ms, w.last_heartbeat_ms, w.ttl_secs, "
            "(SELECT l.job_id FROM leases l WHERE l.worker_id = w.worker_id "
            "ORDER BY l.claimed_ms DESC LIMIT 1) FROM workers w " + where + " ORDER BY w.seq",
            params,
        )
        now = tx.now
        return [
            WorkerRecord(
                worker_id=wid,
                labels=list(labels),
                registered_at_ms=registered,
                last_heartbeat_ms=heard,
                ttl_secs=ttl,
                jobs=[job] if job else [],
            ).info(now)
            for wid, labels, registered, heard, ttl, job in rows
        ]

    def live_label_sets(self, tx: Tx) -> frozenset[frozenset[str]]:
        """The label sets of the workers not `offline`, of every node."""
        return frozenset(
            frozenset(w.labels)
            for w in self.worker_info(tx, "", ())
            if w.status is not WorkerStatus.offline
        )

    def ready_reading(self, tx: Tx) -> dict[frozenset[str], tuple[int, int]]:
        """Per ready label set: how many jobs, and the oldest one's claimable-since ms (now
        for a row that does not say: one written by hand must not stop the readers)."""
        return {
            frozenset(json.loads(key)): (count, since)
            for key, count, since in tx.all(
                "SELECT label_key, count(*), coalesce(min(greatest("
                "(state->>'enqueued_at_ms')::bigint, (state->>'delayed_until_ms')::bigint)), "
                "wfg_now_ms()) FROM jobs WHERE ready GROUP BY label_key"
            )
        }

    def register_worker(self, tx: Tx, worker_id: str, labels: list[str]) -> WorkerInfo:
        now = tx.now
        tx.exec(
            "INSERT INTO workers (worker_id, labels, registered_at_ms, last_heartbeat_ms, "
            "ttl_secs) VALUES (%s, %s, %s, %s, %s) ON CONFLICT (worker_id) DO UPDATE SET "
            "labels = excluded.labels, last_heartbeat_ms = excluded.last_heartbeat_ms",
            (worker_id, Jsonb(list(labels)), now, now, DEFAULT_TTL_SECS),
        )
        return self.worker_info(tx, "WHERE w.worker_id = %s", (worker_id,))[0]

    def worker_heartbeat(self, tx: Tx, worker_id: str) -> WorkerInfo:
        if not tx.exec(
            "UPDATE workers SET last_heartbeat_ms = %s WHERE worker_id = %s", (tx.now, worker_id)
        ):
            raise NotFound(f"worker '{worker_id}' is not registered")
        return self.worker_info(tx, "WHERE w.worker_id = %s", (worker_id,))[0]

    def read_log(
        self, tx: Tx, key: tuple[str, int, str], max_bytes: int, after: int = -1
    ) -> tuple[list[Indexed], int, int]:
        """The job's log as kept (each chunk with its index in the run, after index
        `after`), the id of its last row and how many chunks it has."""
        rows = tx.all(
            "SELECT id, chunk FROM logs WHERE workflow_id = %s AND number = %s AND job_id = %s "
            "ORDER BY id",
            key,
        )
        chunks = [LogChunk.model_validate_json(c) for _, c in rows]
        last = rows[-1][0] if rows else 0
        return stored_log(chunks, max_bytes, after), last, len(rows)

    def job_ended(self, tx: Tx, key: tuple[str, int, str]) -> bool:
        row = tx.one(
            "SELECT state->>'status' FROM jobs WHERE workflow_id = %s AND number = %s "
            "AND job_id = %s",
            key,
        )
        return row is None or JobStatus(row[0]) in TERMINAL_STATUSES

    def follow_log(
        self, tx: Tx, key: tuple[str, int, str], after: int
    ) -> tuple[list[LogChunk], int, bool]:
        """Chunks after id `after`, the last id, and whether the job has ended. The end is
        read first: every chunk pushed before it is then visible to the second read."""
        ended = self.job_ended(tx, key)
        rows = tx.all(
            "SELECT id, chunk FROM logs WHERE workflow_id = %s AND number = %s AND job_id = %s "
            "AND id > %s ORDER BY id",
            (*key, after),
        )
        last = rows[-1][0] if rows else after
        return [LogChunk.model_validate_json(c) for _, c in rows], last, ended


def _mask_held(
    masker: Masker, held: dict[str, Any] | None, chunks: list[LogChunk]
) -> tuple[list[LogChunk], Jsonb | None]:
    """Chunks with every secret value masked, as the embedded lease actor masks them:
    what may be the start of a value is held back per stream (in the lease's row)
    and goes out with that stream's next chunk. Returns the chunks and the lease's
    new `held` (None: nothing held)."""
    streams: dict[str, str] = dict(held["streams"]) if held else {}
    masked, sequence = mask_chunks(masker, streams, chunks, held["sequence"] if held else -1)
    kept = {stream: text for stream, text in streams.items() if text}
    if not kept:
        return masked, None
    return masked, Jsonb({"streams": kept, "sequence": sequence})


def queued_job_json(state: RunState, run_plan: RunPlan, job_id: str) -> str:
    return queued_job(state, run_plan, job_id).model_dump_json()
