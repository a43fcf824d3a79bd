"""Scenario `e2e`: the `ci-1` example run by two real `wfg worker` processes.

A copy of workflows/ci-1.yml with the same DAG and every command replaced by
`true` is served from a temporary WORKFLOWS_DIR. Each run is timed from
`POST run` until every job is terminal. The baseline is the command's own
cost: `sh -c true`, spawned and waited for, N times.

With two workers the 8-job DAG needs at least 5 steps one after another
(2 checks, the 3rd check, build, 2 of the 3 fan-out jobs, the last one with
deploy-web), so the wall time is also shown per step.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

from .outcome import Outcome, median
from .processes import REPO, wfg_server, wfg_workers

NAME = "e2e"
TITLE = "End to end (ci-1, 2 real workers, commands `true`)"
WORKFLOW = "ci-1"
WORKERS = 2
SERIAL_STEPS = 5  # the shortest schedule of ci-1's DAG on 2 workers
TERMINAL = {"success", "failure", "skipped", "cancelled"}


def write_true_copy(source: Path, directory: Path) -> int:
    """Write `source` with every job's command replaced by `true`; returns its job count."""
    definition = yaml.safe_load(source.read_text())
    for job in definition["jobs"].values():
        job.pop("steps", None)
        job["run"] = "true"
    directory.joinpath(source.name).write_text(yaml.safe_dump(definition, sort_keys=False))
    return len(definition["jobs"])


def _worker_available() -> bool:
    done = subprocess.run(
        [sys.executable, "-m", "wfg", "worker", "--help"],
        cwd=REPO,
        capture_output=True,
        timeout=60,
        check=False,
    )
    return done.returncode == 0


def _wait_for_workers(client: httpx.Client, count: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(client.get("/api/workers").json()) >= count:
            return True
        time.sleep(0.1)
    return False


def _timed_run(client: httpx.Client, timeout: float) -> tuple[float, list[str]]:
    started = time.perf_counter()
    client.post(f"/api/workflows/{WORKFLOW}/run").raise_for_status()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = client.get(f"/api/workflows/{WORKFLOW}/status").json()["jobs"]
        if all(job["status"] in TERMINAL for job in jobs):
            return time.perf_counter() - started, [job["status"] for job in jobs]
        time.sleep(0.005)
    raise RuntimeError(f"{WORKFLOW} did not finish within {timeout} s")


def _sh_true_secs(times: int) -> float:
    started = time.perf_counter()
    for _ in range(times):
        subprocess.run(["sh", "-c", "true"], check=True)
    return (time.perf_counter() - started) / times


def run(quick: bool) -> Outcome:
    outcome = Outcome(NAME, TITLE)
    runs = 2 if quick else 20
    if not _worker_available():
        return outcome.skip("worker unavailable (`python -m wfg worker --help` failed)")
    walls = []
    with tempfile.TemporaryDirectory(prefix="wfg-bench-") as tmp:
        workflows_dir = Path(tmp, "workflows")
        workflows_dir.mkdir()
        jobs = write_true_copy(REPO / "workflows" / f"{WORKFLOW}.yml", workflows_dir)
        with (
            wfg_server(workflows_dir) as server,
            httpx.Client(base_url=server.url, timeout=60) as client,
            wfg_workers(server.url, WORKERS) as workers,
        ):
            if not _wait_for_workers(client, WORKERS, 30):
                output = "".join(w.output() for w in workers)[-1500:]
                return outcome.skip(
                    f"worker unavailable (no {WORKERS} workers registered): {output}"
                )
            _timed_run(client, 60)  # warm-up
            for _ in range(runs):
                wall, statuses = _timed_run(client, 60)
                if set(statuses) != {"success"}:
                    outcome.note(f"a run ended with {sorted(set(statuses))}")
                walls.append(wall)
    sh_true = _sh_true_secs(30 if quick else 200)
    wall = median(walls)
    per_job = wall / jobs
    per_step = wall / SERIAL_STEPS
    outcome.figure("runs", len(walls))
    outcome.figure("baseline: sh -c true", sh_true * 1000, "ms")
    outcome.figure(f"wall per run p50 ({jobs} jobs)", wall * 1000, "ms")
    outcome.figure("wall per job", per_job * 1000, "ms")
    outcome.figure("wall per job beyond sh -c true", (per_job - sh_true) * 1000, "ms")
    outcome.figure("wall per job / sh -c true", per_job / sh_true, "x")
    outcome.figure(f"wall per serial step ({SERIAL_STEPS} steps)", per_step * 1000, "ms")
    outcome.figure("wall per step beyond sh -c true", (per_step - sh_true) * 1000, "ms")
    return outcome
