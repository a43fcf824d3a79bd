"""Watching a run or a job's log until it ends, for `wfg run --follow` and `wfg logs --follow`.

Both outlast a server restart: a failed call is retried with backoff for up to
`--reconnect` seconds (one line on stderr says so), and a log stream resumes
after the last event it showed, so nothing is shown twice or lost.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from functools import partial
from typing import TextIO, TypeVar

from rich.live import Live
from rich.text import Text

from actors.models import TERMINAL_STATUSES, JobStatus, LogChunk, LogStream, Workflow

from . import _render as render
from ._backoff import Backoff
from ._errors import ClientError, ServerUnreachable, WorkflowApiError
from .client import Client

T = TypeVar("T")

POLL_INTERVAL_SECS = 0.4
RECONNECT_SECS = 60.0


def transient(exc: ClientError) -> bool:
    """Whether trying again may help: the server is away or overloaded, not refusing."""
    if isinstance(exc, WorkflowApiError):
        return exc.status >= 500 or exc.status in (408, 429)
    return True


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class Reconnector:
    """Carries a follower through server restarts: retries for up to `window` seconds
    from the first failure of an outage, saying so once on stderr."""

    def __init__(self, window: float = RECONNECT_SECS, say: Callable[[str], None] = _say) -> None:
        self.window = window
        self._say = say
        self._backoff = Backoff(base=0.2, cap=5.0)
        self._since: float | None = None

    def call(self, fn: Callable[[], T]) -> T:
        """`fn()`, retried through transient failures."""
        while True:
            try:
                value = fn()
            except ClientError as exc:
                self.wait(exc)
            else:
                self.ok()
                return value

    def ok(self) -> None:
        """The server answered: a later failure starts a new outage."""
        self._since = None
        self._backoff.reset()

    def wait(self, exc: ClientError) -> None:
        """Sleep before the next try; raise `exc` if it is not transient or time is up."""
        if not transient(exc):
            raise exc
        now = time.monotonic()
        if self._since is None:
            self._since = now
            if self.window > 0:
                self._say(f"wfg: {exc}; reconnecting (for up to {self.window:g} s)")
        left = self._since + self.window - now
        if left <= 0:
            raise exc
        time.sleep(min(self._backoff.next(), left))


def snapshots(
    client: Client,
    workflow_id: str,
    interval: float = POLL_INTERVAL_SECS,
    reconnect: Reconnector | None = None,
) -> Iterator[Workflow]:
    """The workflow's status every `interval` seconds; the last one yielded is terminal."""
    reconnect = reconnect or Reconnector(0)
    while True:
        workflow = reconnect.call(lambda: client.get_status(workflow_id))
        yield workflow
        if render.run_is_over(workflow):
            return
        time.sleep(interval)


class _FailureReporter:
    """Prints each job's log tail once, when the job first shows up as failed."""

    def __init__(
        self, client: Client, workflow_id: str, plain: bool, reconnect: Reconnector
    ) -> None:
        self._client = client
        self._workflow_id = workflow_id
        self._plain = plain
        self._reconnect = reconnect
        self._reported: set[str] = set()

    def new_failures(self, workflow: Workflow) -> list[list[str]]:
        reports = []
        for job in render.layered(workflow.jobs):
            if job.status == JobStatus.failure and job.id not in self._reported:
                self._reported.add(job.id)
                read = partial(self._client.get_job_logs, self._workflow_id, job.id)
                chunks = self._reconnect.call(read)
                tail = render.log_tail(chunks, plain=self._plain)
                reports.append(render.failure_report(job, tail, self._plain))
        return reports


def follow_run(
    client: Client, workflow_id: str, out: render.Output, reconnect: Reconnector
) -> Workflow:
    """Show the run until every job is terminal; returns the final status."""
    started = time.monotonic()
    failures = _FailureReporter(client, workflow_id, out.plain, reconnect)
    feed = snapshots(client, workflow_id, reconnect=reconnect)
    if out.plain:
        final = _follow_plain(feed, out, failures)
    else:
        final = _follow_live(feed, out, failures)
    out.console.print(render.summary_line(final, time.monotonic() - started), markup=False)
    return final


def _follow_plain(
    feed: Iterator[Workflow], out: render.Output, failures: _FailureReporter
) -> Workflow:
    """One line per job status change: a pipe or a log file gets no redraws."""
    seen: dict[str, tuple[JobStatus, int]] = {}
    workflow = None
    for workflow in feed:
        for job in render.layered(workflow.jobs):
            if seen.get(job.id) != (job.status, job.attempt):
                seen[job.id] = (job.status, job.attempt)
                out.console.print(render.change_line(job), markup=False)
        _print_reports(out, failures.new_failures(workflow))
    assert workflow is not None  # snapshots yields at least once
    return workflow


def _follow_live(
    feed: Iterator[Workflow], out: render.Output, failures: _FailureReporter
) -> Workflow:
    """A redrawn DAG view; failure reports (and reconnect notes) scroll above it."""
    first = next(feed)
    view = render.RunView(first)
    workflow = first
    with Live(view, console=out.console, refresh_per_second=10) as live:
        for workflow in _including_first(first, feed):
            view.update(workflow)
            live.refresh()
            for report in failures.new_failures(workflow):
                header, *tail = report
                # Style the text, not the print: a print style would tint the redrawn view too.
                live.console.print(Text(header, style="red"))
                for line in tail:
                    live.console.print(Text(line))
    return workflow


def _including_first(first: Workflow, rest: Iterator[Workflow]) -> Iterator[Workflow]:
    yield first
    yield from rest


def _print_reports(out: render.Output, reports: list[list[str]]) -> None:
    for report in reports:
        for line in report:
            out.console.print(line, markup=False)


class LogWriter:
    """Writes chunks as the job wrote them, stderr to stderr, with a line where each
    attempt after the first starts."""

    def __init__(
        self, plain: bool, stdout: TextIO | None = None, stderr: TextIO | None = None
    ) -> None:
        self._marks = render.AttemptMarks(plain)
        self._stdout = stdout
        self._stderr = stderr

    def __call__(self, chunk: LogChunk) -> None:
        stdout = self._stdout or sys.stdout
        if mark := self._marks.before(chunk):
            stdout.write(mark)
            stdout.flush()
        target = (self._stderr or sys.stderr) if chunk.stream == LogStream.stderr else stdout
        target.write(chunk.data)
        target.flush()


def follow_log(
    client: Client,
    workflow_id: str,
    job_id: str,
    on_chunk: Callable[[LogChunk], None],
    reconnect: Reconnector,
) -> None:
    """Hand every chunk of the job's log to `on_chunk` until the job is over.

    A stream that breaks (or that the server ends while the job runs on) is opened
    again with the last event id seen, so the server sends only what follows it.
    A server not reachable on the first try is an error at once.
    """
    last_id: str | None = None
    reached = False
    while True:
        received = False
        try:
            events = client.stream_log_events(workflow_id, job_id, last_event_id=last_id)
            for event_id, chunk in events:
                reached = received = True
                reconnect.ok()
                on_chunk(chunk)
                last_id = event_id if event_id is not None else last_id
        except ServerUnreachable as exc:
            if not reached:
                raise
            reconnect.wait(exc)
            continue
        except ClientError as exc:
            reached = True
            reconnect.wait(exc)
            continue
        reached = True
        if _job_over(client, workflow_id, job_id, reconnect):
            return
        # Ended early (its lifetime, a server going down): open it again, not in a spin.
        if not received:
            time.sleep(POLL_INTERVAL_SECS)


def _job_over(client: Client, workflow_id: str, job_id: str, reconnect: Reconnector) -> bool:
    workflow = reconnect.call(lambda: client.get_status(workflow_id))
    job = next((j for j in workflow.jobs if j.id == job_id), None)
    return job is None or job.status in TERMINAL_STATUSES
