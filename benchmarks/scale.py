"""Scenario `scale`: many idle workflows in one real `wfg serve` process.

- Memory: VmRSS of the server (from /proc/PID/status) after 100 workflows and
  after 10 000, each of 10 jobs, created through `POST /api/workflows`; the
  difference divided by the workflows added is the cost of one idle workflow.
- Listing: the median latency of `GET /api/workflows?limit=100` with 10 000
  workflows against the same with 100, in the same process.
"""

from __future__ import annotations

import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from .outcome import Outcome, median, percentile
from .processes import rss_bytes, wfg_server
from .workload import create

NAME = "scale"
TITLE = "Scale (idle workflows: memory, list latency)"
TARGET_KB_PER_WORKFLOW = 20.0
TARGET_LIST_RATIO = 2.0
FIRST = 100
CLIENT_THREADS = 4  # overlap client-side work; the server is one process either way


def ten_job_workflow(n: int) -> dict:
    """A CI-shaped DAG of 10 jobs: 3 checks, a build, fan-out, fan-in."""
    needs = {3: [0, 1, 2], 4: [3], 5: [3], 6: [3], 7: [4], 8: [5, 6], 9: [7, 8]}
    jobs = [
        {
            "id": f"job-{i}",
            "name": f"Job {i}",
            "command": f"make step-{i} WORKFLOW={n}",
            "depends_on": [f"job-{d}" for d in needs.get(i, [])],
        }
        for i in range(10)
    ]
    return {"name": f"idle-{n}", "trigger": "on: push", "jobs": jobs}


def _create_many(url: str, start: int, stop: int, deadline: float) -> int:
    local = threading.local()
    clients: list[httpx.Client] = []
    lock = threading.Lock()

    def one(n: int) -> bool:
        if time.monotonic() > deadline:
            return False
        client = getattr(local, "client", None)
        if client is None:
            client = local.client = httpx.Client(base_url=url, timeout=60)
            with lock:
                clients.append(client)
        create(client, ten_job_workflow(n))
        return True

    try:
        with ThreadPoolExecutor(CLIENT_THREADS) as pool:
            return sum(pool.map(one, range(start, stop)))
    finally:
        for client in clients:
            client.close()


def _list_latencies(client: httpx.Client, samples: int) -> list[float]:
    for _ in range(5):  # warm-up
        client.get("/api/workflows", params={"limit": 100}).raise_for_status()
    latencies = []
    for _ in range(samples):
        started = time.perf_counter()
        answer = client.get("/api/workflows", params={"limit": 100})
        latencies.append(time.perf_counter() - started)
        answer.raise_for_status()
    return latencies


def run(quick: bool) -> Outcome:
    outcome = Outcome(NAME, TITLE)
    total = 500 if quick else 10_000
    samples = 30 if quick else 200
    if quick:
        outcome.note(f"quick mode loads {total:,} workflows; the targets are for 10,000")
    with tempfile.TemporaryDirectory(prefix="wfg-bench-") as tmp:
        workflows_dir = Path(tmp, "workflows")
        workflows_dir.mkdir()
        with (
            wfg_server(workflows_dir) as server,
            httpx.Client(base_url=server.url, timeout=60) as client,
        ):
            deadline = time.monotonic() + (40 if quick else 400)
            _create_many(server.url, 0, FIRST, deadline)
            few = _list_latencies(client, samples)
            rss_before = rss_bytes(server.pid)
            started = time.perf_counter()
            created = _create_many(server.url, FIRST, total, deadline)
            create_secs = time.perf_counter() - started
            rss_after = rss_bytes(server.pid)
            many = _list_latencies(client, samples)
            listed = len(client.get("/api/workflows", params={"limit": 1000}).json())
    if created < total - FIRST:
        outcome.note(f"time bound reached: created {created + FIRST:,} of {total:,}")
    outcome.figure("workflows loaded", created + FIRST)
    outcome.figure("create rate (4 client threads)", created / create_secs, "workflows/s")
    outcome.figure("server RSS with 100 workflows", rss_before / 2**20, "MiB")
    outcome.figure(f"server RSS with {created + FIRST:,} workflows", rss_after / 2**20, "MiB")
    per_workflow_kb = (rss_after - rss_before) / max(created, 1) / 1024
    outcome.figure("first page of the list had", listed)
    for label, latencies in ((f"{FIRST}", few), (f"{created + FIRST:,}", many)):
        outcome.figure(f"list p50 with {label} workflows", median(latencies) * 1000, "ms")
        outcome.figure(f"list p90 with {label} workflows", percentile(latencies, 90) * 1000, "ms")
    outcome.target(
        "RSS per idle 10-job workflow", per_workflow_kb, "<=", TARGET_KB_PER_WORKFLOW, "KB"
    )
    outcome.target(
        f"list p50: {created + FIRST:,} / {FIRST} workflows",
        median(many) / median(few),
        "<=",
        TARGET_LIST_RATIO,
        "x",
    )
    return outcome
