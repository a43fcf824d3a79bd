"""`/metrics`: what a scripted run counts, the gauges of the queue, HTTP by route,
bounded label values, and who may read it.

Time is trio's MockClock, so queue waits and durations are the script's own.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families
from test_http_lifecycle import SSEReader

from actors import open_runtime
from actors.metrics import OTHER, Metrics, QueueState, label_set_text
from actors.models import FixedBackoff, FixedDelay, LogChunkIn, RetryPolicy
from actors.spec import JobSpec, WorkflowSpec
from web import create_app


@pytest.fixture
def autojump_clock():
    return trio.testing.MockClock(autojump_threshold=0)


def parse(text: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of an exposition, keyed by (sample name, its labels)."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples, name: str, **labels) -> float:
    return samples[(name, frozenset(labels.items()))]


def buckets(samples, name: str, **labels) -> dict[float, float]:
    """A histogram's cumulative bucket counts by upper bound."""
    found = {}
    for (sample, sample_labels), count in samples.items():
        if sample != f"{name}_bucket":
            continue
        rest = dict(sample_labels)
        le = float(rest.pop("le"))
        if rest == labels:
            found[le] = count
    return found


def pipeline() -> WorkflowSpec:
    retry = RetryPolicy(max_retries=2)
    return WorkflowSpec(
        id="ops",
        name="Ops",
        trigger="manual",
        jobs=(
            JobSpec(id="a", name="a", command="true", retry_policy=retry),
            JobSpec(id="b", name="b", command="true", depends_on=("a",)),
        ),
    )


async def test_a_scripted_run_is_counted_exactly(autojump_clock):
    """a: fails (retryable), then its lease expires, then succeeds; b, claimed by a
    parked worker the moment a completes, fails for good."""
    async with open_runtime(specs=[pipeline()]) as rt:
        app = create_app(rt)
        await rt.run_workflow("ops")
        await trio.sleep(2)
        first = await rt.claim("w1", [])  # waited 2 s
        await trio.sleep(3)
        await rt.fail(first.lease.lease_id, "flaky", retryable=True)  # ran 3 s
        await trio.sleep(0.3)
        second = await rt.claim("w1", [], lease_ttl_secs=5)  # waited 0.3 s
        await trio.sleep(12)  # no heartbeat: expired 5 s after the claim, queued again
        assert await rt.get_logs("ops", "a") == []
        third = await rt.claim("w1", [])  # waited 7 s since the expiry
        assert (first.job.attempt, second.job.attempt, third.job.attempt) == (0, 1, 2)
        claims = []
        async with trio.open_nursery() as nursery:

            async def parked() -> None:
                claims.append(await rt.claim("w2", [], wait_secs=30))

            nursery.start_soon(parked)
            await trio.sleep(20)
            await rt.complete(third.lease.lease_id, {})  # ran 20 s; b wakes the parked claim
        (fourth,) = claims
        assert fourth.job.job_id == "b"
        await trio.sleep(0.2)
        await rt.fail(fourth.lease.lease_id, "broken", retryable=False)  # ran 0.2 s

        async with app.test_app() as test_app:
            response = await test_app.test_client().get("/metrics")
            assert response.status_code == 200
            assert response.headers["content-type"] == CONTENT_TYPE_LATEST
            text = await response.get_data(as_text=True)

    s = parse(text)
    assert value(s, "wfg_jobs_enqueued_total", workflow="ops") == 4
    assert value(s, "wfg_jobs_claimed_total", workflow="ops") == 4
    assert value(s, "wfg_jobs_completed_total", workflow="ops") == 1
    assert value(s, "wfg_jobs_failed_total", workflow="ops", retryable="true") == 1
    assert value(s, "wfg_jobs_failed_total", workflow="ops", retryable="false") == 1
    assert value(s, "wfg_jobs_retried_total", workflow="ops") == 2
    assert value(s, "wfg_lease_expiries_total", workflow="ops") == 1
    assert value(s, "wfg_runs_finished_total", workflow="ops", status="failure") == 1
    succeeded = frozenset({("workflow", "ops"), ("status", "success")})
    assert ("wfg_runs_finished_total", succeeded) not in s

    # Queue waits 2, 0.3, 7 and 0 s (epoch milliseconds: sums to the millisecond).
    wait = buckets(s, "wfg_job_queue_wait_seconds")
    assert value(s, "wfg_job_queue_wait_seconds_count") == 4
    assert value(s, "wfg_job_queue_wait_seconds_sum") == pytest.approx(9.3, abs=0.005)
    assert [wait[le] for le in (0.005, 0.1, 0.5, 1.0, 5.0, 10.0)] == [1, 1, 2, 2, 3, 4]
    # Durations of the reported attempts: 3, 20 and 0.2 s (the expired one is not one).
    duration = buckets(s, "wfg_job_duration_seconds")
    assert value(s, "wfg_job_duration_seconds_count") == 3
    assert value(s, "wfg_job_duration_seconds_sum") == pytest.approx(23.2, abs=0.005)
    assert [duration[le] for le in (0.1, 0.5, 5.0, 10.0, 30.0)] == [0, 1, 2, 2, 3]
    # One parked claim was woken by an enqueue, with no time passing between.
    assert value(s, "wfg_dispatch_latency_seconds_count") == 1
    assert buckets(s, "wfg_dispatch_latency_seconds")[0.0005] == 1
    assert value(s, "wfg_leases_active") == 0
    assert value(s, "wfg_jobs_delayed") == 0
    # No id of a lease, run or worker is a label value.
    for lease in (first, second, third, fourth):
        assert lease.lease.lease_id not in text
    assert "w1" not in text and "w2" not in text


async def test_gauges_read_the_queue_at_scrape_time(autojump_clock):
    spec = WorkflowSpec(
        id="g",
        name="G",
        trigger="manual",
        jobs=(
            JobSpec(id="gpu", name="gpu", command="true", required_labels=("gpu",)),
            JobSpec(
                id="flaky",
                name="flaky",
                command="true",
                retry_policy=RetryPolicy(
                    max_retries=1, backoff=FixedBackoff(Fixed=FixedDelay(delay_secs=60))
                ),
            ),
            JobSpec(id="hold", name="hold", command="true"),
        ),
    )
    async with open_runtime(specs=[spec]) as rt:
        await rt.register_worker("w1", ["linux"])
        await rt.run_workflow("g")
        flaky = await rt.claim("w1", ["linux"])
        assert flaky.job.job_id == "flaky"
        await rt.fail(flaky.lease.lease_id, "again", retryable=True)  # backoff: delayed
        hold = await rt.claim("w1", ["linux"])
        assert hold.job.job_id == "hold"  # now held under a lease
        await trio.sleep(7)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(rt.claim, "w2", ["linux"], 30, 30)  # parks: nothing for it
            await trio.sleep(1)
            s = parse((await rt.scrape()).decode())
            nursery.cancel_scope.cancel()

    assert value(s, "wfg_jobs_ready", labels="gpu") == 1
    assert value(s, "wfg_jobs_ready_oldest_age_seconds", labels="gpu") == pytest.approx(8, abs=0.01)
    assert value(s, "wfg_jobs_waiting_for_worker", labels="gpu") == 1
    assert value(s, "wfg_jobs_delayed") == 1
    assert value(s, "wfg_leases_active") == 1
    assert value(s, "wfg_claims_parked") == 1
    assert value(s, "wfg_workers", status="busy") == 1
    assert value(s, "wfg_workers", status="idle") == 1
    assert value(s, "wfg_workers", status="offline") == 0


async def test_http_requests_are_counted_by_route_template():
    async with open_runtime(specs=[pipeline()]) as rt:
        app = create_app(rt)
        async with app.test_app() as test_app:
            client = test_app.test_client()
            await rt.run_workflow("ops")
            claim = await (await client.post("/api/jobs/claim", json={"worker_id": "w"})).get_json()
            lease_id = claim["lease"]["lease_id"]
            assert (await client.post(f"/api/jobs/{lease_id}/heartbeat")).status_code == 200
            assert (await client.post("/api/jobs/not-a-lease/complete", json={})).status_code == 409
            assert (await client.get("/api/workflows/ops/status")).status_code == 200
            assert (await client.get("/api/workflows/nope/status")).status_code == 404
            for n in range(20):
                assert (await client.get(f"/no/such/path/{n}")).status_code == 404
            s = parse(await (await client.get("/metrics")).get_data(as_text=True))

    def requests(route: str, method: str, status: str) -> float:
        return value(s, "wfg_http_requests_total", route=route, method=method, status=status)

    # The fast path's routes and Quart's, each under its URL template.
    assert requests("/api/jobs/claim", "POST", "200") == 1
    assert requests("/api/jobs/<lease_id>/heartbeat", "POST", "200") == 1
    assert requests("/api/jobs/<lease_id>/complete", "POST", "409") == 1
    assert requests("/api/workflows/<workflow_id>/status", "GET", "200") == 1
    assert requests("/api/workflows/<workflow_id>/status", "GET", "404") == 1
    assert requests("(unmatched)", "GET", "404") == 20
    latency = "wfg_http_request_duration_seconds_count"
    assert value(s, latency, route="/api/jobs/claim", method="POST") == 1
    routes = {dict(labels).get("route") for name, labels in s if name == "wfg_http_requests_total"}
    assert not any(route and ("/no/such" in route or lease_id in route) for route in routes)


async def test_open_log_streams_are_a_gauge(autojump_clock):
    async with open_runtime(specs=[pipeline()]) as rt:
        app = create_app(rt)
        async with app.test_app() as test_app:
            client = test_app.test_client()
            await rt.run_workflow("ops")
            claim = await rt.claim("w", [])
            await rt.push_logs(claim.lease.lease_id, [LogChunkIn(sequence=0, data="x\n")])
            async with client.request("/api/workflows/ops/jobs/a/logs/stream") as connection:
                await connection.send_complete()
                reader = SSEReader(connection)
                assert (await reader.event())["data"]["data"] == "x\n"
                s = parse((await rt.scrape()).decode())
                assert value(s, "wfg_sse_streams_open") == 1
                await rt.complete(claim.lease.lease_id, {})
                assert await reader.rest() == []
            s = parse((await rt.scrape()).decode())
            assert value(s, "wfg_sse_streams_open") == 0


def test_workflow_label_values_are_bounded():
    """10 000 distinct workflows: the first 100 keep their id, the rest are `(other)`."""
    metrics = Metrics()
    for n in range(10_000):
        metrics.job_enqueued(f"wf-{n}")
        metrics.run_finished(f"wf-{n}", "success")
    s = parse(metrics.exposition().decode())
    labels = {dict(ls)["workflow"] for name, ls in s if name == "wfg_jobs_enqueued_total"}
    assert len(labels) == 101
    assert OTHER in labels and "wf-0" in labels and "wf-99" in labels and "wf-100" not in labels
    assert value(s, "wfg_jobs_enqueued_total", workflow=OTHER) == 9_900
    assert value(s, "wfg_runs_finished_total", workflow=OTHER, status="success") == 9_900
    assert sum(v for (name, _), v in s.items() if name == "wfg_jobs_enqueued_total") == 10_000


def test_label_set_values_are_bounded_and_http_methods_too():
    metrics = Metrics(max_label_sets=2)
    ready = {frozenset({f"l{n}"}): (1, 0) for n in range(10)} | {frozenset(): (2, 0)}
    s = parse(metrics.exposition(QueueState(ready=ready, now_ms=1000)).decode())
    sets = {dict(ls)["labels"] for name, ls in s if name == "wfg_jobs_ready"}
    assert len(sets) == 3 and OTHER in sets
    assert sum(v for (name, _), v in s.items() if name == "wfg_jobs_ready") == 12
    assert label_set_text([]) == "(none)" and label_set_text(["b", "a"]) == "a,b"
    for n in range(50):
        metrics.http_request("(unmatched)", f"VERB{n}", 405, 0.001)
    s = parse(metrics.exposition().decode())
    methods = {dict(ls)["method"] for name, ls in s if name == "wfg_http_requests_total"}
    assert methods == {OTHER}


async def test_two_runtimes_keep_separate_metrics():
    async with open_runtime(specs=[pipeline()]) as one, open_runtime(specs=[pipeline()]) as two:
        await one.run_workflow("ops")
        s1, s2 = parse((await one.scrape()).decode()), parse((await two.scrape()).decode())
    assert value(s1, "wfg_jobs_enqueued_total", workflow="ops") == 1
    assert value(s1, "wfg_jobs_ready", labels="(none)") == 1
    assert ("wfg_jobs_enqueued_total", frozenset({("workflow", "ops")})) not in s2
    assert ("wfg_jobs_ready", frozenset({("labels", "(none)")})) not in s2


@pytest.mark.parametrize(
    ("public", "token", "status"),
    [(False, None, 401), (False, "api-secret", 200), (True, None, 200)],
)
async def test_metrics_need_the_api_token_unless_public(public, token, status):
    async with open_runtime() as rt:
        app = create_app(rt, api_token="api-secret", worker_token="w", metrics_public=public)
        async with app.test_app() as test_app:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            response = await test_app.test_client().get("/metrics", headers=headers)
            assert response.status_code == status
            if status == 401:
                assert "api token" in (await response.get_json())["error"]
