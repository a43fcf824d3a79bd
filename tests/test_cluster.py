"""Several real `wfg serve` nodes and `wfg scheduler`s on one PostgreSQL.

Each test gets a schema of its own: three API_ONLY nodes and a scheduler (or two)
serve one engine. Nothing here sleeps to wait for a result: each wait polls a
condition with a deadline.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import httpx
import pytest
from conftest import ServerProcess, start_server
from homes import base_url, schema_url

FAST_REAP = "0.2"


class Scheduler:
    """`wfg scheduler` as a process; `lines` is what it printed."""

    def __init__(self, env: dict[str, str]) -> None:
        self.lines: list[str] = []
        self.process = subprocess.Popen(
            [sys.executable, "-m", "wfg", "scheduler"],
            env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    @property
    def leads(self) -> bool:
        return any("leads the time-driven duties" in line for line in self.lines)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


T = TypeVar("T")


def until(condition: Callable[[], T], timeout: float = 10.0, what: str = "") -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what or condition}")


class Cluster:
    def __init__(self, url: str, workflows_dir: Path) -> None:
        self.url = url
        self.workflows_dir = workflows_dir
        self.nodes: list[ServerProcess] = []
        self.schedulers: list[Scheduler] = []
        self.clients: list[httpx.Client] = []
        self.env = {"DATABASE_URL": url, "REAP_INTERVAL_SECS": FAST_REAP}

    def node(self, **env: str) -> httpx.Client:
        return self.start(1, **env)[0]

    def start(self, count: int, **env: str) -> list[httpx.Client]:
        """`count` API_ONLY nodes, started at once."""
        servers: list[ServerProcess | None] = [None] * count

        def one(i: int) -> None:
            servers[i] = start_server(
                self.workflows_dir, env={**self.env, "API_ONLY": "1", **env}, timeout=60
            )

        threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        started = [s for s in servers if s is not None]
        self.nodes.extend(started)
        if len(started) < count:
            raise RuntimeError("a node did not start")
        clients = [httpx.Client(base_url=s.url, timeout=30) for s in started]
        self.clients.extend(clients)
        return clients

    def scheduler(self) -> Scheduler:
        scheduler = Scheduler(self.env)
        self.schedulers.append(scheduler)
        return scheduler

    def stop(self) -> None:
        for client in self.clients:
            client.close()  # an open keep-alive connection holds a graceful stop up
        processes = [s.process for s in self.schedulers] + [n.process for n in self.nodes]
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@contextlib.contextmanager
def _cluster(request: pytest.FixtureRequest, workflows: Path) -> Iterator[Cluster]:
    """A schema of its own and the processes started in it, stopped and dropped after."""
    import psycopg

    base = base_url(request)
    schema = "c_" + uuid.uuid4().hex[:16]
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    workflows.mkdir(exist_ok=True)
    cluster = Cluster(schema_url(base, schema), workflows)
    try:
        yield cluster
    finally:
        cluster.stop()
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture
def cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cluster]:
    """An empty cluster for a test that kills its processes."""
    with _cluster(request, tmp_path / "workflows") as cluster:
        yield cluster


@pytest.fixture(scope="module")
def shared(request: pytest.FixtureRequest, tmp_path_factory) -> Iterator[Cluster]:
    """Three API_ONLY nodes and a scheduler, shared by the tests that kill nothing; each
    test's jobs require a label of its own, so no test claims another's."""
    with _cluster(request, tmp_path_factory.mktemp("workflows")) as cluster:
        cluster.scheduler()
        cluster.start(3)
        yield cluster


@pytest.fixture
def label() -> str:
    return "t" + uuid.uuid4().hex[:12]


def create(client: httpx.Client, jobs: list[dict], label: str | None = None, **extra) -> str:
    wanted = {"required_labels": [label]} if label else {}
    body = {"name": "wf", "jobs": [{"command": "true", **wanted, **j} for j in jobs], **extra}
    answer = client.post("/api/workflows", json=body)
    assert answer.status_code == 201, answer.text
    return answer.json()["id"]


def claim(client: httpx.Client, worker: str = "w", label: str | None = None, **extra):
    labels = [label] if label else []
    answer = client.post("/api/jobs/claim", json={"worker_id": worker, "labels": labels, **extra})
    assert answer.status_code == 200, answer.text
    return answer.json()


def statuses(client: httpx.Client, wf: str) -> dict[str, str]:
    answer = client.get(f"/api/workflows/{wf}/status")
    assert answer.status_code == 200, answer.text
    return {j["id"]: j["status"] for j in answer.json()["jobs"]}


def test_a_job_claimed_on_one_node_is_completed_on_another(shared: Cluster, label: str):
    a, b, c = shared.clients
    wf = create(a, [{"id": "build"}, {"id": "test", "depends_on": ["build"]}], label)
    assert b.post(f"/api/workflows/{wf}/run").status_code == 202
    held = claim(c, label=label)
    assert held["job"]["job_id"] == "build"
    lease = held["lease"]["lease_id"]
    assert a.post(f"/api/jobs/{lease}/heartbeat").status_code == 200
    assert b.post(f"/api/jobs/{lease}/complete", json={"outputs": {"v": "1"}}).status_code == 200
    # A repeated report stays 409 on every node.
    for node in (a, b, c):
        assert node.post(f"/api/jobs/{lease}/complete", json={}).status_code == 409
        assert node.post(f"/api/jobs/{lease}/fail", json={"error": "x"}).status_code == 409
    assert statuses(a, wf) == {"build": "success", "test": "queued"}
    nxt = claim(a, worker=label, label=label)
    assert nxt["job"]["job_id"] == "test"
    assert nxt["job"]["upstream_outputs"] == {"build": {"v": "1"}}
    assert c.post(f"/api/jobs/{nxt['lease']['lease_id']}/complete", json={}).status_code == 200
    assert statuses(b, wf) == {"build": "success", "test": "success"}
    workers = {w["worker_id"]: w for w in b.get("/api/workers").json()}
    assert workers[label]["status"] == "idle"


def test_a_parked_claim_is_woken_from_another_node(shared: Cluster, label: str):
    a, b, _ = shared.clients
    wf = create(a, [{"id": "x"}], label)
    got: list[dict | None] = []
    parked = threading.Thread(
        target=lambda: got.append(claim(a, worker=label, label=label, wait_secs=20))
    )
    parked.start()
    until(
        lambda: any(w["worker_id"] == label for w in a.get("/api/workers").json()),
        what="the claimer to register",
    )
    started = time.monotonic()
    assert b.post(f"/api/workflows/{wf}/run").status_code == 202
    parked.join(20)
    assert got and got[0] is not None and got[0]["job"]["job_id"] == "x"
    assert time.monotonic() - started < 15  # not the end of its wait


def test_a_log_stream_on_one_node_follows_pushes_and_the_end_elsewhere(shared: Cluster, label: str):
    a, b, c = shared.clients
    wf = create(a, [{"id": "x"}], label)
    assert a.post(f"/api/workflows/{wf}/run").status_code == 202
    held = claim(b, label=label)
    lease = held["lease"]["lease_id"]
    first = {"chunks": [{"sequence": 0, "data": "one\n"}]}
    assert b.post(f"/api/jobs/{lease}/logs", json=first).status_code == 200
    events: list[str] = []

    def follow() -> None:
        with httpx.Client(base_url=str(a.base_url), timeout=30) as own:
            with own.stream("GET", f"/api/workflows/{wf}/jobs/x/logs/stream") as stream:
                for line in stream.iter_lines():
                    if line.startswith("data:"):
                        events.append(line)

    follower = threading.Thread(target=follow)
    follower.start()
    until(lambda: events, what="the replay")
    second = {"chunks": [{"sequence": 1, "data": "two\n"}]}
    assert c.post(f"/api/jobs/{lease}/logs", json=second).status_code == 200
    until(lambda: len(events) >= 2, what="the live chunk")
    assert c.post(f"/api/jobs/{lease}/complete", json={}).status_code == 200
    follower.join(15)
    assert not follower.is_alive(), "the stream did not end with the job"
    assert ["one" in events[0], "two" in events[1]] == [True, True]


def test_a_cancel_on_one_node_revokes_a_lease_held_through_another(shared: Cluster, label: str):
    a, b, c = shared.clients
    wf = create(a, [{"id": "x"}, {"id": "y", "depends_on": ["x"]}], label)
    assert a.post(f"/api/workflows/{wf}/run").status_code == 202
    lease = claim(b, label=label)["lease"]["lease_id"]
    assert c.post(f"/api/workflows/{wf}/cancel").status_code == 202
    assert a.post(f"/api/jobs/{lease}/heartbeat").status_code == 409
    assert b.get(f"/api/jobs/{wf}/x/cancelled").json() is True
    assert statuses(c, wf) == {"x": "cancelled", "y": "cancelled"}


def test_the_scheduler_expires_a_lease_taken_through_a_node(shared: Cluster, label: str):
    a, b, _ = shared.clients
    wf = create(a, [{"id": "x", "max_retries": 1}], label)
    assert a.post(f"/api/workflows/{wf}/run").status_code == 202
    held = claim(a, label=label, lease_ttl_secs=1)
    retry = until(lambda: claim(b, label=label), timeout=15, what="the expiry")
    assert retry["job"]["attempt"] == 1
    assert a.post(f"/api/jobs/{held['lease']['lease_id']}/complete", json={}).status_code == 409


def test_concurrent_claimers_over_three_nodes_never_share_a_job(shared: Cluster, label: str):
    nodes = shared.clients
    jobs = 120
    wf = create(nodes[0], [{"id": f"j{i}"} for i in range(jobs)], label)
    assert nodes[1].post(f"/api/workflows/{wf}/run").status_code == 202
    granted: list[str] = []
    lock = threading.Lock()

    def claimer(i: int) -> None:
        with httpx.Client(base_url=str(nodes[i % 3].base_url), timeout=30) as client:
            while (held := claim(client, worker=f"w{i}", label=label)) is not None:
                with lock:
                    granted.append(held["job"]["job_id"])
                lease = held["lease"]["lease_id"]
                done = client.post(f"/api/jobs/{lease}/complete", json={})
                assert done.status_code == 200, done.text

    threads = [threading.Thread(target=claimer, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(granted) == sorted(f"j{i}" for i in range(jobs))  # each exactly once
    assert set(statuses(nodes[2], wf).values()) == {"success"}


def test_killing_a_node_loses_nothing_it_acknowledged(cluster: Cluster):
    cluster.scheduler()
    a, b = cluster.start(2)
    wf = create(a, [{"id": f"j{i}"} for i in range(20)])
    assert a.post(f"/api/workflows/{wf}/run").status_code == 202
    acknowledged = []
    for _ in range(10):
        held = claim(a)
        lease = held["lease"]["lease_id"]
        chunk = {"chunks": [{"sequence": 0, "data": held["job"]["job_id"]}]}
        assert a.post(f"/api/jobs/{lease}/logs", json=chunk).status_code == 200
        assert a.post(f"/api/jobs/{lease}/complete", json={}).status_code == 200
        acknowledged.append(held["job"]["job_id"])
    os.killpg(cluster.nodes[0].process.pid, signal.SIGKILL)
    cluster.nodes[0].process.wait(10)
    done = {j for j, s in statuses(b, wf).items() if s == "success"}
    assert done == set(acknowledged)
    for job_id in acknowledged:
        logs = b.get(f"/api/workflows/{wf}/jobs/{job_id}/logs").json()
        assert [c["data"] for c in logs] == [job_id]
    while (held := claim(b)) is not None:  # the rest goes on through the other node
        assert b.post(f"/api/jobs/{held['lease']['lease_id']}/complete", json={}).status_code == 200
    assert set(statuses(b, wf).values()) == {"success"}


def test_a_standby_scheduler_takes_over_when_the_leader_is_killed(cluster: Cluster):
    first = cluster.scheduler()
    until(lambda: first.leads, what="the first scheduler to lead")
    second = cluster.scheduler()
    until(lambda: any("standing by" in line for line in second.lines), what="the standby")
    node = cluster.node()
    wf = create(node, [{"id": "x", "max_retries": 1}])
    assert node.post(f"/api/workflows/{wf}/run").status_code == 202
    held = claim(node, lease_ttl_secs=1)
    assert held["job"]["attempt"] == 0
    os.killpg(first.process.pid, signal.SIGKILL)
    first.process.wait(10)
    until(lambda: second.leads, timeout=15, what="the standby to take over")
    # The lease is expired by the new leader, exactly once: the job is retried.
    retry = until(lambda: claim(node, lease_ttl_secs=60), timeout=15, what="the expiry")
    assert retry["job"]["attempt"] == 1
    lease = held["lease"]["lease_id"]
    assert node.post(f"/api/jobs/{lease}/complete", json={}).status_code == 409
    assert node.post(f"/api/jobs/{retry['lease']['lease_id']}/complete", json={}).status_code == 200
    assert statuses(node, wf) == {"x": "success"}


def test_scheduler_without_a_database_says_so():
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    done = subprocess.run(
        [sys.executable, "-m", "wfg", "scheduler"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "workflow-graph: wfg scheduler needs DATABASE_URL (the PostgreSQL the nodes share)"
    ]


PG_BIN = Path("/usr/lib/postgresql/15/bin")


@pytest.fixture
def private_postgres() -> Iterator[tuple[str, Callable[[str], None]]]:
    """A throw-away PostgreSQL cluster of this test's own (the shared server is not
    restarted under others' feet): its URL and `pg_ctl(action)`."""
    import socket
    import tempfile

    if not (PG_BIN / "initdb").exists():
        pytest.skip(f"the PostgreSQL restart test needs PostgreSQL's server binaries in {PG_BIN}")
    root = Path(tempfile.mkdtemp(prefix="wfg-pg-"))
    as_owner: list[str] = []
    if os.geteuid() == 0:  # initdb refuses root: the cluster belongs to `postgres`
        import shutil

        shutil.chown(root, "postgres")
        as_owner = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = root / "data"
    subprocess.run(
        [*as_owner, str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
        check=True,
        capture_output=True,
    )
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"

    def pg_ctl(action: str) -> None:
        extra = ["-m", "immediate"] if action in ("stop", "restart") else []
        subprocess.run(
            [*as_owner, str(PG_BIN / "pg_ctl"), "-D", str(data), "-o", options]
            + ["-l", str(root / "log"), "-w", *extra, action],
            check=True,
            capture_output=True,
        )

    pg_ctl("start")
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres", pg_ctl
    finally:
        subprocess.run(
            [*as_owner, str(PG_BIN / "pg_ctl"), "-D", str(data), "stop", "-m", "fast"],
            capture_output=True,
        )
        import shutil

        shutil.rmtree(root, ignore_errors=True)


def test_every_node_survives_the_database_restarting(private_postgres, tmp_path: Path):
    url, pg_ctl = private_postgres
    cluster = Cluster(url, tmp_path)
    try:
        node = cluster.start(1, API_ONLY="0")[0]
        wf = create(node, [{"id": "a"}, {"id": "b", "depends_on": ["a"]}])
        assert node.post(f"/api/workflows/{wf}/run").status_code == 202
        lease = claim(node)["lease"]["lease_id"]
        pg_ctl("stop")
        down = node.get("/api/workflows")  # answered, not hung: 503 with a JSON error
        assert down.status_code == 503
        assert "unavailable" in down.json()["error"]
        pg_ctl("start")
        until(
            lambda: node.post(f"/api/jobs/{lease}/heartbeat").status_code == 200,
            timeout=20,
            what="the node to reconnect",
        )
        assert node.post(f"/api/jobs/{lease}/complete", json={}).status_code == 200
        nxt = claim(node)
        assert nxt["job"]["job_id"] == "b"
        pg_ctl("restart")
        until(
            lambda: node.post(f"/api/jobs/{nxt['lease']['lease_id']}/complete").status_code == 200,
            timeout=20,
            what="the node to reconnect after a restart",
        )
        assert statuses(node, wf) == {"a": "success", "b": "success"}
        assert cluster.nodes[0].process.poll() is None
    finally:
        cluster.stop()
