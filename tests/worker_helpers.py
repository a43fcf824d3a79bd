"""Helpers for the worker tests: worker processes, workflow files, waiting on status."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import trio

TERMINAL = {"success", "failure", "skipped", "cancelled"}


def write_workflow(workflows_dir: Path, workflow_id: str, text: str) -> Path:
    path = workflows_dir / f"{workflow_id}.yml"
    path.write_text(text)
    return path


@dataclass
class WorkerProcess:
    """A `python -m wfg worker` process; its output is collected as it comes."""

    process: subprocess.Popen
    lines: list[str] = field(default_factory=list)

    def output(self) -> str:
        return "".join(self.lines)

    def signal(self, sig: int) -> None:
        self.process.send_signal(sig)

    def signal_group(self, sig: int) -> None:
        """To the worker's process group (it leads its own: see `start_worker`)."""
        os.killpg(self.process.pid, sig)

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout)

    def wait_for_output(self, text: str, timeout: float = 10) -> None:
        wait_for(lambda: text in self.output(), timeout, f"{text!r} in worker output")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def shutdown(self) -> None:
        """Stop it the way that also ends its jobs (two SIGTERMs), SIGKILL as a last resort.

        A test that fails mid-job must not leave the job's processes behind.
        """
        if self.process.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                # Two signals sent back to back may arrive as one: wait for the first.
                self.wait_for_output("SIGTERM", timeout=2)
                self.signal(signal.SIGTERM)
                self.process.wait(8)
            except (AssertionError, subprocess.TimeoutExpired):
                pass
        self.kill()


def start_worker(
    server_url: str, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> WorkerProcess:
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "SERVER_URL": server_url, **(env or {})}
    proc = subprocess.Popen(
        [sys.executable, "-m", "wfg", "worker", *args],
        env=full_env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # Its own group, so a test can signal "the worker and everything in its group".
        start_new_session=True,
    )
    worker = WorkerProcess(proc)

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            worker.lines.append(line)

    threading.Thread(target=pump, daemon=True).start()
    return worker


def wait_for(
    predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05
) -> Any:
    """Poll `predicate` until it returns something truthy; fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def jobs_by_id(workflow: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {job["id"]: job for job in workflow["jobs"]}


def status(url: str, workflow_id: str) -> dict[str, Any]:
    response = httpx.get(f"{url}/api/workflows/{workflow_id}/status", timeout=10)
    response.raise_for_status()
    return response.json()


def run_workflow(url: str, workflow_id: str) -> None:
    response = httpx.post(f"{url}/api/workflows/{workflow_id}/run", timeout=10)
    assert response.status_code == 202, response.text


def cancel_workflow(url: str, workflow_id: str) -> None:
    response = httpx.post(f"{url}/api/workflows/{workflow_id}/cancel", timeout=10)
    assert response.status_code == 202, response.text


def job_logs(url: str, workflow_id: str, job_id: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{url}/api/workflows/{workflow_id}/jobs/{job_id}/logs", timeout=10)
    response.raise_for_status()
    return response.json()


def log_text(chunks: list[dict[str, Any]], stream: str | None = None) -> str:
    return "".join(c["data"] for c in chunks if stream is None or c["stream"] == stream)


def wait_until_finished(url: str, workflow_id: str, timeout: float = 20) -> dict[str, dict]:
    """Every job terminal; returns the jobs by id."""
    last: dict[str, Any] = {}

    def finished() -> bool:
        last.update(status(url, workflow_id))
        return all(job["status"] in TERMINAL for job in last["jobs"])

    try:
        wait_for(finished, timeout, f"workflow {workflow_id} to finish", interval=0.1)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last status: {last}") from None
    return jobs_by_id(last)


def wait_job_status(
    url: str, workflow_id: str, job_id: str, wanted: str, timeout: float = 10
) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        job = jobs_by_id(status(url, workflow_id))[job_id]
        return job if job["status"] == wanted else None

    return wait_for(reached, timeout, f"{workflow_id}/{job_id} to be {wanted}", interval=0.05)


def process_alive(pid: int) -> bool:
    """True while `pid` runs (a zombie nobody has reaped yet counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    # The state letter follows the parenthesised command name.
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def kill_group_quietly(pid_file: Path) -> None:
    """Clean up a job's process group that a test left orphaned on purpose."""
    try:
        os.killpg(int(pid_file.read_text().strip()), signal.SIGKILL)
    except (OSError, ValueError):
        pass


# --- async variants, for tests that run a `Worker` in the test's own trio loop ---


async def async_status(client: httpx.AsyncClient, workflow_id: str) -> dict[str, Any]:
    response = await client.get(f"/api/workflows/{workflow_id}/status")
    response.raise_for_status()
    return response.json()


async def async_wait_finished(
    client: httpx.AsyncClient, workflow_id: str, timeout: float = 15
) -> dict[str, dict]:
    last: dict[str, Any] = {}
    with trio.move_on_after(timeout):
        while True:
            last = await async_status(client, workflow_id)
            if all(job["status"] in TERMINAL for job in last["jobs"]):
                return jobs_by_id(last)
            await trio.sleep(0.05)
    raise AssertionError(f"workflow {workflow_id} did not finish in {timeout}s: {last}")


class TcpProxy:
    """A TCP forwarder to a server that a test can take down and bring back.

    `down()` drops every connection and stops listening (clients see "connection
    refused", as with a stopped server); `up()` listens again on the same port.
    """

    def __init__(self, target_url: str) -> None:
        host, port = target_url.removeprefix("http://").rsplit(":", 1)
        self._target = (host, int(port))
        self._port = 0
        self._wanted_up = trio.Event()
        self._wanted_up.set()
        self._serving: trio.CancelScope | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    def down(self) -> None:
        self._wanted_up = trio.Event()
        if self._serving is not None:
            self._serving.cancel()

    def up(self) -> None:
        self._wanted_up.set()

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        while True:
            await self._wanted_up.wait()
            listeners = await trio.open_tcp_listeners(self._port, host="127.0.0.1")
            self._port = listeners[0].socket.getsockname()[1]
            task_status.started()
            task_status = trio.TASK_STATUS_IGNORED
            with trio.CancelScope() as self._serving:
                await trio.serve_listeners(self._forward, listeners)
            for listener in listeners:
                await listener.aclose()

    async def _forward(self, client: trio.SocketStream) -> None:
        try:
            upstream = await trio.open_tcp_stream(*self._target)
        except OSError:
            await client.aclose()
            return
        async with client, upstream, trio.open_nursery() as nursery:

            async def pipe(source: trio.SocketStream, sink: trio.SocketStream) -> None:
                try:
                    while data := await source.receive_some(65536):
                        await sink.send_all(data)
                except trio.BrokenResourceError:
                    pass
                nursery.cancel_scope.cancel()

            nursery.start_soon(pipe, client, upstream)
            nursery.start_soon(pipe, upstream, client)
