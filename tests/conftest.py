"""Fixtures shared by the suite: a real `wfg serve` process on a free port."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

URL_RE = re.compile(r"http://[0-9.]+:\d+")


@dataclass
class ServerProcess:
    """A server started as a real process; `url` is what it printed it bound."""

    url: str
    process: subprocess.Popen
    workflows_dir: Path
    lines: list[str] = field(default_factory=list)

    def output(self) -> str:
        return "".join(self.lines)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_server(
    workflows_dir: Path,
    env: dict[str, str] | None = None,
    args: tuple[str, ...] = (),
    timeout: float = 20,
) -> ServerProcess:
    """Start `python -m wfg serve` on a free port and wait for its URL line."""
    full_env = {
        **os.environ,
        "PORT": "0",
        "HOST": "127.0.0.1",
        "WORKFLOWS_DIR": str(workflows_dir),
        "DATA_DIR": ":memory:",
        "PYTHONUNBUFFERED": "1",
        **(env or {}),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "wfg", "serve", *args],
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    server = ServerProcess(url="", process=proc, workflows_dir=workflows_dir)
    found = threading.Event()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            server.lines.append(line)
            if not found.is_set() and (m := URL_RE.search(line)):
                server.url = m.group(0)
                found.set()

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + timeout
    while not found.wait(0.05):
        if proc.poll() is not None or time.monotonic() > deadline:
            server.stop()
            raise RuntimeError("server did not start:\n" + server.output())
    return server


@pytest.fixture
def workflows_dir(tmp_path: Path) -> Path:
    d = tmp_path / "workflows"
    d.mkdir()
    return d


@pytest.fixture
def server_factory() -> Iterator[Callable[..., ServerProcess]]:
    started: list[ServerProcess] = []

    def factory(workflows_dir: Path, **kwargs) -> ServerProcess:
        s = start_server(workflows_dir, **kwargs)
        started.append(s)
        return s

    yield factory
    for s in started:
        s.stop()


@pytest.fixture
def live_server(workflows_dir: Path, server_factory) -> ServerProcess:
    """A server on an empty workflows dir; write files into `workflows_dir` first if needed."""
    return server_factory(workflows_dir)


REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "workflows"


# --- the engine's homes (see homes.py) ---


@pytest.fixture
def home(request: pytest.FixtureRequest):
    """The embedded home; a contract test module overrides this with both homes."""
    from homes import make_home

    yield from make_home(request, "embedded")


@pytest.fixture
def autojump_clock(home):
    """trio's autojumping MockClock, or on PostgreSQL one that moves the database's too."""
    return home.clock


@pytest.fixture(scope="session")
def pg_schema(request: pytest.FixtureRequest):
    """The PostgreSQL tests' schema (a URL), made once per session."""
    from homes import session_schema

    yield from session_schema(request)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`@pytest.mark.embedded_only` tests run on the embedded home only: their PostgreSQL
    case is deselected (not skipped: a skipped PostgreSQL test fails CI)."""
    kept, dropped = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        on_postgres = callspec is not None and callspec.params.get("home") == "postgres"
        if on_postgres and item.get_closest_marker("embedded_only"):
            dropped.append(item)
        else:
            kept.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept
