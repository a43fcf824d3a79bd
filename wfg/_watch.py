"""Watching one run until it ends, for `wfg run --follow` and `wfg rerun --follow`.

The run is named by its number, so a run started meanwhile (by a schedule, a
teammate, a concurrency group moving on) never takes its place.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from itertools import chain

from rich.live import Live
from rich.text import Text

from actors.models import RUN_ENDED, JobStatus, Run

from . import _render as render
from .client import Client

POLL_INTERVAL_SECS = 0.4


def snapshots(
    client: Client, workflow_id: str, number: int, interval: float = POLL_INTERVAL_SECS
) -> Iterator[Run]:
    """Run `number` every `interval` seconds; the last one yielded has ended."""
    while True:
        run = client.get_run(workflow_id, number)
        yield run
        if run.status in RUN_ENDED:
            return
        time.sleep(interval)


class _FailureReporter:
    """Prints each job's log tail once, when the job first shows up as failed."""

    def __init__(self, client: Client, plain: bool) -> None:
        self._client = client
        self._plain = plain
        self._reported: set[str] = set()

    def new_failures(self, run: Run) -> list[list[str]]:
        reports = []
        for job in render.layered(run.jobs):
            if job.status == JobStatus.failure and job.id not in self._reported:
                self._reported.add(job.id)
                chunks = self._client.get_logs(run.workflow_id, job.id, run=run.number)
                reports.append(render.failure_report(job, render.log_tail(chunks), self._plain))
        return reports


def follow_run(client: Client, workflow_id: str, number: int, out: render.Output) -> Run:
    """Show run `number` until it ends, then a summary line; returns the ended run."""
    failures = _FailureReporter(client, out.plain)
    feed = snapshots(client, workflow_id, number)
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
    """A redrawn DAG view under the run's status line; failure reports scroll above it."""
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
