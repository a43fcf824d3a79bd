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
from itertools import chain
from typing import TextIO, TypeVar

from rich.live import Live
from rich.text import Text

from actors.models import RUN_ENDED, TERMINAL_STATUSES, JobStatus, LogChunk, LogStream, Run

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
    number: int,
    interval: float = POLL_INTERVAL_SECS,
    reconnect: Reconnector | None = None,
) -> Iterator[Run]:
    """Run `number` every `interval` seconds; the last one yielded has ended. The run
    is named by its number, so a run started meanwhile never takes its place."""
    reconnect = reconnect or Reconnector(0)
    while True:
        run = reconnect.call(lambda: client.get_run(workflow_id, number))
        yield run
        if run.status in RUN_ENDED:
            return
        time.sleep(interval)


class _FailureReporter:
    """Prints each job's log tail once, when the job first shows up as failed."""

    def __init__(self, client: Client, plain: bool, reconnect: Reconnector) -> None:
        self._client = client
        self._plain = plain
        self._reconnect = reconnect
        self._reported: set[str] = set()

    def new_failures(self, run: Run) -> list[list[str]]:
        reports = []
        for job in render.layered(run.jobs):
            if job.status == JobStatus.failure and job.id not in self._reported:
                self._reported.add(job.id)
                read = partial(self._client.get_logs, run.workflow_id, job.id, run=run.number)
                tail = render.log_tail(self._reconnect.call(read), plain=self._plain)
                reports.append(render.failure_report(job, tail, self._plain))
        return reports


def follow_run(
    client: Client, workflow_id: str, number: int, out: render.Output, reconnect: Reconnector
) -> Run:
    """Show run `number` until it ends, then a summary line; returns the ended run."""
    failures = _FailureReporter(client, out.plain, reconnect)
    feed = snapshots(client, workflow_id, number, reconnect=reconnect)
    final = _follow_plain(feed, out, failures) if out.plain else _follow_live(feed, out, failures)
    out.console.print(render.run_summary_line(final), markup=False)
    return final


def _follow_plain(feed: Iterator[Run], out: render.Output, failures: _FailureReporter) -> Run:
    """One line per job status change: a pipe or a log file gets no redraws."""
    seen: dict[str, tuple[JobStatus, int]] = {}
    run = first = next(feed)
    for run in chain([first], feed):
        for job in render.layered(run.jobs):
            if seen.get(job.id) != (job.status, job.attempt):
                seen[job.id] = (job.status, job.attempt)
                out.console.print(render.change_line(job), markup=False)
        for report in failures.new_failures(run):
            for line in report:
                out.console.print(line, markup=False)
    return run


def _follow_live(feed: Iterator[Run], out: render.Output, failures: _FailureReporter) -> Run:
    """A redrawn DAG view under the run's status line; failure reports (and reconnect
    notes) scroll above it."""
    run = first = next(feed)
    view = render.RunView(first)
    with Live(view, console=out.console, refresh_per_second=10) as live:
        for run in chain([first], feed):
            view.update(run)
            live.refresh()
            for header, *tail in failures.new_failures(run):
                # Style the text, not the print: a print style would tint the redrawn view too.
                live.console.print(Text(header, style="red"))
                for line in tail:
                    live.console.print(Text(line))
    return run


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
    run: int | None = None,
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
            events = client.stream_log_events(workflow_id, job_id, run=run, last_event_id=last_id)
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
        if _job_over(client, workflow_id, job_id, reconnect, run):
            return
        # Ended early (its lifetime, a server going down): open it again, not in a spin.
        if not received:
            time.sleep(POLL_INTERVAL_SECS)


def _job_over(
    client: Client, workflow_id: str, job_id: str, reconnect: Reconnector, run: int | None
) -> bool:
    if run is None:
        jobs = reconnect.call(lambda: client.get_status(workflow_id)).jobs
    else:
        jobs = reconnect.call(lambda: client.get_run(workflow_id, run)).jobs
    job = next((j for j in jobs if j.id == job_id), None)
    return job is None or job.status in TERMINAL_STATUSES
