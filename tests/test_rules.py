"""The rules of a run, tested where they live: pure functions of a run's state.

No trio, no store, no HTTP: each case builds a run, applies events with
`rules.Transition` at explicit instants, and checks the jobs, the run and the
effects the caller would carry out. Both homes of the engine apply exactly
these rules, so what holds here holds for the embedded engine and PostgreSQL.
"""

from __future__ import annotations

import pytest

from actors.errors import LeaseNotActive
from actors.models import ExponentialBackoff, JobStatus, RetryPolicy, RunStatus
from actors.rules import (
    JOB_TIMEOUT_GRACE_SECS,
    LEASE_EXPIRED,
    JobRun,
    Run,
    RunPlan,
    Transition,
    rerun_jobs,
)
from actors.spec import JobSpec, WorkflowSpec

T0 = 1_700_000_000_000


def spec(*jobs: JobSpec) -> WorkflowSpec:
    return WorkflowSpec(id="wf", name="wf", trigger="", jobs=jobs)


def j(job_id: str, *needs: str, **fields) -> JobSpec:
    return JobSpec(id=job_id, name=job_id, command=f"run {job_id}", depends_on=needs, **fields)


class Case:
    """A run of a definition, driven event by event."""

    def __init__(self, definition: WorkflowSpec, *, cascade: bool = True, number: int = 1):
        self.run = Run(workflow_id="wf", number=number, created_at_ms=T0)
        self.plan = RunPlan(definition, self.run)
        self.run.jobs = self.plan.new_jobs()
        self.cascade = cascade
        self.now = T0
        self.leases: dict[str, str] = {}
        self.fx = Transition(self.plan, self.run, self.now, cascade=cascade).fx

    def step(self) -> Transition:
        return Transition(self.plan, self.run, self.now, cascade=self.cascade)

    def start(self):
        self.fx = self.step().start()
        return self

    def claim(self, job_id: str) -> str:
        lease = f"lease-{job_id}-{self.run.jobs[job_id].attempt}"
        step = self.step()
        assert step.claimed(job_id, self.run.jobs[job_id].attempt, lease)
        self.leases[job_id] = lease
        return lease

    def complete(self, job_id: str, **outputs: str):
        self.fx = self.step().completed(job_id, self.claim(job_id), outputs)
        return self.fx

    def fail(self, job_id: str, retryable: bool = False, error: str = "boom"):
        self.fx = self.step().failed(job_id, self.claim(job_id), error, retryable)
        return self.fx

    def statuses(self) -> dict[str, str]:
        return {k: v.status.value for k, v in self.run.jobs.items()}

    def ready(self) -> list[str]:
        return [k for k, v in self.run.jobs.items() if v.in_queue]


def test_start_queues_the_roots_in_definition_order():
    case = Case(spec(j("b"), j("a"), j("c", "a"))).start()
    assert case.fx.enqueued == ["b", "a"]
    assert case.run.status is RunStatus.running and case.run.started_at_ms == T0
    assert case.ready() == ["b", "a"]


def test_complete_queues_a_dependent_once_every_need_succeeded():
    case = Case(spec(j("a"), j("b"), j("c", "a", "b"))).start()
    assert case.complete("a").enqueued == []
    assert case.complete("b").enqueued == ["c"]
    fx = case.complete("c", out="1")
    assert fx.ended and case.run.status is RunStatus.success
    assert case.run.jobs["c"].outputs == {"out": "1"}


def test_a_failure_skips_every_transitive_dependent_at_once():
    case = Case(spec(j("a"), j("e"), j("b", "a"), j("c", "b"), j("d", "a", "e"), j("f", "e")))
    case.start()
    fx = case.fail("a")
    statuses = case.statuses()
    assert statuses["a"] == "failure" and case.run.jobs["a"].output == "boom"
    # d also needs e, which is still queued: it is skipped now, not when e ends.
    assert [statuses[x] for x in "bcd"] == ["skipped"] * 3
    assert statuses["e"] == "queued" and statuses["f"] == "queued"
    assert not fx.ended and case.run.status is RunStatus.running
    case.complete("e")
    case.complete("f")
    assert case.run.status is RunStatus.failure and case.run.finished_at_ms == T0


def test_a_retryable_failure_retries_within_the_budget_with_backoff():
    policy = RetryPolicy(
        max_retries=2,
        backoff=ExponentialBackoff.model_validate({"Exponential": {"base_secs": 2, "max_secs": 5}}),
    )
    case = Case(spec(j("a", retry_policy=policy))).start()
    fx = case.fail("a", retryable=True)
    job = case.run.jobs["a"]
    assert fx.enqueued == ["a"] and fx.attempt_ended == [("a", False)]
    assert fx.released == ["lease-a-0"]
    assert job.status is JobStatus.queued and job.attempt == 1
    assert job.delayed_until_ms == T0 + 4_000  # min(2 * 2**1, 5)
    case.fail("a", retryable=True)
    assert case.run.jobs["a"].delayed_until_ms == T0 + 5_000  # capped
    fx = case.fail("a", retryable=True)  # attempt 2 = max_retries: final
    assert case.run.jobs["a"].status is JobStatus.failure and fx.ended


def test_an_expiry_is_a_retryable_failure():
    case = Case(spec(j("a", retry_policy=RetryPolicy(max_retries=1)))).start()
    lease = case.claim("a")
    case.step().expired("a", lease)
    assert case.run.jobs["a"].attempt == 1 and case.run.jobs["a"].in_queue
    lease = case.claim("a")
    case.step().expired("a", lease)
    assert case.run.jobs["a"].status is JobStatus.failure
    assert case.run.jobs["a"].output == LEASE_EXPIRED


def test_a_report_for_another_lease_or_an_ended_job_is_refused():
    case = Case(spec(j("a"), j("b"))).start()
    lease = case.claim("a")
    with pytest.raises(LeaseNotActive):
        case.step().completed("a", "someone-else", {})
    with pytest.raises(LeaseNotActive):
        case.step().completed("b", lease, {})  # b is not running under it
    case.step().completed("a", lease, {})
    with pytest.raises(LeaseNotActive):
        case.step().failed("a", lease, "late", True)
    # A stale claim (already taken, or another attempt) is dropped.
    assert not case.step().claimed("a", 0, "x")
    assert not case.step().claimed("b", 3, "x")


def test_cancel_withdraws_revokes_and_never_cascades():
    case = Case(spec(j("a"), j("b"), j("c", "a"), j("d", "b"))).start()
    lease = case.claim("a")
    fx = case.step().cancel()
    assert fx.withdrawn == ["b"] and fx.revoked == [lease]
    assert set(case.statuses().values()) == {"cancelled"}
    assert fx.enqueued == [] and fx.ended
    assert case.run.status is RunStatus.cancelled
    assert case.step().cancel().changed == set()  # a finished run is left as it is


def test_cancel_of_a_run_waiting_for_its_group_cancels_every_job():
    case = Case(spec(j("a"), j("b", "a")))
    fx = case.step().cancel()
    assert fx.ended and case.run.status is RunStatus.cancelled
    assert case.statuses() == {"a": "cancelled", "b": "cancelled"}
    assert case.run.started_at_ms is None


def test_without_cascade_nothing_is_queued_or_skipped_downstream():
    case = Case(spec(j("a"), j("b", "a"), j("c"), j("d", "c")), cascade=False).start()
    assert case.complete("a").enqueued == []
    case.fail("c")
    assert case.statuses() == {"a": "success", "b": "queued", "c": "failure", "d": "queued"}
    assert case.run.status is RunStatus.running


def test_queue_timeout_fails_an_unclaimed_job_without_retry():
    case = Case(spec(j("a", queue_timeout_secs=30, retry_policy=RetryPolicy(max_retries=3))))
    case.start()
    assert case.run.jobs["a"].queue_deadline_ms == T0 + 30_000
    case.now = T0 + 29_999
    assert case.step().queue_timed_out("a").changed == set()  # not yet
    case.now = T0 + 30_000
    fx = case.step().queue_timed_out("a")
    job = case.run.jobs["a"]
    assert fx.withdrawn == ["a"] and job.status is JobStatus.failure
    assert "queue timeout" in job.output and job.attempt == 0
    assert case.run.status is RunStatus.failure


def test_a_claimed_job_has_no_queue_deadline_and_a_timeout_with_grace():
    case = Case(spec(j("a", queue_timeout_secs=30, timeout_secs=60))).start()
    lease = case.claim("a")
    job = case.run.jobs["a"]
    assert job.queue_deadline_ms is None
    assert job.timeout_at_ms == T0 + (60 + JOB_TIMEOUT_GRACE_SECS) * 1000
    case.now = job.timeout_at_ms
    fx = case.step().job_timed_out("a", lease)
    assert fx.revoked == [lease] and job.status is JobStatus.failure
    assert "timed out" in job.output


def test_a_run_timeout_cancels_what_is_unfinished_and_fails_the_run():
    case = Case(spec(j("a"), j("b", "a")))
    case.plan.timeout_secs = 100
    case.start()
    assert case.run.deadline_ms == T0 + 100_000
    lease = case.claim("a")
    case.now = T0 + 100_000
    fx = case.step().timed_out()
    assert fx.revoked == [lease] and fx.ended
    assert case.statuses() == {"a": "cancelled", "b": "cancelled"}
    assert case.run.status is RunStatus.failure and "timed out" in case.run.reason


def test_rerun_failed_only_carries_successes():
    definition = spec(j("a"), j("b", "a"), j("c", "a"), j("d", "b", "c"))
    first = Case(definition).start()
    first.complete("a", artifact="x")
    first.fail("b")
    first.complete("c")
    assert first.run.status is RunStatus.failure
    second = Case(definition, number=2)
    second.run.jobs = rerun_jobs(first.run, second.plan, failed_only=True)
    assert second.statuses() == {"a": "success", "b": "queued", "c": "success", "d": "queued"}
    assert second.run.jobs["a"].carried and second.run.jobs["a"].outputs == {"artifact": "x"}
    second.start()
    assert second.ready() == ["b"]
    second.complete("b")
    second.complete("d")
    assert second.run.status is RunStatus.success
    everything = rerun_jobs(first.run, second.plan, failed_only=False)
    assert {s.status for s in everything.values()} == {JobStatus.queued}


def test_a_rerun_of_nothing_failed_ends_at_once():
    definition = spec(j("a"))
    first = Case(definition).start()
    first.complete("a")
    second = Case(definition, number=2)
    second.run.jobs = rerun_jobs(first.run, second.plan, failed_only=True)
    assert second.start().fx.ended and second.run.status is RunStatus.success


def test_rows_round_trip():
    case = Case(spec(j("a", timeout_secs=5), j("b", "a"))).start()
    case.claim("a")
    for job in case.run.jobs.values():
        assert JobRun.from_row(job.to_row()) == job
    assert Run.from_row(case.run.to_row(), case.run.jobs) == case.run


def test_ancestors_of_a_deep_chain_do_not_recurse():
    jobs = [j("n0")] + [j(f"n{i}", f"n{i - 1}") for i in range(1, 3000)]
    case = Case(spec(*jobs))
    assert len(case.plan.ancestors("n2999")) == 2999
