"""Runs as records over HTTP: history, re-runs, inputs and concurrency groups.

In-process (the Quart-Trio test client over a real `Runtime`); durability
across a restart uses a real store in a temporary directory.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Set
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from homes import HOMES, Home, make_home
from test_http_api import Api, assert_error, assert_object, job

from web.app import create_app

RUN_KEYS = {
    "workflow_id",
    "number",
    "status",
    "trigger",
    "inputs",
    "created_at_ms",
    "started_at_ms",
    "finished_at_ms",
    "rerun_of",
    "jobs",
}


class RunsApi(Api):
    async def start(self, wf: str, body: Any = None) -> dict:
        resp = await self.post(f"/api/workflows/{wf}/run", body)
        answer = await assert_object(resp, 202)
        assert set(answer) == {"workflow_id", "number", "status"}, answer
        return answer

    async def runs(self, wf: str, query: str = "") -> list[dict]:
        resp = await self.get(f"/api/workflows/{wf}/runs{query}")
        body = await resp.get_json()
        assert resp.status_code == 200, body
        return body

    async def run_record(self, wf: str, number: int) -> dict:
        resp = await self.get(f"/api/workflows/{wf}/runs/{number}")
        body = await resp.get_json()
        assert resp.status_code == 200, body
        assert RUN_KEYS <= set(body), body
        return body

    async def rerun(self, wf: str, number: int, failed_only: bool | None = None) -> dict:
        body = None if failed_only is None else {"failed_only": failed_only}
        resp = await self.post(f"/api/workflows/{wf}/runs/{number}/rerun", body)
        return await assert_object(resp, 202)

    async def run_logs(self, wf: str, number: int, job_id: str) -> list[dict]:
        resp = await self.get(f"/api/workflows/{wf}/runs/{number}/jobs/{job_id}/logs")
        body = await resp.get_json()
        assert resp.status_code == 200, body
        return body

    async def finish_all(self, *, fail: Set[str] = frozenset(), outputs=None) -> list[str]:
        """Claim and finish jobs until none is claimable; returns the ids in claim order."""
        done = []
        while (claim := await self.claim()) is not None:
            job_id = claim["job"]["job_id"]
            lease = claim["lease"]["lease_id"]
            if job_id in fail:
                await assert_object(await self.fail(lease, f"{job_id} failed"))
            else:
                out = (outputs or {}).get(job_id, {})
                await assert_object(await self.complete(lease, out))
            done.append(job_id)
        return done


@asynccontextmanager
async def serve_runs(home: Home, **runtime_kwargs: Any) -> AsyncIterator[RunsApi]:
    async with home.open(**runtime_kwargs) as runtime:
        app = create_app(runtime)
        async with app.test_app() as test_app:
            yield RunsApi(test_app.test_client(), runtime)


@pytest.fixture(params=HOMES)
def home(request):
    yield from make_home(request, request.param)


@pytest.fixture
async def api(home: Home) -> AsyncIterator[RunsApi]:
    async with serve_runs(home) as a:
        yield a


def by_id(record: dict) -> dict[str, dict]:
    return {j["id"]: j for j in record["jobs"]}


# --- runs are records ------------------------------------------------------------


async def test_each_run_gets_the_next_number_and_history_lists_newest_first(api: RunsApi):
    wf = (await api.create([job("a")]))["id"]
    status = await api.status(wf)
    assert status["run"] is None  # never ran
    assert await api.runs(wf) == []
    for expected in (1, 2, 3):
        answer = await api.start(wf)
        assert answer == {"workflow_id": wf, "number": expected, "status": "running"}
        assert (await api.status(wf))["run"] == {"number": expected, "status": "running"}
        await api.finish_all()
        assert (await api.status(wf))["run"] == {"number": expected, "status": "success"}
    runs = await api.runs(wf)
    assert [r["number"] for r in runs] == [3, 2, 1]
    for record in runs:
        assert RUN_KEYS <= set(record)
        assert record["status"] == "success" and record["trigger"] == "manual"
        assert record["inputs"] == {} and record["rerun_of"] is None
        assert record["created_at_ms"] <= record["started_at_ms"] <= record["finished_at_ms"]
        assert [j["status"] for j in record["jobs"]] == ["success"]
    assert [r["number"] for r in await api.runs(wf, "?limit=1&offset=1")] == [2]
    assert await api.runs(wf, "?offset=5") == []


async def test_a_second_run_while_one_is_active_is_refused_and_creates_nothing(api: RunsApi):
    wf = (await api.create([job("a")]))["id"]
    await api.start(wf)
    await assert_error(await api.post(f"/api/workflows/{wf}/run"), 409)
    assert [r["number"] for r in await api.runs(wf)] == [1]
    await api.finish_all()
    assert (await api.start(wf))["number"] == 2  # the refused request used no number


async def test_runs_query_and_unknown_ids(api: RunsApi):
    wf = (await api.create([job("a")]))["id"]
    for bad in ("?limit=x", "?offset=-1", "?limit=1.5"):
        await assert_error(await api.get(f"/api/workflows/{wf}/runs{bad}"), 400)
    await assert_error(await api.get("/api/workflows/nope/runs"), 404)
    await assert_error(await api.get(f"/api/workflows/{wf}/runs/1"), 404)
    await assert_error(await api.get(f"/api/workflows/{wf}/runs/abc"), 400)
    await assert_error(await api.get(f"/api/workflows/{wf}/runs/0"), 400)
    await assert_error(await api.get(f"/api/workflows/{wf}/runs/1/jobs/a/logs"), 404)
    await api.start(wf)
    await assert_error(await api.get(f"/api/workflows/{wf}/runs/1/jobs/zz/logs"), 404)
    await assert_error(await api.post(f"/api/workflows/{wf}/runs/9/rerun"), 404)


async def test_limit_defaults_to_20_and_is_capped(api: RunsApi):
    wf = (await api.create([job("a")]))["id"]
    for _ in range(25):
        await api.start(wf)
        await api.finish_all()
    assert len(await api.runs(wf)) == 20
    assert len(await api.runs(wf, "?limit=5000")) == 25


async def test_pruned_runs_are_404_saying_so(home: Home):
    async with serve_runs(home, retain_runs=2) as api:
        wf = (await api.create([job("a")]))["id"]
        for _ in range(3):
            await api.start(wf)
            await api.finish_all()
        if home.postgres:  # pruning is the leader's duty there: do it now
            await api.runtime.run_duties()
        assert [r["number"] for r in await api.runs(wf)] == [3, 2]
        message = await assert_error(await api.get(f"/api/workflows/{wf}/runs/1"), 404)
        assert "pruned" in message
        message = await assert_error(await api.get(f"/api/workflows/{wf}/runs/4"), 404)
        assert "pruned" not in message and "no run 4" in message


async def test_a_lease_of_an_old_run_never_changes_a_newer_run(api: RunsApi, autojump_clock):
    wf = (await api.create([job("a", max_retries=1)]))["id"]
    await api.start(wf)
    old = await api.claim_job()
    await api.cancel(wf)
    await api.start(wf)
    for call in (
        api.complete(old["lease"]["lease_id"]),
        api.fail(old["lease"]["lease_id"], retryable=True),
        api.heartbeat(old["lease"]["lease_id"]),
    ):
        await assert_error(await call, 409)
    run2 = await api.run_record(wf, 2)
    assert by_id(run2)["a"]["status"] == "queued" and by_id(run2)["a"]["attempt"] == 0
    assert by_id(await api.run_record(wf, 1))["a"]["status"] == "cancelled"


async def test_logs_belong_to_their_run(api: RunsApi):
    wf = (await api.create([job("a")]))["id"]
    for text in ("first\n", "second\n"):
        await api.start(wf)
        claim = await api.claim_job()
        await assert_object(await api.push(claim["lease"]["lease_id"], [_chunk(text)]))
        await api.finish(claim)
    assert [c["data"] for c in await api.run_logs(wf, 1, "a")] == ["first\n"]
    assert [c["data"] for c in await api.run_logs(wf, 2, "a")] == ["second\n"]
    assert [c["data"] for c in await api.logs(wf, "a")] == ["second\n"]  # the latest run


def _chunk(data: str, sequence: int = 0) -> dict:
    return {"sequence": sequence, "data": data, "stream": "stdout"}


# --- inputs ----------------------------------------------------------------------

INPUTS = {
    "env_name": {"type": "choice", "options": ["staging", "prod"], "default": "staging"},
    "dry-run": {"type": "boolean", "default": True},
    "replicas": {"type": "number", "required": True},
    "note": {"type": "string"},
}


async def test_inputs_are_validated_defaulted_and_reach_the_job(api: RunsApi):
    wf = (await api.create([job("a", "echo $INPUT_ENV_NAME")], inputs=INPUTS))["id"]
    answer = await api.start(wf, {"inputs": {"replicas": 3, "note": "hi"}})
    assert answer["number"] == 1
    record = await api.run_record(wf, 1)
    assert record["inputs"] == {"env_name": "staging", "dry-run": True, "replicas": 3, "note": "hi"}
    claim = await api.claim_job()
    command = claim["job"]["command"]
    assert "export INPUT_ENV_NAME=staging" in command
    assert "export INPUT_DRY_RUN=true" in command
    assert "export INPUT_REPLICAS=3" in command
    assert "export INPUT_NOTE=hi" in command
    await api.finish(claim)
    # Strings a command line sends are read as their declared type.
    await api.start(wf, {"inputs": {"replicas": "2", "dry-run": "false", "env_name": "prod"}})
    assert (await api.run_record(wf, 2))["inputs"]["dry-run"] is False


@pytest.mark.parametrize(
    ("inputs", "named"),
    [
        ({"replicas": 1, "bogus": 1}, "bogus"),
        ({}, "replicas"),
        ({"replicas": "many"}, "replicas"),
        ({"replicas": 1, "env_name": "qa"}, "env_name"),
        ({"replicas": 1, "dry-run": "yes"}, "dry-run"),
        ({"replicas": 1, "note": 5}, "note"),
        ({"replicas": True}, "replicas"),
    ],
)
async def test_a_bad_input_is_422_naming_it_and_creates_no_run(api: RunsApi, inputs, named):
    wf = (await api.create([job("a")], inputs=INPUTS))["id"]
    resp = await api.post(f"/api/workflows/{wf}/run", {"inputs": inputs})
    assert named in await assert_error(resp, 422)
    assert await api.runs(wf) == []
    assert await api.claim() is None


async def test_run_body_shapes(api: RunsApi):
    wf = (await api.create([job("a")]))["id"]
    await assert_error(await api.post(f"/api/workflows/{wf}/run", raw=b"{nope"), 400)
    await assert_error(await api.post(f"/api/workflows/{wf}/run", {"inputs": []}), 422)
    await assert_error(await api.post(f"/api/workflows/{wf}/run", {"inputs": {"x": 1}}), 422)
    assert await api.runs(wf) == []
    assert (await api.start(wf, {}))["number"] == 1


async def test_a_bad_input_declaration_is_refused_at_create(api: RunsApi):
    inputs: dict
    for inputs in (
        {"x": {"type": "choice"}},
        {"x": {"type": "number", "default": "many"}},
        {"x": {"type": "choice", "options": ["a"], "default": "b"}},
        {"bad name": {}},
    ):
        resp = await api.post("/api/workflows", {"name": "w", "jobs": [job("a")], "inputs": inputs})
        await assert_error(resp, 422)


# --- re-runs ---------------------------------------------------------------------

DIAMOND = [
    job("a"),
    job("b", depends_on=["a"]),
    job("c", depends_on=["a"]),
    job("d", depends_on=["b", "c"]),
]


async def test_rerun_failed_only_keeps_successes_and_runs_the_rest(api: RunsApi):
    wf = (await api.create(DIAMOND))["id"]
    await api.start(wf)
    order = await api.finish_all(fail={"b"}, outputs={"a": {"artifact": "a1"}, "c": {"n": "3"}})
    assert set(order) == {"a", "b", "c"}
    first = await api.run_record(wf, 1)
    assert first["status"] == "failure"
    assert by_id(first)["d"]["status"] == "skipped"

    answer = await api.rerun(wf, 1, failed_only=True)
    assert answer == {"workflow_id": wf, "number": 2, "status": "running"}
    second = await api.run_record(wf, 2)
    assert second["trigger"] == "rerun" and second["rerun_of"] == 1
    jobs = by_id(second)
    assert jobs["a"]["status"] == "success" and jobs["c"]["status"] == "success"
    assert jobs["a"]["duration_secs"] == by_id(first)["a"]["duration_secs"]
    claim = await api.claim_job()
    assert claim["job"]["job_id"] == "b"  # a is not claimed again
    assert claim["job"]["upstream_outputs"] == {"a": {"artifact": "a1"}}
    await api.finish(claim)
    claim = await api.claim_job()
    assert claim["job"]["job_id"] == "d"
    assert claim["job"]["upstream_outputs"] == {"b": {}, "c": {"n": "3"}}
    await api.finish(claim)
    assert await api.claim() is None
    final = await api.run_record(wf, 2)
    assert final["status"] == "success"
    assert {j["id"]: j["status"] for j in final["jobs"]} == dict.fromkeys("abcd", "success")


async def test_rerun_carries_the_logs_of_kept_jobs(api: RunsApi):
    wf = (await api.create([job("a"), job("b", depends_on=["a"])]))["id"]
    await api.start(wf)
    claim = await api.claim_job()
    await assert_object(await api.push(claim["lease"]["lease_id"], [_chunk("built\n")]))
    await api.finish(claim)
    await api.finish_all(fail={"b"})
    await api.rerun(wf, 1, failed_only=True)
    assert [c["data"] for c in await api.run_logs(wf, 2, "a")] == ["built\n"]


async def test_rerun_all_runs_everything_again_with_the_same_inputs(api: RunsApi):
    inputs = {"who": {"type": "string", "default": "x"}}
    wf = (await api.create(DIAMOND, inputs=inputs))["id"]
    await api.start(wf, {"inputs": {"who": "me"}})
    await api.finish_all(fail={"b"})
    await api.rerun(wf, 1)
    record = await api.run_record(wf, 2)
    assert record["inputs"] == {"who": "me"} and record["rerun_of"] == 1
    assert await api.finish_all() == ["a", "b", "c", "d"]
    assert (await api.run_record(wf, 2))["status"] == "success"


async def test_rerun_of_an_unfinished_run_is_409(api: RunsApi):
    wf = (await api.create([job("a")]))["id"]
    await api.start(wf)
    await assert_error(await api.post(f"/api/workflows/{wf}/runs/1/rerun"), 409)
    await assert_error(
        await api.post(f"/api/workflows/{wf}/runs/1/rerun", {"failed_only": "yes"}), 422
    )
    assert [r["number"] for r in await api.runs(wf)] == [1]


# --- concurrency groups --------------------------------------------------------


async def test_runs_of_one_group_run_one_at_a_time_in_request_order(api: RunsApi):
    first = (await api.create([job("x")], name="one", concurrency="deploy"))["id"]
    second = (await api.create([job("y")], name="two", concurrency={"group": "deploy"}))["id"]
    assert (await api.start(first))["status"] == "running"
    assert (await api.start(second))["status"] == "queued"
    assert (await api.start(first))["status"] == "queued"  # a group queues, not 409
    assert (await api.run_record(second, 1))["status"] == "queued"
    claim = await api.claim_job()
    assert (claim["job"]["workflow_id"], claim["job"]["job_id"]) == (first, "x")
    assert await api.claim() is None  # nothing else may start while the group is held
    await api.finish(claim)
    claim = await api.claim_job()
    assert (claim["job"]["workflow_id"], claim["job"]["run_id"]) == (second, 1)
    assert await api.claim() is None
    await api.finish(claim)
    claim = await api.claim_job()
    assert (claim["job"]["workflow_id"], claim["job"]["run_id"]) == (first, 2)
    await api.finish(claim)
    assert [r["status"] for r in await api.runs(first)] == ["success", "success"]


async def test_a_queued_run_can_be_cancelled(api: RunsApi):
    first = (await api.create([job("x")], concurrency="g"))["id"]
    await api.start(first)
    await api.start(first)
    await api.start(first)
    resp = await api.post(f"/api/workflows/{first}/runs/2/cancel")
    assert (await assert_object(resp, 202))["status"] == "cancelled"
    record = await api.run_record(first, 2)
    assert record["status"] == "cancelled"
    assert [j["status"] for j in record["jobs"]] == ["cancelled"]
    await api.finish_all()
    assert [r["status"] for r in await api.runs(first)] == ["success", "cancelled", "success"]


async def test_cancel_in_progress_revokes_the_running_run_and_starts_the_new(api: RunsApi):
    spec = {"group": "ship", "cancel-in-progress": True}
    wf = (await api.create([job("x")], concurrency=spec))["id"]
    await api.start(wf)
    claim = await api.claim_job()
    answer = await api.start(wf)
    assert answer["number"] == 2 and answer["status"] == "queued"
    await assert_error(await api.heartbeat(claim["lease"]["lease_id"]), 409)
    assert (await api.run_record(wf, 1))["status"] == "cancelled"
    assert (await api.run_record(wf, 2))["status"] == "running"
    claim = await api.claim_job()
    assert claim["job"]["run_id"] == 2


async def test_queued_runs_keep_their_order_across_a_restart(home: Home, tmp_path: Path):
    data = tmp_path / "data"
    async with serve_runs(home, data_dir=data) as api:
        a = (await api.create([job("x")], name="a", concurrency="g"))["id"]
        b = (await api.create([job("y")], name="b", concurrency="g"))["id"]
        await api.start(a)
        await api.start(b)
        await api.start(a)
        held = await api.claim_job()
        assert held["job"]["workflow_id"] == a
    async with serve_runs(home, data_dir=data) as api:
        assert (await api.run_record(a, 1))["status"] == "running"
        assert (await api.run_record(b, 1))["status"] == "queued"
        assert (await api.run_record(a, 2))["status"] == "queued"
        await api.finish(held)  # the lease survived the restart
        order = []
        while (claim := await api.claim()) is not None:
            order.append((claim["job"]["workflow_id"], claim["job"]["run_id"]))
            assert await api.claim() is None  # one at a time
            await api.finish(claim)
        assert order == [(b, 1), (a, 2)]


async def test_history_survives_a_restart(home: Home, tmp_path: Path):
    data = tmp_path / "data"
    async with serve_runs(home, data_dir=data) as api:
        wf = (await api.create(DIAMOND))["id"]
        await api.start(wf)
        await api.finish_all(fail={"c"})
        await api.start(wf)
        claim = await api.claim_job()
        await assert_object(await api.push(claim["lease"]["lease_id"], [_chunk("hello\n")]))
    async with serve_runs(home, data_dir=data) as api:
        runs = await api.runs(wf)
        assert [(r["number"], r["status"]) for r in runs] == [(2, "running"), (1, "failure")]
        assert by_id(runs[1])["d"]["status"] == "skipped"
        assert [c["data"] for c in await api.run_logs(wf, 2, "a")] == ["hello\n"]
        await api.finish(claim)
        await api.finish_all()
        assert (await api.run_record(wf, 2))["status"] == "success"
        assert (await api.start(wf))["number"] == 3


async def test_the_openapi_document_describes_the_run_routes(api: RunsApi):
    doc = json.loads(await (await api.get("/openapi.json")).get_data(as_text=True))
    paths = doc["paths"]
    for path in (
        "/api/workflows/{workflow_id}/runs",
        "/api/workflows/{workflow_id}/runs/{number}",
        "/api/workflows/{workflow_id}/runs/{number}/rerun",
        "/api/workflows/{workflow_id}/runs/{number}/jobs/{job_id}/logs",
        "/api/workflows/{workflow_id}/runs/{number}/jobs/{job_id}/logs/stream",
    ):
        assert path in paths, path
    assert "Run" in doc["components"]["schemas"]
    run_body = paths["/api/workflows/{workflow_id}/run"]["post"]["requestBody"]
    assert run_body.get("required") is not True
