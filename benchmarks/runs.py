"""Scenario `runs`: what retained runs cost, and whether history pages stay flat.

- Fill: N finished runs of a 10-job workflow (every job claimed and completed
  through the `Runtime` API, in process, so filling takes seconds, not the
  hours 21 HTTP requests per run would), once with 100 runs and once with
  10 000, each into its own durable store (`DATA_DIR`), with `RETAIN_RUNS`
  above N so nothing is pruned.
- Memory per retained run: the same fill in memory (`DATA_DIR=:memory:` keeps
  history in the process); this process's RSS growth per run. With a
  store, finished runs leave memory: the server's RSS after a restart on each
  store is reported too, with the store's size per run.
- Latency: a real `wfg serve` process on each store; the median of
  `GET /api/workflows/{id}/runs?limit=20` with 10 000 runs against 100, in
  the same benchmark run (target: ratio <= 1.5).
"""

from __future__ import annotations

import gc
import os
import tempfile
import time
from pathlib import Path

import httpx
import trio

from actors.models import WorkflowCreate
from actors.runtime import open_runtime

from .outcome import Outcome, median, percentile
from .processes import rss_bytes, wfg_server
from .scale import ten_job_workflow

NAME = "runs"
TITLE = "Run history (memory per retained run, history page latency)"
TARGET_LATENCY_RATIO = 1.5
FEW = 100


async def _fill(runs: int, data_dir: str | None) -> tuple[str, int]:
    """Run a 10-job workflow `runs` times to success; (workflow id, RSS bytes grown)."""
    body = WorkflowCreate.model_validate(ten_job_workflow(0))
    async with open_runtime(data_dir=data_dir, retain_runs=runs + 10) as rt:
        workflow_id = (await rt.create_workflow(body)).id
        await _one_run(rt, workflow_id)  # warm caches before the baseline
        gc.collect()
        before = rss_bytes(os.getpid())
        for _ in range(runs):
            await _one_run(rt, workflow_id)
        await trio.sleep(0.2)  # let told messages settle before measuring
        gc.collect()
        grown = rss_bytes(os.getpid()) - before
    return workflow_id, grown


async def _one_run(rt, workflow_id: str) -> None:
    await rt.run_workflow(workflow_id)
    while (claim := await rt.claim("bench", [])) is not None:
        await rt.complete(claim.lease.lease_id, {"artifact": "s3://bucket/x"})


def _page_latencies(url: str, workflow_id: str, samples: int) -> list[float]:
    with httpx.Client(base_url=url, timeout=60) as client:
        path = f"/api/workflows/{workflow_id}/runs"
        for _ in range(5):  # warm-up
            client.get(path, params={"limit": 20}).raise_for_status()
        latencies = []
        for _ in range(samples):
            started = time.perf_counter()
            answer = client.get(path, params={"limit": 20})
            latencies.append(time.perf_counter() - started)
            answer.raise_for_status()
            assert len(answer.json()) == 20
    return latencies


def run(quick: bool) -> Outcome:
    outcome = Outcome(NAME, TITLE)
    many = 1_000 if quick else 10_000
    samples = 30 if quick else 200
    if quick:
        outcome.note(f"quick mode retains {many:,} runs; the target is for 10,000")
    with tempfile.TemporaryDirectory(prefix="wfg-bench-") as tmp:
        started = time.perf_counter()
        _, heap = trio.run(_fill, many, None)
        outcome.figure(f"fill {many:,} runs in memory", time.perf_counter() - started, "s")
        outcome.figure("RSS per retained run, in memory", heap / many / 1024, "KB")
        stores = {}
        for count in (FEW, many):
            data_dir = str(Path(tmp, f"store-{count}"))
            workflow_id, _ = trio.run(_fill, count, data_dir)
            stores[count] = (data_dir, workflow_id)
            size = sum(f.stat().st_size for f in Path(data_dir).iterdir())
            outcome.figure(f"store size per run, {count:,} runs", size / count / 1024, "KB")
        workflows_dir = Path(tmp, "workflows")
        workflows_dir.mkdir()
        latencies = {}
        rss = {}
        for count, (data_dir, workflow_id) in stores.items():
            env = {"DATA_DIR": data_dir, "RETAIN_RUNS": str(many + 10)}
            with wfg_server(workflows_dir, in_memory=False, env=env) as server:
                latencies[count] = _page_latencies(server.url, workflow_id, samples)
                rss[count] = rss_bytes(server.pid)
    for count in (FEW, many):
        outcome.figure(f"server RSS on a store of {count:,} runs", rss[count] / 2**20, "MiB")
        outcome.figure(f"runs?limit=20 p50, {count:,} runs", median(latencies[count]) * 1000, "ms")
        outcome.figure(
            f"runs?limit=20 p90, {count:,} runs", percentile(latencies[count], 90) * 1000, "ms"
        )
    outcome.target(
        f"runs?limit=20 p50: {many:,} / {FEW} runs",
        median(latencies[many]) / median(latencies[FEW]),
        "<=",
        TARGET_LATENCY_RATIO,
        "x",
    )
    return outcome
