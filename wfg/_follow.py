"""Watching a run or a job's log until it ends, for `wfg run --follow` and `wfg logs --follow`."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from typing import TextIO

from rich.live import Live
from rich.text import Text

from actors.models import JobStatus, LogChunk, LogStream, Workflow

from . import _render as render
from .client import Client

POLL_INTERVAL_SECS = 0.4


def snapshots(
    client: Client, workflow_id: str, interval: float = POLL_INTERVAL_SECS
) -> Iterator[Workflow]:
    """The workflow's status every `interval` seconds; the last one yielded is terminal."""
    while True:
        workflow = client.get_status(workflow_id)
        yield workflow
        if render.run_is_over(workflow):
            return
        time.sleep(interval)


class _FailureReporter:
    """Prints each job's log tail once, when the job first shows up as failed."""

    def __init__(self, client: Client, workflow_id: str, plain: bool) -> None:
        self._client = client
        self._workflow_id = workflow_id
        self._plain = plain
        self._reported: set[str] = set()

    def new_failures(self, workflow: Workflow) -> list[list[str]]:
        reports = []
        for job in render.layered(workflow.jobs):
            if job.status == JobStatus.failure and job.id not in self._reported:
                self._reported.add(job.id)
                tail = render.log_tail(self._client.get_job_logs(self._workflow_id, job.id))
                reports.append(render.failure_report(job, tail, self._plain))
        return reports


def follow_run(client: Client, workflow_id: str, out: render.Output) -> Workflow:
    """Show the run until every job is terminal; returns the final status."""
    started = time.monotonic()
    failures = _FailureReporter(client, workflow_id, out.plain)
    if out.plain:
        final = _follow_plain(client, workflow_id, out, failures)
    else:
        final = _follow_live(client, workflow_id, out, failures)
    out.console.print(render.summary_line(final, time.monotonic() - started), markup=False)
    return final


def _follow_plain(
    client: Client, workflow_id: str, out: render.Output, failures: _FailureReporter
) -> Workflow:
    """One line per job status change: a pipe or a log file gets no redraws."""
    seen: dict[str, tuple[JobStatus, int]] = {}
    workflow = None
    for workflow in snapshots(client, workflow_id):
        for job in render.layered(workflow.jobs):
            if seen.get(job.id) != (job.status, job.attempt):
                seen[job.id] = (job.status, job.attempt)
                out.console.print(render.change_line(job), markup=False)
        _print_reports(out, failures.new_failures(workflow))
    assert workflow is not None  # snapshots yields at least once
    return workflow


def _follow_live(
    client: Client, workflow_id: str, out: render.Output, failures: _FailureReporter
) -> Workflow:
    """A redrawn DAG view; failure reports scroll above it."""
    feed = snapshots(client, workflow_id)
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


def write_chunk(
    chunk: LogChunk, stdout: TextIO | None = None, stderr: TextIO | None = None
) -> None:
    """A chunk's data exactly as the job wrote it, on the stream it wrote it to."""
    target = (stderr or sys.stderr) if chunk.stream == LogStream.stderr else (stdout or sys.stdout)
    target.write(chunk.data)
    target.flush()
