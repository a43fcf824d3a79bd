"""Scenario `dispatch`: how fast a parked claim learns of new work, over real HTTP.

A 2-job chain (j0 <- j1) runs again and again. A claimer, on its own
connection, parks a claim (`wait_secs: 30`); a completer, on another, then

- sends `POST run`: the time until the parked claim returns j0 is *run -> root*;
- completes j0 while the next claim is parked: the time from sending that
  `complete` until the parked claim returns j1 is *dispatch*.

The baseline is the round trip of a trivial request (`GET /api/workers`) on the
completer's connection, measured in the same run.

Both are measured twice: with a lean socket client (`rawhttp`), on which the
target is judged because it measures the server, and with httpx, whose own
cost per request (about 1 ms on each side here) is reported beside it.
"""

from __future__ import annotations

import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from .outcome import Outcome, median, percentile
from .processes import wfg_server
from .rawhttp import RawHttp
from .workload import chain_workflow, create

NAME = "dispatch"
TITLE = "Dispatch latency (parked claim -> dependent job)"
TARGET_P50_MS = 5.0
PARK_SETTLE_SECS = 0.02  # time for a sent claim to reach the scheduler and park
CLAIM = {"worker_id": "bench-claimer", "labels": [], "wait_secs": 30}


def _parked_claim(claimer: httpx.Client) -> tuple[dict, float]:
    """Send a parked claim; return the claim and when its answer arrived."""
    answer = claimer.post("/api/jobs/claim", json=CLAIM)
    arrived = time.perf_counter()
    answer.raise_for_status()
    claim = answer.json()
    if claim is None:
        raise RuntimeError("a parked claim returned no job within 30 s")
    return claim, arrived


def _measure_raw(url: str, workflow_id: str, samples: int) -> tuple[list, list, list]:
    """The same sequence as `_measure_httpx`, on two lean socket connections."""
    completer, claimer = RawHttp(url), RawHttp(url)
    dispatch, run_to_root, baseline = [], [], []
    try:
        for _ in range(samples):
            started = time.perf_counter()
            completer.call("GET", "/api/workers")
            baseline.append((time.perf_counter() - started) * 1000)
            claimer.send("POST", "/api/jobs/claim", CLAIM)
            time.sleep(PARK_SETTLE_SECS)
            sent = time.perf_counter()
            completer.send("POST", f"/api/workflows/{workflow_id}/run")
            _, root = claimer.receive()
            run_to_root.append((time.perf_counter() - sent) * 1000)
            completer.receive()
            claimer.send("POST", "/api/jobs/claim", CLAIM)
            time.sleep(PARK_SETTLE_SECS)
            sent = time.perf_counter()
            completer.send(
                "POST", f"/api/jobs/{root['lease']['lease_id']}/complete", {"outputs": {}}
            )
            _, dependent = claimer.receive()
            dispatch.append((time.perf_counter() - sent) * 1000)
            completer.receive()
            if dependent["job"]["job_id"] != "j1":
                raise RuntimeError(f"expected j1, got {dependent['job']['job_id']}")
            lease = dependent["lease"]["lease_id"]
            completer.call("POST", f"/api/jobs/{lease}/complete", {"outputs": {}})
    finally:
        completer.close()
        claimer.close()
    return dispatch, run_to_root, baseline


def run(quick: bool) -> Outcome:
    outcome = Outcome(NAME, TITLE)
    samples = 30 if quick else 200
    with tempfile.TemporaryDirectory(prefix="wfg-bench-") as tmp:
        workflows_dir = Path(tmp, "workflows")
        workflows_dir.mkdir()
        with wfg_server(workflows_dir) as server, httpx.Client(base_url=server.url) as api:
            workflow_id = create(api, chain_workflow("dispatch-chain", 2))
            dispatch, run_to_root, baseline = _measure_raw(server.url, workflow_id, samples)
            outcome.figure("samples (lean socket client)", len(dispatch))
            for p in (50, 90, 99):
                outcome.figure(f"dispatch p{p}", percentile(dispatch, p), "ms")
            for p in (50, 90, 99):
                outcome.figure(f"run -> root p{p}", percentile(run_to_root, p), "ms")
            base = median(baseline)
            outcome.figure("baseline GET /api/workers round trip p50", base, "ms")
            outcome.figure("dispatch p50 / baseline p50", median(dispatch) / base, "x")
            outcome.figure("run -> root p50 / baseline p50", median(run_to_root) / base, "x")
            _measure_httpx(server.url, workflow_id, samples, quick, outcome)
    outcome.target("dispatch p50", median(dispatch), "<=", TARGET_P50_MS, "ms")
    return outcome


def _measure_httpx(server_url: str, workflow_id: str, samples: int, quick: bool, outcome) -> None:
    """The sequence through httpx (a typical Python client), reported, not judged."""
    dispatch_ms: list[float] = []
    run_to_root_ms: list[float] = []
    baseline_ms: list[float] = []
    with (
        httpx.Client(base_url=server_url, timeout=60) as completer,
        httpx.Client(base_url=server_url, timeout=60) as claimer,
        ThreadPoolExecutor(1, thread_name_prefix="claimer") as claimer_thread,
    ):
        for _ in range(10):  # warm both connections and the routes
            completer.get("/api/workers").raise_for_status()
        deadline = time.monotonic() + (60 if quick else 300)
        for _ in range(samples):
            if time.monotonic() > deadline:
                outcome.note("httpx run stopped early: time bound reached")
                break
            started = time.perf_counter()
            completer.get("/api/workers").raise_for_status()
            baseline_ms.append((time.perf_counter() - started) * 1000)

            waiting = claimer_thread.submit(_parked_claim, claimer)
            time.sleep(PARK_SETTLE_SECS)
            sent = time.perf_counter()
            completer.post(f"/api/workflows/{workflow_id}/run").raise_for_status()
            root, arrived = waiting.result(timeout=40)
            run_to_root_ms.append((arrived - sent) * 1000)

            waiting = claimer_thread.submit(_parked_claim, claimer)
            time.sleep(PARK_SETTLE_SECS)
            sent = time.perf_counter()
            lease_id = root["lease"]["lease_id"]
            completer.post(
                f"/api/jobs/{lease_id}/complete", json={"outputs": {}}
            ).raise_for_status()
            dependent, arrived = waiting.result(timeout=40)
            dispatch_ms.append((arrived - sent) * 1000)
            lease_id = dependent["lease"]["lease_id"]
            completer.post(
                f"/api/jobs/{lease_id}/complete", json={"outputs": {}}
            ).raise_for_status()
    outcome.figure("httpx client: dispatch p50", percentile(dispatch_ms, 50), "ms")
    outcome.figure("httpx client: run -> root p50", percentile(run_to_root_ms, 50), "ms")
    outcome.figure("httpx client: GET /api/workers round trip p50", median(baseline_ms), "ms")
