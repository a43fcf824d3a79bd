"""`/healthz` and `/readyz`: open without a token, cheap, and honest about the store."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import trio

from actors import open_runtime
from actors.models import RetryPolicy
from actors.spec import JobSpec, WorkflowSpec
from web import create_app
from web.server import log_formatter


async def get(app, path: str):
    async with app.test_app() as test_app:
        response = await test_app.test_client().get(path)
        return response.status_code, await response.get_json()


async def test_health_and_readiness_need_no_token(tmp_path: Path):
    async with open_runtime(data_dir=tmp_path) as rt:
        app = create_app(rt, api_token="api-secret", worker_token="worker-secret")
        assert await get(app, "/healthz") == (200, {"status": "ok"})
        assert await get(app, "/readyz") == (200, {"status": "ready"})
        assert (await get(app, "/api/workers"))[0] == 401  # the API stays guarded


async def test_not_ready_while_shutting_down():
    async with open_runtime() as rt:
        app = create_app(rt)
        assert await get(app, "/readyz") == (200, {"status": "ready"})
        await rt.stop_parking()  # what the server does when it is told to stop
        assert await get(app, "/readyz") == (503, {"error": "the server is shutting down"})
        assert await get(app, "/healthz") == (200, {"status": "ok"})


async def test_not_ready_when_the_store_takes_no_writes(tmp_path: Path):
    async with open_runtime(data_dir=tmp_path) as rt:
        app = create_app(rt)
        assert (await get(app, "/readyz"))[0] == 200
        # The database file turns read-only under the running server.
        rt._system.journal.store._db.execute("PRAGMA query_only = ON")
        status, body = await get(app, "/readyz")
        assert status == 503
        assert body["error"].startswith("the change could not be stored")
        rt._system.journal.store._db.execute("PRAGMA query_only = OFF")
        assert (await get(app, "/readyz"))[0] == 200


async def test_json_log_lines_carry_the_ids_they_are_about():
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(log_formatter("json"))
    logger = logging.getLogger("workflow_graph")
    logger.addHandler(handler)
    try:
        async with open_runtime(specs=[one_job()]) as rt:
            await rt.run_workflow("ci")
            claim = await rt.claim("w1", [], lease_ttl_secs=1)
            with trio.fail_after(5):
                while (await rt.get_status("ci")).jobs[0].attempt == 0:
                    await trio.sleep(0.05)
    finally:
        logger.removeHandler(handler)
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    (expiry,) = [r for r in records if "expired" in r["message"]]
    assert expiry["level"] == "WARNING" and expiry["logger"] == "workflow_graph"
    assert {k: expiry[k] for k in ("workflow_id", "run_id", "job_id", "lease_id")} == {
        "workflow_id": "ci",
        "run_id": 1,
        "job_id": "build",
        "lease_id": claim.lease.lease_id,
    }
    assert expiry["time"].endswith("+00:00")


def one_job() -> WorkflowSpec:
    job = JobSpec(id="build", name="build", command="make", retry_policy=RetryPolicy(max_retries=1))
    return WorkflowSpec(id="ci", name="CI", trigger="manual", jobs=(job,))
