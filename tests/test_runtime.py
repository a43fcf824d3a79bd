"""Actor-level tests of the runtime, with time driven by trio's MockClock.

Every test takes `autojump_clock` as an argument (pytest-trio only honours a
clock the test itself requests): the clock jumps ahead whenever all tasks are
blocked, so a 30 s lease expires in microseconds.
"""

from __future__ import annotations

import pytest
import trio

from actors import Conflict, LeaseNotActive, NotFound, open_runtime
from actors.clock import now_ms
from actors.models import JobStatus, WorkflowCreate
from actors.spec import spec_from_create


def workflow(wf_id: str, *jobs: dict, name: str = "W"):
    body = WorkflowCreate.model_validate(
        {"name": name, "jobs": [{"command": "true", **j} for j in jobs]}
    )
    return spec_from_create(wf_id, body)


def statuses(wf) -> dict[str, str]:
    return {j.id: j.status.value for j in wf.jobs}


@pytest.fixture
async def rt():
    async with open_runtime() as runtime:
        yield runtime


async def run(rt, spec):
    rt.add_workflow(spec)
    await rt.run_workflow(spec.id)


async def test_cascade_passes_outputs_and_dependents_keep_their_own_policy(rt, autojump_clock):
    spec = workflow(
        "w",
        {"id": "a"},
        {"id": "b"},
        {
            "id": "c",
            "depends_on": ["a", "b"],
            "required_labels": ["gpu"],
            "max_retries": 3,
            "backoff": {"Fixed": {"delay_secs": 7}},
        },
    )
    await run(rt, spec)
    first = await rt.claim("w1", [])
    second = await rt.claim("w1", [])
    assert {first.job.job_id, second.job.job_id} == {"a", "b"}
    assert await rt.claim("w1", ["gpu"]) is None  # c waits for both
    await rt.complete(first.lease.lease_id, {"k": first.job.job_id})
    assert await rt.claim("w1", ["gpu"]) is None
    await rt.complete(second.lease.lease_id, {})
    assert await rt.claim("w1", []) is None  # c needs the gpu label
    c = await rt.claim("w2", ["gpu", "linux"])
    assert c.job.job_id == "c"
    assert c.job.required_labels == ["gpu"]
    assert c.job.retry_policy.max_retries == 3
    assert c.job.retry_policy.backoff.Fixed.delay_secs == 7
    assert c.job.upstream_outputs == {
        "a": {"k": "a"} if first.job.job_id == "a" else {},
        "b": {"k": "b"} if first.job.job_id == "b" else {},
    }


async def test_claim_takes_the_oldest_job_the_labels_allow(rt, autojump_clock):
    rt.add_workflow(workflow("x", {"id": "needs-linux", "required_labels": ["linux"]}))
    rt.add_workflow(workflow("y", {"id": "any"}))
    rt.add_workflow(workflow("z", {"id": "needs-gpu", "required_labels": ["gpu"]}))
    for wf in ("x", "y", "z"):
        await rt.run_workflow(wf)
    assert (await rt.claim("w", ["gpu"])).job.job_id == "any"
    assert (await rt.claim("w", ["gpu", "linux"])).job.job_id == "needs-linux"
    assert await rt.claim("w", ["linux"]) is None
    assert (await rt.claim("w", ["gpu"])).job.job_id == "needs-gpu"


async def test_lease_expiry_retries_then_fails_and_skips_dependents(rt, autojump_clock):
    spec = workflow("w", {"id": "a", "max_retries": 1}, {"id": "b", "depends_on": ["a"]})
    await run(rt, spec)
    claim = await rt.claim("w1", [], lease_ttl_secs=10)
    await trio.sleep(10.5)
    with pytest.raises(LeaseNotActive):
        await rt.complete(claim.lease.lease_id, {})
    status = await rt.get_status("w")
    assert statuses(status) == {"a": "queued", "b": "queued"}
    assert status.jobs[0].attempt == 1
    retry = await rt.claim("w1", [], lease_ttl_secs=10)
    assert retry.job.attempt == 1
    await trio.sleep(11)
    status = await rt.get_status("w")
    assert statuses(status) == {"a": "failure", "b": "skipped"}
    assert status.jobs[0].output == "lease expired"
    await rt.run_workflow("w")  # the run is over, so it may run again


async def test_heartbeat_renews_by_the_lease_ttl(rt, autojump_clock):
    await run(rt, workflow("w", {"id": "a"}))
    claim = await rt.claim("w1", [], lease_ttl_secs=10)
    granted = claim.lease.granted_at_ms
    for _ in range(5):
        await trio.sleep(8)
        renewed = await rt.heartbeat(claim.lease.lease_id)
        assert renewed.ttl_secs == 10
    assert renewed.granted_at_ms >= granted + 40_000
    await rt.complete(claim.lease.lease_id, {})
    assert statuses(await rt.get_status("w")) == {"a": "success"}


@pytest.mark.parametrize(
    ("backoff", "delays"),
    [
        ("None", [0, 0, 0]),
        ({"Fixed": {"delay_secs": 5}}, [5, 5, 5]),
        ({"Exponential": {"base_secs": 2, "max_secs": 10}}, [4, 8, 10]),
    ],
)
async def test_backoff_delays_each_retry(rt, backoff, delays, autojump_clock):
    await run(rt, workflow("w", {"id": "a", "max_retries": 3, "backoff": backoff}))
    claim = await rt.claim("w1", [])
    for attempt, delay in enumerate(delays, start=1):
        failed_at = trio.current_time()
        failed_ms = now_ms()
        await rt.fail(claim.lease.lease_id, "boom", retryable=True)
        if delay:
            assert await rt.claim("w1", []) is None
            await trio.sleep(delay - 0.01)
            assert await rt.claim("w1", []) is None
        claim = await rt.claim("w1", [], wait_secs=delay + 1)
        assert claim.job.attempt == attempt
        waited = trio.current_time() - failed_at
        assert delay <= waited < delay + 0.1
        if delay:
            assert claim.job.delayed_until_ms == pytest.approx(failed_ms + delay * 1000, abs=5)
        else:
            assert claim.job.delayed_until_ms == 0
    await rt.fail(claim.lease.lease_id, "boom", retryable=True)
    status = await rt.get_status("w")
    assert status.jobs[0].status is JobStatus.failure  # budget spent
    assert status.jobs[0].attempt == 3


async def test_fail_not_retryable_fails_at_once(rt, autojump_clock):
    await run(rt, workflow("w", {"id": "a", "max_retries": 5}, {"id": "b", "depends_on": ["a"]}))
    claim = await rt.claim("w1", [])
    await rt.fail(claim.lease.lease_id, "exit code 1: nope")
    status = await rt.get_status("w")
    assert statuses(status) == {"a": "failure", "b": "skipped"}
    assert status.jobs[0].output == "exit code 1: nope"


async def test_parked_claim_wakes_when_a_job_arrives(rt, autojump_clock):
    rt.add_workflow(workflow("w", {"id": "a"}))
    got = []

    async def claimer():
        got.append(await rt.claim("w1", [], wait_secs=30))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(claimer)
        await trio.sleep(3)
        assert got == []
        started = trio.current_time()
        await rt.run_workflow("w")
    assert got[0].job.job_id == "a"
    assert trio.current_time() - started < 0.01


async def test_parked_claim_times_out_with_none(rt, autojump_clock):
    started = trio.current_time()
    assert await rt.claim("w1", [], wait_secs=12) is None
    assert trio.current_time() - started == pytest.approx(12, abs=0.01)


async def test_parked_claim_ignores_jobs_it_lacks_labels_for(rt, autojump_clock):
    rt.add_workflow(workflow("w", {"id": "gpu-job", "required_labels": ["gpu"]}))
    got = []

    async def claimer():
        got.append(await rt.claim("w1", ["linux"], wait_secs=5))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(claimer)
        await trio.sleep(1)
        await rt.run_workflow("w")
    assert got == [None]
    assert (await rt.claim("w2", ["gpu"])).job.job_id == "gpu-job"


async def test_a_cancelled_claimer_gives_the_job_back(rt, autojump_clock):
    rt.add_workflow(workflow("w", {"id": "a"}))
    with trio.move_on_after(2):
        await rt.claim("gone", [], wait_secs=30)
    await rt.run_workflow("w")
    claim = await rt.claim("w2", [])
    assert claim is not None and claim.job.job_id == "a"


async def test_a_claimer_cancelled_just_after_being_handed_a_job_gives_it_back(rt, autojump_clock):
    rt.add_workflow(workflow("w", {"id": "a"}))
    async with trio.open_nursery() as nursery:

        async def claimer():
            await rt.claim("gone", [], wait_secs=30)

        nursery.start_soon(claimer)
        await trio.sleep(1)
        # Enqueue and cancel in the same step: the scheduler hands the job over
        # before the claimer ever runs again.
        await rt.run_workflow("w")
        nursery.cancel_scope.cancel()
    claim = await rt.claim("w2", [])
    assert claim is not None and claim.job.job_id == "a"
    assert statuses(await rt.get_status("w")) == {"a": "running"}


async def test_cancel_revokes_leases_withdraws_queue_and_never_cascades(rt, autojump_clock):
    spec = workflow("w", {"id": "a"}, {"id": "b"}, {"id": "c", "depends_on": ["a"]})
    await run(rt, spec)
    claim = await rt.claim("w1", [])
    await rt.cancel_workflow("w")
    assert statuses(await rt.get_status("w")) == {
        "a": "cancelled",
        "b": "cancelled",
        "c": "cancelled",
    }
    assert await rt.is_cancelled("w", claim.job.job_id)
    with pytest.raises(LeaseNotActive):
        await rt.heartbeat(claim.lease.lease_id)
    with pytest.raises(LeaseNotActive):
        await rt.complete(claim.lease.lease_id, {})
    assert await rt.claim("w1", []) is None  # nothing left in the queue


async def test_a_lease_from_an_earlier_run_cannot_touch_the_new_run(rt, autojump_clock):
    await run(rt, workflow("w", {"id": "a"}))
    old = await rt.claim("w1", [])
    await rt.cancel_workflow("w")
    await rt.run_workflow("w")
    with pytest.raises(LeaseNotActive):
        await rt.complete(old.lease.lease_id, {})
    with pytest.raises(LeaseNotActive):
        await rt.push_logs(old.lease.lease_id, [])
    new = await rt.claim("w1", [])
    assert new.job.run_id == old.job.run_id + 1
    assert statuses(await rt.get_status("w")) == {"a": "running"}


async def test_run_while_active_conflicts_and_rerun_resets(rt, autojump_clock):
    await run(rt, workflow("w", {"id": "a", "max_retries": 2}))
    with pytest.raises(Conflict):
        await rt.run_workflow("w")
    claim = await rt.claim("w1", [])
    await rt.fail(claim.lease.lease_id, "x", retryable=True)
    claim = await rt.claim("w1", [])
    await rt.complete(claim.lease.lease_id, {"v": "1"})
    status = await rt.get_status("w")
    assert status.jobs[0].attempt == 1
    await rt.run_workflow("w")
    status = await rt.get_status("w")
    assert (status.jobs[0].status, status.jobs[0].attempt) == (JobStatus.queued, 0)


async def test_durations_and_start_times(rt, autojump_clock):
    await run(rt, workflow("w", {"id": "a"}))
    before = now_ms()
    claim = await rt.claim("w1", [])
    await trio.sleep(4)
    await rt.complete(claim.lease.lease_id, {})
    job = (await rt.get_status("w")).jobs[0]
    assert job.started_at == pytest.approx(before, abs=5)
    assert job.duration_secs == 4


async def test_unknown_ids(rt, autojump_clock):
    with pytest.raises(NotFound):
        await rt.get_status("nope")
    rt.add_workflow(workflow("w", {"id": "a"}))
    with pytest.raises(NotFound):
        await rt.get_logs("w", "nope")
    with pytest.raises(NotFound):
        await rt.is_cancelled("w", "nope")
    with pytest.raises(NotFound):
        await rt.worker_heartbeat("nobody")
    with pytest.raises(LeaseNotActive):
        await rt.heartbeat("no-such-lease")


async def test_logs_belong_to_the_lease_job_and_streams_end_with_the_job(rt, autojump_clock):
    from actors.models import LogChunkIn

    await run(rt, workflow("w", {"id": "a"}, {"id": "b"}))
    claim = await rt.claim("w1", [])
    job = claim.job.job_id
    other = "b" if job == "a" else "a"
    chunk = LogChunkIn(workflow_id="elsewhere", job_id=other, sequence=0, data="hi\n")
    await rt.push_logs(claim.lease.lease_id, [chunk])
    assert [c.data for c in await rt.get_logs("w", job)] == ["hi\n"]
    assert await rt.get_logs("w", other) == []
    seen = []

    async def follow():
        async for c in rt.stream_logs("w", job):
            seen.append(c.data)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(follow)
        await trio.sleep(1)
        await rt.push_logs(claim.lease.lease_id, [LogChunkIn(sequence=1, data="live\n")])
        await trio.sleep(1)
        await rt.complete(claim.lease.lease_id, {})
    assert seen == ["hi\n", "live\n"]  # and the stream ended by itself


async def test_worker_registry_status(rt, autojump_clock):
    await rt.register_worker("idle-one", ["linux"])
    await run(rt, workflow("w", {"id": "a"}))
    claim = await rt.claim("busy-one", ["x"], lease_ttl_secs=5)
    workers = {w.worker_id: w for w in await rt.list_workers()}
    assert workers["idle-one"].status == "idle"
    assert workers["busy-one"].status == "busy"
    assert workers["busy-one"].current_job == "a"
    await rt.complete(claim.lease.lease_id, {})
    await trio.sleep(16)  # > 3 x the 5 s TTL
    workers = {w.worker_id: w for w in await rt.list_workers()}
    assert workers["busy-one"].status == "offline"
    assert workers["busy-one"].current_job is None
    assert workers["idle-one"].status == "idle"  # 30 s default TTL: 90 s to go offline


async def test_api_only_has_no_cascade_and_no_expiry(autojump_clock):
    async with open_runtime(api_only=True) as rt:
        await run(rt, workflow("w", {"id": "a"}, {"id": "b", "depends_on": ["a"]}))
        claim = await rt.claim("w1", [], lease_ttl_secs=1)
        await trio.sleep(100)
        await rt.complete(claim.lease.lease_id, {})
        assert statuses(await rt.get_status("w")) == {"a": "success", "b": "queued"}
        assert await rt.claim("w1", []) is None


async def test_stop_parking_answers_parked_claims_with_none(rt, autojump_clock):
    got = []

    async def claimer():
        got.append(await rt.claim("w1", [], wait_secs=60))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(claimer)
        await trio.sleep(1)
        started = trio.current_time()
        await rt.stop_parking()
    assert got == [None]
    assert trio.current_time() - started < 0.01
    assert await rt.claim("w1", [], wait_secs=60) is None  # no more parking
    assert trio.current_time() - started < 0.01
