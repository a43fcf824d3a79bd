"""The shell agent: a `Worker` whose handler runs each job's command with `sh -c`.

`run_shell_job` is the handler; `worker_command` is the `wfg worker` command.

What a job's command sees:

- the worker's environment (minus `WORKER_TOKEN`), then the job's `env`, then
  `WFG_WORKFLOW_ID`, `WFG_JOB_ID`, `WFG_ATTEMPT` (0 for the first try),
  `WFG_UPSTREAM_OUTPUTS` (a JSON file: the outputs of its direct dependencies,
  keyed by job id) and `WFG_OUTPUT` (a file to append `key=value` lines to, or
  `key<<DELIM` ... `DELIM` for a multi-line value, like `GITHUB_OUTPUT`);
- its own session and process group, so the worker's signals never reach it and
  the whole group can be stopped at once.

A stdout line `::set-output key=value` (or `::set-output name=key::value`) also
sets an output. Exit 0 completes the job; anything else fails it, retryable, with
the exit code and the tail of the output.
"""

from __future__ import annotations

import codecs
import json
import logging
import math
import os
import signal
import subprocess
import sys
import tempfile
from collections import deque
from collections.abc import Callable
from pathlib import Path

import click
import trio

from actors.models import QueuedJob

from .worker import JobContext, JobFailed, Worker, WorkerError, default_worker_id

__all__ = ["parse_output_file", "run_shell_job", "worker_command"]

log = logging.getLogger("wfg.worker")

# SIGTERM first; SIGKILL if the group is still there after this long.
KILL_GRACE_SECS = 5.0
# A failure's error text carries at most this much of the job's last output.
TAIL_LINES = 20
TAIL_BYTES = 2048
# A line longer than this is logged in pieces rather than held back.
_MAX_PARTIAL_CHARS = 16 * 1024
# Variables of the worker that a job must not inherit.
_PRIVATE_ENV = ("WORKER_TOKEN",)

_READ_SIZE = 65536


class _Tail:
    """The last lines of a job's combined output, for its failure message."""

    def __init__(self) -> None:
        self._lines: deque[str] = deque(maxlen=TAIL_LINES)

    def add(self, text: str) -> None:
        self._lines.append(text[-TAIL_BYTES:])

    def text(self) -> str:
        joined = "".join(self._lines).rstrip("\n")
        encoded = joined.encode()
        if len(encoded) > TAIL_BYTES:
            joined = encoded[-TAIL_BYTES:].decode("utf-8", "ignore")
        return joined


def _parse_set_output(line: str) -> tuple[str, str] | None:
    """`::set-output key=value` or GitHub's `::set-output name=key::value`."""
    if not line.startswith("::set-output "):
        return None
    rest = line[len("::set-output ") :].rstrip("\r\n")
    if rest.startswith("name=") and "::" in rest:
        key, value = rest[len("name=") :].split("::", 1)
    elif "=" in rest:
        key, value = rest.split("=", 1)
    else:
        return None
    key = key.strip()
    return (key, value) if key else None


def parse_output_file(text: str) -> dict[str, str]:
    """The outputs of a `WFG_OUTPUT` file: `key=value` lines and `key<<DELIM` blocks.

    Raises `JobFailed` (not retryable) for a block without its closing delimiter.
    """
    outputs: dict[str, str] = {}
    lines = text.replace("\r\n", "\n").split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line.strip():
            continue
        heredoc = line.find("<<")
        equals = line.find("=")
        if heredoc > 0 and (equals == -1 or heredoc < equals):
            key, delimiter = line[:heredoc].strip(), line[heredoc + 2 :].strip()
            value: list[str] = []
            while i < len(lines) and lines[i] != delimiter:
                value.append(lines[i])
                i += 1
            if i >= len(lines):
                raise JobFailed(
                    f"WFG_OUTPUT: no closing {delimiter!r} for output {key!r}", retryable=False
                )
            i += 1
            outputs[key] = "\n".join(value)
        elif equals > 0:
            outputs[line[:equals].strip()] = line[equals + 1 :]
    return outputs


def _job_env(job: QueuedJob, upstream_file: Path, output_file: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _PRIVATE_ENV}
    env.update(job.env)
    env.update(
        WFG_WORKFLOW_ID=job.workflow_id,
        WFG_JOB_ID=job.job_id,
        WFG_ATTEMPT=str(job.attempt),
        WFG_UPSTREAM_OUTPUTS=str(upstream_file),
        WFG_OUTPUT=str(output_file),
    )
    return env


def _signal_group(process: trio.Process, sig: signal.Signals) -> None:
    """Signal the job's whole process group; a group already gone is not an error."""
    try:
        os.killpg(process.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


async def _stop_group(process: trio.Process) -> None:
    """SIGTERM the group, SIGKILL it after the grace, and reap the command.

    Shielded: it runs while the job is being cancelled and must not be cut short.
    """
    with trio.CancelScope(shield=True):
        if process.returncode is None:
            _signal_group(process, signal.SIGTERM)
            with trio.move_on_after(KILL_GRACE_SECS):
                await process.wait()
        # Also the command's leftovers (background children) once it has exited.
        _signal_group(process, signal.SIGKILL)
        await process.wait()


async def _pump(
    stream: trio.abc.ReceiveStream, on_text: Callable[[str], None], done: trio.Event
) -> None:
    """Read a pipe to EOF, handing on whole lines (and over-long pieces) as text."""
    # Incremental: a multibyte character split across two reads still decodes.
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    partial = ""
    try:
        while data := await stream.receive_some(_READ_SIZE):
            *lines, partial = (partial + decoder.decode(data)).split("\n")
            for line in lines:
                on_text(line + "\n")
            if len(partial) > _MAX_PARTIAL_CHARS:
                on_text(partial)
                partial = ""
        if rest := partial + decoder.decode(b"", final=True):
            on_text(rest)
    finally:
        done.set()
        with trio.CancelScope(shield=True):
            await stream.aclose()


async def run_shell_job(job: QueuedJob, ctx: JobContext) -> None:
    """Run `job.command` with `sh -c`, streaming its output to the job log.

    Returns normally on exit 0 (outputs set on `ctx`); raises `JobFailed` for a
    non-zero exit or a timeout. If cancelled, the process group is sent SIGTERM,
    then SIGKILL after `KILL_GRACE_SECS`, before the cancellation propagates.
    The temporary files are removed in every case.
    """
    with tempfile.TemporaryDirectory(prefix="wfg-job-") as tmp:
        upstream_file = Path(tmp) / "upstream_outputs.json"
        upstream_file.write_text(json.dumps(job.upstream_outputs))
        output_file = Path(tmp) / "output"
        output_file.touch()
        tail = _Tail()

        def on_text(stream: str) -> Callable[[str], None]:
            def handle(text: str) -> None:
                ctx.write(text, stream)
                tail.add(text)
                if stream == "stdout" and (pair := _parse_set_output(text)):
                    ctx.set_output(*pair)

            return handle

        process = await trio.lowlevel.open_process(
            ["sh", "-c", job.command],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=_job_env(job, upstream_file, output_file),
            # Its own session from the first instruction: no signal of ours reaches
            # it, and killpg reaches everything it starts.
            start_new_session=True,
        )
        assert process.stdout is not None and process.stderr is not None
        timed_out = False
        try:
            async with trio.open_nursery() as nursery:
                out_done, err_done = trio.Event(), trio.Event()
                nursery.start_soon(_pump, process.stdout, on_text("stdout"), out_done)
                nursery.start_soon(_pump, process.stderr, on_text("stderr"), err_done)
                timeout = job.timeout_secs if job.timeout_secs else math.inf
                with trio.move_on_after(timeout):
                    await process.wait()
                if process.returncode is None:
                    timed_out = True
                    await _stop_group(process)
                else:
                    # The command is done; children it left behind would hold the
                    # pipes open forever, so the job's end is their end too.
                    _signal_group(process, signal.SIGTERM)
                with trio.move_on_after(KILL_GRACE_SECS):
                    await out_done.wait()
                    await err_done.wait()
                _signal_group(process, signal.SIGKILL)
                with trio.move_on_after(1):
                    await out_done.wait()
                    await err_done.wait()
                nursery.cancel_scope.cancel()
        finally:
            await _stop_group(process)

        if timed_out:
            raise JobFailed(f"timeout after {job.timeout_secs} s", retryable=True)
        code = process.returncode
        if code != 0:
            if code < 0:
                try:
                    what = f"killed by signal {signal.Signals(-code).name}"
                except ValueError:
                    what = f"killed by signal {-code}"
            else:
                what = f"exit code {code}"
            detail = tail.text()
            raise JobFailed(f"{what}: {detail}" if detail else what, retryable=True)
        for key, value in parse_output_file(output_file.read_text(errors="replace")).items():
            ctx.set_output(key, value)


# --- the command -------------------------------------------------------------


def _split_labels(text: str) -> list[str]:
    return [label.strip() for label in text.split(",") if label.strip()]


async def _serve(worker: Worker) -> int:
    """Run `worker` under signal control; the process exit code."""
    exit_code = 0

    async def on_signals(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        nonlocal exit_code
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            task_status.started()
            count = 0
            async for signum in signals:
                count += 1
                name = signal.Signals(signum).name
                if count == 1:
                    log.info(
                        "%s: no new jobs; waiting for %d running job(s) and any in-flight"
                        " claim (up to %g s); again to kill them",
                        name,
                        worker.running_jobs,
                        worker.claim_wait_secs,
                    )
                    worker.stop()
                elif count == 2:
                    log.info("%s: killing running jobs and reporting them failed", name)
                    exit_code = 128 + signum
                    worker.abort()
                else:
                    log.info("%s: exiting now", name)
                    nursery.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        await nursery.start(on_signals)
        await worker.run()
        nursery.cancel_scope.cancel()
    log.info("%s stopped", worker.worker_id)
    return exit_code


@click.command("worker")
@click.option(
    "--server",
    envvar="SERVER_URL",
    default="http://localhost:3000",
    show_default=True,
    help="Server URL [env SERVER_URL].",
)
@click.option(
    "--labels",
    envvar="WORKER_LABELS",
    default="",
    help="Comma-separated labels [env WORKER_LABELS].",
)
@click.option(
    "--id",
    "worker_id",
    envvar="WORKER_ID",
    default=None,
    help="Worker id [env WORKER_ID; default: hostname + random suffix].",
)
@click.option("--concurrency", type=click.IntRange(min=1), default=1, show_default=True)
@click.option(
    "--lease-ttl", type=click.IntRange(1, 86_400), default=30, show_default=True, help="Seconds."
)
@click.option(
    "--poll-interval",
    type=click.FloatRange(min=0),
    default=1.0,
    show_default=True,
    help="Seconds between claims when the server does not long-poll.",
)
def worker_command(
    server: str,
    labels: str,
    worker_id: str | None,
    concurrency: int,
    lease_ttl: int,
    poll_interval: float,
) -> None:
    """Claim jobs from the server and run their commands with `sh -c`.

    First SIGTERM/SIGINT: stop claiming, let running jobs finish, exit 0.
    A second: kill running jobs, report them failed (retryable), exit 128+signal.
    """
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("wfg worker: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False

    try:
        worker = Worker(
            server,
            handler=run_shell_job,
            labels=_split_labels(labels),
            worker_id=worker_id or default_worker_id(),
            concurrency=concurrency,
            lease_ttl_secs=lease_ttl,
            poll_interval=poll_interval,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    log.info(
        "%s serving %s labels=[%s] concurrency=%d",
        worker.worker_id,
        worker.server_url,
        ",".join(worker.labels),
        concurrency,
    )
    try:
        code = trio.run(_serve, worker)
    except WorkerError as exc:
        log.error("%s", exc)
        sys.exit(2)
    sys.exit(code)
