"""`wfg.Client` and `wfg.AsyncClient` against a real server process.

One server serves the whole module. Every test creates its own workflow whose
jobs all require a label unique to the test, and claims only with that label,
so tests never take each other's jobs.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import aclosing
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import trio
from conftest import ServerProcess, start_server

import wfg
from actors.models import (
    Claim,
    ExponentialBackoff,
    ExponentialDelay,
    FixedBackoff,
    FixedDelay,
    InputDecl,
    JobCreate,
    JobStatus,
    LogChunk,
    LogChunkIn,
    LogStream,
    Run,
    RunAccepted,
    RunStatus,
    WorkerInfo,
    Workflow,
    WorkflowCreate,
)
from wfg import AsyncClient, Client, ClientError, ServerUnreachable, WorkflowApiError
from wfg._sse import Event, EventParser

HELLO_YML = """\
name: Hello
on: push
jobs:
  greet:
    labels: [never-claimed-label]
    run: echo hello
  world:
    needs: greet
    labels: [never-claimed-label]
    run: echo world
"""

DEFINITION_YML = """\
name: From File
on: [push, pull_request]
env: {{GLOBAL: one}}
jobs:
  build:
    labels: [{label}]
    retries: 2
    backoff: {{Fixed: {{delay_secs: 3}}}}
    timeout: 45
    env: {{LOCAL: two}}
    run: make
  test:
    needs: build
    labels: [{label}]
    run: make test
"""


# --- shared helpers (test_cli.py imports these too) ---------------------------


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def pipeline(label: str, *, name: str = "Pipeline", **job_commands: str) -> WorkflowCreate:
    """A chain a -> b -> ... of jobs in the order given, all requiring `label`."""
    jobs = []
    previous: list[str] = []
    for job_id, command in (job_commands or {"a": "true", "b": "true"}).items():
        jobs.append(
            JobCreate(id=job_id, command=command, depends_on=previous, required_labels=[label])
        )
        previous = [job_id]
    return WorkflowCreate(name=name, trigger="manual", jobs=jobs)


def claim_one(client: Client, worker_id: str, label: str, timeout: float = 10) -> Claim:
    """Claim until a job comes (the server may enqueue a dependent a moment later)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        claim = client.claim(worker_id, [label])
        if claim is not None:
            return claim
        time.sleep(0.05)
    raise AssertionError(f"no job for label {label!r} within {timeout}s")


def wait_for(client: Client, workflow_id: str, predicate, timeout: float = 10) -> Workflow:
    """Poll the status until `predicate(workflow)` holds."""
    deadline = time.monotonic() + timeout
    while True:
        workflow = client.get_status(workflow_id)
        if predicate(workflow):
            return workflow
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not reached; last status: {workflow}")
        time.sleep(0.05)


def job_of(workflow: Workflow, job_id: str):
    return next(job for job in workflow.jobs if job.id == job_id)


@dataclass
class Outcome:
    """What the fake worker does with a job: log lines, then complete or fail."""

    logs: list[tuple[LogStream, str]] = field(default_factory=list)
    outputs: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    retryable: bool = False
    seconds: float = 0.0


class FakeWorker(threading.Thread):
    """Drives jobs through the worker protocol with `Client`, in a background thread.

    Stands in for the real agent: each claimed job gets the `Outcome` planned
    for `"<job>#<attempt>"`, else for its id (success with no logs by default).
    """

    def __init__(self, url: str, label: str, plan: dict[str, Outcome] | None = None) -> None:
        super().__init__(daemon=True)
        self.url, self.label, self.plan = url, label, plan or {}
        self.worker_id = unique("fake")
        self.claimed: list[Claim] = []
        self.errors: list[BaseException] = []
        self._halt = threading.Event()

    def run(self) -> None:
        try:
            with Client(self.url) as client:
                while not self._halt.is_set():
                    claim = client.claim(self.worker_id, [self.label])
                    if claim is None:
                        time.sleep(0.05)
                        continue
                    self.claimed.append(claim)
                    self._do(client, claim)
        except BaseException as exc:  # surfaced by stop()
            self.errors.append(exc)

    def _do(self, client: Client, claim: Claim) -> None:
        job = claim.job
        outcome = self.plan.get(f"{job.job_id}#{job.attempt}") or self.plan.get(
            job.job_id, Outcome()
        )
        lease = claim.lease.lease_id
        chunks = [
            LogChunkIn(sequence=i, data=data, stream=stream)
            for i, (stream, data) in enumerate(outcome.logs)
        ]
        if chunks:
            client.push_logs(lease, chunks)
        time.sleep(outcome.seconds)
        try:
            if outcome.error is None:
                client.complete(lease, outcome.outputs)
            else:
                client.fail(lease, outcome.error, retryable=outcome.retryable)
        except WorkflowApiError as exc:
            if exc.status != 409:  # 409: the run was cancelled under us
                raise

    def stop(self) -> None:
        self._halt.set()
        self.join(10)
        if self.errors:
            raise self.errors[0]


def free_port() -> int:
    """A port nothing listens on (bound then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- fixtures -------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    workflows = tmp_path_factory.mktemp("client") / "workflows"
    workflows.mkdir()
    (workflows / "hello.yml").write_text(HELLO_YML)
    proc = start_server(workflows)
    yield proc
    proc.stop()


@pytest.fixture
def client(server: ServerProcess) -> Iterator[Client]:
    with Client(server.url) as c:
        yield c


@pytest.fixture
def label() -> str:
    return unique("label")


# --- package surface --------------------------------------------------------------


def test_package_exports_the_client_and_errors() -> None:
    assert wfg.Client is Client and wfg.AsyncClient is AsyncClient
    assert issubclass(WorkflowApiError, ClientError)
    assert issubclass(ServerUnreachable, ClientError)
    assert not issubclass(ServerUnreachable, WorkflowApiError)
    with pytest.raises(AttributeError):
        _ = wfg.NoSuchThing  # type: ignore[attr-defined]


# --- workflows ------------------------------------------------------------------


def test_list_workflows_returns_loaded_definitions(client: Client) -> None:
    workflows = client.list_workflows()
    hello = next(w for w in workflows if w.id == "hello")
    assert hello.name == "Hello"
    assert hello.trigger == "on: push"
    assert [j.id for j in hello.jobs] == ["greet", "world"]
    assert job_of(hello, "world").depends_on == ["greet"]
    assert all(j.status == JobStatus.queued for j in hello.jobs)


def test_list_workflows_paginates_and_filters(client: Client, label: str) -> None:
    created = [client.create_workflow(pipeline(label, name=f"page-{i}")) for i in range(3)]
    everything = client.list_workflows(limit=1000)
    ids = [w.id for w in everything]
    start = ids.index(created[0].id)
    assert ids[start : start + 3] == [w.id for w in created]  # creation order
    page = client.list_workflows(limit=2, offset=start + 1)
    assert [w.id for w in page] == [created[1].id, created[2].id]

    client.run_workflow(created[0].id)
    claim_one(client, unique("w"), label)
    running = client.list_workflows(status="running", limit=1000)
    assert created[0].id in [w.id for w in running]
    assert created[1].id not in [w.id for w in running]


def test_list_workflows_bad_status_is_400(client: Client) -> None:
    with pytest.raises(WorkflowApiError) as info:
        client.list_workflows(status="bogus")
    assert info.value.status == 400
    assert info.value.message


def test_get_status_unknown_is_404_with_server_message(client: Client) -> None:
    with pytest.raises(WorkflowApiError) as info:
        client.get_status("no-such-workflow")
    err = info.value
    assert err.status == 404
    assert err.status_text == "Not Found"
    assert "no-such-workflow" in err.message
    assert str(err) == f"404 Not Found: {err.message}"


def test_create_from_model_gives_new_id_and_queued_jobs(client: Client, label: str) -> None:
    body = pipeline(label, name="Model", first="echo 1", second="echo 2")
    workflow = client.create_workflow(body)
    assert uuid.UUID(workflow.id)
    assert workflow.name == "Model"
    assert [j.id for j in workflow.jobs] == ["first", "second"]
    assert job_of(workflow, "second").depends_on == ["first"]
    assert job_of(workflow, "first").name == "first"  # name defaults to the id
    assert client.get_status(workflow.id) == workflow


def test_create_from_dict(client: Client) -> None:
    workflow = client.create_workflow(
        {"name": "Dict", "jobs": [{"id": "only", "command": "true", "metadata": {"x": 1}}]}
    )
    assert workflow.name == "Dict"
    assert job_of(workflow, "only").metadata == {"x": 1}


def test_create_from_file_sends_extensions(client: Client, label: str, tmp_path: Path) -> None:
    path = tmp_path / "from-file.yml"
    path.write_text(DEFINITION_YML.format(label=label))
    workflow = client.create_workflow(path)
    assert workflow.name == "From File"
    assert workflow.trigger == "on: [push, pull_request]"
    build = job_of(workflow, "build")
    assert build.max_retries == 2
    assert build.required_labels == [label]
    assert job_of(workflow, "test").depends_on == ["build"]

    client.run_workflow(workflow.id)
    job = claim_one(client, unique("w"), label).job
    assert job.job_id == "build"
    assert job.retry_policy.max_retries == 2
    assert job.retry_policy.backoff == FixedBackoff(Fixed=FixedDelay(delay_secs=3))
    assert job.timeout_secs == 45
    assert job.env.get("LOCAL") == "two"


def test_create_from_str_path(client: Client, label: str, tmp_path: Path) -> None:
    path = tmp_path / "str-path.yml"
    path.write_text(DEFINITION_YML.format(label=label))
    assert client.create_workflow(str(path)).name == "From File"


def test_create_invalid_graph_is_422(client: Client) -> None:
    body = WorkflowCreate(
        name="Cycle",
        jobs=[
            JobCreate(id="a", command="true", depends_on=["b"]),
            JobCreate(id="b", command="true", depends_on=["a"]),
        ],
    )
    with pytest.raises(WorkflowApiError) as info:
        client.create_workflow(body)
    assert info.value.status == 422
    assert "cycle" in info.value.message.lower()


def test_run_unknown_is_404_and_run_while_active_is_409(client: Client, label: str) -> None:
    with pytest.raises(WorkflowApiError) as info:
        client.run_workflow("no-such-workflow")
    assert info.value.status == 404
    workflow = client.create_workflow(pipeline(label))
    client.run_workflow(workflow.id)
    with pytest.raises(WorkflowApiError) as info:
        client.run_workflow(workflow.id)
    assert info.value.status == 409


# --- runs -----------------------------------------------------------------------


def finish(client: Client, label: str, fail: frozenset[str] = frozenset(), log: str = "") -> None:
    """Claim and finish the label's jobs until none comes: `fail` ids fail, the rest
    succeed; each job logs `log` first when given."""
    while (claim := client.claim(unique("w"), [label], wait_secs=0.5)) is not None:
        lease = claim.lease.lease_id
        if log:
            client.push_logs(lease, [LogChunkIn(sequence=0, data=log)])
        if claim.job.job_id in fail:
            client.fail(lease, f"{claim.job.job_id} broke")
        else:
            client.complete(lease)


def test_runs_are_numbered_listed_and_read(client: Client, label: str) -> None:
    workflow = client.create_workflow(pipeline(label, a="x", b="y"))
    assert client.get_status(workflow.id).run is None
    assert client.list_runs(workflow.id) == []
    first = client.run_workflow(workflow.id)
    assert first == RunAccepted(workflow_id=workflow.id, number=1, status=RunStatus.running)
    finish(client, label, fail=frozenset({"b"}), log="one\n")
    second = client.run_workflow(workflow.id)
    assert second.number == 2
    finish(client, label, log="two\n")

    runs = client.list_runs(workflow.id)
    assert [(r.number, r.status) for r in runs] == [(2, "success"), (1, "failure")]
    assert [r.number for r in client.list_runs(workflow.id, limit=1, offset=1)] == [1]
    run = client.get_run(workflow.id, 1)
    assert isinstance(run, Run) and run == runs[1]
    assert {j.id: j.status for j in run.jobs} == {"a": "success", "b": "failure"}
    assert client.get_status(workflow.id).run is not None

    # Logs of each run, and the latest run's by default (under both names).
    assert [c.data for c in client.get_logs(workflow.id, "b", run=1)] == ["one\n"]
    assert [c.data for c in client.get_logs(workflow.id, "b")] == ["two\n"]
    assert [c.data for c in client.get_job_logs(workflow.id, "b")] == ["two\n"]
    assert [c.data for c in client.stream_logs(workflow.id, "b", run=1)] == ["one\n"]

    with pytest.raises(WorkflowApiError) as info:
        client.get_run(workflow.id, 9)
    assert info.value.status == 404 and "no run 9" in info.value.message


def test_rerun_failed_only_and_its_conflicts(client: Client, label: str) -> None:
    workflow = client.create_workflow(pipeline(label, a="x", b="y"))
    client.run_workflow(workflow.id)
    finish(client, label, fail=frozenset({"b"}))
    again = client.rerun(workflow.id, 1, failed_only=True)
    assert (again.number, again.status) == (2, RunStatus.running)
    run = client.get_run(workflow.id, 2)
    assert (run.trigger, run.rerun_of) == ("rerun", 1)
    assert {j.id: j.status for j in run.jobs} == {"a": "success", "b": "queued"}
    with pytest.raises(WorkflowApiError) as info:  # run 2 has not finished
        client.rerun(workflow.id, 2)
    assert info.value.status == 409 and "not finished" in info.value.message
    claim = claim_one(client, unique("w"), label)
    assert claim.job.job_id == "b" and claim.job.run_id == 2  # a was kept
    client.complete(claim.lease.lease_id)
    assert client.get_run(workflow.id, 2).status == RunStatus.success


def test_run_inputs_are_sent_and_a_bad_one_is_named(client: Client, label: str) -> None:
    body = pipeline(label, only="x").model_copy(
        update={
            "inputs": {
                "replicas": InputDecl(type="number", required=True),
                "dry-run": InputDecl(type="boolean", default=True),
            }
        }
    )
    workflow = client.create_workflow(body)
    with pytest.raises(WorkflowApiError) as info:
        client.run_workflow(workflow.id)  # replicas is required
    assert info.value.status == 422 and "replicas" in info.value.message
    with pytest.raises(WorkflowApiError) as info:
        client.run_workflow(workflow.id, inputs={"replicas": 1, "bogus": "x"})
    assert info.value.status == 422 and "bogus" in info.value.message
    assert client.list_runs(workflow.id) == []
    accepted = client.run_workflow(workflow.id, inputs={"replicas": "3", "dry-run": "false"})
    inputs = client.get_run(workflow.id, accepted.number).inputs
    assert inputs == {"replicas": 3, "dry-run": False}


def test_cancel_run_cancels_only_that_run(client: Client, label: str) -> None:
    body = pipeline(label, only="x").model_copy(update={"concurrency": unique("group")})
    workflow = client.create_workflow(body)
    assert client.run_workflow(workflow.id).status == RunStatus.running
    assert client.run_workflow(workflow.id).status == RunStatus.queued
    claim = claim_one(client, unique("w"), label)
    assert client.cancel_run(workflow.id, 2) == RunAccepted(
        workflow_id=workflow.id, number=2, status=RunStatus.cancelled
    )
    assert client.get_run(workflow.id, 1).status == RunStatus.running
    assert client.is_cancelled(workflow.id, "only", run=2) is True
    assert client.is_cancelled(workflow.id, "only", run=1) is False
    client.complete(claim.lease.lease_id)
    ended = client.cancel_run(workflow.id, 1)  # a finished run is left as it is
    assert ended.status == RunStatus.success


def test_run_bodies_and_query_parameters() -> None:
    seen: list[tuple[str, str, bytes]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.method, str(request.url), request.content))
        if request.url.path.endswith("/cancelled"):
            return httpx.Response(200, json=False)
        if request.url.path.endswith("/logs"):
            return httpx.Response(200, json=[])
        return httpx.Response(202, json={"workflow_id": "w", "number": 4, "status": "queued"})

    client = _mock(handler)
    assert client.run_workflow("w").number == 4  # the contract's call: no body
    client.run_workflow("w", inputs={"env": "prod", "n": 2})
    client.rerun("w", 3)
    client.rerun("w", 3, failed_only=True)
    client.cancel_run("w", 3)
    client.get_logs("w", "j", run=3)
    client.is_cancelled("w", "j", run=3)
    client.is_cancelled("w", "j")
    base = "http://testserver/api"
    assert seen == [
        ("POST", f"{base}/workflows/w/run", b""),
        ("POST", f"{base}/workflows/w/run", b'{"inputs":{"env":"prod","n":2}}'),
        ("POST", f"{base}/workflows/w/runs/3/rerun", b'{"failed_only":false}'),
        ("POST", f"{base}/workflows/w/runs/3/rerun", b'{"failed_only":true}'),
        ("POST", f"{base}/workflows/w/runs/3/cancel", b""),
        ("GET", f"{base}/workflows/w/runs/3/jobs/j/logs", b""),
        ("GET", f"{base}/jobs/w/j/cancelled?run=3", b""),
        ("GET", f"{base}/jobs/w/j/cancelled", b""),
    ]


async def test_async_client_runs(server: ServerProcess, label: str) -> None:
    async with AsyncClient(server.url) as client:
        workflow = await client.create_workflow(pipeline(label, only="x"))
        accepted = await client.run_workflow(workflow.id)
        assert accepted.number == 1
        with Client(server.url) as sync:
            finish(sync, label, fail=frozenset({"only"}), log="async run\n")
        runs = await client.list_runs(workflow.id, limit=5)
        assert [(r.number, r.status) for r in runs] == [(1, RunStatus.failure)]
        assert (await client.get_run(workflow.id, 1)) == runs[0]
        again = await client.rerun(workflow.id, 1, failed_only=True)
        assert again.number == 2
        assert (await client.cancel_run(workflow.id, 2)).status == RunStatus.cancelled
        assert await client.is_cancelled(workflow.id, "only", run=2) is True
        logs = await client.get_logs(workflow.id, "only", run=1)
        assert [c.data for c in logs] == ["async run\n"]
        async with aclosing(client.stream_logs(workflow.id, "only", run=1)) as stream:
            assert [c.data async for c in stream] == ["async run\n"]


# --- the worker protocol ----------------------------------------------------------


def test_a_run_end_to_end(client: Client, label: str) -> None:
    workflow = client.create_workflow(pipeline(label, build="make", test="make test"))
    assert client.claim(unique("w"), [label]) is None  # nothing queued before the run
    client.run_workflow(workflow.id)

    worker_id = unique("w")
    first = claim_one(client, worker_id, label)
    assert first.job.job_id == "build" and first.job.workflow_id == workflow.id
    assert first.lease.worker_id == worker_id and first.lease.ttl_secs == 30
    assert first.job.attempt == 0
    status = client.get_status(workflow.id)
    assert job_of(status, "build").status == JobStatus.running
    assert job_of(status, "build").started_at is not None

    client.heartbeat_lease(first.lease.lease_id)
    client.push_logs(
        first.lease.lease_id,
        [
            LogChunkIn(sequence=0, data="compiling\n"),
            {"sequence": 1, "data": "warning\n", "stream": "stderr"},
        ],
    )
    assert client.is_cancelled(workflow.id, "build") is False
    client.complete(first.lease.lease_id, {"artifact": "app.tar"})

    second = claim_one(client, worker_id, label)
    assert second.job.job_id == "test"
    assert second.job.upstream_outputs == {"build": {"artifact": "app.tar"}}
    client.complete(second.lease.lease_id)

    final = wait_for(client, workflow.id, lambda w: all(j.status == "success" for j in w.jobs))
    assert job_of(final, "build").duration_secs is not None
    logs = client.get_job_logs(workflow.id, "build")
    assert [(c.sequence, c.data, c.stream) for c in logs] == [
        (0, "compiling\n", LogStream.stdout),
        (1, "warning\n", LogStream.stderr),
    ]
    assert all(c.workflow_id == workflow.id and c.job_id == "build" for c in logs)


def test_fail_sets_output_and_skips_dependents(client: Client, label: str) -> None:
    workflow = client.create_workflow(pipeline(label, a="false", b="true", c="true"))
    client.run_workflow(workflow.id)
    claim = claim_one(client, unique("w"), label)
    client.fail(claim.lease.lease_id, "exit code 1: boom")
    final = wait_for(client, workflow.id, lambda w: job_of(w, "c").status == "skipped")
    assert job_of(final, "a").status == JobStatus.failure
    assert job_of(final, "a").output == "exit code 1: boom"
    assert job_of(final, "b").status == JobStatus.skipped


def test_retryable_fail_requeues_with_next_attempt(client: Client, label: str) -> None:
    body = WorkflowCreate(
        name="Retry",
        jobs=[JobCreate(id="flaky", command="x", required_labels=[label], max_retries=1)],
    )
    workflow = client.create_workflow(body)
    client.run_workflow(workflow.id)
    worker_id = unique("w")
    client.fail(claim_one(client, worker_id, label).lease.lease_id, "network", retryable=True)
    retry = claim_one(client, worker_id, label)
    assert retry.job.attempt == 1
    assert job_of(client.get_status(workflow.id), "flaky").attempt == 1


def test_a_lease_that_is_not_active_is_409(client: Client, label: str) -> None:
    for call in (
        lambda: client.heartbeat_lease("no-such-lease"),
        lambda: client.complete("no-such-lease", {}),
        lambda: client.fail("no-such-lease", "x"),
        lambda: client.push_logs("no-such-lease", [LogChunkIn(sequence=0, data="x")]),
    ):
        with pytest.raises(WorkflowApiError) as info:
            call()
        assert info.value.status == 409
        assert info.value.message

    workflow = client.create_workflow(pipeline(label))
    client.run_workflow(workflow.id)
    claim = claim_one(client, unique("w"), label)
    client.complete(claim.lease.lease_id)
    with pytest.raises(WorkflowApiError) as info:  # already reported
        client.complete(claim.lease.lease_id)
    assert info.value.status == 409


def test_cancel_revokes_the_lease(client: Client, label: str) -> None:
    workflow = client.create_workflow(pipeline(label))
    client.run_workflow(workflow.id)
    claim = claim_one(client, unique("w"), label)
    client.cancel_workflow(workflow.id)
    assert client.is_cancelled(workflow.id, "a") is True
    with pytest.raises(WorkflowApiError) as info:
        client.heartbeat_lease(claim.lease.lease_id)
    assert info.value.status == 409
    status = client.get_status(workflow.id)
    assert {j.status for j in status.jobs} == {JobStatus.cancelled}
    with pytest.raises(WorkflowApiError) as info:
        client.cancel_workflow("no-such-workflow")
    assert info.value.status == 404
    with pytest.raises(WorkflowApiError) as info:
        client.is_cancelled(workflow.id, "no-such-job")
    assert info.value.status == 404


def test_workers_register_list_and_heartbeat(client: Client) -> None:
    worker_id = unique("reg")
    info = client.register_worker(worker_id, ["gpu", "linux"])
    assert info is None or info.worker_id == worker_id
    client.worker_heartbeat(worker_id)
    workers = {w.worker_id: w for w in client.list_workers()}
    assert isinstance(workers[worker_id], WorkerInfo)
    assert sorted(workers[worker_id].labels) == ["gpu", "linux"]
    assert workers[worker_id].status == "idle"
    with pytest.raises(WorkflowApiError) as err:
        client.worker_heartbeat(unique("never-registered"))
    assert err.value.status == 404


def test_claim_registers_the_worker_as_busy(client: Client, label: str) -> None:
    workflow = client.create_workflow(pipeline(label))
    client.run_workflow(workflow.id)
    worker_id = unique("w")
    claim_one(client, worker_id, label)
    worker = next(w for w in client.list_workers() if w.worker_id == worker_id)
    assert worker.status == "busy"
    assert worker.current_job is not None and "a" in worker.current_job


def test_claim_with_wait_secs_parks_until_a_job_arrives(client: Client, label: str) -> None:
    workflow = client.create_workflow(pipeline(label))

    def run_later() -> None:
        with Client(client.base_url) as other:
            other.run_workflow(workflow.id)

    timer = threading.Timer(0.3, run_later)
    timer.start()
    started = time.monotonic()
    claim = client.claim(unique("w"), [label], wait_secs=5)
    timer.join()
    assert claim is not None and claim.job.workflow_id == workflow.id
    assert time.monotonic() - started < 4


# --- log streaming ----------------------------------------------------------------


def test_stream_logs_replays_then_follows_until_the_job_ends(client: Client, label: str) -> None:
    workflow = client.create_workflow(pipeline(label, only="echo"))
    client.run_workflow(workflow.id)
    lease = claim_one(client, unique("w"), label).lease.lease_id
    client.push_logs(lease, [LogChunkIn(sequence=0, data="stored\n")])

    received: list[LogChunk] = []
    done = threading.Event()

    def consume() -> None:
        with Client(client.base_url) as reader:
            received.extend(reader.stream_logs(workflow.id, "only"))
        done.set()

    threading.Thread(target=consume, daemon=True).start()
    deadline = time.monotonic() + 5
    while not received and time.monotonic() < deadline:
        time.sleep(0.02)
    client.push_logs(lease, [LogChunkIn(sequence=1, data="live\n", stream=LogStream.stderr)])
    time.sleep(0.2)
    assert not done.is_set()  # the job still runs: the stream stays open
    client.complete(lease)
    assert done.wait(10), "the stream did not end after the job ended"
    assert [(c.sequence, c.data, c.stream) for c in received] == [
        (0, "stored\n", LogStream.stdout),
        (1, "live\n", LogStream.stderr),
    ]


def test_stream_logs_of_unknown_job_is_404(client: Client) -> None:
    with pytest.raises(WorkflowApiError) as info:
        list(client.stream_logs("hello", "no-such-job"))
    assert info.value.status == 404
    with pytest.raises(WorkflowApiError) as info:
        client.get_job_logs("no-such-workflow", "x")
    assert info.value.status == 404


# --- connection failures and error mapping ----------------------------------------


def test_unreachable_server_raises_server_unreachable() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with Client(url) as client, pytest.raises(ServerUnreachable) as info:
        client.list_workflows()
    assert str(info.value) == f"cannot reach server at {url}: connection refused"
    with Client(url) as client, pytest.raises(ServerUnreachable):
        list(client.stream_logs("a", "b"))


def _mock(handler) -> Client:
    return Client("http://testserver", transport=httpx.MockTransport(handler))


def test_non_json_error_body_still_maps_to_workflow_api_error() -> None:
    client = _mock(lambda request: httpx.Response(502, text="<html>bad gateway</html>"))
    with pytest.raises(WorkflowApiError) as info:
        client.get_status("x")
    assert (info.value.status, info.value.status_text) == (502, "Bad Gateway")
    assert info.value.message == "<html>bad gateway</html>"


def test_unexpected_success_body_is_a_client_error() -> None:
    client = _mock(lambda request: httpx.Response(200, json={"not": "a workflow"}))
    with pytest.raises(ClientError, match="unexpected answer"):
        client.get_status("x")


def test_tokens_from_env_go_to_their_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("API_TOKEN", "api-secret")
    monkeypatch.setenv("WORKER_TOKEN", "worker-secret")
    seen: dict[str, str | None] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen[request.url.path] = request.headers.get("authorization")
        return httpx.Response(200, content=b"[]" if request.method == "GET" else b"null")

    client = _mock(handler)
    client.list_workers()
    assert client.claim("w1", ["x"]) is None
    assert seen == {
        "/api/workers": "Bearer api-secret",
        "/api/jobs/claim": "Bearer worker-secret",
    }
    override = Client("http://t", token="t1", worker_token="t2", transport=client._http._transport)
    override.list_workers()
    assert seen["/api/workers"] == "Bearer t1"


def test_no_token_sends_no_authorization(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("API_TOKEN", raising=False)
    monkeypatch.delenv("WORKER_TOKEN", raising=False)
    headers: list[httpx.Headers] = []

    def handler(request: httpx.Request) -> httpx.Response:
        headers.append(request.headers)
        return httpx.Response(200, json=True)

    assert _mock(handler).is_cancelled("a", "b") is True
    assert "authorization" not in headers[0]


def test_claim_body_is_the_contract_shape() -> None:
    bodies: list[dict] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return httpx.Response(200, content=b"null")

    _mock(handler).claim("w1", ["docker"], lease_ttl_secs=12)
    assert bodies == [
        {"worker_id": "w1", "labels": ["docker"], "lease_ttl_secs": 12, "wait_secs": 0}
    ]


def test_sse_parser_handles_comments_ids_and_multiline_data() -> None:
    parser = EventParser()
    lines = [": keep-alive", "", "event: log", "id: 3", 'data: {"a":', "data: 1}", "", "data:x", ""]
    events = [e for line in lines if (e := parser.feed(line)) is not None]
    assert events == [
        Event(event="log", data='{"a":\n1}', id="3"),
        Event(event="message", data="x", id="3"),
    ]


def test_stream_logs_parses_sse_and_ignores_comments_and_other_events() -> None:
    chunk = LogChunk(
        workflow_id="w", job_id="j", sequence=0, data="hi\n", timestamp_ms=1, stream="stdout"
    )
    body = (
        ": keep-alive\n\n"
        f"event: log\nid: 0\ndata: {chunk.model_dump_json()}\n\n"
        "event: other\ndata: ignored\n\n"
    )
    client = _mock(
        lambda request: httpx.Response(
            200, text=body, headers={"content-type": "text/event-stream"}
        )
    )
    assert list(client.stream_logs("w", "j")) == [chunk]


# --- AsyncClient under trio ----------------------------------------------------------


async def test_async_client_runs_a_workflow(server: ServerProcess, label: str) -> None:
    async with AsyncClient(server.url) as client:
        workflow = await client.create_workflow(pipeline(label, only="echo"))
        assert isinstance(workflow, Workflow)
        assert any(w.id == workflow.id for w in await client.list_workflows(limit=1000))
        await client.run_workflow(workflow.id)
        worker_id = unique("aw")
        info = await client.register_worker(worker_id, [label])
        assert info is None or info.labels == [label]
        await client.worker_heartbeat(worker_id)
        claim = None
        with trio.fail_after(10):
            while claim is None:
                claim = await client.claim(worker_id, [label], lease_ttl_secs=10)
                await trio.sleep(0.05)
        lease = claim.lease.lease_id
        assert claim.lease.ttl_secs == 10
        await client.heartbeat_lease(lease)
        await client.push_logs(lease, [LogChunkIn(sequence=0, data="async\n")])
        assert await client.is_cancelled(workflow.id, "only") is False

        received: list[LogChunk] = []

        async def consume() -> None:
            async with AsyncClient(server.url) as reader:
                async with aclosing(reader.stream_logs(workflow.id, "only")) as stream:
                    async for chunk in stream:
                        received.append(chunk)

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(consume)
                while not received:
                    await trio.sleep(0.02)
                await client.complete(lease, {"k": "v"})
        assert [c.data for c in received] == ["async\n"]
        assert [c.data for c in await client.get_job_logs(workflow.id, "only")] == ["async\n"]
        status = await client.get_status(workflow.id)
        assert job_of(status, "only").status == JobStatus.success
        assert any(w.worker_id == worker_id for w in await client.list_workers())


async def test_async_client_error_mapping(server: ServerProcess, label: str) -> None:
    async with AsyncClient(server.url) as client:
        with pytest.raises(WorkflowApiError) as info:
            await client.get_status("no-such-workflow")
        assert info.value.status == 404 and "no-such-workflow" in info.value.message
        with pytest.raises(WorkflowApiError) as info:
            await client.complete("no-such-lease")
        assert info.value.status == 409
        with pytest.raises(WorkflowApiError) as info:
            await client.fail("no-such-lease", "x", retryable=True)
        assert info.value.status == 409
        workflow = await client.create_workflow(
            WorkflowCreate(
                name="Async cancel",
                jobs=[
                    JobCreate(
                        id="j",
                        command="x",
                        required_labels=[label],
                        backoff=ExponentialBackoff(
                            Exponential=ExponentialDelay(base_secs=1, max_secs=5)
                        ),
                    )
                ],
            )
        )
        await client.run_workflow(workflow.id)
        await client.cancel_workflow(workflow.id)
        assert await client.is_cancelled(workflow.id, "j") is True
        with pytest.raises(WorkflowApiError) as info:
            async for _ in client.stream_logs(workflow.id, "no-such-job"):
                pass
        assert info.value.status == 404

    async with AsyncClient(f"http://127.0.0.1:{free_port()}") as client:
        with pytest.raises(ServerUnreachable):
            await client.list_workers()


def test_several_servers_skip_one_that_refuses_connections(live_server) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}"  # bound, never listening
        with Client(f"{dead}, {live_server.url}") as client:
            assert client.servers == [dead, live_server.url]
            assert isinstance(client.list_workflows(), list)
            assert client.base_url == live_server.url  # and it stays there
            assert isinstance(client.list_workers(), list)
        with Client(dead) as alone, pytest.raises(ServerUnreachable):
            alone.list_workflows()


async def test_the_async_client_fails_over_too(live_server) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}"
        async with AsyncClient([dead, live_server.url]) as client:
            assert isinstance(await client.list_workflows(), list)
            assert client.base_url == live_server.url
