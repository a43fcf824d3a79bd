"""Processes a benchmark starts: `wfg serve`, the bare ASGI baseline, `wfg worker`.

Every server binds 127.0.0.1 on a free port (PORT=0) and is stopped, SIGTERM
then SIGKILL, when its `with` block ends, whatever happened inside it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

URL_RE = re.compile(r"http://127\.0\.0\.1:\d+")
# Not resolved: run from a copy of the tree (benchmarks/ symlinked in), it serves the copy.
REPO = Path(__file__).absolute().parent.parent
IN_MEMORY_LINE = "state is kept in memory"


@dataclass
class Process:
    """A started process with its output collected line by line in the background."""

    process: subprocess.Popen
    lines: list[str] = field(default_factory=list)
    url: str = ""

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self) -> str:
        return "".join(self.lines)

    def stop(self, grace: float = 10) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _start(argv: list[str], env: dict[str, str], wait_for_url: bool, timeout: float) -> Process:
    proc = subprocess.Popen(
        argv,
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # our Ctrl-C is ours; we stop it in order
    )
    started = Process(proc)
    found = threading.Event()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            started.lines.append(line)
            if not found.is_set() and (m := URL_RE.search(line)):
                started.url = m.group(0)
                found.set()

    threading.Thread(target=pump, daemon=True).start()
    if wait_for_url:
        deadline = time.monotonic() + timeout
        while not found.wait(0.05):
            if proc.poll() is not None or time.monotonic() > deadline:
                started.stop()
                raise RuntimeError(f"{argv[2:]} did not start:\n{started.output()}")
    return started


@contextmanager
def wfg_server(
    workflows_dir: Path, *, in_memory: bool = True, env: dict[str, str] | None = None
) -> Iterator[Process]:
    """`python -m wfg serve [--in-memory]` on a free port of 127.0.0.1."""
    args = [sys.executable, "-m", "wfg", "serve"] + (["--in-memory"] if in_memory else [])
    full_env = {"PORT": "0", "HOST": "127.0.0.1", "WORKFLOWS_DIR": str(workflows_dir)}
    server = _start(args, {**full_env, **(env or {})}, wait_for_url=True, timeout=30)
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def bare_asgi_server() -> Iterator[Process]:
    """The baseline: a fixed-answer ASGI app on the same hypercorn + trio."""
    server = _start(
        [sys.executable, "-m", "benchmarks.bare_asgi"], {}, wait_for_url=True, timeout=30
    )
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def wfg_workers(url: str, count: int) -> Iterator[list[Process]]:
    """`count` real `python -m wfg worker` processes against `url`."""
    workers: list[Process] = []
    try:
        for i in range(count):
            argv = [sys.executable, "-m", "wfg", "worker", "--server", url]
            argv += ["--id", f"bench-worker-{i + 1}"]
            workers.append(_start(argv, {}, wait_for_url=False, timeout=0))
        yield workers
    finally:
        # A graceful stop waits out the worker's parked claim (10 s); the runs are
        # over by now, so a short grace for all at once, then SIGKILL.
        for worker in workers:
            if worker.process.poll() is None:
                worker.process.send_signal(signal.SIGTERM)
        for worker in workers:
            worker.stop(grace=2)


def rss_bytes(pid: int) -> int:
    """Resident set size of a process, from /proc/PID/status (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")
