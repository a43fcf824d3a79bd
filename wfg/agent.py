"""The shell agent: a `Worker` whose handler runs each job's command with `sh -c`.

`run_shell_job` is the handler; `worker_command` is the `wfg worker` command.

What a job's command sees:

- the worker's environment (minus `WORKER_TOKEN`), then the job's `env`, then
  `WFG_WORKFLOW_ID`, `WFG_JOB_ID`, `WFG_ATTEMPT` (0 for the first try),
  `WFG_UPSTREAM_OUTPUTS` (a JSON file: the outputs of its direct dependencies,
  keyed by job id) and `WFG_OUTPUT` (a file to append `key=value` lines to, or
  `key<<DELIM` ... `DELIM` for a multi-line value), also as `GITHUB_OUTPUT` so
  steps copied from GitHub Actions work unchanged, and `GITHUB_EVENT_PATH` (a
  JSON file: the payload of the event that started the run, `{}` for none);
- its own session and process group, so the worker's signals never reach it and
  the whole group can be stopped at once. A watchdog process stops the group if
  the worker dies without doing so (SIGKILL, a crash);
- stdout and stderr as pipes the worker reads as fast as the log goes out: a job
  that prints faster than that blocks on its writes, as under a slow terminal.

A stdout line `::set-output key=value` (or `::set-output name=key::value`) also
sets an output. Exit 0 completes the job; anything else fails it, retryable, with
the exit code and the last lines of its output (stdout and stderr, in order).
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
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from contextlib import asynccontextmanager
from pathlib import Path

import click
import trio

from actors.models import LogStream, QueuedJob

from .worker import JobContext, JobFailed, Worker, WorkerError, default_worker_id

__all__ = ["parse_output_file", "run_shell_job", "worker_command"]

log = logging.getLogger("wfg.worker")

# SIGTERM first; SIGKILL if the group is still there after this long.
KILL_GRACE_SECS = 5.0
# A failure's error text carries at most this much of the job's last output.
TAIL_LINES = 20
TAIL_BYTES = 2048
# A stdout line longer than this is logged but not read as `::set-output`.
_MAX_OUTPUT_LINE_CHARS = 64 * 1024
# Variables of the worker that a job must not inherit.
_PRIVATE_ENV = ("WORKER_TOKEN",)
# A pipe's default capacity: one read takes all that is in it.
_READ_SIZE = 65536
# Once the job is over, what is still in its pipes is read for at most this many rounds
# (a process that escaped the group may hold them open and keep writing).
_FINAL_READ_ROUNDS = 64

# Stands by while the worker lives. Its first line is the job's process group; a
# second line means the job is over. End of input without it means the worker died:
# the group gets SIGTERM, then SIGKILL after the grace, as on a cancel.
_WATCHDOG = """
read -r group && [ -n "$group" ] || exit 0
read -r _ || { kill -TERM -"$group"; sleep "$1"; kill -KILL -"$group"; } 2>/dev/null
"""


class _Tail:
    """The end of the job's output as read (stdout and stderr interleaved), for its failure."""

    def __init__(self) -> None:
        self._text = ""

    def add(self, text: str) -> None:
        # Characters, at least as many as the bytes kept: enough for TAIL_BYTES.
        self._text = (self._text + text)[-2 * TAIL_BYTES :]

    def text(self) -> str:
        joined = "\n".join(self._text.rstrip("\n").split("\n")[-TAIL_LINES:])
        encoded = joined.encode()
        if len(encoded) > TAIL_BYTES:
            joined = encoded[-TAIL_BYTES:].decode("utf-8", "ignore")
        return joined


class _SetOutputLines:
    """Finds `::set-output` lines in stdout arriving in pieces of any size."""

    def __init__(self) -> None:
        self._partial = ""
        self._in_long_line = False

    def feed(self, text: str) -> list[tuple[str, str]]:
        if self._in_long_line:
            newline = text.find("\n")
            if newline < 0:
                return []
            self._in_long_line = False
            text = text[newline + 1 :]
        complete, _, self._partial = (self._partial + text).rpartition("\n")
        if len(self._partial) > _MAX_OUTPUT_LINE_CHARS:
            self._partial, self._in_long_line = "", True
        if "::set-output " not in complete:
            return []
        return [pair for line in complete.split("\n") if (pair := _parse_set_output(line))]

    def finish(self) -> list[tuple[str, str]]:
        pair = None if self._in_long_line else _parse_set_output(self._partial)
        return [pair] if pair else []


class _OutputReader:
    """Reads the job's stdout and stderr pipes into `emit`, keeping their order.

    Two pipes cannot say which of two writes came first, so each round reads stderr,
    then stdout, and hands on stdout's data first: whatever the job had written to
    stdout before something on stderr is then always logged before it. (Output
    both pipes gained within one round, or while the job was held back, may
    interleave in pipe-sized pieces.)
    """

    def __init__(self, fds: dict[LogStream, int], emit: Callable[[str, LogStream], None]) -> None:
        self._open = dict(fds)
        self._decoders = {
            stream: codecs.getincrementaldecoder("utf-8")(errors="replace") for stream in fds
        }
        self._emit = emit
        self._finishing = False
        self._waiting = trio.CancelScope()
        self.at_eof = trio.Event()

    def finish(self) -> None:
        """Read what is in the pipes now and stop, even if something still holds them open."""
        self._finishing = True
        self._waiting.cancel()

    async def run(self, wait_room: Callable[[], Awaitable[None]]) -> None:
        rounds = 0
        while self._open:
            await wait_room()
            progress = self._read_round()
            if self._finishing:
                rounds += 1
                if not progress or rounds > _FINAL_READ_ROUNDS:
                    return
            elif not progress:
                with trio.CancelScope() as self._waiting:
                    await _readable(self._open.values())
        self.at_eof.set()

    def _read_round(self) -> bool:
        err = self._read(LogStream.stderr)
        out = self._read(LogStream.stdout)
        for stream, text in ((LogStream.stdout, out), (LogStream.stderr, err)):
            if text:
                self._emit(text, stream)
        return out is not None or err is not None

    def _read(self, stream: LogStream) -> str | None:
        """The text read from the stream's pipe, "" at its end, None if nothing was there."""
        fd = self._open.get(stream)
        if fd is None:
            return None
        try:
            data = os.read(fd, _READ_SIZE)
        except BlockingIOError:
            return None
        # Incremental: a multibyte character split across two reads still decodes.
        if not data:
            del self._open[stream]
            return self._decoders[stream].decode(b"", final=True)
        return self._decoders[stream].decode(data)


async def _readable(fds: Collection[int]) -> None:
    """Return once any of `fds` is readable (or at its end)."""
    async with trio.open_nursery() as nursery:

        async def wait(fd: int) -> None:
            await trio.lowlevel.wait_readable(fd)
            nursery.cancel_scope.cancel()

        for fd in fds:
            nursery.start_soon(wait, fd)


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


def _job_env(
    job: QueuedJob, upstream_file: Path, output_file: Path, event_file: Path
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _PRIVATE_ENV}
    env.update(job.env)
    env.update(
        WFG_WORKFLOW_ID=job.workflow_id,
        WFG_JOB_ID=job.job_id,
        WFG_ATTEMPT=str(job.attempt),
        WFG_UPSTREAM_OUTPUTS=str(upstream_file),
        WFG_OUTPUT=str(output_file),
        GITHUB_OUTPUT=str(output_file),
        GITHUB_EVENT_PATH=str(event_file),
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


@asynccontextmanager
async def _watchdog() -> AsyncIterator[Callable[[int], None]]:
    """A process that kills a job's group should this worker die first; yields `watch(pgid)`.

    The worker holds the only write end of the watchdog's stdin, so the kernel closes
    it however the worker ends; on leaving the block the watchdog is told to stand down.
    """
    read_end, write_end = os.pipe()
    try:
        watchdog = await trio.lowlevel.open_process(
            ["sh", "-c", _WATCHDOG, "wfg-watchdog", str(KILL_GRACE_SECS)],
            stdin=read_end,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            # Out of the worker's group and session: what stops the worker spares it.
            start_new_session=True,
        )
    except BaseException:
        os.close(write_end)
        raise
    finally:
        os.close(read_end)
    try:
        yield lambda pgid: _write_line(write_end, str(pgid))
    finally:
        with trio.CancelScope(shield=True):
            _write_line(write_end, "")
            os.close(write_end)
            await watchdog.wait()


def _write_line(fd: int, text: str) -> None:
    try:
        os.write(fd, f"{text}\n".encode())
    except OSError:
        pass  # the watchdog is gone; nothing to tell


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
        event_file = Path(tmp) / "event.json"
        event_file.write_text(json.dumps(job.event or {}))
        tail = _Tail()
        set_outputs = _SetOutputLines()

        def emit(text: str, stream: LogStream) -> None:
            ctx.write(text, stream)
            tail.add(text)
            if stream == LogStream.stdout:
                for key, value in set_outputs.feed(text):
                    ctx.set_output(key, value)

        async with _watchdog() as watch:
            out_read, out_write = os.pipe()
            err_read, err_write = os.pipe()
            try:
                try:
                    process = await trio.lowlevel.open_process(
                        ["sh", "-c", job.command],
                        stdin=subprocess.DEVNULL,
                        stdout=out_write,
                        stderr=err_write,
                        env=_job_env(job, upstream_file, output_file, event_file),
                        # Its own session from the first instruction: no signal of ours
                        # reaches it, and killpg reaches everything it starts.
                        start_new_session=True,
                    )
                finally:
                    os.close(out_write)
                    os.close(err_write)
                watch(process.pid)
                os.set_blocking(out_read, False)
                os.set_blocking(err_read, False)
                reader = _OutputReader(
                    {LogStream.stdout: out_read, LogStream.stderr: err_read}, emit
                )
                timed_out = await _run_to_end(process, reader, ctx, job.timeout_secs)
            finally:
                os.close(out_read)
                os.close(err_read)

        for key, value in set_outputs.finish():
            ctx.set_output(key, value)
        if timed_out:
            raise JobFailed(f"timeout after {job.timeout_secs} s", retryable=True)
        code = process.returncode
        assert code is not None  # reaped by `_run_to_end`
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


async def _run_to_end(
    process: trio.Process, reader: _OutputReader, ctx: JobContext, timeout_secs: int | None
) -> bool:
    """Wait for the command and read its output to the end; True if it timed out."""
    timed_out = False
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader.run, ctx.drain)
            with trio.move_on_after(timeout_secs if timeout_secs else math.inf):
                await process.wait()
            if process.returncode is None:
                timed_out = True
                await _stop_group(process)
            else:
                # The command is done; children it left behind would hold the pipes
                # open forever, so the job's end is their end too.
                _signal_group(process, signal.SIGTERM)
            with trio.move_on_after(KILL_GRACE_SECS):
                await reader.at_eof.wait()
            _signal_group(process, signal.SIGKILL)
            # What the job wrote is read to the end, however long the log takes to send.
            reader.finish()
    finally:
        await _stop_group(process)
    return timed_out


# --- the command -------------------------------------------------------------


def _split_labels(text: str) -> list[str]:
    return [label.strip() for label in text.split(",") if label.strip()]


async def _serve(worker: Worker, watch_stdin: bool = False) -> int:
    """Run `worker` under signal control; the process exit code."""
    exit_code = 0

    async def on_stdin_closed() -> None:
        nonlocal exit_code
        # A dup: the stream owns (and closes) its descriptor, stdin stays as it was.
        async with trio.lowlevel.FdStream(os.dup(sys.stdin.fileno())) as stdin:
            while await stdin.receive_some():
                pass
        # Nobody to report to: stop the jobs (their cleanup is shielded) and exit now.
        log.info("stdin closed (the supervising process is gone): killing running jobs")
        exit_code = 1
        nursery.cancel_scope.cancel()

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
        if watch_stdin:
            nursery.start_soon(on_stdin_closed)
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
    help="Server URL [env SERVER_URL]; several, comma-separated, for the nodes of one "
    "cluster: a node that does not answer is skipped for the next.",
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
@click.option(
    "--watch-stdin",
    is_flag=True,
    help="Kill running jobs and exit when stdin reaches its end: a supervisor holding"
    " the other end of a pipe takes its workers with it when it dies.",
)
def worker_command(
    server: str,
    labels: str,
    worker_id: str | None,
    concurrency: int,
    lease_ttl: int,
    poll_interval: float,
    watch_stdin: bool,
) -> None:
    """Claim jobs from the server and run their commands with `sh -c`.

    First SIGTERM/SIGINT: stop claiming, let running jobs finish, exit 0.
    A second: kill running jobs, report them failed (retryable), exit 128+signal.
    A job's process group never outlives the worker, even one killed with SIGKILL.
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
        code = trio.run(_serve, worker, watch_stdin)
    except WorkerError as exc:
        log.error("%s", exc)
        sys.exit(2)
    sys.exit(code)
