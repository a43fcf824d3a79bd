"""Scenario `postgres`: the engine's PostgreSQL home against its embedded home.

- *cycles/s*: claim + complete over HTTP by concurrent clients (lean sockets)
  of jobs queued in runs of 20 independent jobs,
  one `wfg serve` with SQLite in DATA_DIR against one on PostgreSQL, then two
  API nodes on PostgreSQL sharing the clients; with each server's CPU-seconds
  per 1 000 jobs (the nodes' processes; PostgreSQL's own is not counted).
- *cross-node dispatch*: a claim parked on node A, the dependency completed on
  node B; from sending `complete` until A's claim returns the dependent job.
- *claim cost*: a claim's round trip with 100 000 jobs queued under a label set
  the worker lacks, against 100.

The database is `WFG_BENCH_DATABASE_URL`, else `WFG_TEST_DATABASE_URL`, else the
local server; the scenario works in a schema of its own, dropped after.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx

from .outcome import Outcome, median, percentile
from .processes import wfg_server
from .rawhttp import RawHttp
from .workload import chain_workflow, create, flat_workflow
from .workload import run as start_run

NAME = "postgres"
TITLE = "PostgreSQL home: throughput, CPU, cross-node dispatch, claim cost"
DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"
TARGET_RATIO = 0.7
TARGET_DISPATCH_P50_MS = 5.0
CLIENTS = 8
WORKFLOW_SIZE = 20
WARM_UP = 20
PARK_SETTLE_SECS = 0.02
CLAIM = {"worker_id": "bench", "labels": []}


def _database_url() -> str:
    return (
        os.environ.get("WFG_BENCH_DATABASE_URL")
        or os.environ.get("WFG_TEST_DATABASE_URL")
        or DEFAULT_URL
    )


@contextlib.contextmanager
def _schema(url: str, settings: str = "") -> Iterator[str]:
    """A schema of the scenario's own, as a URL (with `settings`, `-cname=value ...`, for
    its sessions); dropped after."""
    import psycopg

    name = "bench_" + uuid.uuid4().hex[:12]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {name}")
    try:
        options = f"-csearch_path={name} {settings}".strip()
        yield psycopg.conninfo.make_conninfo(url, options=options)
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {name} CASCADE")


def _cpu_secs(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cycles(urls: list[str], jobs: int) -> tuple[float, int]:
    """Claim + complete until the queue is empty, CLIENTS clients spread over `urls`;
    (cycles per second, cycles done)."""
    done = [0] * CLIENTS
    errors: list[str] = []

    def client(i: int) -> None:
        http = RawHttp(urls[i % len(urls)])
        try:
            while (claim := http.call("POST", "/api/jobs/claim", CLAIM)) is not None:
                lease = claim["lease"]["lease_id"]
                http.call("POST", f"/api/jobs/{lease}/complete", {"outputs": {}})
                done[i] += 1
        except Exception as exc:  # noqa: BLE001 - reported by the caller
            errors.append(str(exc))
        finally:
            http.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise RuntimeError(errors[0])
    return sum(done) / elapsed, sum(done)


def _queue(url: str, jobs: int, name: str) -> None:
    """`jobs` queued jobs in workflows of WORKFLOW_SIZE: the size of a typical run."""
    with httpx.Client(base_url=url, timeout=60) as api:
        for i in range(0, jobs, WORKFLOW_SIZE):
            workflow_id = create(api, flat_workflow(f"{name}-{i}", min(WORKFLOW_SIZE, jobs - i)))
            start_run(api, workflow_id)


def _throughput(outcome: Outcome, label: str, servers: list, jobs: int) -> float:
    _queue(servers[0].url, jobs, f"cycles-{label}")
    cpu_before = [_cpu_secs(s.pid) for s in servers]
    rate, count = _cycles([s.url for s in servers], jobs)
    cpu = sum(_cpu_secs(s.pid) - before for s, before in zip(servers, cpu_before, strict=True))
    outcome.figure(f"{label}, claim+complete cycles/s", rate, "/s")
    outcome.figure(f"{label}, server CPU-seconds per 1 000 jobs", cpu / count * 1000, "s")
    return rate


def _cross_node_dispatch(a_url: str, b_url: str, samples: int) -> list[float]:
    with httpx.Client(base_url=a_url, timeout=60) as api:
        workflow_id = create(api, chain_workflow("cross-node", 2))
    claimer, completer = RawHttp(a_url), RawHttp(b_url)
    parked = {**CLAIM, "wait_secs": 30}
    dispatch = []
    try:
        for _ in range(samples):
            completer.call("POST", f"/api/workflows/{workflow_id}/run")
            root = completer.call("POST", "/api/jobs/claim", CLAIM)
            claimer.send("POST", "/api/jobs/claim", parked)
            time.sleep(PARK_SETTLE_SECS)
            sent = time.perf_counter()
            completer.call("POST", f"/api/jobs/{root['lease']['lease_id']}/complete", {})
            _, dependent = claimer.receive()
            dispatch.append((time.perf_counter() - sent) * 1000)
            if dependent is None or dependent["job"]["job_id"] != "j1":
                raise RuntimeError(f"expected j1, got {dependent}")
            completer.call("POST", f"/api/jobs/{dependent['lease']['lease_id']}/complete", {})
    finally:
        claimer.close()
        completer.close()
    return dispatch


def _queue_elsewhere(url: str, count: int) -> None:
    """`count` ready jobs under a label set no benchmark worker has, written directly."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO label_sets VALUES ('[\"elsewhere\"]', '{elsewhere}') "
            "ON CONFLICT DO NOTHING"
        )
        conn.execute(
            "INSERT INTO runs (workflow_id, number, status, spec_hash, record) "
            "VALUES ('elsewhere', 1, 'running', '', '{}') ON CONFLICT DO NOTHING"
        )
        conn.execute(
            "INSERT INTO jobs (workflow_id, number, job_id, state, ready, label_key, "
            "enqueue_seq, payload) SELECT 'elsewhere', 1, 'e' || g, '{}', true, "
            "'[\"elsewhere\"]', nextval('enqueue_seq'), '{}' "
            "FROM generate_series(%s::int, %s::int) g "
            "ON CONFLICT DO NOTHING",
            (1, count),
        )
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE) jobs")  # settled, as a queue that filled up over time


def _claim_cost(url: str, samples: int) -> list[float]:
    """Round trips of claims that each take a job (and complete it)."""
    _queue(url, samples + WARM_UP, "claim-cost")
    http = RawHttp(url)
    times = []
    try:
        for i in range(samples + WARM_UP):
            started = time.perf_counter()
            claim = http.call("POST", "/api/jobs/claim", CLAIM)
            if i >= WARM_UP:
                times.append((time.perf_counter() - started) * 1000)
            http.call("POST", f"/api/jobs/{claim['lease']['lease_id']}/complete", {})
    finally:
        http.close()
    return times


def run(quick: bool) -> Outcome:
    outcome = Outcome(NAME, TITLE)
    try:
        import psycopg

        base = _database_url()
        psycopg.connect(base, connect_timeout=3).close()
    except Exception as exc:  # noqa: BLE001 - any reason the database cannot be used
        return outcome.skip(f"no PostgreSQL at {base!r}: {' '.join(str(exc).split())}")
    jobs = 300 if quick else 3000
    samples = 30 if quick else 300
    elsewhere = 10_000 if quick else 100_000
    with tempfile.TemporaryDirectory(prefix="wfg-bench-") as tmp:
        workflows_dir = Path(tmp, "workflows")
        workflows_dir.mkdir()
        sqlite_env = {"DATA_DIR": str(Path(tmp, "data"))}
        with wfg_server(workflows_dir, in_memory=False, env=sqlite_env) as server:
            sqlite_rate = _throughput(outcome, "1 node, SQLite", [server], jobs)
        with _schema(base) as url:
            env = {"DATABASE_URL": url}
            with wfg_server(workflows_dir, in_memory=False, env=env) as server:
                pg_rate = _throughput(outcome, "1 node, PostgreSQL", [server], jobs)
            with (
                wfg_server(workflows_dir, in_memory=False, env=env) as a,
                wfg_server(workflows_dir, in_memory=False, env={**env, "API_ONLY": "1"}) as b,
            ):
                pg2_rate = _throughput(outcome, "2 nodes, PostgreSQL", [a, b], jobs)
                dispatch = _cross_node_dispatch(a.url, b.url, samples)
                for p in (50, 99):
                    outcome.figure(f"cross-node dispatch p{p}", percentile(dispatch, p), "ms")
                _queue_elsewhere(url, 100)
                near = _claim_cost(a.url, samples)
                _queue_elsewhere(url, elsewhere)
                far = _claim_cost(a.url, samples)
                outcome.figure("claim p50, 100 jobs queued elsewhere", median(near), "ms")
                outcome.figure(f"claim p50, {elsewhere:,} jobs queued elsewhere", median(far), "ms")
                outcome.figure("claim cost ratio (many / few)", median(far) / median(near), "x")
        # The same with commits that do not wait for the disk: what the engine costs
        # apart from the database's fsync (an acknowledged change could then be lost
        # should PostgreSQL crash; not a setting to run with).
        with _schema(base, "-csynchronous_commit=off") as url:
            env = {"DATABASE_URL": url}
            with wfg_server(workflows_dir, in_memory=False, env=env) as server:
                _throughput(
                    outcome, "1 node, PostgreSQL, commits not waiting for the disk", [server], jobs
                )
            with (
                wfg_server(workflows_dir, in_memory=False, env=env) as a,
                wfg_server(workflows_dir, in_memory=False, env={**env, "API_ONLY": "1"}) as b,
            ):
                fast = _cross_node_dispatch(a.url, b.url, samples)
                outcome.figure(
                    "cross-node dispatch p50, commits not waiting for the disk",
                    median(fast),
                    "ms",
                )
    outcome.figure("2 nodes / 1 node on PostgreSQL", pg2_rate / pg_rate, "x")
    outcome.target("1 node: PostgreSQL / SQLite cycles", pg_rate / sqlite_rate, ">=", TARGET_RATIO)
    outcome.target("cross-node dispatch p50", median(dispatch), "<=", TARGET_DISPATCH_P50_MS, "ms")
    return outcome
