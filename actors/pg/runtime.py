"""`PgRuntime`: the engine's public API with its state in PostgreSQL.

The same methods, arguments, answers and errors as `actors.runtime.Runtime`, so
`web/` cannot tell the homes apart. What is rows and what stays on a node:

- rows (shared by every node): definitions, workflows, runs, jobs (with the
  ready queue as a partial index), leases, logs, workers, the leader's queue of
  workflows to prune;
- per node, in trio tasks: parked claims waiting for a wake-up, log followers
  feeding SSE subscribers, the notification listener, the leader's loop when
  this node leads, and caches of what never changes (definitions by hash, run
  plans, runs' concurrency groups).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import uuid
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import trio

from ..automation import Automation, schedule_infos
from ..clock import now_ms
from ..errors import NotFound, Unavailable
from ..limits import Limits
from ..logs import Indexed, Subscription, stream
from ..metrics import Metrics, QueueState
from ..models import (
    Claim,
    JobStatus,
    Lease,
    LogChunk,
    LogChunkIn,
    NotificationStatus,
    Run,
    RunAccepted,
    ScheduleInfo,
    WorkerInfo,
    Workflow,
    WorkflowCreate,
)
from ..rules import JobRun
from ..rules import Run as RunState
from ..schedules import schedule_keys
from ..secrets import SecretStore
from ..spec import WorkflowSpec, spec_from_create
from ..store import StoreError
from ..trigger_store import RunMark
from ..waiting import WATCH_INTERVAL_SECS, Coverage, WaitingWatch
from ..webhooks import Delivery
from ..workflow import no_run_error, run_view, workflow_view
from .db import Database, Tx
from .engine import DUTY_BATCH, Engine, Loaded
from .schema import lock_key
from .triggers import PgTriggerStore, schedule_marks

log = logging.getLogger("workflow_graph")

# A parked claim or a log follower looks again at least this often, so a lost
# notification costs latency, never a stuck wait.
POLL_FLOOR_SECS = 1.0
STANDBY_RETRY_SECS = 1.0
DEFAULT_REAP_INTERVAL_SECS = 5.0
DEFAULT_RETAIN_RUNS = 50
# `/metrics` reads the database's gauges at most this often, however often it is scraped.
SCRAPE_CACHE_SECS = 1.0
# The leader looks for notifications made on other nodes at least this often.
NOTIFICATIONS_POLL_SECS = 5.0


@dataclass(eq=False)
class _Waiter:
    """One parked claim or log follower on this node, and its wake-up."""

    labels: frozenset[str] = frozenset()
    event: trio.Event = field(default_factory=trio.Event)

    def rearm(self) -> trio.Event:
        self.event = trio.Event()
        return self.event


class _Wakeups:
    """Per node: who waits for what. Touched only from trio's thread."""

    def __init__(self) -> None:
        self.claims: set[_Waiter] = set()
        self.logs: dict[tuple[str, int, str], set[_Waiter]] = {}
        self.leader = trio.Event()
        self.notifications = trio.Event()  # a run's end owes notifications (the leader sends)
        self.definitions = trio.Event()  # a definition was added or changed (its schedules)
        self.parking = True

    def ready(self, labels: frozenset[str]) -> None:
        for waiter in self.claims:
            if labels <= waiter.labels:
                waiter.event.set()

    def log(self, key: tuple[str, int, str]) -> None:
        for waiter in self.logs.get(key, ()):
            waiter.event.set()

    def everyone(self) -> None:
        for waiter in self.claims:
            waiter.event.set()
        for waiters in self.logs.values():
            for waiter in waiters:
                waiter.event.set()
        self.leader.set()
        self.notifications.set()
        self.definitions.set()

    def watch_log(self, key: tuple[str, int, str], waiter: _Waiter) -> None:
        self.logs.setdefault(key, set()).add(waiter)

    def unwatch_log(self, key: tuple[str, int, str], waiter: _Waiter) -> None:
        waiters = self.logs.get(key)
        if waiters is not None:
            waiters.discard(waiter)
            if not waiters:
                del self.logs[key]


class PgRuntime:
    """Typed entry points to the engine on PostgreSQL. Create with `open_pg_runtime`."""

    api_only = False  # on PostgreSQL the cascade is part of every transaction

    def __init__(
        self,
        nursery: trio.Nursery,
        db: Database,
        engine: Engine,
        limits: Limits,
        reap_interval_secs: float,
        secrets: SecretStore,
        metrics: Metrics,
        webhook_secret: str | None = None,
    ) -> None:
        self._nursery = nursery
        self._db = db
        self._engine = engine
        self.limits = limits
        self._secrets = secrets
        self._metrics = metrics
        self._started = False
        self._watch = WaitingWatch()
        self._reap_interval = reap_interval_secs
        self._wake = _Wakeups()
        self._workflow_count = 0
        self._scraped: tuple[float, QueueState] | None = None  # (trio time, gauges read)
        self.leading = False
        # The database's clock as this node estimates it (the leader's schedules read it).
        self._skew_ms = 0
        # Webhook deliveries are taken on every node; schedules fire and notifications
        # are sent by the leader only (`_automate`).
        self._automation = Automation(
            self, PgTriggerStore(db), metrics, webhook_secret, now=self.db_now_ms
        )

    @property
    def workflow_count(self) -> int:
        """How many workflows there were when the node started."""
        return self._workflow_count

    @property
    def retain_runs(self) -> int:
        return self._engine.retain_runs

    @property
    def metrics(self) -> Metrics:
        return self._metrics

    @property
    def secret_names(self) -> frozenset[str]:
        """The secrets a definition may read (`${{ secrets.NAME }}`)."""
        return self._secrets.names

    # --- workflows ---

    def add_workflow(self, spec: WorkflowSpec) -> None:
        """Install (or update) a definition under its own id. Blocks: for start-up and
        programs embedding the engine, not for a request path."""
        with self._db._pool.connection() as conn, conn.transaction():
            self._engine.put_workflow(Tx(conn), spec, from_file=True)

    async def put_workflows(self, specs: Iterable[WorkflowSpec]) -> None:
        """The definitions of WORKFLOWS_DIR, upserted by every node that starts with them."""
        specs = list(specs)

        def put(tx: Tx) -> int:
            for spec in specs:
                self._engine.put_workflow(tx, spec, from_file=True)
            (count,) = tx.one("SELECT count(*) FROM workflows")
            return count

        self._workflow_count = await self._db.run(put)

    async def create_workflow(self, body: WorkflowCreate) -> Workflow:
        self.limits.check_create(body)
        spec = spec_from_create(str(uuid.uuid4()), body, secrets=self.secret_names)
        self.check_definition(spec)
        await self._db.run(self._engine.create_workflow, spec, self.limits.check_room)
        return spec.as_workflow()

    def check_definition(self, spec: WorkflowSpec) -> None:
        """The limits a definition must keep (see `Limits.check_definition`)."""
        self.limits.check_definition(spec)

    async def list_workflows(
        self, limit: int = 100, offset: int = 0, status: JobStatus | None = None
    ) -> list[Workflow]:
        def page(tx: Tx) -> list[Workflow]:
            if status is None:
                rows = tx.all(
                    "SELECT id, spec_hash, latest, cancelled_unrun FROM workflows "
                    "ORDER BY seq LIMIT %s OFFSET %s",
                    (limit, offset),
                )
            else:
                rows = tx.all(
                    "SELECT w.id, w.spec_hash, w.latest, w.cancelled_unrun FROM workflows w "
                    "WHERE (w.latest = 0 AND %(s)s = CASE WHEN w.cancelled_unrun "
                    "THEN 'cancelled' ELSE 'queued' END) OR EXISTS (SELECT 1 FROM jobs j "
                    "WHERE j.workflow_id = w.id AND j.number = w.latest "
                    "AND j.state->>'status' = %(s)s) ORDER BY w.seq LIMIT %(l)s OFFSET %(o)s",
                    {"s": status.value, "l": limit, "o": offset},
                )
            return self._views(tx, rows)

        return await self._db.run(page)

    def _views(self, tx: Tx, rows: list[Any]) -> list[Workflow]:
        engine = self._engine
        latest = {wid: n for wid, _, n, _ in rows if n}
        runs: dict[str, Loaded] = {}
        if latest:
            ids, numbers = list(latest), list(latest.values())
            for wid, _, digest, record in tx.all(
                "SELECT r.workflow_id, r.number, r.spec_hash, r.record FROM runs r "
                "JOIN unnest(%s::text[], %s::int[]) AS p(w, n) "
                "ON r.workflow_id = p.w AND r.number = p.n",
                (ids, numbers),
            ):
                state = RunState.from_row(record, {})
                spec = engine.spec(tx, digest)
                runs[wid] = Loaded(0, digest, state, engine.plan(spec, digest, state))
            for wid, job_id, row in tx.all(
                "SELECT j.workflow_id, j.job_id, j.state FROM jobs j "
                "JOIN unnest(%s::text[], %s::int[]) AS p(w, n) "
                "ON j.workflow_id = p.w AND j.number = p.n",
                (ids, numbers),
            ):
                runs[wid].state.jobs[job_id] = JobRun.from_row(row)
        views = []
        for wid, digest, _, cancelled_unrun in rows:
            spec = engine.spec(tx, digest)
            loaded = runs.get(wid)
            if loaded is None:
                views.append(workflow_view(spec, None, None, cancelled_unrun))
            else:
                coverage = self._coverage(tx)
                views.append(workflow_view(spec, loaded.state, loaded.plan, coverage=coverage))
        return views

    async def get_status(self, workflow_id: str) -> Workflow:
        def status(tx: Tx) -> Workflow:
            row = self._engine.workflow_row(tx, workflow_id)
            return self._views(tx, [(workflow_id, *row[:1], row[2], row[3])])[0]

        return await self._db.run(status)

    async def get_definition(self, workflow_id: str) -> WorkflowSpec:
        """The definition new runs of the workflow start with (immutable)."""

        def definition(tx: Tx) -> WorkflowSpec:
            digest = self._engine.workflow_row(tx, workflow_id)[0]
            return self._engine.spec(tx, digest)

        return await self._db.run(definition)

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
        workflow is its own group and a run is active; Invalid for bad inputs. `mark`
        (a schedule's due time, a webhook delivery) is stored in the run's transaction:
        AlreadyHandled, and no run, when another node stored it first."""
        return await self._db.run(
            self._engine.create_run,
            workflow_id,
            dict(inputs or {}),
            trigger,
            event,
            None,
            False,
            mark,
        )

    async def rerun(self, workflow_id: str, number: int, failed_only: bool = False) -> RunAccepted:
        """Run run `number` again with its inputs; `failed_only` keeps what succeeded."""
        return await self._db.run(
            self._engine.create_run, workflow_id, {}, "rerun", None, number, failed_only
        )

    async def cancel_workflow(self, workflow_id: str) -> None:
        """Cancel every unfinished run of the workflow (the contract's cancel)."""
        numbers = await self._db.run(self._engine.active_runs, workflow_id)
        if not numbers:
            await self._db.run(self._engine.mark_cancelled_unrun, workflow_id)
        for number in numbers:  # one transaction per run: each takes its own group lock
            await self._db.run(self._engine.cancel_run, workflow_id, number)

    async def cancel_run(self, workflow_id: str, number: int) -> Run:
        await self.get_run(workflow_id, number)  # 404 for an unknown or pruned run
        await self._db.run(self._engine.cancel_run, workflow_id, number)
        return await self.get_run(workflow_id, number)

    async def list_runs(self, workflow_id: str, limit: int = 20, offset: int = 0) -> list[Run]:
        """The workflow's retained runs, newest first."""

        def page(tx: Tx) -> list[Run]:
            self._engine.workflow_row(tx, workflow_id)
            numbers = tx.all(
                "SELECT number FROM runs WHERE workflow_id = %s ORDER BY number DESC "
                "LIMIT %s OFFSET %s",
                (workflow_id, limit, offset),
            )
            runs = []
            for (number,) in numbers:
                loaded = self._engine.read_run(tx, workflow_id, number)
                if loaded is not None:
                    runs.append(run_view(loaded.state, loaded.plan, self._coverage(tx)))
            return runs

        return await self._db.run(page)

    async def get_run(self, workflow_id: str, number: int) -> Run:
        def one(tx: Tx) -> Run:
            loaded = self._run(tx, workflow_id, number)
            return run_view(loaded.state, loaded.plan, self._coverage(tx))

        return await self._db.run(one)

    def _coverage(self, tx: Tx) -> Coverage:
        """Every node's live workers' label sets now, for the `waiting` of the jobs in a
        view (read once per transaction)."""
        if tx.coverage is None:
            live = self._engine.live_label_sets(tx)
            watch = self._watch
            tx.coverage = Coverage(live, tx.now, watch.since, watch.last_look_ms)
        return tx.coverage

    def _run(self, tx: Tx, workflow_id: str, number: int) -> Loaded:
        _, next_number, _, _ = self._engine.workflow_row(tx, workflow_id)
        loaded = self._engine.read_run(tx, workflow_id, number)
        if loaded is None:
            raise no_run_error(workflow_id, number, next_number, self.retain_runs)
        return loaded

    # --- triggers ---

    def db_now_ms(self) -> int:
        """The database's clock, estimated from this node's (the leader re-reads it)."""
        return now_ms() + self._skew_ms

    async def definitions(self) -> list[WorkflowSpec]:
        """Every workflow's current definition, in creation order."""

        def read(tx: Tx) -> list[WorkflowSpec]:
            rows = tx.all("SELECT spec_hash FROM workflows ORDER BY seq")
            return [self._engine.spec(tx, digest) for (digest,) in rows]

        return await self._db.run(read)

    async def schedules(self, workflow_id: str) -> list[ScheduleInfo]:
        """The workflow's schedules with their next and last due times (on any node)."""

        def read(tx: Tx) -> tuple[WorkflowSpec, dict, int]:
            spec = self._engine.spec(tx, self._engine.workflow_row(tx, workflow_id)[0])
            return spec, schedule_marks(tx) if schedule_keys(spec) else {}, tx.now

        spec, marks, now = await self._db.run(read)
        return schedule_infos(spec, marks, now)

    async def deliver(self, delivery_id: str, delivery: Delivery) -> list[RunAccepted]:
        """Start every run a webhook delivery matches; a delivery id seen before (on any
        node) starts none."""
        return await self._automation.intake.deliver(delivery_id, delivery)

    async def run_notifications(self, workflow_id: str, number: int) -> list[NotificationStatus]:
        """How each notification of the run's end went (none before it ended)."""
        await self._db.run(self._engine.workflow_row, workflow_id)
        return await self._automation.run_notifications(workflow_id, number)

    async def _automate(self, scope: trio.CancelScope) -> None:
        """While this node leads: fire the schedules, send the notifications (those
        made on any node), and follow definition changes. Ends when `scope` is
        cancelled (leadership lost)."""
        clock, notifier = self._automation.clock, self._automation.notifier
        store = self._automation.store

        async def schedules() -> None:
            await self._refresh_skew()
            await clock.load(await self.definitions())
            async with trio.open_nursery() as nursery:
                nursery.start_soon(clock.run)
                while True:
                    await self._wake.definitions.wait()
                    self._wake.definitions = trio.Event()
                    await self._refresh_skew()
                    await clock.reload(await self.definitions())

        async def notifications() -> None:
            while True:
                self._wake.notifications = trio.Event()
                for pending in await store.pending_notifications():
                    notifier.enqueue(pending)  # once: those it holds are not taken again
                with trio.move_on_after(NOTIFICATIONS_POLL_SECS):
                    await self._wake.notifications.wait()

        with scope:
            async with trio.open_nursery() as nursery:
                for task in (schedules, notifications, notifier.run):
                    nursery.start_soon(_supervised, task)

    async def _refresh_skew(self) -> None:
        db_now = await self._db.run(lambda tx: tx.now, single=True)
        self._skew_ms = db_now - now_ms()

    async def is_cancelled(self, workflow_id: str, job_id: str, number: int | None = None) -> bool:
        def cancelled(tx: Tx) -> bool:
            digest, _, latest, cancelled_unrun = self._engine.workflow_row(tx, workflow_id)
            wanted = latest if number is None else number
            loaded = self._engine.read_run(tx, workflow_id, wanted) if wanted else None
            if loaded is None:
                if number is not None:
                    raise NotFound(f"run {number} of workflow '{workflow_id}' is not live")
                if all(j.id != job_id for j in self._engine.spec(tx, digest).jobs):
                    raise NotFound(f"job '{job_id}' not found in workflow '{workflow_id}'")
                return cancelled_unrun
            job = loaded.state.jobs.get(job_id)
            if job is None:
                raise NotFound(f"job '{job_id}' not found in workflow '{workflow_id}'")
            return job.status is JobStatus.cancelled

        return await self._db.run(cancelled)

    # --- workers ---

    async def register_worker(self, worker_id: str, labels: list[str]) -> WorkerInfo:
        self.limits.check_labels(labels)
        return await self._db.run(self._engine.register_worker, worker_id, list(labels))

    async def worker_heartbeat(self, worker_id: str) -> WorkerInfo:
        return await self._db.run(self._engine.worker_heartbeat, worker_id)

    async def list_workers(self) -> list[WorkerInfo]:
        return await self._db.run(self._engine.worker_info, "", ())

    # --- the worker protocol ---

    async def claim(
        self,
        worker_id: str,
        labels: list[str],
        lease_ttl_secs: int = 30,
        wait_secs: float = 0,
    ) -> Claim | None:
        """The oldest claimable job whose labels the worker has, under a new lease.

        With `wait_secs`, park until such a job arrives or the wait ends (None). A
        claim whose caller is cancelled before the answer gives its job back.
        """
        self.limits.check_labels(labels)
        park = wait_secs > 0 and self._wake.parking
        deadline = trio.current_time() + min(wait_secs, self.limits.max_wait_secs)
        waiter = _Waiter(frozenset(labels))
        if park:
            self._wake.claims.add(waiter)
        try:
            seen = True
            while True:
                wake = waiter.rearm()
                got = await self._db.run(
                    self._engine.claim, worker_id, list(labels), lease_ttl_secs, seen
                )
                seen = False
                if got is not None:
                    claim, before = got
                    try:
                        await trio.lowlevel.checkpoint_if_cancelled()
                    except BaseException:
                        with trio.CancelScope(shield=True):
                            await self._db.run(self._engine.give_back, claim, before)
                        raise
                    job = claim.job
                    claimable = max(job.enqueued_at_ms, job.delayed_until_ms)
                    waited = (claim.lease.granted_at_ms - claimable) / 1000
                    self._metrics.job_claimed(job.workflow_id, waited)
                    return claim
                if not park or not self._wake.parking or trio.current_time() >= deadline:
                    return None
                with trio.move_on_at(min(deadline, trio.current_time() + POLL_FLOOR_SECS)):
                    await wake.wait()
        finally:
            self._wake.claims.discard(waiter)

    async def heartbeat(self, lease_id: str) -> Lease:
        return await self._db.run(self._engine.heartbeat, lease_id, single=True)

    async def complete(self, lease_id: str, outputs: dict[str, str]) -> None:
        outputs = dict(outputs)
        workflow_id = await self._db.run(
            self._engine.report,
            lease_id,
            lambda step, job_id, lease, mask: step.completed(
                job_id, lease, mask.mask_mapping(outputs) if mask else outputs
            ),
        )
        self._metrics.job_completed(workflow_id, None)

    async def fail(self, lease_id: str, error: str, retryable: bool = False) -> None:
        workflow_id = await self._db.run(
            self._engine.report,
            lease_id,
            lambda step, job_id, lease, mask: step.failed(
                job_id, lease, mask.mask(error) if mask else error, retryable
            ),
        )
        self._metrics.job_failed(workflow_id, retryable, None)

    async def push_logs(self, lease_id: str, chunks: Iterable[LogChunkIn]) -> None:
        """Store chunks as the lease's job's, whatever ids they carry."""
        chunks = list(chunks)
        self.limits.check_push(chunks)
        await self._db.run(self._engine.push_logs, lease_id, chunks)

    # --- logs ---

    def _log_target(self, tx: Tx, workflow_id: str, job_id: str, number: int | None) -> int:
        """The run a log request means (the latest when `number` is None; 0 before any
        run), checked."""
        digest, next_number, latest, _ = self._engine.workflow_row(tx, workflow_id)
        missing = NotFound(f"job '{job_id}' not found in workflow '{workflow_id}'")
        if number is None:
            if latest == 0:
                if all(j.id != job_id for j in self._engine.spec(tx, digest).jobs):
                    raise missing
                return 0
            number = latest
        elif not tx.one(
            "SELECT 1 FROM runs WHERE workflow_id = %s AND number = %s", (workflow_id, number)
        ):
            raise no_run_error(workflow_id, number, next_number, self.retain_runs)
        if not tx.one(
            "SELECT 1 FROM jobs WHERE workflow_id = %s AND number = %s AND job_id = %s",
            (workflow_id, number, job_id),
        ):
            if number == latest:
                raise missing
            raise NotFound(f"job '{job_id}' not found in run {number} of workflow '{workflow_id}'")
        return number

    async def get_logs(
        self, workflow_id: str, job_id: str, number: int | None = None
    ) -> list[LogChunk]:
        """Every stored chunk of the job in run `number` (default: the latest run)."""
        max_bytes = self.limits.max_log_bytes_per_job

        def read(tx: Tx) -> list[LogChunk]:
            found = self._log_target(tx, workflow_id, job_id, number)
            if found == 0:
                return []
            kept = self._engine.read_log(tx, (workflow_id, found, job_id), max_bytes)[0]
            return [chunk for _, chunk in kept]

        return await self._db.run(read)

    async def subscribe_logs(
        self, workflow_id: str, job_id: str, number: int | None = None, after: int = -1
    ) -> Subscription:
        """Replay (of the chunks indexed after `after`) plus a live channel that closes
        after the job's last chunk, wherever the chunks were pushed and the job ended;
        both give each chunk with its index in the run."""
        max_bytes = self.limits.max_log_bytes_per_job
        waiter = _Waiter()

        def replay(tx: Tx) -> tuple[int, list[Indexed], int, int, bool]:
            found = self._log_target(tx, workflow_id, job_id, number)
            if found == 0:
                return 0, [], 0, 0, False
            key = (workflow_id, found, job_id)
            ended = self._engine.job_ended(tx, key)  # first, as in `follow_log`
            kept, last, count = self._engine.read_log(tx, key, max_bytes, after)
            return found, kept, last, count, ended

        found, kept, last, count, ended = await self._db.run(replay)
        send, receive = trio.open_memory_channel[Indexed](math.inf)
        if ended:
            send.close()
        else:
            key = (workflow_id, found, job_id)
            self._wake.watch_log(key, waiter)
            self._nursery.start_soon(self._follow, key, last, count, send, waiter)
        return Subscription(replay=kept, live=receive)

    async def _follow(
        self,
        key: tuple[str, int, str],
        after: int,
        index: int,
        send: trio.MemorySendChannel[Indexed],
        waiter: _Waiter,
    ) -> None:
        """Feed one subscriber the chunks after row id `after` (the first of them has
        index `index` in the run) until the job ends or the subscriber goes away."""
        workflow_id, number, job_id = key
        try:
            with send:
                while send.statistics().open_receive_channels:
                    wake = waiter.rearm()
                    try:
                        if number == 0:  # a stream opened before the first run follows it in
                            number = await self._db.run(self._latest_number, workflow_id)
                            if number:
                                self._wake.unwatch_log(key, waiter)
                                key = (workflow_id, number, job_id)
                                self._wake.watch_log(key, waiter)
                        chunks: list[LogChunk] = []
                        ended = False
                        if number:
                            chunks, after, ended = await self._db.run(
                                self._engine.follow_log, key, after
                            )
                    except Unavailable:
                        chunks, ended = [], False  # the database is away: look again later
                    for chunk in chunks:
                        send.send_nowait((index, chunk))
                        index += 1
                    if ended:
                        return
                    with trio.move_on_after(POLL_FLOOR_SECS):
                        await wake.wait()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self._wake.unwatch_log(key, waiter)

    @staticmethod
    def _latest_number(tx: Tx, workflow_id: str) -> int:
        row = tx.one("SELECT latest FROM workflows WHERE id = %s", (workflow_id,))
        return row[0] if row else 0

    async def stream_logs(
        self, workflow_id: str, job_id: str, number: int | None = None
    ) -> AsyncIterator[LogChunk]:
        async for chunk in stream(await self.subscribe_logs(workflow_id, job_id, number)):
            yield chunk

    async def stop_parking(self) -> None:
        """Answer every parked claim on this node with None now and park no more."""
        self._wake.parking = False
        for waiter in self._wake.claims:
            waiter.event.set()

    async def queue_stats(self) -> dict[str, int]:
        def stats(tx: Tx) -> dict[str, int]:
            ready, delayed = tx.one(
                "SELECT count(*) FILTER (WHERE ready), count(*) FILTER (WHERE due_ms IS NOT NULL) "
                "FROM jobs WHERE ready OR due_ms IS NOT NULL"
            )
            return {"ready": ready, "delayed": delayed}

        counts = await self._db.run(stats)
        return {**counts, "parked_claims": len(self._wake.claims)}

    # --- operations ---

    async def scrape(self) -> bytes:
        """Every metric in the Prometheus text format, the gauges read now."""

        def read(tx: Tx) -> QueueState:
            ready = self._engine.ready_reading(tx)
            (delayed,) = tx.one("SELECT count(*) FROM jobs WHERE due_ms IS NOT NULL")
            (leases,) = tx.one("SELECT count(*) FROM leases")
            workers = self._engine.worker_info(tx, "", ())
            by_status: dict[str, int] = {}
            for info in workers:
                by_status[info.status.value] = by_status.get(info.status.value, 0) + 1
            live = {frozenset(w.labels) for w in workers if w.status.value != "offline"}
            return QueueState(
                ready=ready,
                delayed=delayed,
                active_leases=leases,
                parked_claims=len(self._wake.claims),
                workers=by_status,
                live_label_sets=frozenset(live),
                now_ms=tx.now,
            )

        now = trio.current_time()
        cached = self._scraped
        if cached is None or now - cached[0] >= SCRAPE_CACHE_SECS:
            cached = self._scraped = (now, await self._db.run(read))
        # The database's gauges at most once a second, whoever scrapes; this node's own now.
        state = dataclasses.replace(cached[1], parked_claims=len(self._wake.claims))
        return self._metrics.exposition(state)

    async def watch_waiting(self, interval_secs: float = WATCH_INTERVAL_SECS) -> None:
        """Every few seconds: which ready label sets no live worker (of any node) can
        take (one warning on this node as each starts waiting; `since_ms` of the jobs'
        `waiting`)."""
        engine = self._engine

        def read(tx: Tx):
            return engine.ready_reading(tx), engine.live_label_sets(tx), tx.now

        while True:
            try:
                ready, live, now = await self._db.run(read)
                self._watch.update(ready, live, now)
            except Unavailable:
                pass  # the database is away: look again later
            except Exception:  # noqa: BLE001 - a defect must not take the node down
                log.exception("watching the ready label sets failed; looking again later")
            await trio.sleep(interval_secs)

    async def readiness(self) -> str | None:
        """None when the node serves (started, the database answering); else why not."""
        if not self._started:
            return "the runtime is starting"
        if not self._wake.parking:
            return "the server is shutting down"
        try:
            await self._db.run(lambda tx: tx.one("SELECT 1"), single=True)
        except Unavailable as exc:
            return str(exc)
        return None

    # --- notifications ---

    def _on_note(self, payload: list[Any]) -> None:
        try:
            kind = payload[0]
            if kind == "r":
                self._wake.ready(frozenset(json.loads(payload[1])))
            elif kind in ("l", "e"):
                self._wake.log((payload[1], payload[2], payload[3]))
            elif kind == "w":
                self._wake.leader.set()
            elif kind == "n":
                self._wake.notifications.set()
            elif kind == "s":
                self._wake.definitions.set()
        except (IndexError, TypeError, ValueError):
            log.warning("ignoring a notification of an unknown shape: %r", payload)

    def _on_listening(self) -> None:
        # Whatever was sent while the listener was away is lost: everyone looks again.
        self._wake.everyone()

    # --- the leader's time-driven duties ---

    async def run_duties(self) -> int | None:
        """Do every duty that is due now, once; milliseconds until the next known
        deadline (None: none). Each is a conditional change, so two leaders only
        waste work."""
        engine, db = self._engine, self._db
        while True:
            due = await db.run(engine.due)
            duties: list[tuple[Any, ...]] = [(engine.expire_lease, i) for i in due["leases"]]
            duties += [(engine.deadline, "queue", *row) for row in due["queue"]]
            duties += [(engine.deadline, "job", *row) for row in due["job"]]
            duties += [(engine.deadline, "run", *row) for row in due["run"]]
            for duty in duties:
                await self._duty(*duty)
            promoted = await db.run(engine.promote_due)
            await db.run(engine.prune)
            if max(len(v) for v in due.values()) < DUTY_BATCH and promoted < DUTY_BATCH:
                break
        return await db.run(engine.next_deadline_ms)

    async def _duty(self, fn, *args: Any) -> None:
        """One duty; a failure of one (a defect) is logged and does not stop the others."""
        try:
            await self._db.run(fn, *args)
        except Unavailable:
            raise
        except Exception:  # noqa: BLE001 - logged; the next round tries it again
            log.exception("the duty %s%r failed", fn.__name__, args)

    async def lead(self, say=None) -> None:
        """Hold leadership (a session advisory lock on a connection of its own) when
        it is free and do the duties every reap interval and at the deadlines known;
        stand by and retry otherwise. Runs until cancelled."""
        key = lock_key(self._db.schema, "leader")
        while True:
            conn: psycopg.Connection | None = None
            try:
                conn = await self._db.thread(self._db.connect)
                if not await self._db.thread(_try_lock, conn, key):
                    await self._db.thread(conn.close)
                    conn = None
                    await trio.sleep(STANDBY_RETRY_SECS)
                    continue
                self.leading = True
                if say:
                    say("workflow-graph: this node leads the time-driven duties")
                automation = trio.CancelScope()
                self._nursery.start_soon(self._automate, automation)
                try:
                    while True:
                        self._wake.leader = trio.Event()
                        wait_ms = await self.run_duties()
                        await self._db.thread(conn.execute, "SELECT 1")
                        wait = self._reap_interval
                        if wait_ms is not None:
                            wait = min(wait, max(0.005, wait_ms / 1000))
                        with trio.move_on_after(wait):
                            await self._wake.leader.wait()
                finally:
                    automation.cancel()
            except (psycopg.Error, Unavailable) as exc:
                if self.leading:
                    log.warning("lost leadership (%s); retrying", " ".join(str(exc).split()))
                self.leading = False
                await trio.sleep(STANDBY_RETRY_SECS)
            except Exception:  # noqa: BLE001 - a defect must not take the node down
                log.exception("the leader's loop failed; starting it again")
                self.leading = False
                await trio.sleep(STANDBY_RETRY_SECS)
            finally:
                if conn is not None:
                    with trio.CancelScope(shield=True):
                        await self._db.thread(conn.close)
                self.leading = False


async def _supervised(task) -> None:
    """Run `task` until cancelled; when it fails (the database away, a defect), say so
    and start it again a moment later."""
    while True:
        try:
            await task()
        except Unavailable:
            pass  # the database is away: the task starts again once it is back
        except Exception:  # noqa: BLE001 - a defect must not stop the schedules for good
            log.exception("the leader's %s task failed; starting it again", task.__name__)
        await trio.sleep(STANDBY_RETRY_SECS)


def _try_lock(conn: psycopg.Connection, key: int) -> bool:
    row = conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
    return bool(row and row[0])


def describe_url(url: str) -> str:
    """The database URL without its password, for log lines."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "(an unreadable DATABASE_URL)"
    host = info.get("host", "localhost")
    port = info.get("port", "5432")
    return f"postgresql://{info.get('user', '')}@{host}:{port}/{info.get('dbname', '')}"


async def open_database(url: str, *, migrate: bool = True) -> Database:
    db = Database(url)
    try:
        await trio.to_thread.run_sync(lambda: db.open(migrate_schema=migrate))
    except Exception as exc:  # psycopg's, the schema's, the pool's own timeout
        reason = " ".join(str(exc).split())  # one line
        raise StoreError(f"cannot use the database {describe_url(url)}: {reason}") from None
    return db


@asynccontextmanager
async def open_pg_runtime(
    database_url: str,
    workflows_dir: str | Path | None = None,
    *,
    specs: Iterable[WorkflowSpec] = (),
    duties: bool = True,
    limits: Limits | None = None,
    retain_runs: int = DEFAULT_RETAIN_RUNS,
    reap_interval_secs: float = DEFAULT_REAP_INTERVAL_SECS,
    warn=None,
    say=None,
    secrets: SecretStore | None = None,
    metrics: Metrics | None = None,
    webhook_secret: str | None = None,
) -> AsyncIterator[PgRuntime]:
    """Migrate, upsert the file definitions, listen, lead when `duties` (and free),
    and yield the `PgRuntime`. Raises `StoreError` when the database cannot be used."""
    secrets = secrets or SecretStore()
    metrics = metrics or Metrics()
    loaded = list(specs)
    if workflows_dir is not None:
        from ..definitions import load_workflows_dir

        kwargs = {"warn": warn} if warn is not None else {}
        loaded.extend(load_workflows_dir(Path(workflows_dir), secrets=secrets.names, **kwargs))
    db = await open_database(database_url)
    try:
        engine = Engine(db.schema, max(1, retain_runs), secrets=secrets, metrics=metrics)
        async with trio.open_nursery() as nursery:
            runtime = PgRuntime(
                nursery,
                db,
                engine,
                limits or Limits(),
                reap_interval_secs,
                secrets=secrets,
                metrics=metrics,
                webhook_secret=webhook_secret,
            )
            try:
                await runtime.put_workflows(loaded)
            except Unavailable as exc:
                raise StoreError(f"cannot store the definitions: {exc}") from None
            db.on_commit = runtime._on_note
            nursery.start_soon(db.listen, runtime._on_note, runtime._on_listening)
            if duties:
                nursery.start_soon(runtime.lead, say)
            nursery.start_soon(runtime.watch_waiting)
            runtime._started = True
            try:
                yield runtime
            finally:
                nursery.cancel_scope.cancel()
    finally:
        await trio.to_thread.run_sync(db.close)


__all__ = ["PgRuntime", "open_pg_runtime"]
