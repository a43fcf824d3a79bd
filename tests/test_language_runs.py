"""The definition language at work in real runs: conditions, failure handling, matrix.

Workflows are created from definition text (`{"definition": ...}`) and driven
through the worker protocol over HTTP, so what is checked is what a worker
and a user see: which jobs are claimed, with which commands, and how the run
ends. A restart on a durable store mid-run keeps matrix and conditions.
"""

from __future__ import annotations

import textwrap
from collections.abc import Set
from pathlib import Path

import pytest
import trio
from homes import HOMES, Home, make_home
from test_http_api import assert_object
from test_runs import RunsApi, by_id, serve_runs


async def create(api: RunsApi, text: str) -> str:
    resp = await api.post("/api/workflows", {"definition": textwrap.dedent(text)})
    body = await resp.get_json()
    assert resp.status_code == 201, body
    return body["id"]


async def drive(api: RunsApi, fail: Set[str] = frozenset(), outputs=None) -> list[str]:
    return await api.finish_all(fail=set(fail), outputs=outputs)


@pytest.fixture(params=HOMES)
def home(request):
    yield from make_home(request, request.param)


@pytest.fixture
async def api(home: Home):
    async with serve_runs(home) as a:
        yield a


CLEANUP = """\
name: cleanup
jobs:
  build:
    run: make
  deploy:
    needs: build
    run: ./deploy
  cleanup:
    needs: [build, deploy]
    if: always()
    run: ./cleanup
  notify:
    needs: [build, deploy]
    if: failure()
    run: ./page-someone "${{ needs.build.result }}"
"""


async def test_always_cleans_up_and_failure_notifies_after_a_failure(api: RunsApi):
    wf = await create(api, CLEANUP)
    await api.start(wf)
    claimed = await drive(api, fail={"build"})
    assert claimed == ["build", "cleanup", "notify"]
    record = await api.run_record(wf, 1)
    jobs = by_id(record)
    assert {k: v["status"] for k, v in jobs.items()} == {
        "build": "failure",
        "deploy": "skipped",
        "cleanup": "success",
        "notify": "success",
    }
    assert jobs["notify"]["command"].endswith('./page-someone "failure"')
    assert record["status"] == "failure"


async def test_failure_notify_is_skipped_when_all_goes_well(api: RunsApi):
    wf = await create(api, CLEANUP)
    await api.start(wf)
    assert await drive(api) == ["build", "deploy", "cleanup"]
    record = await api.run_record(wf, 1)
    assert by_id(record)["notify"]["status"] == "skipped"
    assert record["status"] == "success"  # a condition's skip does not fail the run


async def test_a_cancelled_run_still_runs_its_always_job(api: RunsApi):
    wf = await create(
        api,
        """\
        name: teardown
        jobs:
          test:
            run: ./long-tests
          report:
            needs: test
            run: ./report
          teardown:
            needs: test
            if: ${{ always() }}
            run: ./teardown
          on-cancel:
            needs: test
            if: cancelled()
            run: ./say-cancelled
        """,
    )
    await api.start(wf)
    claim = await api.claim_job()
    await api.cancel(wf)
    await assert_object(await api.heartbeat(claim["lease"]["lease_id"]), 409)
    assert await drive(api) == ["teardown", "on-cancel"]
    record = await api.run_record(wf, 1)
    statuses = {k: v["status"] for k, v in by_id(record).items()}
    assert statuses == {
        "test": "cancelled",
        "report": "cancelled",
        "teardown": "success",
        "on-cancel": "success",
    }
    assert record["status"] == "cancelled"


async def test_continue_on_error_in_the_middle_of_a_chain(api: RunsApi):
    wf = await create(
        api,
        """\
        name: soft
        jobs:
          lint:
            continue-on-error: true
            run: ./lint
          build:
            needs: lint
            run: echo "lint was ${{ needs.lint.result }}"
          ship:
            needs: build
            run: ./ship
        """,
    )
    await api.start(wf)
    assert await drive(api, fail={"lint"}) == ["lint", "build", "ship"]
    record = await api.run_record(wf, 1)
    jobs = by_id(record)
    assert jobs["lint"]["status"] == "failure"
    assert jobs["build"]["command"].endswith('echo "lint was failure"')
    assert record["status"] == "success"


async def test_a_condition_on_a_needed_output(api: RunsApi):
    text = """\
        name: gate
        jobs:
          check:
            run: ./check
          deploy:
            needs: check
            if: needs.check.outputs.ready == 'yes'
            run: ./deploy ${{ needs.check.outputs.version }}
        """
    wf = await create(api, text)
    await api.start(wf)
    claimed = await drive(api, outputs={"check": {"ready": "YES", "version": "1.2"}})
    assert claimed == ["check", "deploy"]  # GitHub compares strings ignoring case
    assert by_id(await api.run_record(wf, 1))["deploy"]["command"].endswith("./deploy 1.2")
    await api.start(wf)
    assert await drive(api, outputs={"check": {"ready": "no"}}) == ["check"]
    record = await api.run_record(wf, 2)
    assert by_id(record)["deploy"]["status"] == "skipped" and record["status"] == "success"


MATRIX = """\
name: matrix
jobs:
  test:
    name: Test
    runs-on: ${{ matrix.os }}
    strategy:
      fail-fast: true
      matrix:
        os: [linux, arm]
        python: ['3.11', '3.12']
        exclude:
          - os: arm
            python: '3.11'
        include:
          - os: linux
            python: '3.12'
            coverage: true
    run: pytest --py ${{ matrix.python }} ${{ matrix.coverage && '--cov' || '' }}
  report:
    needs: test
    if: always()
    run: echo "${{ needs.test.result }}"
"""


async def test_a_matrix_expands_with_include_and_exclude(api: RunsApi):
    wf = await create(api, MATRIX)
    await api.start(wf)
    record = await api.run_record(wf, 1)
    ids = [j["id"] for j in record["jobs"]]
    # An `include` key belongs to its combination: its value is in the id and name.
    assert ids == ["test-linux-3.11", "test-linux-3.12-true", "test-arm-3.12", "report"]
    names = [j["name"] for j in record["jobs"][:3]]
    assert names == ["Test (linux, 3.11)", "Test (linux, 3.12, true)", "Test (arm, 3.12)"]
    assert by_id(record)["report"]["depends_on"] == ids[:3]
    seen = {}
    for labels in (["linux"], ["linux"], ["arm"]):
        claim = await api.claim_job(labels=labels)
        seen[claim["job"]["job_id"]] = claim["job"]
        await api.finish(claim)
    assert seen["test-linux-3.12-true"]["command"].rstrip().endswith("--py 3.12 --cov")
    assert seen["test-linux-3.11"]["command"].rstrip().endswith("--py 3.11")
    assert seen["test-arm-3.12"]["required_labels"] == ["arm"]
    report = await api.claim_job()
    assert report["job"]["command"].endswith('echo "success"')


async def test_fail_fast_cancels_the_unfinished_combinations(api: RunsApi):
    wf = await create(api, MATRIX)
    await api.start(wf)
    first = await api.claim_job(labels=["linux"])
    second = await api.claim_job(labels=["linux"])
    await assert_object(await api.fail(first["lease"]["lease_id"], "boom"))
    await assert_object(await api.heartbeat(second["lease"]["lease_id"]), 409)  # revoked
    report = await api.claim_job(labels=["arm"])  # the arm combination was withdrawn
    assert report["job"]["job_id"] == "report"
    assert report["job"]["command"].endswith('echo "failure"')
    await api.finish(report)
    record = await api.run_record(wf, 1)
    assert [j["status"] for j in record["jobs"]] == ["failure", "cancelled", "cancelled", "success"]
    assert record["status"] == "failure"


async def test_max_parallel_is_never_exceeded_under_concurrent_claimers(
    api: RunsApi, autojump_clock
):
    wf = await create(
        api,
        """\
        name: capped
        jobs:
          shard:
            strategy:
              max-parallel: 2
              matrix:
                n: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
            run: ./shard ${{ matrix.n }}
        """,
    )
    await api.start(wf)
    running: set[str] = set()
    peak = 0
    done: list[str] = []

    async def worker(name: str) -> None:
        nonlocal peak
        while len(done) < 10:
            claim = await api.claim(name, wait_secs=1)
            if claim is None:
                continue
            running.add(claim["job"]["job_id"])
            peak = max(peak, len(running))
            await trio.sleep(0.5)
            running.discard(claim["job"]["job_id"])
            done.append(claim["job"]["job_id"])
            await api.finish(claim)

    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            for i in range(8):
                nursery.start_soon(worker, f"w{i}")
    assert peak == 2
    assert sorted(done) == sorted(f"shard-{n}" for n in range(1, 11))
    assert (await api.run_record(wf, 1))["status"] == "success"


async def test_matrix_and_conditions_survive_a_restart(home: Home, tmp_path: Path):
    data = tmp_path / "data"
    async with serve_runs(home, data_dir=data) as api:
        wf = await create(api, MATRIX)
        await api.start(wf)
        held = await api.claim_job(labels=["linux"])
        await api.finish(await api.claim_job(labels=["arm"]))
    async with serve_runs(home, data_dir=data) as api:
        record = await api.run_record(wf, 1)
        statuses = [j["status"] for j in record["jobs"]]
        assert statuses == ["running", "queued", "success", "queued"]
        await api.finish(held)  # the lease survived
        claim = await api.claim_job(labels=["linux"])
        assert claim["job"]["job_id"] == "test-linux-3.12-true"
        await assert_object(await api.fail(claim["lease"]["lease_id"], "flaky"))
        report = await api.claim_job()
        assert report["job"]["job_id"] == "report"
        assert report["job"]["command"].endswith('echo "failure"')
        await api.finish(report)
        assert (await api.run_record(wf, 1))["status"] == "failure"
