"""How `wfg` shows things: tables, the run view, plain lines for pipes.

Everything here takes models and returns text or rich renderables; nothing
talks to the server. "Plain" output (stdout not a terminal, or `NO_COLOR`
set) is whitespace-aligned text with no colour or cursor codes, so it can be
piped, grepped and diffed.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from pydantic import TypeAdapter
from rich.console import Console, Group, RenderableType
from rich.markup import escape
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from actors.models import (
    TERMINAL_STATUSES,
    Job,
    JobStatus,
    LogChunk,
    Run,
    RunAccepted,
    RunStatus,
    ScheduleInfo,
    WorkerInfo,
    Workflow,
)

LOG_TAIL_LINES = 20
# What `list` and `status` say of a workflow with no run yet: its jobs' `queued`
# would read as work waiting for a worker.
NEVER_RUN = "never run"

# By status value: a job's and a run's statuses share their names.
_STYLE = {
    "queued": "dim",
    "running": "cyan",
    "success": "green",
    "failure": "bold red",
    "skipped": "dim",
    "cancelled": "yellow",
}
_MARK = {
    JobStatus.queued: "○",
    JobStatus.running: "●",
    JobStatus.success: "✓",
    JobStatus.failure: "✗",
    JobStatus.skipped: "↷",
    JobStatus.cancelled: "⊘",
}


@dataclass(frozen=True, slots=True)
class Output:
    """Where `wfg` writes, and whether it may use colour and cursor movement."""

    console: Console
    plain: bool


def is_plain() -> bool:
    """Plain text when stdout is piped or `NO_COLOR` is set."""
    return bool(os.environ.get("NO_COLOR")) or not sys.stdout.isatty()


def make_output() -> Output:
    """Rich output on a terminal; plain text when piped or when `NO_COLOR` is set."""
    plain = is_plain()
    if plain:
        console = Console(no_color=True, force_terminal=False, highlight=False, soft_wrap=True)
    else:
        console = Console(highlight=False)
    return Output(console=console, plain=plain)


def dump_json(value: Any) -> str:
    """Models (or lists of them) as the API's JSON, indented for reading."""
    return json.dumps(TypeAdapter(Any).dump_python(value, mode="json"), indent=2)


# --- facts derived from a workflow ------------------------------------------


def layered(jobs: Sequence[Job]) -> list[Job]:
    """Jobs in dependency-layer order (roots first), server order within a layer."""
    known = {job.id for job in jobs}
    depth: dict[str, int] = {}
    remaining = list(jobs)
    while remaining:
        waiting = []
        for job in remaining:
            deps = [d for d in job.depends_on if d in known]
            if all(d in depth for d in deps):
                depth[job.id] = 1 + max((depth[d] for d in deps), default=-1)
            else:
                waiting.append(job)
        if len(waiting) == len(remaining):
            # A cycle cannot come from the server; show such jobs last rather than hang.
            depth.update({job.id: len(jobs) for job in waiting})
            break
        remaining = waiting
    order = {job.id: i for i, job in enumerate(jobs)}
    return sorted(jobs, key=lambda job: (depth[job.id], order[job.id]))


def status_counts(jobs: Iterable[Job]) -> str:
    counts: dict[str, int] = {}
    for job in jobs:
        counts[job.status.value] = counts.get(job.status.value, 0) + 1
    return ", ".join(f"{n} {status}" for status, n in counts.items())


def run_duration(run: Run, now: int | None = None) -> str:
    """How long the run ran (ended) or has been running; "" while it waits to start."""
    if run.started_at_ms is None:
        return ""
    end = run.finished_at_ms if run.finished_at_ms is not None else (now or now_ms())
    return format_duration((end - run.started_at_ms) / 1000)


def run_origin(run: Run) -> str:
    """What started the run: `re-run of 3`, or its trigger (`manual`, ...)."""
    return f"re-run of {run.rerun_of}" if run.rerun_of is not None else run.trigger


def format_inputs(inputs: dict[str, Any]) -> str:
    """`env=prod, dry-run=true`: strings as they are, other values as JSON."""
    return ", ".join(
        f"{name}={value if isinstance(value, str) else json.dumps(value)}"
        for name, value in inputs.items()
    )


def format_duration(secs: float) -> str:
    secs = max(0, int(secs))
    if secs < 60:
        return f"{secs}s"
    if secs < 3600:
        return f"{secs // 60}m{secs % 60:02d}s"
    return f"{secs // 3600}h{secs % 3600 // 60:02d}m"


def now_ms() -> int:
    return int(time.time() * 1000)


def elapsed(job: Job, now: int | None = None) -> str:
    """How long the job ran (finished) or has been running; "" before it starts."""
    if job.status in TERMINAL_STATUSES and job.duration_secs is not None:
        return format_duration(job.duration_secs)
    if job.status == JobStatus.running and job.started_at is not None:
        return format_duration(((now or now_ms()) - job.started_at) / 1000)
    return ""


def attempts(job: Job) -> str:
    """`attempt 2/3` when the job may retry or has; "" for a single-shot job."""
    if job.max_retries == 0 and job.attempt == 0:
        return ""
    return f"attempt {job.attempt + 1}/{job.max_retries + 1}"


def waiting_text(job: Job, now: int | None = None) -> str:
    """Why a queued job waits, e.g. `waiting 2m05s: no live worker has labels gpu`."""
    waiting = job.waiting
    if waiting is None:
        return ""
    now = now or now_ms()
    since = f" {format_duration((now - waiting.since_ms) / 1000)}" if waiting.since_ms else ""
    if waiting.reason == "no_worker":
        labels = ",".join(waiting.labels or []) or "(none)"
        return f"waiting{since}: no live worker has labels {labels}"
    if waiting.reason == "delayed" and waiting.until_ms:
        return f"retry in {format_duration((waiting.until_ms - now) / 1000)} (backoff)"
    if waiting.reason == "concurrency":
        return f"waiting{since}: concurrency group {waiting.group}"
    return f"waiting: {waiting.reason}"


def ago(ms: int, now: int | None = None) -> str:
    if ms <= 0:
        return "never"
    return format_duration(((now or now_ms()) - ms) / 1000) + " ago"


def log_tail(
    chunks: Iterable[LogChunk], lines: int = LOG_TAIL_LINES, plain: bool = True
) -> list[str]:
    """The last `lines` lines of the job's log, stdout and stderr interleaved as stored,
    with a line where each attempt starts."""
    marks = AttemptMarks(plain)
    text = "".join(marks.before(chunk) + chunk.data for chunk in chunks)
    return text.splitlines()[-lines:]


class AttemptMarks:
    """Where a job's log moves on to another attempt: `── attempt 2 ──` on a line of its own.

    Feed it every chunk in order; the first attempt gets no mark, so the log of a
    job that never retried reads exactly as it was written.
    """

    def __init__(self, plain: bool) -> None:
        self._bar = "--" if plain else "──"
        self._attempt = 0
        self._line_start = True

    def before(self, chunk: LogChunk) -> str:
        """The text to show before `chunk`: a mark if it starts an attempt, else ""."""
        mark = ""
        if chunk.attempt != self._attempt:
            self._attempt = chunk.attempt
            newline = "" if self._line_start else "\n"
            mark = f"{newline}{self._bar} attempt {chunk.attempt + 1} {self._bar}\n"
            self._line_start = True
        if chunk.data:
            self._line_start = chunk.data.endswith("\n")
        return mark


# --- tables -----------------------------------------------------------------


@dataclass(slots=True)
class Rows:
    """A table as data, so it renders as rich on a terminal and as text in a pipe."""

    headers: list[str]
    rows: list[list[str]] = field(default_factory=list)
    # Per-row rich style, ignored in plain output.
    styles: list[str | None] = field(default_factory=list)

    def add(self, *cells: str, style: str | None = None) -> None:
        self.rows.append(list(cells))
        self.styles.append(style)


def print_rows(out: Output, table: Rows, title: str | None = None) -> None:
    if out.plain:
        if title:
            out.console.print(title, markup=False)
        for line in plain_lines(table):
            out.console.print(line, markup=False)
        return
    rich_table = Table(title=title, title_justify="left", header_style="bold")
    for header in table.headers:
        rich_table.add_column(header)
    for cells, style in zip(table.rows, table.styles, strict=True):
        rich_table.add_row(*(escape(c) for c in cells), style=style)
    out.console.print(rich_table)


def plain_lines(table: Rows) -> list[str]:
    """Columns aligned with two spaces, no borders, no trailing blanks."""
    everything = [table.headers, *table.rows]
    widths = [max(len(row[i]) for row in everything) for i in range(len(table.headers))]
    return [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in everything
    ]


def workflows_rows(workflows: Iterable[Workflow]) -> Rows:
    """Each workflow with its latest run: number, status and its jobs' statuses."""
    table = Rows(["ID", "NAME", "RUN", "STATUS", "JOBS", "TRIGGER"])
    for wf in workflows:
        if wf.run is None:
            table.add(wf.id, wf.name, "", NEVER_RUN, f"{len(wf.jobs)} job(s)", wf.trigger)
        else:
            status = wf.run.status.value
            table.add(
                wf.id,
                wf.name,
                str(wf.run.number),
                status,
                status_counts(wf.jobs),
                wf.trigger,
                style=_STYLE[status],
            )
    return table


def jobs_rows(jobs: Sequence[Job], *, ran: bool = True) -> Rows:
    """The jobs of a run in layer order; with `ran=False` (never run) no status."""
    table = Rows(["JOB", "NAME", "STATUS", "TIME", "ATTEMPT", "NEEDS", "OUTPUT"])
    now = now_ms()
    for job in layered(jobs):
        table.add(
            job.id,
            job.name,
            job.status.value if ran else "",
            elapsed(job, now),
            attempts(job),
            ",".join(job.depends_on),
            (job.output or "").splitlines()[0] if job.output else waiting_text(job, now),
            style=_STYLE[job.status.value] if ran else None,
        )
    return table


def runs_rows(runs: Iterable[Run]) -> Rows:
    """A workflow's run history, as `gh run list` shows it."""
    table = Rows(["RUN", "STATUS", "TRIGGER", "STARTED", "DURATION", "RE-RUN OF"])
    now = now_ms()
    for run in runs:
        table.add(
            str(run.number),
            run.status.value,
            run.trigger,
            ago(run.started_at_ms, now) if run.started_at_ms is not None else "",
            run_duration(run, now),
            str(run.rerun_of) if run.rerun_of is not None else "",
            style=_STYLE[run.status.value],
        )
    return table


def workers_rows(workers: Iterable[WorkerInfo]) -> Rows:
    table = Rows(["WORKER", "STATUS", "LABELS", "CURRENT JOB", "LAST SEEN"])
    now = now_ms()
    for w in workers:
        table.add(
            w.worker_id,
            w.status.value,
            ",".join(w.labels),
            w.current_job or "",
            ago(w.last_heartbeat_ms, now),
        )
    return table


def schedule_lines(schedules: Iterable[ScheduleInfo], now: int | None = None) -> list[str]:
    """`schedule '0 3 * * 1-5' (Europe/Berlin): next 2024-01-02 03:00 CET (in 14h32m)`,
    each time in the schedule's own zone."""
    lines = []
    for schedule in schedules:
        zone = ZoneInfo(schedule.timezone)
        when = datetime.fromtimestamp(schedule.next_at_ms / 1000, zone)
        wait = format_duration((schedule.next_at_ms - (now or now_ms())) / 1000)
        line = f"schedule '{schedule.cron}' ({schedule.timezone}): next "
        line += f"{when:%Y-%m-%d %H:%M %Z} (in {wait})"
        if schedule.skipped:
            line += f"; {schedule.skipped} due time(s) skipped (workflow busy)"
        lines.append(line)
    return lines


def status_title(workflow: Workflow, run: Run | None) -> str:
    """`CI [ci-1] run 3: failure (re-run of 2; inputs env=prod)`, or `CI [ci-1]: never run`."""
    name = f"{workflow.name} [{workflow.id}]"
    if run is None:
        trigger = f"  ({workflow.trigger})" if workflow.trigger else ""
        return f"{name}: {NEVER_RUN}{trigger}"
    return f"{name} {run_line(run)}"


def run_line(run: Run) -> str:
    """`run 3: failure (manual; inputs env=prod): <why the run ended>`."""
    details = run_origin(run)
    if run.inputs:
        details += f"; inputs {format_inputs(run.inputs)}"
    reason = f": {run.reason}" if run.reason else ""
    return f"run {run.number}: {run.status.value} ({details}){reason}"


def accepted_line(accepted: RunAccepted, rerun_of: int | None = None) -> str:
    """What `wfg run` and `wfg rerun` print: the new run's number and whether it started."""
    name = f"run {accepted.number} of {accepted.workflow_id}"
    origin = f" (re-run of {rerun_of})" if rerun_of is not None else ""
    if accepted.status == RunStatus.running:
        return f"{name} started{origin}"
    if accepted.status == RunStatus.queued:
        return f"{name} queued{origin}: waiting for its concurrency group"
    return f"{name}{origin}: {accepted.status.value}"


# --- following a run --------------------------------------------------------


class RunView:
    """The live view of a run: one line per job in layer order, redrawn by `rich.live`.

    Shows a `Run` under a line with its number and status, or a `Workflow`'s
    latest run. Spinners are kept per job so their animation does not restart
    on each poll.
    """

    def __init__(self, source: Workflow | Run) -> None:
        self.source = source
        self._spinners: dict[str, Spinner] = {}

    def update(self, source: Workflow | Run) -> None:
        self.source = source

    def _mark(self, job: Job) -> RenderableType:
        if job.status == JobStatus.running:
            return self._spinners.setdefault(job.id, Spinner("dots", style="cyan"))
        return Text(_MARK[job.status], style=_STYLE[job.status.value])

    def __rich__(self) -> RenderableType:
        grid = Table.grid(padding=(0, 1))
        grid.add_column(width=1)
        grid.add_column(style="bold")
        grid.add_column()
        grid.add_column(justify="right")
        grid.add_column(style="dim")
        now = now_ms()
        for job in layered(self.source.jobs):
            status = Text(job.status.value, style=_STYLE[job.status.value])
            grid.add_row(self._mark(job), job.id, status, elapsed(job, now), attempts(job))
        if isinstance(self.source, Run):
            run = self.source
            title = Text(f"{run.workflow_id} {run_line(run)}", style=_STYLE[run.status.value])
            return Group(title, grid)
        return grid


def change_line(job: Job) -> str:
    """The plain line for one job status change, e.g. `build: failure (3s, attempt 2/2)`."""
    details = [d for d in (elapsed(job), attempts(job)) if d]
    suffix = f" ({', '.join(details)})" if details else ""
    error = (
        f": {job.output.splitlines()[0]}" if job.status == JobStatus.failure and job.output else ""
    )
    return f"{job.id}: {job.status.value}{suffix}{error}"


def failure_report(job: Job, tail: Sequence[str], plain: bool) -> list[str]:
    """The header and indented last log lines printed when a job fails."""
    reason = f": {job.output.splitlines()[0]}" if job.output else ""
    header = f"--- {job.id} failed{reason}; last {len(tail)} log line(s):"
    bar = "  | " if plain else "  │ "
    return (
        [header, *(bar + line for line in tail)]
        if tail
        else [f"--- {job.id} failed{reason} (no log)"]
    )


def run_summary_line(run: Run) -> str:
    """The last line of a followed run, e.g. `run 3 of ci-1: failure (build), 1 failure, ...`."""
    head = f"run {run.number} of {run.workflow_id}: {run.status.value}"
    took = run_duration(run)
    if run.status == RunStatus.success:
        return f"{head}, {len(run.jobs)} job(s) in {took}"
    failed = [j.id for j in layered(run.jobs) if j.status == JobStatus.failure]
    detail = f" ({', '.join(failed)})" if failed else ""
    reason = f": {run.reason}" if run.reason else ""
    after = f" after {took}" if took else ""
    return f"{head}{detail}{reason}, {status_counts(run.jobs)}{after}"
