"""Scenario `http`: claim -> complete cycles over HTTP, driven by wrk, against a bare ASGI app.

wrk (`-t2 -c16`, claim_complete.lua) alternates claim and complete on every
connection against `wfg serve --in-memory` holding thousands of queued jobs.
The baseline is the same wrk against `bare_asgi.app` on the same hypercorn +
trio: the ratio compares requests per second, request for request.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import httpx

from . import wrk
from .outcome import Outcome
from .processes import IN_MEMORY_LINE, bare_asgi_server, wfg_server
from .workload import job_counts, queue_flat_jobs

NAME = "http"
TITLE = "HTTP protocol throughput (wrk claim -> complete)"
TARGET_RATIO = 0.6


@dataclass
class Settings:
    warmup_secs: float
    measure_secs: float
    initial_jobs: int

    @classmethod
    def for_mode(cls, quick: bool) -> Settings:
        return cls(1, 2, 3000) if quick else cls(2, 10, 20000)


@dataclass
class ServerRun:
    result: wrk.WrkResult
    warmup: wrk.WrkResult
    queued_jobs: int  # queued before the measured run
    left_queued: int  # still queued (not claimed) after it
    succeeded: int


# The in-memory run of this process's `http` scenario, for `durability` to compare with.
last_in_memory_run: tuple[Settings, ServerRun] | None = None


def measure_server(
    settings: Settings,
    *,
    in_memory: bool = True,
    env: dict[str, str] | None = None,
    require_store: bool = False,
) -> ServerRun | None:
    """wrk against a real `wfg serve`, the queue topped up so it never runs dry.

    With `require_store`, None when the server says its state is kept in memory.
    """
    with tempfile.TemporaryDirectory(prefix="wfg-bench-") as tmp:
        workflows_dir = Path(tmp, "workflows")
        workflows_dir.mkdir()
        with (
            wfg_server(workflows_dir, in_memory=in_memory, env=env) as server,
            httpx.Client(base_url=server.url, timeout=60) as client,
        ):
            if require_store and IN_MEMORY_LINE in server.output():
                return None
            queue_flat_jobs(client, settings.initial_jobs)
            warmup = wrk.run(server.url, settings.warmup_secs)
            queued = job_counts(client)["queued"]
            # Room for twice the warm-up rate over the whole measured run.
            needed = int(warmup.completes_per_sec * settings.measure_secs * 2) + 2000
            if queued < needed:
                queue_flat_jobs(client, needed - queued, name="topup")
                queued = needed
            result = wrk.run(server.url, settings.measure_secs)
            counts = job_counts(client)
    return ServerRun(result, warmup, queued, counts["queued"], counts["success"])


def measure_baseline(settings: Settings) -> wrk.WrkResult:
    with bare_asgi_server() as server:
        wrk.run(server.url, settings.warmup_secs)
        return wrk.run(server.url, settings.measure_secs)


def report_server_run(outcome: Outcome, label: str, run: ServerRun) -> None:
    r = run.result
    outcome.figure(f"{label} requests/s", r.requests_per_sec, "req/s")
    outcome.figure(f"{label} jobs/s (completes/s)", r.completes_per_sec, "jobs/s")
    outcome.figure(f"{label} request p50", r.p50_us / 1000, "ms")
    outcome.figure(f"{label} request p99", r.p99_us / 1000, "ms")
    outcome.figure(
        f"{label} jobs queued before / left after", f"{run.queued_jobs} / {run.left_queued}"
    )
    dry = r.empty_claims + run.warmup.empty_claims
    if dry or run.left_queued <= 0:
        outcome.note(f"{label}: the queue ran dry ({dry} empty claims); figures understate")
    errors = r.http_errors + r.socket_errors
    if errors:
        outcome.note(f"{label}: {r.http_errors} HTTP errors, {r.socket_errors} socket errors")


def run(quick: bool) -> Outcome:
    outcome = Outcome(NAME, TITLE)
    if not wrk.available():
        return outcome.skip("wrk is not installed (apt-get update && apt-get install -y wrk)")
    settings = Settings.for_mode(quick)
    outcome.note(
        f"wrk -t{wrk.THREADS} -c{wrk.CONNECTIONS}, {settings.measure_secs:g}s measured "
        f"after {settings.warmup_secs:g}s warm-up, per target"
    )
    baseline = measure_baseline(settings)
    outcome.figure("baseline (bare ASGI) requests/s", baseline.requests_per_sec, "req/s")
    outcome.figure("baseline request p50", baseline.p50_us / 1000, "ms")
    outcome.figure("baseline request p99", baseline.p99_us / 1000, "ms")
    global last_in_memory_run
    server = measure_server(settings)
    assert server is not None
    last_in_memory_run = (settings, server)
    report_server_run(outcome, "server", server)
    ratio = server.result.requests_per_sec / baseline.requests_per_sec
    outcome.target("server req/s / baseline req/s", ratio, ">=", TARGET_RATIO)
    return outcome
