"""The worker SDK: claim jobs from a server and run them with a Python handler.

    async def build(job: QueuedJob, ctx: JobContext) -> None:
        ctx.log("building")
        ctx.set_output("artifact", "s3://bucket/build.tar.gz")

    trio.run(Worker("http://localhost:3000", labels=["linux"], handler=build).run)

A handler that returns normally completes the job with the outputs it set; one
that raises fails it (retryable, unless it raises `JobFailed(..., retryable=False)`).
The worker does the protocol around it: it long-polls for work, renews the
lease, watches for cancellation, streams the log, and delivers the result
through network errors and server restarts. The shell agent (`wfg.agent`) is
one such handler.
"""

from __future__ import annotations

import logging
import math
import os
import re
import secrets
import socket
import traceback
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import trio

from actors.clock import now_ms
from actors.models import ID_PATTERN, Claim, Lease, LogChunk, LogStream, QueuedJob

from ._backoff import Backoff
from ._errors import ClientError, WorkflowApiError
from .client import AsyncClient

__all__ = ["Handler", "JobContext", "JobFailed", "Worker", "WorkerError", "default_worker_id"]

log = logging.getLogger("wfg.worker")

Handler = Callable[[QueuedJob, "JobContext"], Awaitable[None]]

# Log batching: a push goes out at most this long after its oldest data was written,
# and carries at most this many characters of data.
LOG_BATCH_DELAY_SECS = 0.25
LOG_BATCH_MAX_BYTES = 256 * 1024
# One chunk's `data` at most, in characters. Consecutive writes to one stream share a
# chunk up to this size, so a chatty job makes few large chunks, not one per line.
_CHUNK_MAX_CHARS = 16 * 1024
# Past this much unsent log a writer that waits (`JobContext.drain`) is held back, as
# a terminal holds back a program that prints faster than it can show.
LOG_HIGH_WATER_CHARS = 4 * 1024 * 1024
# The most kept in memory. A writer that does not wait, or one that waits while the
# server has taken no logs for LOG_STALL_SECS, has the oldest unsent output dropped
# instead (the end of a log is where the error is), and a notice says how much.
MAX_PENDING_LOG_CHARS = 8 * 1024 * 1024
LOG_STALL_SECS = 30.0
# The contract asks for the cancellation check at least every 2 s.
CANCEL_CHECK_INTERVAL_SECS = 1.0
# Long-poll length of a claim. Work still arrives within milliseconds (the server
# answers as soon as a job is ready); this only bounds how long a graceful stop
# waits for the in-flight claim, so it is kept well under a typical stop timeout.
DEFAULT_CLAIM_WAIT_SECS = 10.0
# After a second signal, reports get this long to reach the server.
_ABORT_REPORT_SECS = 10.0
# Error texts sent to the server are kept to this many characters.
_MAX_ERROR_CHARS = 4000
# Answers that mean the request itself is wrong: retrying cannot help.
_FATAL_CLAIM_STATUSES = frozenset({400, 401, 403, 404, 405, 422})

_ID_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


class JobFailed(Exception):
    """Raise from a handler to fail the job with `message`, choosing whether to retry."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable


class WorkerError(Exception):
    """The server refuses this worker outright (bad id, labels, token): retrying cannot help."""


def default_worker_id() -> str:
    """The hostname plus a short random suffix, in the server's id alphabet."""
    host = _ID_UNSAFE.sub("-", socket.gethostname())[:100] or "worker"
    return f"{host}-{secrets.token_hex(3)}"


@dataclass(slots=True)
class _Piece:
    """Unsent output of one stream, to become one chunk; writes append to the newest."""

    stream: LogStream
    written_at: float  # trio clock, for the batch delay
    timestamp_ms: int
    parts: list[str] = field(default_factory=list)
    chars: int = 0


class _LogBuffer:
    """The job's unsent log, handed out in batches of chunks numbered from 0 in write order.

    `write` never blocks. `wait_room` blocks while `LOG_HIGH_WATER_CHARS` are unsent,
    unless the server has taken no logs for `LOG_STALL_SECS` (the pusher reports
    through `push_failed` / `push_succeeded`). Past `MAX_PENDING_LOG_CHARS` the
    oldest unsent output goes and a notice takes its place. `next_batch` waits no
    longer than `LOG_BATCH_DELAY_SECS` after the oldest unsent write and returns `[]`
    once closed and empty.
    """

    def __init__(self, workflow_id: str, job_id: str) -> None:
        self._workflow_id = workflow_id
        self._job_id = job_id
        self._pending: deque[_Piece] = deque()
        self._pending_chars = 0
        self._next_sequence = 0
        self._dropped_bytes = 0
        self._dropped_lines = 0
        self._drop_reason = ""
        self._failing_since: float | None = None
        self._closed = False
        self._changed = trio.lowlevel.ParkingLot()

    def write(self, data: str, stream: LogStream) -> None:
        if self._closed or not data:
            return
        last = self._pending[-1] if self._pending else None
        while data:
            if last is None or last.stream != stream or last.chars >= _CHUNK_MAX_CHARS:
                last = _Piece(stream, trio.current_time(), now_ms())
                self._pending.append(last)
            room = _CHUNK_MAX_CHARS - last.chars
            if len(data) <= room:
                cut = len(data)
            else:
                # Chunks end at line ends: readers (and the server's trimming) see whole
                # lines. Only a line longer than a chunk is cut.
                cut = data.rfind("\n", 0, room) + 1
                if not cut and last.chars:
                    last = None
                    continue
                cut = cut or room
            last.parts.append(data[:cut])
            last.chars += cut
            self._pending_chars += cut
            data = data[cut:]
        while self._pending_chars > MAX_PENDING_LOG_CHARS and len(self._pending) > 1:
            self._drop_oldest()
        self._changed.unpark_all()

    def _drop_oldest(self) -> None:
        piece = self._pending.popleft()
        self._pending_chars -= piece.chars
        text = "".join(piece.parts)
        if not self._dropped_bytes:
            self._drop_reason = (
                "the server was not taking logs"
                if self._stalled()
                else "the job wrote faster than its log could be sent"
            )
        self._dropped_bytes += len(text.encode("utf-8", "replace"))
        self._dropped_lines += text.count("\n")

    def _stalled(self) -> bool:
        return (
            self._failing_since is not None
            and trio.current_time() - self._failing_since >= LOG_STALL_SECS
        )

    async def wait_room(self) -> None:
        """Return once the writer may go on: room in the buffer, closed, or the server stalled."""
        # A checkpoint even when there is room, so a writer in a loop lets others run.
        await trio.lowlevel.checkpoint()
        while self._pending_chars >= LOG_HIGH_WATER_CHARS and not self._closed:
            if self._failing_since is None:
                stall_at = math.inf
            else:
                stall_at = self._failing_since + LOG_STALL_SECS
            if trio.current_time() >= stall_at:
                return
            with trio.move_on_at(stall_at):
                await self._changed.park()

    def push_failed(self) -> None:
        if self._failing_since is None:
            self._failing_since = trio.current_time()
            self._changed.unpark_all()

    def push_succeeded(self) -> None:
        self._failing_since = None

    def close(self) -> None:
        """No more writes; `next_batch` drains what is left without waiting."""
        self._closed = True
        self._changed.unpark_all()

    def discard(self) -> None:
        """Close and forget everything pending (the lease is gone, nobody will take it)."""
        self._pending.clear()
        self._pending_chars = 0
        self._dropped_bytes = 0
        self.close()

    async def next_batch(self) -> list[LogChunk]:
        while not self._pending and not self._dropped_bytes:
            if self._closed:
                return []
            await self._changed.park()
        if self._pending:
            with trio.move_on_at(self._pending[0].written_at + LOG_BATCH_DELAY_SECS):
                while self._pending_chars < LOG_BATCH_MAX_BYTES and not self._closed:
                    await self._changed.park()
        batch: list[LogChunk] = []
        if self._dropped_bytes:
            # Where the dropped output was: just before what is left of the backlog.
            note = (
                f"[wfg worker: {self._dropped_bytes} bytes ({self._dropped_lines} lines) of"
                f" output dropped here: {self._drop_reason}]\n"
            )
            batch.append(self._chunk(note, LogStream.stderr, now_ms()))
            self._dropped_bytes = self._dropped_lines = 0
        taken = 0
        while self._pending and (
            taken == 0 or taken + self._pending[0].chars <= LOG_BATCH_MAX_BYTES
        ):
            piece = self._pending.popleft()
            text = "".join(piece.parts)
            if not self._pending and not self._closed and not text.endswith("\n"):
                # The newest piece ends in a partial line: send the whole lines now and
                # give the rest up to the batch delay to end its line.
                cut = text.rfind("\n") + 1
                if cut:
                    rest = _Piece(piece.stream, trio.current_time(), now_ms(), [text[cut:]])
                    rest.chars = len(text) - cut
                    self._pending.append(rest)
                    self._pending_chars -= cut
                    batch.append(self._chunk(text[:cut], piece.stream, piece.timestamp_ms))
                    break
            self._pending_chars -= len(text)
            taken += len(text)
            batch.append(self._chunk(text, piece.stream, piece.timestamp_ms))
        self._changed.unpark_all()  # room for a writer held back
        return batch

    def _chunk(self, data: str, stream: LogStream, timestamp_ms: int) -> LogChunk:
        chunk = LogChunk(
            workflow_id=self._workflow_id,
            job_id=self._job_id,
            sequence=self._next_sequence,
            data=data,
            timestamp_ms=timestamp_ms,
            stream=stream,
        )
        self._next_sequence += 1
        return chunk


class JobContext:
    """What a handler can do with the job it runs.

    - `log(text)` / `write(data)` add to the job's log (never block, never raise
      for network trouble); lines reach the server within about 250 ms. A handler
      that writes a lot awaits `drain()` between writes to be held back while the
      log is behind; one that does not has its oldest unsent output dropped past
      8 Mi characters (the log says where and how much).
    - `set_output(key, value)` sets an output, sent with the completion.
    - `cancelled` turns true (and `wait_cancelled()` returns) when the worker stops
      the handler: the job was cancelled, the lease was lost, or the worker is
      being killed. The handler's task is cancelled at the same moment, so a handler
      only needs these to tell why, or to do cleanup in a shielded `finally`.

    Call its methods from the trio thread (from a thread: `trio.from_thread.run_sync`).
    """

    def __init__(self, job: QueuedJob, lease: Lease, worker_id: str, logs: _LogBuffer) -> None:
        self.job = job
        self.lease = lease
        self.worker_id = worker_id
        self._logs = logs
        self._outputs: dict[str, str] = {}
        self._cancelled = trio.Event()
        self._stop_reason: str | None = None

    @property
    def workflow_id(self) -> str:
        return self.job.workflow_id

    @property
    def job_id(self) -> str:
        return self.job.job_id

    @property
    def attempt(self) -> int:
        """0 for the first try, +1 per retry."""
        return self.job.attempt

    @property
    def lease_id(self) -> str:
        return self.lease.lease_id

    @property
    def upstream_outputs(self) -> dict[str, dict[str, str]]:
        return self.job.upstream_outputs

    @property
    def outputs(self) -> dict[str, str]:
        """A copy of the outputs set so far."""
        return dict(self._outputs)

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    @property
    def stop_reason(self) -> str | None:
        """Why the worker stopped the handler (`cancelled`, `lease lost`, ...), else None."""
        return self._stop_reason

    async def wait_cancelled(self) -> None:
        await self._cancelled.wait()

    def log(self, text: str, stream: str | LogStream = "stdout") -> None:
        """Log `text` as a line (a newline is added when it has none)."""
        self.write(text if text.endswith("\n") else text + "\n", stream)

    def write(self, data: str, stream: str | LogStream = "stdout") -> None:
        """Log `data` exactly as given (for output that arrives in pieces)."""
        self._logs.write(data, LogStream(stream))

    async def drain(self) -> None:
        """Wait while much of the log is unsent, so writing faster than it goes out blocks.

        Returns at once while there is room, and also when the server has not taken
        logs for `LOG_STALL_SECS`: then the oldest unsent output is dropped instead.
        """
        await self._logs.wait_room()

    def set_output(self, key: str, value: str) -> None:
        if not key:
            raise ValueError("an output needs a non-empty key")
        # The wire only carries strings; accept numbers and the like as their text.
        self._outputs[key] = value if isinstance(value, str) else str(value)

    def _stop(self, reason: str) -> None:
        if self._stop_reason is None:
            self._stop_reason = reason
        self._cancelled.set()


@dataclass
class _Outcome:
    """What to report for a finished job: success with outputs, or a failure."""

    ok: bool
    outputs: dict[str, str] = field(default_factory=dict)
    error: str = ""
    retryable: bool = False

    def describe(self) -> str:
        if self.ok:
            return "success"
        kind = "retryable" if self.retryable else "final"
        first_line = self.error.splitlines()[0] if self.error else ""
        return f"failure ({kind}): {first_line}"


# Why the worker stopped a handler.
_CANCELLED = "cancelled"
_LEASE_LOST = "lease lost"
_ABORTED = "worker stopped"


class _JobRun:
    """One claimed job while this worker holds it: the lease clock and how to stop it."""

    def __init__(self, claim: Claim, worker_id: str, claimed_at: float) -> None:
        self.claim = claim
        self.logs = _LogBuffer(claim.job.workflow_id, claim.job.job_id)
        self.ctx = JobContext(claim.job, claim.lease, worker_id, self.logs)
        self.handler_scope = trio.CancelScope()
        # When the server would expire the lease if it heard nothing more: counted from
        # when the claim was answered, then from when each successful renewal was sent.
        self.lease_deadline = claimed_at + claim.lease.ttl_secs
        self.report_deadline = math.inf
        self.logs_done = trio.Event()
        # The server answered 409 for this lease: it takes nothing more from us.
        self.refused = False

    @property
    def lease_id(self) -> str:
        return self.claim.lease.lease_id

    @property
    def name(self) -> str:
        job = self.claim.job
        return f"{job.workflow_id}/{job.job_id} attempt {job.attempt}"

    @property
    def lease_lost(self) -> bool:
        return self.ctx.stop_reason == _LEASE_LOST

    def give_up_at(self) -> float:
        return min(self.lease_deadline, self.report_deadline)

    def stop(self, reason: str) -> None:
        self.ctx._stop(reason)
        self.handler_scope.cancel()

    def abort(self) -> None:
        self.report_deadline = min(self.report_deadline, trio.current_time() + _ABORT_REPORT_SECS)
        self.stop(_ABORTED)

    def refuse(self, reason: str) -> None:
        self.refused = True
        # Nobody will take these lines any more.
        self.logs.discard()
        self.stop(reason)


class Worker:
    """Claims jobs from `server_url` and runs each with `handler`, `concurrency` at a time.

    Guarantees, per claimed job:

    - the lease is renewed every third of its TTL; if the server refuses a renewal
      (409) the handler is cancelled and nothing is reported for that job;
    - cancellation is checked at least every 2 s; a cancelled job's handler is
      cancelled and the job reported failed, not retryable;
    - log output is pushed in order, in chunks numbered from 0, in batches of at
      most 256 Ki characters sent within ~250 ms, and the last batch is pushed
      before the result;
    - the result is retried through network errors and 5xx answers until it is
      delivered or the lease would have expired; a 409 drops it (with a log line).

    `run()` never gives up on network errors or server restarts; it raises
    `WorkerError` only when the server rejects the worker itself (a 4xx such as
    422 or 401 on register/claim), after letting running jobs finish.
    `stop()` ends it gracefully (no new claims, running jobs finish), `abort()`
    cancels running jobs and reports them failed (retryable).
    """

    def __init__(
        self,
        server_url: str,
        *,
        handler: Handler,
        labels: Iterable[str] = (),
        worker_id: str | None = None,
        concurrency: int = 1,
        lease_ttl_secs: int = 30,
        poll_interval: float = 1.0,
        token: str | None = None,
        claim_wait_secs: float = DEFAULT_CLAIM_WAIT_SECS,
        client: AsyncClient | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if lease_ttl_secs < 1:
            raise ValueError("lease_ttl_secs must be at least 1")
        self.server_url = server_url
        self.labels = list(labels)
        self.worker_id = worker_id or default_worker_id()
        # The server would refuse these on every claim: say so before starting.
        for what, value in [("worker id", self.worker_id)] + [("label", x) for x in self.labels]:
            if not re.fullmatch(ID_PATTERN, value):
                raise ValueError(f"invalid {what} {value!r}: use letters, digits, '.', '_', '-'")
        self.concurrency = concurrency
        self.lease_ttl_secs = lease_ttl_secs
        self.poll_interval = poll_interval
        self.claim_wait_secs = max(0.0, min(60.0, claim_wait_secs))
        self._handler = handler
        token = token if token is not None else os.environ.get("WORKER_TOKEN") or None
        self._client = client or AsyncClient(server_url, worker_token=token)
        self._owns_client = client is None
        self._slots = trio.Semaphore(concurrency)
        self._active: set[_JobRun] = set()
        self._stopping = False
        self._aborting = False
        # Cancelled by `stop()`: covers the waits of the claim loop, never a claim request.
        self._idle_scope: trio.CancelScope | None = None
        # Cancelled by `abort()`: the whole claim loop, in-flight claim included.
        self._claim_scope = trio.CancelScope()
        self._reachable = True
        # Set when the server refuses the worker itself; raised once running jobs are done.
        self._fatal: WorkerError | None = None

    @property
    def running_jobs(self) -> int:
        return len(self._active)

    def stop(self) -> None:
        """Stop claiming; `run()` returns once running jobs have finished.

        A claim still parked on the server is abandoned (the server requeues what it
        was about to hand over); a job already handed over is run like any other.
        """
        self._stopping = True
        if self._idle_scope is not None:
            self._idle_scope.cancel()

    def abort(self) -> None:
        """Stop claiming and cancel running jobs; each is reported failed, retryable."""
        self.stop()
        self._aborting = True
        self._claim_scope.cancel()
        for run in list(self._active):
            run.abort()

    async def run(self) -> None:
        """Claim and run jobs until `stop()` or `abort()`, then wait for running jobs."""
        try:
            async with trio.open_nursery() as jobs:
                with self._claim_scope:
                    await self._claim_loop(jobs)
        finally:
            if self._owns_client:
                with trio.CancelScope(shield=True):
                    await self._client.aclose()
        if self._fatal is not None:
            raise self._fatal

    # --- claiming ---

    async def _idle(self, afn: Callable[[], Awaitable[object]]) -> bool:
        """Await `afn()` unless `stop()` comes first; True if it ran to the end."""
        if self._stopping:
            return False
        with trio.CancelScope() as scope:
            self._idle_scope = scope
            try:
                await afn()
                return True
            finally:
                self._idle_scope = None
        return False

    async def _claim_loop(self, jobs: trio.Nursery) -> None:
        backoff = Backoff()
        registered = False
        while not self._stopping:
            # Only ask for work when a slot is free.
            if not await self._idle(self._slots.acquire):
                return
            try:
                if not registered:
                    await self._client.register_worker(self.worker_id, self.labels)
                    registered = True
                started = trio.current_time()
                answer: list[Claim | None] = []

                async def claim_one(answer: list[Claim | None] = answer) -> None:
                    answer.append(
                        await self._client.claim(
                            self.worker_id,
                            self.labels,
                            lease_ttl_secs=self.lease_ttl_secs,
                            wait_secs=self.claim_wait_secs,
                        )
                    )

                # stop() abandons a parked claim: the server puts back a job whose
                # claimer went away, so stopping an idle worker is immediate.
                if not await self._idle(claim_one):
                    self._slots.release()
                    return
                claim = answer[0]
            except WorkflowApiError as exc:
                self._slots.release()
                if exc.status in _FATAL_CLAIM_STATUSES:
                    # Retrying cannot help; jobs already running still finish.
                    self._fatal = WorkerError(f"server refused worker {self.worker_id}: {exc}")
                    self.stop()
                    return
                self._unreachable(exc)
                await self._idle(lambda: trio.sleep(backoff.next()))
                continue
            except ClientError as exc:
                self._slots.release()
                self._unreachable(exc)
                await self._idle(lambda: trio.sleep(backoff.next()))
                continue
            except BaseException:
                self._slots.release()
                raise
            received = trio.current_time()
            self._reached()
            backoff.reset()
            if claim is None:
                self._slots.release()
                # A server that parks claims answers null only after the wait; one that
                # answers at once (no long-poll support) is polled at poll_interval.
                quick = received - started < self.claim_wait_secs / 2
                if quick or self.claim_wait_secs == 0:
                    await self._idle(lambda: trio.sleep(self.poll_interval))
                continue
            # The lease clock starts at the answer: the claim may have parked a while.
            run = _JobRun(claim, self.worker_id, received)
            self._active.add(run)
            jobs.start_soon(self._run_job, run)

    def _unreachable(self, exc: Exception) -> None:
        # One line when the server goes away, one when it is back: not one per retry.
        if self._reachable:
            log.warning("server trouble, retrying with backoff: %s", exc)
            self._reachable = False

    def _reached(self) -> None:
        if not self._reachable:
            log.info("server %s reachable again", self.server_url)
            self._reachable = True

    # --- one job ---

    async def _run_job(self, run: _JobRun) -> None:
        """Run one claimed job to its report. Owns the job's slot and `_active` entry."""
        started = trio.current_time()
        log.info("job %s started", run.name)
        outcome: _Outcome | None = None
        delivered = False
        try:
            # Cancelled (rather than left to end) once the result is in: the lease
            # keeper and cancellation watcher have no end of their own.
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._keep_lease, run)
                nursery.start_soon(self._watch_cancellation, run)
                nursery.start_soon(self._push_logs, run)
                if self._aborting:
                    run.abort()
                outcome = await self._call_handler(run)
                run.logs.close()
                await run.logs_done.wait()
                if not run.lease_lost:
                    delivered = await self._report(run, outcome)
                nursery.cancel_scope.cancel()
        finally:
            self._active.discard(run)
            self._slots.release()
        elapsed = trio.current_time() - started
        if run.lease_lost:
            log.info(
                "job %s abandoned after %.1fs: lease lost, nothing reported", run.name, elapsed
            )
        elif outcome is not None:
            note = "" if delivered else " (not delivered)"
            log.info("job %s %s in %.1fs%s", run.name, outcome.describe(), elapsed, note)

    async def _call_handler(self, run: _JobRun) -> _Outcome:
        """The handler's result as an outcome; a stop by the worker overrides it."""
        ctx = run.ctx
        outcome: _Outcome
        try:
            with run.handler_scope:
                await self._handler(run.claim.job, ctx)
            outcome = _Outcome(ok=True, outputs=ctx.outputs)
        except Exception as exc:
            leaf = _sole_leaf(exc)
            if isinstance(leaf, JobFailed):
                outcome = _Outcome(ok=False, error=leaf.message, retryable=leaf.retryable)
            else:
                ctx.write("".join(traceback.format_exception(exc)), LogStream.stderr)
                outcome = _Outcome(ok=False, error=f"{type(leaf).__name__}: {leaf}", retryable=True)
        reason = ctx.stop_reason
        if reason == _CANCELLED:
            outcome = _Outcome(ok=False, error="cancelled", retryable=False)
        elif reason == _ABORTED:
            outcome = _Outcome(
                ok=False, error="worker stopped before the job finished", retryable=True
            )
        outcome.error = outcome.error[:_MAX_ERROR_CHARS]
        return outcome

    async def _lease_refused(self, run: _JobRun) -> None:
        """A 409 on the lease: the job is not ours any more. Say why, and stop it."""
        if run.refused:
            return
        run.refused = True
        reason = _LEASE_LOST
        with trio.move_on_after(2):
            try:
                job = run.claim.job
                if await self._client.is_cancelled(job.workflow_id, job.job_id, run=job.run_id):
                    reason = _CANCELLED
            except ClientError:
                pass
        if reason == _LEASE_LOST:
            log.warning("job %s: the server no longer holds our lease; stopping it", run.name)
        run.refuse(reason)

    async def _keep_lease(self, run: _JobRun) -> None:
        interval = run.claim.lease.ttl_secs / 3
        backoff = Backoff(cap=interval)
        delay = interval
        while True:
            await trio.sleep(delay)
            sent_at = trio.current_time()
            try:
                with _bounded(interval):
                    await self._client.heartbeat_lease(run.lease_id)
            except WorkflowApiError as exc:
                if exc.status == 409:
                    await self._lease_refused(run)
                    return
                delay = backoff.next()
                continue
            except (ClientError, _TimedOut):
                delay = backoff.next()
                continue
            run.lease_deadline = sent_at + run.claim.lease.ttl_secs
            backoff.reset()
            delay = interval

    async def _watch_cancellation(self, run: _JobRun) -> None:
        job = run.claim.job
        while True:
            await trio.sleep(CANCEL_CHECK_INTERVAL_SECS)
            try:
                with _bounded(CANCEL_CHECK_INTERVAL_SECS * 2):
                    cancelled = await self._client.is_cancelled(
                        job.workflow_id, job.job_id, run=job.run_id
                    )
            except (ClientError, _TimedOut):
                continue  # unknown is not cancelled; ask again next tick
            if cancelled:
                log.info("job %s cancelled by the server; stopping it", run.name)
                run.stop(_CANCELLED)
                return

    async def _push_logs(self, run: _JobRun) -> None:
        try:
            while batch := await run.logs.next_batch():
                await self._push_batch(run, batch)
        finally:
            run.logs_done.set()

    async def _push_batch(
        self, run: _JobRun, batch: list[LogChunk], *, say_refusal: bool = True
    ) -> None:
        backoff = Backoff()
        while not run.refused:
            try:
                with _bounded(30):
                    await self._client.push_logs(run.lease_id, batch)
                run.logs.push_succeeded()
                return
            except WorkflowApiError as exc:
                if exc.status == 409:
                    await self._lease_refused(run)
                    return
                if exc.status == 413 and len(batch) > 1:
                    half = len(batch) // 2
                    await self._push_batch(run, batch[:half])
                    await self._push_batch(run, batch[half:])
                    return
                if exc.status < 500 and exc.status not in (408, 429):
                    log.warning("job %s: %d log chunk(s) refused: %s", run.name, len(batch), exc)
                    if say_refusal:
                        # The log itself says what is missing from it.
                        notice = _refusal_notice(batch, exc)
                        await self._push_batch(run, [notice], say_refusal=False)
                    return
            except (ClientError, _TimedOut):
                pass
            run.logs.push_failed()
            delay = backoff.next()
            if trio.current_time() + delay > run.give_up_at():
                log.warning(
                    "job %s: %d log chunk(s) dropped: server unreachable", run.name, len(batch)
                )
                return
            await trio.sleep(delay)

    async def _report(self, run: _JobRun, outcome: _Outcome) -> bool:
        """Deliver the result; True once the server has it."""
        backoff = Backoff()
        while True:
            try:
                with _bounded(30):
                    if outcome.ok:
                        await self._client.complete(run.lease_id, outcome.outputs)
                    else:
                        await self._client.fail(run.lease_id, outcome.error, outcome.retryable)
                return True
            except WorkflowApiError as exc:
                if exc.status == 409:
                    # Expected after a cancel (the server revokes the lease); news otherwise.
                    if not run.refused and run.ctx.stop_reason != _CANCELLED:
                        log.warning("job %s: result not accepted, lease no longer active", run.name)
                    return False
                if outcome.ok and exc.status == 422:
                    # The outputs are what the server objects to: say so in a failure.
                    outcome = _Outcome(
                        ok=False,
                        error=f"server refused the outputs: {exc.message}",
                        retryable=False,
                    )
                    continue
                if exc.status < 500 and exc.status not in (408, 429):
                    log.warning("job %s: result refused: %s", run.name, exc)
                    return False
            except (ClientError, _TimedOut):
                pass
            delay = backoff.next()
            if trio.current_time() + delay > run.give_up_at():
                log.warning("job %s: result not delivered before the lease ran out", run.name)
                return False
            await trio.sleep(delay)


def _refusal_notice(batch: list[LogChunk], exc: WorkflowApiError) -> LogChunk:
    size = sum(len(c.data.encode("utf-8", "replace")) for c in batch)
    return batch[0].model_copy(
        update={
            "data": f"[wfg worker: {size} bytes of output refused by the server and dropped"
            f" here: {exc}]\n",
            "stream": LogStream.stderr,
        }
    )


class _TimedOut(Exception):
    """A protocol call took longer than the worker can afford to wait."""


@contextmanager
def _bounded(seconds: float) -> Iterator[None]:
    """Cancel the block after `seconds` and raise `_TimedOut`: no call may hang a loop."""
    with trio.move_on_after(seconds) as scope:
        yield
    if scope.cancelled_caught:
        raise _TimedOut()


def _sole_leaf(exc: BaseException) -> BaseException:
    """The one exception inside (possibly nested) single-member groups, else `exc`."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc
