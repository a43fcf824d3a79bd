"""Why a job waits (`waiting` on a queued job) and `queue-timeout`, under MockClock."""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing

from actors import open_runtime
from actors.clock import now_ms
from actors.models import (
    FixedBackoff,
    FixedDelay,
    Job,
    JobStatus,
    RetryPolicy,
    RunStatus,
    Waiting,
)
from actors.spec import ConcurrencySpec, JobSpec, WorkflowSpec
from web import create_app
from wfg import _render as render


@pytest.fixture
def autojump_clock():
    return trio.testing.MockClock(autojump_threshold=0)


def one_job(wf_id: str, **job) -> WorkflowSpec:
    return WorkflowSpec(
        id=wf_id,
        name=wf_id,
        trigger="manual",
        jobs=(JobSpec(id="j", name="j", command="true", **job),),
    )


async def waiting_of(rt, wf_id: str, job_id: str = "j") -> Waiting | None:
    (job,) = [j for j in (await rt.get_status(wf_id)).jobs if j.id == job_id]
    return job.waiting


async def test_a_job_no_live_worker_can_take_says_so_at_once(autojump_clock):
    async with open_runtime(specs=[one_job("gpu", required_labels=("gpu",))]) as rt:
        await rt.register_worker("linux-1", ["linux"])
        await trio.sleep(1)
        queued_at = now_ms()
        await rt.run_workflow("gpu")
        waiting = await waiting_of(rt, "gpu")
        assert waiting is not None
        expected = {"reason": "no_worker", "labels": ["gpu"], "since_ms": queued_at}
        assert waiting.model_dump() == expected
        # The run history shows it too.
        (job,) = (await rt.get_run("gpu", 1)).jobs
        assert job.waiting == waiting

        await rt.register_worker("gpu-1", ["gpu", "linux"])
        assert await waiting_of(rt, "gpu") is None  # a worker that can take it is live
        claim = await rt.claim("gpu-1", ["gpu", "linux"])
        assert claim is not None and claim.job.job_id == "j"
        (job,) = (await rt.get_status("gpu")).jobs
        assert (job.status, job.waiting) == (JobStatus.running, None)


async def test_a_worker_gone_offline_leaves_its_jobs_waiting(autojump_clock):
    async with open_runtime(specs=[one_job("gpu", required_labels=("gpu",))]) as rt:
        await rt.claim("gpu-1", ["gpu"], lease_ttl_secs=10)  # registers it; nothing to claim
        await rt.run_workflow("gpu")
        assert await waiting_of(rt, "gpu") is None
        await trio.sleep(31)  # unheard for more than 3 x its lease TTL: offline
        waiting = await waiting_of(rt, "gpu")
        assert waiting is not None and waiting.reason == "no_worker"
        # Since about when the watch (every 5 s) saw the set go without a worker.
        assert now_ms() - 5_000 <= waiting.since_ms <= now_ms()


async def test_one_warning_per_label_set_not_per_job_or_look(autojump_clock, caplog):
    spec = WorkflowSpec(
        id="many",
        name="many",
        trigger="manual",
        jobs=tuple(
            JobSpec(id=f"j{n}", name=f"j{n}", command="true", required_labels=("gpu",))
            for n in range(5)
        ),
    )
    caplog.set_level(logging.WARNING, logger="workflow_graph")
    async with open_runtime(specs=[spec, one_job("arm", required_labels=("arm64",))]) as rt:
        await rt.run_workflow("many")
        await rt.run_workflow("arm")
        await trio.sleep(60)  # a dozen looks
        warnings = [r for r in caplog.records if "no live worker" in r.getMessage()]
        assert sorted(r.labels for r in warnings) == [["arm64"], ["gpu"]]
        (gpu,) = [r for r in warnings if r.labels == ["gpu"]]
        assert gpu.getMessage().startswith("5 queued job(s) need a worker with labels [gpu]")

        # Taken care of, then waiting again: a new episode, a new warning.
        claim = await rt.claim("gpu-1", ["gpu"], lease_ttl_secs=10)
        await rt.complete(claim.lease.lease_id, {})
        await trio.sleep(20)
        assert len([r for r in caplog.records if "no live worker" in r.getMessage()]) == 2
        await trio.sleep(20)  # gpu-1 is offline now (unheard for 3 x 10 s): four jobs wait
        gpu_warnings = [
            r for r in caplog.records if "no live worker" in r.getMessage() and r.labels == ["gpu"]
        ]
        assert [r.jobs for r in gpu_warnings] == [5, 4]


async def test_a_retry_waiting_out_its_backoff_is_delayed(autojump_clock):
    policy = RetryPolicy(max_retries=1, backoff=FixedBackoff(Fixed=FixedDelay(delay_secs=30)))
    async with open_runtime(specs=[one_job("flaky", retry_policy=policy)]) as rt:
        await rt.run_workflow("flaky")
        claim = await rt.claim("w", [])
        await rt.fail(claim.lease.lease_id, "try again", retryable=True)
        waiting = await waiting_of(rt, "flaky")
        assert waiting is not None
        assert waiting.model_dump() == {"reason": "delayed", "until_ms": now_ms() + 30_000}
        await trio.sleep(31)
        assert await waiting_of(rt, "flaky") is None  # claimable now, and `w` is live


async def test_a_run_behind_its_concurrency_group_waits_for_it(autojump_clock):
    group = ConcurrencySpec(group="deploy")
    first = WorkflowSpec("one", "one", "manual", (JobSpec("j", "j", "true"),), concurrency=group)
    second = WorkflowSpec("two", "two", "manual", (JobSpec("j", "j", "true"),), concurrency=group)
    async with open_runtime(specs=[first, second]) as rt:
        await rt.run_workflow("one")
        accepted = await rt.run_workflow("two")
        assert accepted.status is RunStatus.queued
        run = await rt.get_run("two", 1)
        assert run.jobs[0].waiting == Waiting(
            reason="concurrency", group="deploy", since_ms=run.created_at_ms
        )


async def test_queue_timeout_fails_a_job_no_worker_claims(autojump_clock):
    spec = one_job(
        "stuck",
        required_labels=("gpu",),
        queue_timeout_secs=120,
        retry_policy=RetryPolicy(max_retries=3),
    )
    async with open_runtime(specs=[spec]) as rt:
        await rt.register_worker("linux-1", ["linux"])
        await rt.run_workflow("stuck")
        await trio.sleep(119)
        assert (await rt.get_status("stuck")).jobs[0].status is JobStatus.queued
        await trio.sleep(2)
        (job,) = (await rt.get_status("stuck")).jobs
        assert job.status is JobStatus.failure
        assert job.attempt == 0  # not retried, whatever its retries
        assert job.output == "queue timeout: no worker with labels ['gpu'] claimed it within 120 s"
        assert job.waiting is None
        assert (await rt.get_run("stuck", 1)).status is RunStatus.failure
        assert await rt.claim("gpu-1", ["gpu"]) is None  # it left the queue


async def test_the_status_api_carries_waiting(autojump_clock):
    async with open_runtime(specs=[one_job("gpu", required_labels=("gpu",))]) as rt:
        app = create_app(rt)
        async with app.test_app() as test_app:
            client = test_app.test_client()
            await rt.run_workflow("gpu")
            body = await (await client.get("/api/workflows/gpu/status")).get_json()
            assert body["jobs"][0]["waiting"]["reason"] == "no_worker"
            assert body["jobs"][0]["waiting"]["labels"] == ["gpu"]
            listed = await (await client.get("/api/workflows")).get_json()
            assert listed[0]["jobs"][0]["waiting"]["reason"] == "no_worker"
            runs = await (await client.get("/api/workflows/gpu/runs")).get_json()
            assert runs[0]["jobs"][0]["waiting"]["reason"] == "no_worker"


def test_wfg_status_prints_why_a_job_waits():
    now = 1_700_000_000_000
    jobs = [
        Job(
            id="train",
            name="train",
            command="true",
            waiting=Waiting(reason="no_worker", labels=["gpu", "linux"], since_ms=now - 125_000),
        ),
        Job(
            id="retry",
            name="retry",
            command="true",
            waiting=Waiting(reason="delayed", until_ms=now + 30_000),
        ),
        Job(id="plain", name="plain", command="true"),
    ]
    assert render.waiting_text(jobs[0], now) == "waiting 2m05s: no live worker has labels gpu,linux"
    assert render.waiting_text(jobs[1], now) == "retry in 30s (backoff)"
    assert render.waiting_text(jobs[2], now) == ""
    lines = render.plain_lines(render.jobs_rows(jobs))
    assert any("no live worker has labels gpu,linux" in line for line in lines)
