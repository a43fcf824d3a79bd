"""The language's answers as the run rules use them: a definition driven through
`rules.RunPlan`/`Transition` (matrix, max-parallel, fail-fast, conditions,
continue-on-error), with no server around it."""

from __future__ import annotations

import textwrap
from typing import Any

from actors.definitions import parse_definition_text
from actors.models import JobStatus, RunStatus
from actors.rules import Run, RunPlan, Transition


def start(text: str, inputs: dict[str, Any] | None = None) -> tuple[RunPlan, Run]:
    spec = parse_definition_text("wf", textwrap.dedent(text))
    run = Run(workflow_id="wf", number=1, inputs=inputs or {})
    run_plan = RunPlan(spec, run)
    run.jobs = run_plan.new_jobs()
    Transition(run_plan, run, now=0).start()
    return run_plan, run


def queued(run: Run) -> list[str]:
    return [job_id for job_id, job in run.jobs.items() if job.in_queue]


def statuses(run: Run) -> dict[str, str]:
    return {job_id: job.status.value for job_id, job in run.jobs.items()}


def claim(run_plan: RunPlan, run: Run, job_id: str) -> str:
    lease = f"lease-{job_id}"
    assert Transition(run_plan, run, now=1).claimed(job_id, 0, lease)
    return lease


def finish(run_plan: RunPlan, run: Run, job_id: str, ok: bool = True) -> None:
    lease = claim(run_plan, run, job_id)
    t = Transition(run_plan, run, now=2)
    if ok:
        t.completed(job_id, lease, {"done": job_id})
    else:
        t.failed(job_id, lease, "boom", retryable=False)


MATRIX = """\
name: M
jobs:
  test:
    strategy:
      max-parallel: 1
      matrix:
        n: [1, 2, 3]
    run: echo ${{ matrix.n }}
  report:
    needs: test
    if: always()
    run: echo ${{ needs.test.result }}
"""


def test_max_parallel_queues_one_combination_at_a_time() -> None:
    run_plan, run = start(MATRIX)
    assert queued(run) == ["test-1"]
    assert run.jobs["test-1"].rendered is not None
    assert run.jobs["test-1"].rendered.command == "echo 1"
    finish(run_plan, run, "test-1")
    assert queued(run) == ["test-2"]
    finish(run_plan, run, "test-2")
    finish(run_plan, run, "test-3")
    assert queued(run) == ["report"]
    rendered = run.jobs["report"].rendered
    assert rendered is not None and rendered.command == "echo success"


def test_fail_fast_cancels_the_other_combinations_and_always_still_runs() -> None:
    run_plan, run = start(MATRIX.replace("max-parallel: 1", "max-parallel: 3"))
    assert queued(run) == ["test-1", "test-2", "test-3"]
    claim(run_plan, run, "test-2")
    finish(run_plan, run, "test-1", ok=False)
    assert statuses(run) == {
        "test-1": "failure",
        "test-2": "cancelled",
        "test-3": "cancelled",
        "report": "queued",
    }
    assert queued(run) == ["report"]
    rendered = run.jobs["report"].rendered
    assert rendered is not None and rendered.command == "echo failure"


def test_without_fail_fast_the_others_go_on() -> None:
    run_plan, run = start(MATRIX.replace("max-parallel: 1", "fail-fast: false"))
    finish(run_plan, run, "test-1", ok=False)
    assert statuses(run)["test-2"] == "queued" and "test-2" in queued(run)


def test_conditions_and_continue_on_error_decide_the_run() -> None:
    run_plan, run = start(
        """\
        name: C
        on:
          workflow_dispatch:
            inputs:
              deploy: {type: boolean, default: false}
        jobs:
          flaky:
            continue-on-error: true
            run: exit 1
          build:
            needs: flaky
            run: make
          deploy:
            needs: build
            if: inputs.deploy
            run: ./deploy
          cleanup:
            needs: deploy
            if: failure()
            run: ./cleanup
        """,
        inputs={"deploy": False},
    )
    finish(run_plan, run, "flaky", ok=False)
    assert run.jobs["flaky"].soft_failed
    assert queued(run) == ["build"]  # a soft failure passes for success()
    finish(run_plan, run, "build")
    assert statuses(run) == {
        "flaky": "failure",
        "build": "success",
        "deploy": "skipped",
        "cleanup": "skipped",
    }
    assert run.status is RunStatus.success


def test_a_job_whose_matrix_fails_for_the_run_fails_with_the_reason() -> None:
    run_plan, run = start(
        """\
        name: D
        on:
          workflow_dispatch:
            inputs:
              oses: {default: '[]'}
        jobs:
          test:
            strategy:
              matrix:
                os: ${{ fromJSON(inputs.oses) }}
            run: x
          after:
            needs: test
            run: y
        """,
        inputs={"oses": "not json"},
    )
    assert run.jobs["test"].status is JobStatus.failure
    assert (run.jobs["test"].output or "").startswith("matrix: strategy.matrix: fromJSON")
    assert run.jobs["after"].status is JobStatus.skipped
    assert run.status is RunStatus.failure
