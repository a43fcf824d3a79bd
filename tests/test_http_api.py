"""HTTP-level tests of every endpoint and error code of `spec/contract.md`.

Everything goes through the in-process Quart-Trio test client over a real
`Runtime`; workflows are created with `POST /api/workflows`. Where time matters
the test asks for `autojump_clock`, so no test sleeps for real.

Lifecycle rules (runs, cancel, leases, retries, SSE) are in
`test_http_lifecycle.py`; the helpers shared by both live here.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing
from homes import HOMES, Home, make_home

from actors.runtime import open_runtime
from web.app import create_app

JOB_KEYS = {
    "id",
    "name",
    "status",
    "command",
    "duration_secs",
    "started_at",
    "depends_on",
    "output",
    "required_labels",
    "max_retries",
    "attempt",
    "metadata",
}
QUEUED_JOB_KEYS = {
    "job_id",
    "workflow_id",
    "command",
    "required_labels",
    "retry_policy",
    "attempt",
    "upstream_outputs",
    "enqueued_at_ms",
    "delayed_until_ms",
}
LEASE_KEYS = {"lease_id", "job_id", "workflow_id", "worker_id", "ttl_secs", "granted_at_ms"}
LOG_CHUNK_KEYS = {"workflow_id", "job_id", "sequence", "data", "timestamp_ms", "stream", "attempt"}
WORKER_KEYS = {
    "worker_id",
    "labels",
    "registered_at_ms",
    "last_heartbeat_ms",
    "current_job",
    "status",
}


# --- helpers ------------------------------------------------------------------


async def assert_error(resp, status: int) -> str:
    """The answer has `status` and the contract's error body `{"error": str}`."""
    body = await resp.get_data(as_text=True)
    assert resp.status_code == status, (resp.status_code, body)
    assert resp.mimetype == "application/json", resp.headers
    data = json.loads(body)
    assert isinstance(data, dict) and set(data) <= {"error", "errors"} and "error" in data, data
    assert isinstance(data["error"], str) and data["error"], data
    if "errors" in data:  # extension: a refused definition lists every problem
        assert status == 422 and data["errors"], data
        assert all(isinstance(e["message"], str) for e in data["errors"]), data
    return data["error"]


async def assert_object(resp, status: int = 200) -> dict:
    """A 200/202 answer without a shape of its own: a JSON object."""
    body = await resp.get_data(as_text=True)
    assert resp.status_code == status, (resp.status_code, body)
    assert resp.mimetype == "application/json", resp.headers
    data = json.loads(body)
    assert isinstance(data, dict), data
    return data


def job(job_id: str, command: str = "true", **fields: Any) -> dict:
    return {"id": job_id, "command": command, **fields}


def chunk(sequence: int, data: str, **fields: Any) -> dict:
    """A pushed log chunk as a worker sends it (the ids, when given, are ignored)."""
    return {
        "sequence": sequence,
        "data": data,
        "timestamp_ms": 1_700_000_000_000,
        "stream": "stdout",
        **fields,
    }


class Api:
    """The test client plus the calls a workflow client and a worker make."""

    def __init__(self, client, runtime) -> None:
        self.client = client
        self.runtime = runtime

    # raw
    async def get(self, path: str, **kw):
        return await self.client.get(path, **kw)

    async def post(self, path: str, body: Any = None, *, raw: bytes | None = None, **kw):
        if raw is not None:
            headers = {"Content-Type": "application/json", **kw.pop("headers", {})}
            return await self.client.post(path, data=raw, headers=headers, **kw)
        if body is None:
            return await self.client.post(path, **kw)
        return await self.client.post(path, json=body, **kw)

    # workflows
    async def create(self, jobs: list[dict], name: str = "wf", **extra: Any) -> dict:
        resp = await self.post("/api/workflows", {"name": name, "jobs": jobs, **extra})
        body = await resp.get_json()
        assert resp.status_code == 201, body
        return body

    async def workflows(self, query: str = "") -> list[dict]:
        resp = await self.get("/api/workflows" + query)
        body = await resp.get_json()
        assert resp.status_code == 200, body
        assert isinstance(body, list)
        return body

    async def status(self, wf_id: str) -> dict:
        resp = await self.get(f"/api/workflows/{wf_id}/status")
        body = await resp.get_json()
        assert resp.status_code == 200, body
        return body

    async def jobs(self, wf_id: str) -> dict[str, dict]:
        return {j["id"]: j for j in (await self.status(wf_id))["jobs"]}

    async def statuses(self, wf_id: str) -> dict[str, str]:
        return {k: v["status"] for k, v in (await self.jobs(wf_id)).items()}

    async def run(self, wf_id: str) -> dict:
        return await assert_object(await self.post(f"/api/workflows/{wf_id}/run"), 202)

    async def cancel(self, wf_id: str) -> dict:
        return await assert_object(await self.post(f"/api/workflows/{wf_id}/cancel"), 202)

    async def create_and_run(self, jobs: list[dict], name: str = "wf") -> str:
        wf_id = (await self.create(jobs, name))["id"]
        await self.run(wf_id)
        return wf_id

    # workers
    async def register(self, worker_id: str, labels: Sequence[str] = ()) -> dict:
        body = {"worker_id": worker_id, "labels": list(labels)}
        return await assert_object(await self.post("/api/workers/register", body))

    async def workers(self) -> dict[str, dict]:
        resp = await self.get("/api/workers")
        body = await resp.get_json()
        assert resp.status_code == 200, body
        assert isinstance(body, list)
        return {w["worker_id"]: w for w in body}

    # worker protocol
    async def claim(self, worker_id: str = "w1", labels: Sequence[str] = (), **extra: Any):
        body = {"worker_id": worker_id, "labels": list(labels), **extra}
        resp = await self.post("/api/jobs/claim", body)
        text = await resp.get_data(as_text=True)
        assert resp.status_code == 200, text
        assert resp.mimetype == "application/json"
        return json.loads(text)

    async def claim_job(self, worker_id: str = "w1", labels: Sequence[str] = (), **extra):
        claim = await self.claim(worker_id, labels, **extra)
        assert claim is not None, "expected a job to claim"
        return claim

    async def heartbeat(self, lease_id: str):
        return await self.post(f"/api/jobs/{lease_id}/heartbeat")

    async def complete(self, lease_id: str, outputs: dict | None = None):
        return await self.post(f"/api/jobs/{lease_id}/complete", {"outputs": outputs or {}})

    async def fail(self, lease_id: str, error: str = "boom", **extra: Any):
        return await self.post(f"/api/jobs/{lease_id}/fail", {"error": error, **extra})

    async def push(self, lease_id: str, chunks: list[dict]):
        return await self.post(f"/api/jobs/{lease_id}/logs", {"chunks": chunks})

    async def logs(self, wf_id: str, job_id: str) -> list[dict]:
        resp = await self.get(f"/api/workflows/{wf_id}/jobs/{job_id}/logs")
        body = await resp.get_json()
        assert resp.status_code == 200, body
        assert isinstance(body, list)
        return body

    async def is_cancelled(self, wf_id: str, job_id: str) -> bool:
        resp = await self.get(f"/api/jobs/{wf_id}/{job_id}/cancelled")
        text = await resp.get_data(as_text=True)
        assert resp.status_code == 200, text
        value = json.loads(text)
        assert isinstance(value, bool), text
        return value

    async def finish(self, claim: dict, outputs: dict | None = None) -> None:
        await assert_object(await self.complete(claim["lease"]["lease_id"], outputs))


@asynccontextmanager
async def serve(
    *, home: Home | None = None, api_only: bool = False, **app_kwargs: Any
) -> AsyncIterator[Api]:
    """A runtime (of `home`, default embedded) and the app over it, with a test client."""
    opened = home.open(api_only=api_only) if home else open_runtime(api_only=api_only)
    async with opened as runtime:
        app = create_app(runtime, **app_kwargs)
        async with app.test_app() as test_app:
            yield Api(test_app.test_client(), runtime)


@pytest.fixture(params=HOMES)
def home(request):
    yield from make_home(request, request.param)


@pytest.fixture
async def api(home: Home) -> AsyncIterator[Api]:
    async with serve(home=home) as a:
        yield a


def now_epoch_ms() -> int:
    return int(time.time() * 1000)


# --- list ---------------------------------------------------------------------


async def test_list_empty(api: Api):
    assert await api.workflows() == []


async def test_list_returns_workflows_in_creation_order(api: Api):
    ids = [(await api.create([job("a")], name=f"n{i}"))["id"] for i in range(5)]
    listed = await api.workflows()
    assert [w["id"] for w in listed] == ids
    assert [w["name"] for w in listed] == [f"n{i}" for i in range(5)]
    # Stable: the same again, and after a run changes one of them.
    await api.run(ids[2])
    assert [w["id"] for w in await api.workflows()] == ids


async def test_list_items_are_full_workflows(api: Api):
    created = await api.create([job("a"), job("b", depends_on=["a"])], name="N", trigger="on: x")
    (listed,) = await api.workflows()
    assert listed == created
    assert set(listed) == {"id", "name", "trigger", "jobs", "run"}
    assert listed["trigger"] == "on: x"
    assert all(set(j) >= JOB_KEYS for j in listed["jobs"])


async def test_list_limit_and_offset(api: Api):
    ids = [(await api.create([job("a")]))["id"] for _ in range(7)]
    assert [w["id"] for w in await api.workflows("?limit=3")] == ids[:3]
    assert [w["id"] for w in await api.workflows("?limit=3&offset=3")] == ids[3:6]
    assert [w["id"] for w in await api.workflows("?limit=3&offset=6")] == ids[6:]
    assert [w["id"] for w in await api.workflows("?offset=5")] == ids[5:]
    assert await api.workflows("?offset=7") == []
    assert await api.workflows("?offset=100") == []
    assert await api.workflows("?limit=0") == []


async def test_list_limit_defaults_to_100(api: Api):
    ids = [(await api.create([job("a")]))["id"] for _ in range(101)]
    listed = await api.workflows()
    assert [w["id"] for w in listed] == ids[:100]
    assert [w["id"] for w in await api.workflows("?offset=100")] == ids[100:]
    assert len(await api.workflows("?limit=101")) == 101


async def test_list_limit_is_capped_at_1000(api: Api):
    for _ in range(1001):
        resp = await api.post("/api/workflows", {"name": "w", "jobs": [job("a")]})
        assert resp.status_code == 201
    assert len(await api.workflows("?limit=5000")) == 1000
    assert len(await api.workflows("?limit=1000")) == 1000
    assert len(await api.workflows("?limit=1001")) == 1000
    assert len(await api.workflows("?limit=1000&offset=1")) == 1000
    assert len(await api.workflows("?limit=1000&offset=2")) == 999


@pytest.mark.parametrize(
    "query",
    [
        "limit=abc",
        "offset=abc",
        "limit=-1",
        "offset=-1",
        "limit=-100",
        "limit=ten&offset=0",
        "limit=10&offset=-5",
        "status=bogus",
        "status=QUEUED",
        "status=done",
    ],
)
async def test_list_bad_parameter_is_400(api: Api, query: str):
    await api.create([job("a")])
    await assert_error(await api.get("/api/workflows?" + query), 400)


async def test_list_status_filter(api: Api):
    idle = (await api.create([job("a")], name="idle"))["id"]
    running = await api.create_and_run([job("a"), job("b", depends_on=["a"])], name="running")
    await api.claim_job()  # running.a is now running, running.b queued
    done = await api.create_and_run([job("a")], name="done")
    claim = await api.claim_job()
    assert claim["job"]["workflow_id"] == done
    await api.finish(claim)

    def ids(workflows):
        return [w["id"] for w in workflows]

    assert ids(await api.workflows("?status=running")) == [running]
    assert ids(await api.workflows("?status=queued")) == [idle, running]
    assert ids(await api.workflows("?status=success")) == [done]
    for status in ("failure", "skipped", "cancelled"):
        assert await api.workflows(f"?status={status}") == []
    # The filter composes with pagination, over the filtered list.
    assert ids(await api.workflows("?status=queued&limit=1&offset=1")) == [running]
    await api.cancel(running)
    assert ids(await api.workflows("?status=cancelled")) == [running]


# --- create -------------------------------------------------------------------


async def test_create_returns_201_with_new_uuid(api: Api):
    body = {"name": "CI", "trigger": "on: push", "jobs": [job("build", "make")]}
    r1 = await api.post("/api/workflows", body)
    r2 = await api.post("/api/workflows", body)
    assert r1.status_code == r2.status_code == 201
    assert r1.mimetype == "application/json"
    w1, w2 = await r1.get_json(), await r2.get_json()
    assert str(uuid.UUID(w1["id"])) == w1["id"]
    assert str(uuid.UUID(w2["id"])) == w2["id"]
    assert w1["id"] != w2["id"]
    assert w1["name"] == "CI" and w1["trigger"] == "on: push"
    assert await api.status(w1["id"]) == w1


async def test_create_job_defaults(api: Api):
    wf = await api.create([job("build", "make")])
    (j,) = wf["jobs"]
    assert set(j) == JOB_KEYS | {"waiting"}  # extension: why a queued job waits
    assert j == {
        "id": "build",
        "name": "build",
        "status": "queued",
        "command": "make",
        "duration_secs": None,
        "started_at": None,
        "depends_on": [],
        "output": None,
        "required_labels": [],
        "max_retries": 0,
        "attempt": 0,
        "metadata": {},
        "waiting": None,
    }


async def test_create_echoes_given_job_fields(api: Api):
    wf = await api.create(
        [
            job("lint", name="Lint"),
            job(
                "build",
                "make",
                name="Build",
                depends_on=["lint"],
                required_labels=["linux", "docker"],
                max_retries=2,
                metadata={"x": 1, "nested": {"y": [1, "two"]}},
            ),
        ]
    )
    assert [j["id"] for j in wf["jobs"]] == ["lint", "build"]
    build = wf["jobs"][1]
    assert build["name"] == "Build"
    assert build["depends_on"] == ["lint"]
    assert build["required_labels"] == ["linux", "docker"]
    assert build["max_retries"] == 2
    assert build["metadata"] == {"x": 1, "nested": {"y": [1, "two"]}}
    assert (await api.jobs(wf["id"]))["build"]["metadata"] == build["metadata"]


async def test_create_ignores_status_all_jobs_queued(api: Api):
    wf = await api.create(
        [
            job("a", status="success", attempt=3, output="old"),
            job("b", status="running", depends_on=["a"]),
            job("c", status="not-a-status"),
        ]
    )
    for j in wf["jobs"] + (await api.status(wf["id"]))["jobs"]:
        assert j["status"] == "queued"
        assert j["attempt"] == 0
        assert j["output"] is None


async def test_create_echoes_visualizer_fields_only_when_sent(api: Api):
    ports = [{"id": "in", "side": "left"}]
    wf = await api.create(
        [
            job("a", ports=ports, children=["x", "y"], collapsed=True),
            job("b", collapsed=False),
            job("c"),
        ]
    )
    for jobs in (
        wf["jobs"],
        (await api.status(wf["id"]))["jobs"],
        (await api.workflows())[0]["jobs"],
    ):
        a, b, c = jobs
        assert a["ports"] == ports
        assert a["children"] == ["x", "y"]
        assert a["collapsed"] is True
        assert b["collapsed"] is False
        assert "ports" not in b and "children" not in b
        assert not {"ports", "children", "collapsed"} & set(c)


async def test_create_malformed_json_is_400(api: Api):
    for raw in (b'{"name": "x", "jobs": [', b"not json", b"{'name': 'x'}", b""):
        await assert_error(await api.post("/api/workflows", raw=raw), 400)
    assert await api.workflows() == []


@pytest.mark.parametrize(
    "jobs",
    [
        pytest.param([job("a", depends_on=["nope"])], id="unknown-dependency"),
        pytest.param([job("a", depends_on=["b"]), job("b", depends_on=["a"])], id="cycle"),
        pytest.param(
            [job("a", depends_on=["c"]), job("b", depends_on=["a"]), job("c", depends_on=["b"])],
            id="cycle-3",
        ),
        pytest.param([job("a", depends_on=["a"])], id="self-dependency"),
        pytest.param([job("a"), job("a", "other")], id="duplicate-job-id"),
        pytest.param([{"command": "true"}], id="missing-id"),
        pytest.param([{"id": "a"}], id="missing-command"),
        pytest.param([{"id": 5, "command": "true"}], id="id-not-string"),
        pytest.param([{"id": "a", "command": ["make"]}], id="command-not-string"),
        pytest.param([job("a"), job("b", depends_on="a")], id="depends_on-not-list"),
        pytest.param([job("a", depends_on=[1])], id="depends_on-item-not-string"),
        pytest.param([job("a", required_labels="linux")], id="labels-not-list"),
        pytest.param([job("a", max_retries="2")], id="max_retries-string"),
        pytest.param([job("a", max_retries=-1)], id="max_retries-negative"),
        pytest.param([job("a", metadata=[1, 2])], id="metadata-not-object"),
        pytest.param(["a"], id="job-not-object"),
        pytest.param({"a": job("a")}, id="jobs-not-list"),
    ],
)
async def test_create_invalid_is_422(api: Api, jobs):
    resp = await api.post("/api/workflows", {"name": "x", "jobs": jobs})
    await assert_error(resp, 422)
    assert await api.workflows() == []


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"name": "x"}, id="missing-jobs"),
        pytest.param({"name": 5, "jobs": [job("a")]}, id="name-not-string"),
        pytest.param({"name": "x", "trigger": 1, "jobs": [job("a")]}, id="trigger-not-string"),
        pytest.param([{"name": "x", "jobs": [job("a")]}], id="body-is-list"),
        pytest.param("x", id="body-is-string"),
    ],
)
async def test_create_invalid_body_is_422(api: Api, body):
    await assert_error(await api.post("/api/workflows", raw=json.dumps(body).encode()), 422)
    assert await api.workflows() == []


async def test_create_error_names_the_reason(api: Api):
    msg = await assert_error(
        await api.post("/api/workflows", {"name": "x", "jobs": [job("a", depends_on=["ghost"])]}),
        422,
    )
    assert "ghost" in msg
    msg = await assert_error(
        await api.post("/api/workflows", {"name": "x", "jobs": [job("dup"), job("dup")]}), 422
    )
    assert "dup" in msg


# --- status -------------------------------------------------------------------


async def test_status_unknown_workflow_is_404(api: Api):
    await assert_error(await api.get("/api/workflows/nope/status"), 404)
    await assert_error(await api.get(f"/api/workflows/{uuid.uuid4()}/status"), 404)


async def test_status_shows_job_states(api: Api):
    wf = await api.create_and_run([job("a"), job("b", depends_on=["a"])])
    before = now_epoch_ms()
    claim = await api.claim_job()
    jobs = await api.jobs(wf)
    assert jobs["a"]["status"] == "running"
    started = jobs["a"]["started_at"]
    assert isinstance(started, int)
    assert before - 60_000 <= started <= now_epoch_ms() + 60_000  # epoch milliseconds
    assert jobs["a"]["duration_secs"] is None
    assert jobs["b"]["status"] == "queued" and jobs["b"]["started_at"] is None
    await api.finish(claim)
    a = (await api.jobs(wf))["a"]
    assert a["status"] == "success"
    assert isinstance(a["duration_secs"], int) and a["duration_secs"] >= 0
    assert a["output"] is None


# --- run ----------------------------------------------------------------------


async def test_run_answers_202_object_and_enqueues_roots(api: Api):
    wf = (await api.create([job("a"), job("b"), job("c", depends_on=["a", "b"])]))["id"]
    assert await api.claim() is None  # nothing before a run
    await api.run(wf)
    first = await api.claim_job()
    second = await api.claim_job()
    assert {first["job"]["job_id"], second["job"]["job_id"]} == {"a", "b"}
    assert await api.claim() is None  # c waits for both


async def test_run_unknown_workflow_is_404(api: Api):
    await assert_error(await api.post("/api/workflows/nope/run"), 404)


async def test_run_while_active_is_409(api: Api):
    wf = await api.create_and_run([job("a"), job("b", depends_on=["a"])])
    await assert_error(await api.post(f"/api/workflows/{wf}/run"), 409)
    claim = await api.claim_job()
    await assert_error(await api.post(f"/api/workflows/{wf}/run"), 409)
    await api.finish(claim)
    await assert_error(await api.post(f"/api/workflows/{wf}/run"), 409)  # b still queued
    await api.finish(await api.claim_job())
    await api.run(wf)  # every job terminal: the run is over


# --- cancel -------------------------------------------------------------------


async def test_cancel_unknown_workflow_is_404(api: Api):
    await assert_error(await api.post("/api/workflows/nope/cancel"), 404)


async def test_cancel_turns_queued_and_running_to_cancelled(api: Api):
    wf = await api.create_and_run(
        [job("a"), job("b", depends_on=["a"]), job("c"), job("d", depends_on=["c"])]
    )
    ca = await api.claim_job()
    cc = await api.claim_job()
    await api.finish(cc)  # c success; d queued; a running; b queued
    assert ca["job"]["job_id"] == "a"
    await api.cancel(wf)
    assert await api.statuses(wf) == {
        "a": "cancelled",
        "b": "cancelled",
        "c": "success",
        "d": "cancelled",
    }
    assert await api.claim() is None  # queued jobs left the queue
    await api.run(wf)  # the run is over: it can run again


async def test_cancel_never_run_workflow(api: Api):
    wf = (await api.create([job("a")]))["id"]
    await api.cancel(wf)
    # Contract: every queued job becomes cancelled.
    assert await api.statuses(wf) == {"a": "cancelled"}
    assert await api.claim() is None


async def test_cancel_finished_workflow_changes_nothing(api: Api):
    wf = await api.create_and_run([job("a"), job("b"), job("c", depends_on=["b"])])
    await api.finish(await api.claim_job())
    claim = await api.claim_job()
    await assert_object(await api.fail(claim["lease"]["lease_id"], "bad"))
    before = await api.status(wf)
    assert [j["status"] for j in before["jobs"]] == ["success", "failure", "skipped"]
    await api.cancel(wf)
    assert await api.status(wf) == before
    for job_id in "abc":
        assert await api.is_cancelled(wf, job_id) is False


async def test_cancel_is_idempotent(api: Api):
    wf = await api.create_and_run([job("a")])
    await api.cancel(wf)
    before = await api.status(wf)
    await api.cancel(wf)
    assert await api.status(wf) == before


# --- cancelled check ----------------------------------------------------------


async def test_cancelled_check_true_exactly_for_cancelled_jobs(api: Api):
    wf = await api.create_and_run([job("a"), job("b", depends_on=["a"]), job("c")])
    assert await api.is_cancelled(wf, "a") is False
    ca = await api.claim_job()
    cc = await api.claim_job()
    await api.finish(ca)
    # a success, b queued, c running
    for job_id in "abc":
        assert await api.is_cancelled(wf, job_id) is False
    await api.cancel(wf)
    assert await api.is_cancelled(wf, "a") is False
    assert await api.is_cancelled(wf, "b") is True
    assert await api.is_cancelled(wf, "c") is True
    # The worker of c finds out, and its lease is revoked.
    await assert_error(await api.complete(cc["lease"]["lease_id"]), 409)
    # A new run: nothing is cancelled any more.
    await api.run(wf)
    for job_id in "abc":
        assert await api.is_cancelled(wf, job_id) is False


async def test_cancelled_check_unknown_ids_are_404(api: Api):
    wf = (await api.create([job("a")]))["id"]
    await assert_error(await api.get("/api/jobs/nope/a/cancelled"), 404)
    await assert_error(await api.get(f"/api/jobs/{wf}/nope/cancelled"), 404)


# --- workers ------------------------------------------------------------------


async def test_register_returns_200_object_and_lists_worker(api: Api):
    body = await api.register("w1", ["docker", "linux"])
    if "worker_id" in body:  # register may return the WorkerInfo
        assert body["worker_id"] == "w1"
        assert body["labels"] == ["docker", "linux"]
        assert body["status"] == "idle"
    workers = await api.workers()
    assert set(workers) == {"w1"}
    w = workers["w1"]
    assert set(w) == WORKER_KEYS
    assert w["labels"] == ["docker", "linux"]
    assert w["status"] == "idle"
    assert w["current_job"] is None
    assert isinstance(w["registered_at_ms"], int)
    assert abs(w["registered_at_ms"] - now_epoch_ms()) < 60_000
    assert w["last_heartbeat_ms"] >= w["registered_at_ms"]


async def test_register_again_updates_labels(api: Api):
    await api.register("w1", ["a"])
    await api.register("w1", ["b", "c"])
    workers = await api.workers()
    assert list(workers) == ["w1"]
    assert workers["w1"]["labels"] == ["b", "c"]


async def test_workers_list_empty(api: Api):
    assert await api.workers() == {}


async def test_register_malformed_json_is_400(api: Api):
    for raw in (b"{", b"worker", b""):
        await assert_error(await api.post("/api/workers/register", raw=raw), 400)
    assert await api.workers() == {}


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"labels": ["x"]}, id="missing-worker_id"),
        pytest.param({"worker_id": 7, "labels": []}, id="worker_id-not-string"),
        pytest.param({"worker_id": "w1", "labels": "docker"}, id="labels-not-list"),
        pytest.param({"worker_id": "w1", "labels": [1]}, id="label-not-string"),
        pytest.param(["w1"], id="body-is-list"),
    ],
)
async def test_register_invalid_is_422(api: Api, body):
    await assert_error(await api.post("/api/workers/register", raw=json.dumps(body).encode()), 422)
    assert await api.workers() == {}


async def test_worker_heartbeat(api: Api, autojump_clock):
    await api.register("w1")
    first = (await api.workers())["w1"]["last_heartbeat_ms"]
    await trio.sleep(5)
    await assert_object(await api.post("/api/workers/w1/heartbeat"))
    w = (await api.workers())["w1"]
    assert w["last_heartbeat_ms"] >= first + 5000
    assert w["registered_at_ms"] <= first


async def test_worker_heartbeat_unknown_is_404(api: Api):
    await assert_error(await api.post("/api/workers/ghost/heartbeat"), 404)
    assert await api.workers() == {}


async def test_workers_busy_with_current_job_then_idle(api: Api):
    wf = await api.create_and_run([job("build")])
    await api.register("w1")
    await api.register("w2")
    claim = await api.claim_job("w1")
    workers = await api.workers()
    assert workers["w1"]["status"] == "busy"
    assert workers["w1"]["current_job"] == "build"
    assert workers["w2"]["status"] == "idle"
    assert workers["w2"]["current_job"] is None
    await api.finish(claim)
    workers = await api.workers()
    assert workers["w1"]["status"] == "idle"
    assert workers["w1"]["current_job"] is None
    assert wf


async def test_worker_goes_offline_after_three_ttls(api: Api, autojump_clock):
    await api.register("w1")
    await trio.sleep(89)
    assert (await api.workers())["w1"]["status"] == "idle"
    await trio.sleep(2)  # 91 s > 3 x 30 s without a word
    assert (await api.workers())["w1"]["status"] == "offline"
    await assert_object(await api.post("/api/workers/w1/heartbeat"))
    assert (await api.workers())["w1"]["status"] == "idle"


# --- claim --------------------------------------------------------------------


async def test_claim_nothing_is_null(api: Api):
    resp = await api.post("/api/jobs/claim", {"worker_id": "w1", "labels": []})
    assert resp.status_code == 200
    assert resp.mimetype == "application/json"
    assert json.loads(await resp.get_data(as_text=True)) is None


async def test_claim_shape(api: Api):
    wf = await api.create_and_run([job("build", "make", required_labels=["linux"], max_retries=2)])
    claim = await api.claim_job("w1", ["linux", "docker"])
    assert set(claim) == {"job", "lease"}
    q, lease = claim["job"], claim["lease"]
    assert set(q) >= QUEUED_JOB_KEYS
    assert q["job_id"] == "build"
    assert q["workflow_id"] == wf
    assert q["command"] == "make"
    assert q["required_labels"] == ["linux"]
    assert q["retry_policy"] == {"max_retries": 2, "backoff": "None"}
    assert q["attempt"] == 0
    assert q["upstream_outputs"] == {}
    assert isinstance(q["enqueued_at_ms"], int)
    assert abs(q["enqueued_at_ms"] - now_epoch_ms()) < 60_000
    assert q["delayed_until_ms"] == 0
    assert set(lease) == LEASE_KEYS
    str(uuid.UUID(lease["lease_id"]))
    assert lease["job_id"] == "build"
    assert lease["workflow_id"] == wf
    assert lease["worker_id"] == "w1"
    assert lease["ttl_secs"] == 30  # the default
    assert abs(lease["granted_at_ms"] - now_epoch_ms()) < 60_000
    assert lease["granted_at_ms"] >= q["enqueued_at_ms"]


async def test_claim_lease_ttl_secs_is_used(api: Api):
    await api.create_and_run([job("a")])
    claim = await api.claim_job("w1", lease_ttl_secs=7)
    assert claim["lease"]["ttl_secs"] == 7


async def test_claim_label_subset_matching(api: Api):
    wf = await api.create_and_run(
        [job("gpu", required_labels=["linux", "gpu"]), job("lin", required_labels=["linux"])]
    )
    assert await api.claim("w0", []) is None
    assert await api.claim("w1", ["gpu"]) is None
    assert await api.claim("w2", ["docker", "mac"]) is None
    claim = await api.claim_job("w3", ["linux", "docker"])
    assert claim["job"]["job_id"] == "lin"
    assert await api.claim("w3", ["linux", "docker"]) is None
    claim = await api.claim_job("w4", ["gpu", "x", "linux"])
    assert claim["job"]["job_id"] == "gpu"
    assert claim["job"]["workflow_id"] == wf


async def test_claim_job_without_labels_goes_to_any_worker(api: Api):
    await api.create_and_run([job("a"), job("b"), job("c")])
    assert (await api.claim_job("w1", []))["job"]["job_id"] == "a"
    assert (await api.claim_job("w2", ["docker"]))["job"]["job_id"] == "b"
    assert (await api.claim_job("w3", ["x", "y", "z"]))["job"]["job_id"] == "c"


async def test_claim_oldest_first(api: Api):
    first = (await api.create([job("x", required_labels=["l"])], name="first"))["id"]
    second = (await api.create([job("y")], name="second"))["id"]
    third = (await api.create([job("z", required_labels=["l", "m"])], name="third"))["id"]
    # Enqueue order is run order, not creation order.
    await api.run(second)
    await api.run(first)
    await api.run(third)
    got = [(await api.claim_job("w", ["l", "m"]))["job"]["workflow_id"] for _ in range(3)]
    assert got == [second, first, third]


async def test_claim_oldest_first_across_label_sets(api: Api):
    a = await api.create_and_run([job("x", required_labels=["gpu"])], name="a")
    b = await api.create_and_run([job("x")], name="b")
    c = await api.create_and_run([job("x", required_labels=["gpu"])], name="c")
    d = await api.create_and_run([job("x")], name="d")
    # A worker without gpu only sees the unlabelled ones, oldest first.
    assert (await api.claim_job("plain"))["job"]["workflow_id"] == b
    # A gpu worker takes the oldest of what remains, whatever its label set.
    assert (await api.claim_job("g", ["gpu"]))["job"]["workflow_id"] == a
    assert (await api.claim_job("g", ["gpu"]))["job"]["workflow_id"] == c
    assert (await api.claim_job("g", ["gpu"]))["job"]["workflow_id"] == d


async def test_concurrent_claims_hand_a_job_out_once(api: Api):
    wf = await api.create_and_run([job("only")])
    results: list = []

    async def claimer(i: int):
        results.append(await api.claim(f"w{i}"))

    async with trio.open_nursery() as nursery:
        for i in range(8):
            nursery.start_soon(claimer, i)
    got = [r for r in results if r is not None]
    assert len(results) == 8 and len(got) == 1
    assert got[0]["job"]["workflow_id"] == wf


async def test_claim_registers_the_worker(api: Api):
    await api.claim("fresh", ["docker"])
    workers = await api.workers()
    assert workers["fresh"]["labels"] == ["docker"]
    assert workers["fresh"]["status"] == "idle"


async def test_claim_refreshes_worker(api: Api, autojump_clock):
    await api.register("w1", ["a"])
    before = (await api.workers())["w1"]["last_heartbeat_ms"]
    await trio.sleep(3)
    await api.claim("w1", ["a", "b"])
    w = (await api.workers())["w1"]
    assert w["last_heartbeat_ms"] >= before + 3000
    assert w["labels"] == ["a", "b"]


async def test_claim_malformed_json_is_400(api: Api):
    await api.create_and_run([job("a")])
    for raw in (b"{", b"[1,", b""):
        await assert_error(await api.post("/api/jobs/claim", raw=raw), 400)
    assert (await api.claim_job())["job"]["job_id"] == "a"  # nothing was taken


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"labels": []}, id="missing-worker_id"),
        pytest.param({"worker_id": 1}, id="worker_id-not-string"),
        pytest.param({"worker_id": "w1", "labels": "docker"}, id="labels-not-list"),
        pytest.param({"worker_id": "w1", "labels": [3]}, id="label-not-string"),
        pytest.param({"worker_id": "w1", "lease_ttl_secs": "30"}, id="ttl-string"),
        pytest.param({"worker_id": "w1", "lease_ttl_secs": 0}, id="ttl-zero"),
        pytest.param({"worker_id": "w1", "lease_ttl_secs": -5}, id="ttl-negative"),
        pytest.param({"worker_id": "w1", "wait_secs": 61}, id="wait_secs-over-60"),
        pytest.param({"worker_id": "w1", "wait_secs": 3600}, id="wait_secs-hour"),
        pytest.param({"worker_id": "w1", "wait_secs": -1}, id="wait_secs-negative"),
        pytest.param(["w1"], id="body-is-list"),
    ],
)
async def test_claim_invalid_is_422(api: Api, body):
    await api.create_and_run([job("a")])
    await assert_error(await api.post("/api/jobs/claim", raw=json.dumps(body).encode()), 422)
    assert (await api.claim_job())["job"]["job_id"] == "a"  # nothing was taken


async def test_claim_wait_secs_parks_until_a_job_arrives(api: Api, autojump_clock):
    wf = (await api.create([job("a")]))["id"]
    result: dict = {}

    async def waiter():
        result["claim"] = await api.claim("w1", wait_secs=30)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.sleep(10)
        assert "claim" not in result
        await api.run(wf)
    assert result["claim"]["job"]["job_id"] == "a"
    assert trio.current_time() < 30


async def test_claim_wait_secs_times_out_with_null(api: Api, autojump_clock):
    start = trio.current_time()
    assert await api.claim("w1", wait_secs=5) is None
    assert trio.current_time() - start == pytest.approx(5, abs=0.5)


# --- lease heartbeat ----------------------------------------------------------


async def test_lease_heartbeat_200_and_renews_granted_at(api: Api, autojump_clock):
    await api.create_and_run([job("a")])
    claim = await api.claim_job("w1", lease_ttl_secs=10)
    lease_id = claim["lease"]["lease_id"]
    granted = claim["lease"]["granted_at_ms"]
    await trio.sleep(4)
    body = await assert_object(await api.heartbeat(lease_id))
    # The server answers the renewed lease; granted_at_ms is when it was last renewed.
    assert body["lease_id"] == lease_id
    assert body["ttl_secs"] == 10
    assert body["granted_at_ms"] >= granted + 4000


async def test_lease_heartbeat_unknown_is_409(api: Api):
    await assert_error(await api.heartbeat("no-such-lease"), 409)
    await assert_error(await api.heartbeat(str(uuid.uuid4())), 409)


async def test_lease_heartbeat_after_complete_is_409(api: Api):
    await api.create_and_run([job("a")])
    claim = await api.claim_job()
    await api.finish(claim)
    await assert_error(await api.heartbeat(claim["lease"]["lease_id"]), 409)


async def test_lease_heartbeat_counts_as_hearing_from_worker(api: Api, autojump_clock):
    await api.create_and_run([job("a")])
    claim = await api.claim_job("w1", lease_ttl_secs=10)
    before = (await api.workers())["w1"]["last_heartbeat_ms"]
    await trio.sleep(5)
    await assert_object(await api.heartbeat(claim["lease"]["lease_id"]))
    assert (await api.workers())["w1"]["last_heartbeat_ms"] >= before + 5000


# --- complete -----------------------------------------------------------------


async def test_complete_200_object_and_success(api: Api):
    wf = await api.create_and_run([job("a")])
    claim = await api.claim_job()
    await assert_object(await api.complete(claim["lease"]["lease_id"], {"k": "v"}))
    a = (await api.jobs(wf))["a"]
    assert a["status"] == "success"
    assert a["output"] is None
    assert isinstance(a["duration_secs"], int)


async def test_complete_outputs_go_to_each_direct_dependent(api: Api):
    wf = await api.create_and_run(
        [
            job("test"),
            job("lint"),
            job("build", depends_on=["test"]),
            job("docs", depends_on=["test", "lint"]),
            job("deploy", depends_on=["build"]),
        ]
    )
    test = await api.claim_job()
    lint = await api.claim_job()
    assert (test["job"]["job_id"], lint["job"]["job_id"]) == ("test", "lint")
    await api.finish(test, {"coverage": "94%", "n": "12"})
    build = await api.claim_job()
    assert build["job"]["job_id"] == "build"
    assert build["job"]["upstream_outputs"] == {"test": {"coverage": "94%", "n": "12"}}
    assert await api.claim() is None  # docs still waits for lint
    await api.finish(lint, {"warnings": "0"})
    docs = await api.claim_job()
    assert docs["job"]["job_id"] == "docs"
    assert docs["job"]["upstream_outputs"] == {
        "test": {"coverage": "94%", "n": "12"},
        "lint": {"warnings": "0"},
    }
    await api.finish(build, {"artifact_url": "s3://bucket/build.tar.gz"})
    deploy = await api.claim_job()
    # Only direct dependencies, keyed by job id.
    assert deploy["job"]["upstream_outputs"] == {
        "build": {"artifact_url": "s3://bucket/build.tar.gz"}
    }
    assert deploy["job"]["workflow_id"] == wf


async def test_complete_without_outputs_gives_empty_upstream(api: Api):
    await api.create_and_run([job("a"), job("b", depends_on=["a"])])
    await api.finish(await api.claim_job())
    b = await api.claim_job()
    assert b["job"]["upstream_outputs"] == {"a": {}}


@pytest.mark.parametrize(
    "outputs",
    [
        {"n": 1},
        {"ok": True},
        {"x": None},
        {"x": ["a"]},
        {"x": {"y": "z"}},
        {"x": 1.5},
        {"good": "s", "bad": 2},
    ],
)
async def test_complete_non_string_output_is_422(api: Api, outputs):
    wf = await api.create_and_run([job("a")])
    claim = await api.claim_job()
    lease_id = claim["lease"]["lease_id"]
    await assert_error(await api.complete(lease_id, outputs), 422)
    # A bad request changes nothing: the job still runs under its lease.
    assert (await api.statuses(wf)) == {"a": "running"}
    await assert_object(await api.heartbeat(lease_id))
    await assert_object(await api.complete(lease_id, {"n": "1"}))


async def test_complete_outputs_not_object_is_422(api: Api):
    await api.create_and_run([job("a")])
    lease_id = (await api.claim_job())["lease"]["lease_id"]
    for body in ({"outputs": ["a"]}, {"outputs": "a"}, [1]):
        await assert_error(await api.post(f"/api/jobs/{lease_id}/complete", body), 422)


async def test_complete_malformed_json_is_400(api: Api):
    await api.create_and_run([job("a")])
    lease_id = (await api.claim_job())["lease"]["lease_id"]
    await assert_error(await api.post(f"/api/jobs/{lease_id}/complete", raw=b"{oops"), 400)
    await assert_object(await api.heartbeat(lease_id))


async def test_complete_unknown_lease_is_409(api: Api):
    await assert_error(await api.complete("no-such-lease", {"a": "b"}), 409)


async def test_second_complete_is_409(api: Api):
    wf = await api.create_and_run([job("a"), job("b", depends_on=["a"])])
    claim = await api.claim_job()
    await api.finish(claim, {"v": "1"})
    await assert_error(await api.complete(claim["lease"]["lease_id"], {"v": "2"}), 409)
    await assert_error(await api.fail(claim["lease"]["lease_id"]), 409)
    b = await api.claim_job()
    assert b["job"]["upstream_outputs"] == {"a": {"v": "1"}}
    assert await api.claim() is None  # b was enqueued once
    assert (await api.statuses(wf))["a"] == "success"


# --- fail ---------------------------------------------------------------------


async def test_fail_not_retryable_fails_and_skips_transitive_dependents(api: Api):
    wf = await api.create_and_run(
        [
            job("a", max_retries=3),
            job("b", depends_on=["a"]),
            job("c", depends_on=["b"]),
            job("d", depends_on=["a", "e"]),
            job("e"),
            job("f", depends_on=["e"]),
        ]
    )
    a = await api.claim_job()
    assert a["job"]["job_id"] == "a"
    body = await assert_object(await api.fail(a["lease"]["lease_id"], "exit code 1: no"))
    assert isinstance(body, dict)
    jobs = await api.jobs(wf)
    assert jobs["a"]["status"] == "failure"
    assert jobs["a"]["output"] == "exit code 1: no"
    assert jobs["a"]["attempt"] == 0
    assert isinstance(jobs["a"]["duration_secs"], int)
    for skipped in "bcd":
        assert jobs[skipped]["status"] == "skipped", skipped
        assert jobs[skipped]["output"] is None
    assert jobs["e"]["status"] == "queued" and jobs["f"]["status"] == "queued"
    e = await api.claim_job()
    assert e["job"]["job_id"] == "e"
    await api.finish(e)
    assert (await api.claim_job())["job"]["job_id"] == "f"  # d stays skipped
    assert await api.claim() is None
    assert (await api.statuses(wf))["d"] == "skipped"


async def test_fail_retryable_defaults_to_false(api: Api):
    wf = await api.create_and_run([job("a", max_retries=3)])
    claim = await api.claim_job()
    await assert_object(await api.fail(claim["lease"]["lease_id"], "err"))
    a = (await api.jobs(wf))["a"]
    assert a["status"] == "failure" and a["output"] == "err" and a["attempt"] == 0
    assert await api.claim() is None


async def test_fail_retryable_within_budget_requeues_with_next_attempt(api: Api):
    wf = await api.create_and_run([job("a", max_retries=2), job("b", depends_on=["a"])])
    first = await api.claim_job()
    await assert_object(await api.fail(first["lease"]["lease_id"], "flaky", retryable=True))
    jobs = await api.jobs(wf)
    assert jobs["a"]["status"] == "queued"
    assert jobs["a"]["attempt"] == 1
    assert jobs["a"]["output"] is None
    assert jobs["b"]["status"] == "queued"
    # The old lease is over.
    await assert_error(await api.heartbeat(first["lease"]["lease_id"]), 409)
    second = await api.claim_job()
    assert second["job"]["job_id"] == "a"
    assert second["job"]["attempt"] == 1
    assert second["job"]["delayed_until_ms"] == 0  # backoff "None"
    assert second["lease"]["lease_id"] != first["lease"]["lease_id"]
    await assert_object(await api.fail(second["lease"]["lease_id"], "flaky", retryable=True))
    third = await api.claim_job()
    assert third["job"]["attempt"] == 2
    assert (await api.jobs(wf))["a"]["attempt"] == 2
    # Budget exhausted: a retryable failure is now final.
    await assert_object(await api.fail(third["lease"]["lease_id"], "still flaky", retryable=True))
    jobs = await api.jobs(wf)
    assert jobs["a"]["status"] == "failure"
    assert jobs["a"]["output"] == "still flaky"
    assert jobs["a"]["attempt"] == 2
    assert jobs["b"]["status"] == "skipped"
    assert await api.claim() is None


async def test_fail_retryable_without_budget_fails(api: Api):
    wf = await api.create_and_run([job("a"), job("b", depends_on=["a"])])
    claim = await api.claim_job()
    await assert_object(await api.fail(claim["lease"]["lease_id"], "nope", retryable=True))
    assert await api.statuses(wf) == {"a": "failure", "b": "skipped"}
    assert (await api.jobs(wf))["a"]["output"] == "nope"


async def test_fail_success_after_retry_cascades(api: Api):
    await api.create_and_run([job("a", max_retries=1), job("b", depends_on=["a"])])
    first = await api.claim_job()
    await assert_object(await api.fail(first["lease"]["lease_id"], "x", retryable=True))
    await api.finish(await api.claim_job(), {"o": "k"})
    b = await api.claim_job()
    assert b["job"]["job_id"] == "b"
    assert b["job"]["attempt"] == 0
    assert b["job"]["upstream_outputs"] == {"a": {"o": "k"}}


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({}, id="missing-error"),
        pytest.param({"retryable": True}, id="missing-error-with-retryable"),
        pytest.param({"error": 1}, id="error-not-string"),
        pytest.param({"error": "x", "retryable": "yes"}, id="retryable-string"),
        pytest.param({"error": "x", "retryable": 1}, id="retryable-int"),
        pytest.param(["x"], id="body-is-list"),
    ],
)
async def test_fail_invalid_is_422(api: Api, body):
    wf = await api.create_and_run([job("a")])
    lease_id = (await api.claim_job())["lease"]["lease_id"]
    await assert_error(await api.post(f"/api/jobs/{lease_id}/fail", body), 422)
    assert await api.statuses(wf) == {"a": "running"}
    await assert_object(await api.heartbeat(lease_id))


async def test_fail_malformed_json_is_400(api: Api):
    await api.create_and_run([job("a")])
    lease_id = (await api.claim_job())["lease"]["lease_id"]
    for raw in (b"{", b"", b"error"):
        await assert_error(await api.post(f"/api/jobs/{lease_id}/fail", raw=raw), 400)
    await assert_object(await api.heartbeat(lease_id))


async def test_fail_unknown_lease_is_409(api: Api):
    await assert_error(await api.fail("no-such-lease", "x"), 409)


async def test_second_fail_is_409(api: Api):
    wf = await api.create_and_run([job("a", max_retries=5)])
    claim = await api.claim_job()
    await assert_object(await api.fail(claim["lease"]["lease_id"], "x", retryable=True))
    await assert_error(await api.fail(claim["lease"]["lease_id"], "y", retryable=True), 409)
    await assert_error(await api.complete(claim["lease"]["lease_id"]), 409)
    assert (await api.jobs(wf))["a"]["attempt"] == 1


# --- dependents' own labels and retry policy ----------------------------------


async def test_dependents_keep_their_own_labels_and_retry_policy(api: Api):
    await api.create_and_run(
        [
            job("build", required_labels=["linux"], max_retries=0),
            job(
                "deploy",
                "./deploy.sh",
                depends_on=["build"],
                required_labels=["prod"],
                max_retries=3,
                backoff={"Fixed": {"delay_secs": 5}},
            ),
            job("notify", depends_on=["build"]),
        ]
    )
    build = await api.claim_job("builder", ["linux"])
    assert build["job"]["required_labels"] == ["linux"]
    await api.finish(build, {"sha": "abc"})
    # The linux worker may not take deploy: it needs "prod", not build's labels.
    notify = await api.claim_job("builder", ["linux"])
    assert notify["job"]["job_id"] == "notify"
    assert notify["job"]["required_labels"] == []
    assert notify["job"]["retry_policy"] == {"max_retries": 0, "backoff": "None"}
    assert await api.claim("builder", ["linux"]) is None
    deploy = await api.claim_job("deployer", ["prod"])
    q = deploy["job"]
    assert q["job_id"] == "deploy"
    assert q["command"] == "./deploy.sh"
    assert q["required_labels"] == ["prod"]
    assert q["retry_policy"] == {"max_retries": 3, "backoff": {"Fixed": {"delay_secs": 5}}}
    assert q["upstream_outputs"] == {"build": {"sha": "abc"}}


# --- logs ---------------------------------------------------------------------


async def test_logs_push_and_get_in_order(api: Api):
    wf = await api.create_and_run([job("a")])
    lease_id = (await api.claim_job())["lease"]["lease_id"]
    assert await api.logs(wf, "a") == []
    await assert_object(await api.push(lease_id, [chunk(0, "one\n"), chunk(1, "two\n")]))
    await assert_object(await api.push(lease_id, [chunk(2, "three\n")]))
    logs = await api.logs(wf, "a")
    assert [c["sequence"] for c in logs] == [0, 1, 2]
    assert [c["data"] for c in logs] == ["one\n", "two\n", "three\n"]
    for c in logs:
        assert set(c) == LOG_CHUNK_KEYS
        assert c["workflow_id"] == wf and c["job_id"] == "a"
        assert c["timestamp_ms"] == 1_700_000_000_000
        assert c["stream"] == "stdout"


async def test_logs_push_accepts_full_log_chunks_with_stream(api: Api):
    """Workers push whole LogChunks, `stream` included (stdout or stderr)."""
    wf = await api.create_and_run([job("a")])
    lease_id = (await api.claim_job())["lease"]["lease_id"]
    chunks = [
        {**chunk(0, "out\n"), "workflow_id": wf, "job_id": "a", "stream": "stdout"},
        {**chunk(1, "err\n"), "workflow_id": wf, "job_id": "a", "stream": "stderr"},
    ]
    await assert_object(await api.push(lease_id, chunks))
    logs = await api.logs(wf, "a")
    assert [(c["sequence"], c["data"], c["stream"]) for c in logs] == [
        (0, "out\n", "stdout"),
        (1, "err\n", "stderr"),
    ]


async def test_logs_chunks_belong_to_the_lease_job(api: Api):
    wf = await api.create_and_run([job("a"), job("b")])
    other = await api.create_and_run([job("a")], name="other")
    lease_a = (await api.claim_job())["lease"]["lease_id"]
    lease_b = (await api.claim_job())["lease"]["lease_id"]
    await assert_object(
        await api.push(lease_a, [chunk(0, "mine\n", workflow_id=other, job_id="b")])
    )
    await assert_object(await api.push(lease_b, [chunk(0, "b\n", workflow_id="nope", job_id="x")]))
    logs_a = await api.logs(wf, "a")
    assert [(c["workflow_id"], c["job_id"], c["data"]) for c in logs_a] == [(wf, "a", "mine\n")]
    logs_b = await api.logs(wf, "b")
    assert [(c["workflow_id"], c["job_id"], c["data"]) for c in logs_b] == [(wf, "b", "b\n")]
    assert await api.logs(other, "a") == []


async def test_logs_push_unknown_lease_is_409(api: Api):
    await assert_error(await api.push("no-such-lease", [chunk(0, "x")]), 409)


async def test_logs_push_after_complete_is_409(api: Api):
    wf = await api.create_and_run([job("a")])
    claim = await api.claim_job()
    await api.finish(claim)
    await assert_error(await api.push(claim["lease"]["lease_id"], [chunk(0, "late\n")]), 409)
    assert await api.logs(wf, "a") == []


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({}, id="missing-chunks"),
        pytest.param({"chunks": "x"}, id="chunks-not-list"),
        pytest.param({"chunks": [{"data": "x"}]}, id="missing-sequence"),
        pytest.param({"chunks": [{"sequence": 0}]}, id="missing-data"),
        pytest.param({"chunks": [{"sequence": "0", "data": "x"}]}, id="sequence-string"),
        pytest.param({"chunks": [{"sequence": 0, "data": 5}]}, id="data-not-string"),
        pytest.param({"chunks": [{"sequence": 0, "data": "x", "stream": "log"}]}, id="bad-stream"),
    ],
)
async def test_logs_push_invalid_is_422(api: Api, body):
    wf = await api.create_and_run([job("a")])
    lease_id = (await api.claim_job())["lease"]["lease_id"]
    await assert_error(await api.post(f"/api/jobs/{lease_id}/logs", body), 422)
    assert await api.logs(wf, "a") == []


async def test_logs_push_malformed_json_is_400(api: Api):
    await api.create_and_run([job("a")])
    lease_id = (await api.claim_job())["lease"]["lease_id"]
    await assert_error(await api.post(f"/api/jobs/{lease_id}/logs", raw=b'{"chunks": ['), 400)


async def test_logs_push_over_body_limit_is_413():
    async with serve(max_body_bytes=512) as api:
        wf = await api.create_and_run([job("a")])
        lease_id = (await api.claim_job())["lease"]["lease_id"]
        msg = await assert_error(await api.push(lease_id, [chunk(0, "x" * 1000)]), 413)
        assert "max_body_bytes" in msg or "limit" in msg
        assert await api.logs(wf, "a") == []
        # Under the limit is fine, and the lease is untouched.
        await assert_object(await api.push(lease_id, [chunk(0, "small\n")]))
        assert [c["data"] for c in await api.logs(wf, "a")] == ["small\n"]


async def test_logs_get_unknown_is_404(api: Api):
    wf = (await api.create([job("a")]))["id"]
    await assert_error(await api.get("/api/workflows/nope/jobs/a/logs"), 404)
    await assert_error(await api.get(f"/api/workflows/{wf}/jobs/nope/logs"), 404)
    assert await api.logs(wf, "a") == []  # never ran: empty, not 404


async def test_logs_stream_unknown_is_404(api: Api):
    wf = (await api.create([job("a")]))["id"]
    await assert_error(await api.get("/api/workflows/nope/jobs/a/logs/stream"), 404)
    await assert_error(await api.get(f"/api/workflows/{wf}/jobs/nope/logs/stream"), 404)


# --- request body limit -------------------------------------------------------


async def test_body_over_limit_is_413_everywhere():
    async with serve(max_body_bytes=256) as api:
        big = {"name": "x" * 400, "jobs": [job("a")]}
        await assert_error(await api.post("/api/workflows", big), 413)
        assert await api.workflows() == []
        await assert_error(
            await api.post("/api/workers/register", {"worker_id": "w", "labels": ["l" * 300]}),
            413,
        )
        await assert_error(await api.post("/api/jobs/claim", {"worker_id": "w" * 300}), 413)
        # Under the limit the same endpoints work.
        await api.create([job("a")])


async def test_default_body_limit_is_1_mib(api: Api):
    wf = await api.create_and_run([job("a")])
    lease_id = (await api.claim_job())["lease"]["lease_id"]
    await assert_object(await api.push(lease_id, [chunk(0, "x" * (1024 * 1024 - 200))]))
    await assert_error(await api.push(lease_id, [chunk(1, "x" * (1024 * 1024 + 10))]), 413)
    assert [c["sequence"] for c in await api.logs(wf, "a")] == [0]


# --- error order --------------------------------------------------------------


async def test_error_order_422_before_409(api: Api):
    # A body that parses but is invalid, sent to an unknown lease: 422, not 409.
    await assert_error(await api.complete("no-such-lease", {"n": 1}), 422)
    await assert_error(await api.post("/api/jobs/no-such-lease/fail", {"retryable": True}), 422)
    await assert_error(await api.post("/api/jobs/no-such-lease/logs", {"chunks": 3}), 422)


async def test_error_order_400_before_409(api: Api):
    for action in ("complete", "fail", "logs"):
        resp = await api.post(f"/api/jobs/no-such-lease/{action}", raw=b"{not json")
        await assert_error(resp, 400)


async def test_error_order_400_before_422(api: Api):
    # Malformed JSON that would also be invalid is 400.
    await assert_error(await api.post("/api/workflows", raw=b'{"jobs": [{"id": 1}'), 400)
    await assert_error(await api.post("/api/jobs/claim", raw=b'{"wait_secs": 999'), 400)


async def test_error_order_413_first():
    async with serve(max_body_bytes=64) as api:
        big_invalid = b"{" + b"x" * 200  # too large and malformed
        await assert_error(await api.post("/api/workflows", raw=big_invalid), 413)
        # Too large, and the lease is unknown.
        big = {"chunks": [chunk(0, "y" * 200)]}
        await assert_error(await api.post("/api/jobs/no-such-lease/logs", big), 413)
        await assert_error(await api.post("/api/jobs/no-such-lease/complete", raw=big_invalid), 413)
        # Too large and invalid.
        await assert_error(
            await api.post(
                "/api/jobs/no-such-lease/complete", {"outputs": {"n": 1, "p": "z" * 99}}
            ),
            413,
        )


async def test_error_order_422_before_409_on_a_reported_lease(api: Api):
    await api.create_and_run([job("a")])
    claim = await api.claim_job()
    await api.finish(claim)
    lease_id = claim["lease"]["lease_id"]
    await assert_error(await api.complete(lease_id, {"n": 2}), 422)
    await assert_error(await api.complete(lease_id, {"n": "2"}), 409)


# --- generic HTTP behaviour ---------------------------------------------------


@pytest.mark.parametrize(
    "method, path",
    [
        ("GET", "/nope"),
        ("GET", "/api"),
        ("GET", "/api/workflow"),
        ("POST", "/api/workflows/x/y/z"),
        ("GET", "/api/jobs/x"),
    ],
)
async def test_unknown_route_is_404_json(api: Api, method, path):
    resp = await api.client.open(path, method=method)
    await assert_error(resp, 404)


@pytest.mark.parametrize(
    "method, path",
    [
        ("GET", "/api/jobs/claim"),
        ("DELETE", "/api/workflows"),
        ("GET", "/api/workflows/x/run"),
        ("PUT", "/api/workers/register"),
    ],
)
async def test_wrong_method_is_json_error(api: Api, method, path):
    resp = await api.client.open(path, method=method)
    assert 400 <= resp.status_code < 500
    await assert_error(resp, resp.status_code)


async def test_unshaped_answers_are_json_objects(api: Api):
    wf = await api.create_and_run([job("a", max_retries=1), job("b")])
    await assert_object(await api.post("/api/workers/register", {"worker_id": "w1"}))
    await assert_object(await api.post("/api/workers/w1/heartbeat"))
    first = await api.claim_job("w1")
    second = await api.claim_job("w1")
    await assert_object(await api.heartbeat(first["lease"]["lease_id"]))
    await assert_object(await api.push(first["lease"]["lease_id"], [chunk(0, "x")]))
    await assert_object(await api.fail(first["lease"]["lease_id"], "x", retryable=True))
    await assert_object(await api.complete(second["lease"]["lease_id"]))
    await assert_object(await api.post(f"/api/workflows/{wf}/cancel"), 202)
    await assert_object(await api.post(f"/api/workflows/{wf}/run"), 202)


def _normalize(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "{}", path)


CONTRACT_ROUTES = [
    ("get", "/api/workflows"),
    ("post", "/api/workflows"),
    ("get", "/api/workflows/{id}/status"),
    ("post", "/api/workflows/{id}/run"),
    ("post", "/api/workflows/{id}/cancel"),
    ("post", "/api/workers/register"),
    ("get", "/api/workers"),
    ("post", "/api/workers/{id}/heartbeat"),
    ("post", "/api/jobs/claim"),
    ("post", "/api/jobs/{lease_id}/heartbeat"),
    ("post", "/api/jobs/{lease_id}/complete"),
    ("post", "/api/jobs/{lease_id}/fail"),
    ("post", "/api/jobs/{lease_id}/logs"),
    ("get", "/api/jobs/{wf_id}/{job_id}/cancelled"),
    ("get", "/api/workflows/{wf_id}/jobs/{job_id}/logs"),
    ("get", "/api/workflows/{wf_id}/jobs/{job_id}/logs/stream"),
]


async def test_openapi_lists_every_contract_route(api: Api):
    resp = await api.get("/openapi.json")
    assert resp.status_code == 200
    doc = await resp.get_json()
    assert "openapi" in doc
    documented = {
        (method.lower(), _normalize(path))
        for path, ops in doc["paths"].items()
        for method in ops
        if method.lower() in {"get", "post", "put", "patch", "delete"}
    }
    missing = {(m, _normalize(p)) for m, p in CONTRACT_ROUTES} - documented
    assert not missing, missing


# --- CORS ---------------------------------------------------------------------


async def test_cors_permissive_by_default(api: Api):
    resp = await api.client.options(
        "/api/workflows",
        headers={
            "Origin": "https://anywhere.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert resp.status_code in (200, 204)
    assert resp.headers.get("Access-Control-Allow-Origin") in ("*", "https://anywhere.example")
    resp = await api.get("/api/workflows", headers={"Origin": "https://other.example"})
    assert resp.status_code == 200
    assert resp.headers.get("Access-Control-Allow-Origin") in ("*", "https://other.example")


async def test_cors_allow_list():
    async with serve(cors_origins=["https://a.example"]) as api:
        preflight = {"Access-Control-Request-Method": "POST"}
        resp = await api.client.options(
            "/api/jobs/claim", headers={"Origin": "https://a.example", **preflight}
        )
        assert resp.headers.get("Access-Control-Allow-Origin") == "https://a.example"
        resp = await api.client.options(
            "/api/jobs/claim", headers={"Origin": "https://b.example", **preflight}
        )
        assert "Access-Control-Allow-Origin" not in resp.headers
        resp = await api.get("/api/workflows", headers={"Origin": "https://a.example"})
        assert resp.headers.get("Access-Control-Allow-Origin") == "https://a.example"
        resp = await api.get("/api/workflows", headers={"Origin": "https://b.example"})
        assert resp.status_code == 200
        assert "Access-Control-Allow-Origin" not in resp.headers


async def test_body_over_limit_without_content_length_is_413():
    """A body streamed without Content-Length is refused once it passes the limit."""
    async with serve(max_body_bytes=512) as api:
        body = json.dumps({"name": "x" * 2000, "jobs": [job("a")]}).encode()
        with trio.fail_after(10):
            async with api.client.request(
                "/api/workflows", method="POST", headers={"Content-Type": "application/json"}
            ) as conn:
                for i in range(0, len(body), 256):
                    await conn.send(body[i : i + 256])
                await conn.send_complete()
                data = b""
                try:
                    while True:
                        data += await conn.receive()
                except trio.EndOfChannel:
                    pass
        assert conn.status_code == 413, data
        error = json.loads(data)
        assert set(error) == {"error"} and isinstance(error["error"], str)
        assert await api.workflows() == []


async def test_body_over_limit_on_bodiless_endpoint_is_413():
    """413 is checked first, even where no body is expected (as a real client sends it)."""
    async with serve(max_body_bytes=64) as api:
        wf = (await api.create([job("a")], name="n"))["id"]
        big = {"raw": b"x" * 200, "headers": {"Content-Length": "200"}}
        await assert_error(await api.post(f"/api/workflows/{wf}/run", **big), 413)
        assert await api.statuses(wf) == {"a": "queued"}
        await assert_error(await api.post("/api/workflows/nope/run", **big), 413)
        await assert_error(await api.post("/api/jobs/no-such-lease/heartbeat", **big), 413)
