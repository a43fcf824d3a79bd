"""Durability: what the server acknowledged survives a restart, in-process and kill -9."""

from __future__ import annotations

import random
import signal
import threading
import time

import httpx
import pytest
import trio
import trio.testing
from conftest import start_server

from actors import LeaseNotActive, open_runtime
from actors.models import LogChunkIn, WorkflowCreate
from actors.store import StoreError

DAG = {
    "name": "Durable",
    "jobs": [
        {"id": "a", "command": "true"},
        {"id": "b", "command": "true", "max_retries": 2},
        {"id": "c", "command": "true", "depends_on": ["a", "b"]},
        {"id": "d", "command": "true", "depends_on": ["c"], "required_labels": ["linux"]},
    ],
}


@pytest.fixture
def store_clock():
    """A MockClock that jumps only after 0.25 s of real idleness.

    With a threshold of 0, a task waiting on the journal's commit thread counts
    as idle, so the clock would leap to the next lease deadline mid-commit.
    """
    return trio.testing.MockClock(autojump_threshold=0.25)


def statuses(wf) -> dict[str, tuple[str, int]]:
    return {j.id: (j.status.value, j.attempt) for j in wf.jobs}


async def test_a_restart_recovers_runs_queue_leases_outputs_logs_and_workers(tmp_path, store_clock):
    async with open_runtime(data_dir=tmp_path) as rt:
        wf = (await rt.create_workflow(WorkflowCreate.model_validate(DAG))).id
        await rt.register_worker("w1", ["linux"])
        await rt.run_workflow(wf)
        a = await rt.claim("w1", ["linux"], lease_ttl_secs=60)
        b = await rt.claim("w1", ["linux"], lease_ttl_secs=60)
        assert (a.job.job_id, b.job.job_id) == ("a", "b")
        await rt.push_logs(a.lease.lease_id, [LogChunkIn(sequence=0, data="from a\n")])
        await rt.complete(a.lease.lease_id, {"artifact": "x.tgz"})
        await rt.fail(b.lease.lease_id, "flaky", retryable=True)
        b2 = await rt.claim("w1", ["linux"], lease_ttl_secs=60)
        assert (b2.job.job_id, b2.job.attempt) == ("b", 1)
        before = await rt.get_status(wf)

    async with open_runtime(data_dir=tmp_path) as rt:
        assert statuses(await rt.get_status(wf)) == statuses(before)
        assert [c.data for c in await rt.get_logs(wf, "a")] == ["from a\n"]
        assert [w.worker_id for w in await rt.list_workers()] == ["w1"]
        assert await rt.claim("w2", ["linux"]) is None  # nothing acknowledged is handed out again
        # The lease granted before the restart still works.
        await rt.heartbeat(b2.lease.lease_id)
        await rt.complete(b2.lease.lease_id, {})
        c = await rt.claim("w2", [])
        assert c.job.job_id == "c"
        assert c.job.upstream_outputs == {"a": {"artifact": "x.tgz"}, "b": {}}

    async with open_runtime(data_dir=tmp_path) as rt:
        # The claim of c was acknowledged: c is running under its lease, not queued again.
        assert statuses(await rt.get_status(wf))["c"] == ("running", 0)
        assert await rt.claim("w3", ["linux"]) is None
        await rt.complete(c.lease.lease_id, {})
        d = await rt.claim("w3", ["linux"])
        await rt.complete(d.lease.lease_id, {})
        assert {s for s, _ in statuses(await rt.get_status(wf)).values()} == {"success"}
        await rt.run_workflow(wf)  # the run is over: it may run again, from a clean slate
        assert await rt.get_logs(wf, "a") == []


async def test_a_lease_deadline_that_passed_while_down_expires_on_restart(tmp_path, store_clock):
    async with open_runtime(data_dir=tmp_path) as rt:
        wf = (await rt.create_workflow(WorkflowCreate.model_validate(DAG))).id
        await rt.run_workflow(wf)
        a = await rt.claim("w1", [], lease_ttl_secs=10)
    await trio.sleep(30)  # the server is down for longer than the lease
    async with open_runtime(data_dir=tmp_path) as rt:
        await trio.sleep(0.01)
        with pytest.raises(LeaseNotActive):
            await rt.complete(a.lease.lease_id, {})
        status = statuses(await rt.get_status(wf))
        assert status["a"] == ("failure", 0)  # no retries left: failed with "lease expired"
        assert status["c"] == ("skipped", 0)


async def test_a_queued_retry_keeps_its_backoff_across_a_restart(tmp_path, store_clock):
    body = {
        "name": "Backoff",
        "jobs": [
            {"id": "a", "command": "x", "max_retries": 1, "backoff": {"Fixed": {"delay_secs": 20}}}
        ],
    }
    async with open_runtime(data_dir=tmp_path) as rt:
        wf = (await rt.create_workflow(WorkflowCreate.model_validate(body))).id
        await rt.run_workflow(wf)
        a = await rt.claim("w1", [])
        await rt.fail(a.lease.lease_id, "x", retryable=True)
    await trio.sleep(5)
    async with open_runtime(data_dir=tmp_path) as rt:
        assert await rt.claim("w1", []) is None
        started = trio.current_time()
        retry = await rt.claim("w1", [], wait_secs=30)
        assert retry.job.attempt == 1
        assert 14.9 < trio.current_time() - started < 15.1


async def test_a_definition_file_changed_mid_run_waits_for_the_next_run(tmp_path, store_clock):
    wf_dir = tmp_path / "wf"
    wf_dir.mkdir()
    (wf_dir / "p.yml").write_text("name: P\njobs:\n  one:\n    run: echo 1\n")
    async with open_runtime(wf_dir, data_dir=tmp_path / "data") as rt:
        await rt.run_workflow("p")
        claim = await rt.claim("w", [])
    (wf_dir / "p.yml").write_text("name: P2\njobs:\n  two:\n    run: echo 2\n")
    async with open_runtime(wf_dir, data_dir=tmp_path / "data") as rt:
        assert [j.id for j in (await rt.get_status("p")).jobs] == ["one"]
        await rt.complete(claim.lease.lease_id, {})
        await rt.run_workflow("p")
        status = await rt.get_status("p")
        assert (status.name, [j.id for j in status.jobs]) == ("P2", ["two"])


async def test_a_corrupt_store_is_a_clear_error(tmp_path):
    (tmp_path / "state.db").write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="state.db"):
        async with open_runtime(data_dir=tmp_path):
            pass


def test_a_corrupt_store_stops_the_server_with_one_line(workflows_dir, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "state.db").write_bytes(b"garbage" * 1000)
    with pytest.raises(RuntimeError) as failure:
        start_server(workflows_dir, env={"DATA_DIR": str(data)}, timeout=10)
    assert "cannot open the store" in str(failure.value)
    assert "Traceback" not in str(failure.value)


# --- kill -9 ------------------------------------------------------------------------


def chain_dag(width: int, depth: int) -> dict:
    """`depth` layers of `width` jobs, each needing every job of the layer before."""
    jobs = []
    for level in range(depth):
        for i in range(width):
            needs = [f"j{level - 1}-{k}" for k in range(width)] if level else []
            # Retries: a lease that expires while the server is down is a retryable failure.
            jobs.append(
                {"id": f"j{level}-{i}", "command": "true", "depends_on": needs, "max_retries": 20}
            )
    return {"name": "Kill -9", "jobs": jobs}


class ProtocolWorker(threading.Thread):
    """Works the queue over HTTP and records what the server acknowledged."""

    def __init__(self, server_url: str, name: str) -> None:
        super().__init__(daemon=True)
        self.url = server_url
        self.name_ = name
        self.completed: set[str] = set()  # acknowledged completes
        self.logged: set[str] = set()  # jobs whose log push was acknowledged
        self.claimed_after_ack: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=2) as http:
            while not self.stop.is_set():
                try:
                    self.step(http)
                except httpx.HTTPError:
                    time.sleep(0.05)  # the server is down: keep trying

    def step(self, http: httpx.Client) -> None:
        claim = http.post(
            f"{self.url}/api/jobs/claim",
            json={"worker_id": self.name_, "labels": [], "lease_ttl_secs": 2, "wait_secs": 0.2},
        ).json()
        if claim is None:
            return
        job = claim["job"]["job_id"]
        if job in self.completed:
            self.claimed_after_ack.append(job)
        lease = claim["lease"]["lease_id"]
        chunk = {"sequence": 0, "data": f"log of {job}\n"}
        if (
            http.post(f"{self.url}/api/jobs/{lease}/logs", json={"chunks": [chunk]}).status_code
            == 200
        ):
            self.logged.add(job)
        if (
            http.post(
                f"{self.url}/api/jobs/{lease}/complete", json={"outputs": {"j": job}}
            ).status_code
            == 200
        ):
            self.completed.add(job)


def test_kill_9_mid_run_loses_nothing_acknowledged(workflows_dir, tmp_path, server_factory):
    data = tmp_path / "data"
    env = {"DATA_DIR": str(data)}
    server = server_factory(workflows_dir, env=env)
    url = server.url
    port = url.rsplit(":", 1)[1]
    env["PORT"] = port
    with httpx.Client(base_url=url, timeout=5) as api:
        wf = api.post("/api/workflows", json=chain_dag(width=6, depth=5)).json()["id"]
        api.post("/api/workers/register", json={"worker_id": "reg-1", "labels": ["x"]})
        api.post(f"/api/workflows/{wf}/run")
    workers = [ProtocolWorker(url, f"w{i}") for i in range(3)]
    for w in workers:
        w.start()
    rng = random.Random(7)
    try:
        for _ in range(4):
            time.sleep(rng.uniform(0.1, 0.5))
            server.process.send_signal(signal.SIGKILL)
            server.process.wait()
            server = server_factory(workflows_dir, env=env)
            assert server.url.endswith(":" + port), "restart must come back on the same port"
        deadline = time.monotonic() + 60
        with httpx.Client(base_url=url, timeout=5) as api:
            while time.monotonic() < deadline:
                jobs = api.get(f"/api/workflows/{wf}/status").json()["jobs"]
                if all(j["status"] in ("success", "failure", "skipped") for j in jobs):
                    break
                time.sleep(0.1)
            status = {j["id"]: j["status"] for j in jobs}
            completed = set().union(*(w.completed for w in workers))
            logged = set().union(*(w.logged for w in workers))
            # Every acknowledged completion is there, and the run finished.
            assert all(status[j] == "success" for j in completed)
            assert set(status.values()) == {"success"}, status
            for w in workers:
                assert w.claimed_after_ack == []
            for job in logged:
                datas = [c["data"] for c in api.get(f"/api/workflows/{wf}/jobs/{job}/logs").json()]
                assert f"log of {job}\n" in datas
            assert "reg-1" in {w["worker_id"] for w in api.get("/api/workers").json()}
            assert wf in {w["id"] for w in api.get("/api/workflows").json()}
    finally:
        for w in workers:
            w.stop.set()
        for w in workers:
            w.join(5)
