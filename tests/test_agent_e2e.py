"""The shell agent end to end: a real server process and real `wfg worker` processes."""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import httpx
import pytest
from conftest import EXAMPLES
from worker_helpers import (
    cancel_workflow,
    job_logs,
    jobs_by_id,
    kill_group_quietly,
    log_text,
    process_alive,
    run_workflow,
    start_worker,
    status,
    wait_for,
    wait_job_status,
    wait_until_finished,
    write_workflow,
)


@pytest.fixture
def workers():
    """Start worker processes with `workers(url, *args)`; all are stopped at the end."""
    started = []

    def start(url: str, *args: str, **kwargs):
        worker = start_worker(url, *args, **kwargs)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.shutdown()


def test_ci_example_runs_to_success(workflows_dir: Path, server_factory, workers) -> None:
    example = EXAMPLES / "ci-1.yml"
    if not example.exists():
        pytest.skip("workflows/ci-1.yml is not there yet")
    shutil.copy(example, workflows_dir / "ci-1.yml")
    server = server_factory(workflows_dir)
    worker = workers(server.url, "--concurrency", "4", "--id", "ci-worker")
    run_workflow(server.url, "ci-1")
    jobs = wait_until_finished(server.url, "ci-1", timeout=30)

    assert {job_id: job["status"] for job_id, job in jobs.items()} == {
        job_id: "success" for job_id in jobs
    }, worker.output()
    for job_id in jobs:
        assert log_text(job_logs(server.url, "ci-1", job_id)).strip(), f"no log for {job_id}"
    # unit-tests wrote coverage to $WFG_OUTPUT; build prints its upstream outputs.
    assert '"coverage": "94%"' in log_text(job_logs(server.url, "ci-1", "build"))
    # One start line, then one line per job start and end.
    out = worker.output()
    assert "ci-worker" in out.splitlines()[0] and server.url in out.splitlines()[0]
    assert out.count("started") == len(jobs) and out.count("success") == len(jobs)


OUTPUTS = r"""
name: outputs
on: push
jobs:
  produce:
    run: |
      echo "::set-output version=1.2.3"
      echo "artifact=dist/app.whl" >> "$WFG_OUTPUT"
      printf 'notes<<EOF\nfirst line\nsecond line\nEOF\n' >> "$WFG_OUTPUT"
      echo "to stderr" >&2
  consume:
    needs: produce
    labels: [docker]
    env: {GREETING: hi}
    run: |
      cat "$WFG_UPSTREAM_OUTPUTS"
      echo
      echo "ids=$WFG_WORKFLOW_ID/$WFG_JOB_ID/$WFG_ATTEMPT greeting=$GREETING"
      echo "files=$WFG_UPSTREAM_OUTPUTS,$WFG_OUTPUT"
      echo "token=${WORKER_TOKEN:-unset}"
"""


def test_outputs_reach_the_dependent(workflows_dir: Path, server_factory, workers) -> None:
    write_workflow(workflows_dir, "outputs", OUTPUTS)
    server = server_factory(workflows_dir)
    # Settings from the environment; `consume` needs the `docker` label.
    env = {"WORKER_ID": "env-worker", "WORKER_LABELS": "linux, docker", "WORKER_TOKEN": "s3cret"}
    workers(server.url, env=env)
    run_workflow(server.url, "outputs")
    jobs = wait_until_finished(server.url, "outputs")
    assert jobs["produce"]["status"] == "success" and jobs["consume"]["status"] == "success"

    produce_logs = job_logs(server.url, "outputs", "produce")
    # `::set-output` lines are still logged; stderr keeps its stream.
    assert "::set-output version=1.2.3" in log_text(produce_logs, "stdout")
    assert log_text(produce_logs, "stderr") == "to stderr\n"
    assert [c["sequence"] for c in produce_logs] == list(range(len(produce_logs)))

    consume_log = log_text(job_logs(server.url, "outputs", "consume"))
    upstream = json.loads(consume_log.splitlines()[0])
    assert upstream == {
        "produce": {
            "version": "1.2.3",
            "artifact": "dist/app.whl",
            "notes": "first line\nsecond line",
        }
    }
    assert "ids=outputs/consume/0 greeting=hi" in consume_log
    # The worker's token is not handed to jobs.
    assert "token=unset" in consume_log
    # The temporary files are gone once the job is over.
    files = consume_log.split("files=", 1)[1].splitlines()[0].split(",")
    assert len(files) == 2 and not any(Path(f).exists() for f in files)
    registered = httpx.get(f"{server.url}/api/workers", timeout=10).json()
    assert [(w["worker_id"], w["labels"]) for w in registered] == [
        ("env-worker", ["linux", "docker"])
    ]


FAILING = """
name: failing
on: push
jobs:
  flaky:
    retries: 2
    backoff: {Fixed: {delay_secs: 0}}
    run: |
      echo "attempt $WFG_ATTEMPT"
      exit 1
  broken:
    run: |
      echo "about to fail"
      echo "details on stderr" >&2
      exit 3
  after-broken:
    needs: broken
    run: echo never
  last:
    needs: after-broken
    run: echo never
"""


def test_failures_retries_and_skipped_dependents(
    workflows_dir: Path, server_factory, workers
) -> None:
    write_workflow(workflows_dir, "failing", FAILING)
    server = server_factory(workflows_dir)
    workers(server.url, "--concurrency", "2")
    run_workflow(server.url, "failing")
    jobs = wait_until_finished(server.url, "failing")

    assert jobs["flaky"]["status"] == "failure"
    assert jobs["flaky"]["attempt"] == 2
    assert jobs["flaky"]["output"].startswith("exit code 1: attempt 2")
    # The run's log holds every attempt, in order.
    assert log_text(job_logs(server.url, "failing", "flaky")) == "attempt 0\nattempt 1\nattempt 2\n"

    assert jobs["broken"]["status"] == "failure"
    assert jobs["broken"]["output"].startswith("exit code 3")
    assert "about to fail" in jobs["broken"]["output"]
    assert "details on stderr" in jobs["broken"]["output"]
    assert jobs["after-broken"]["status"] == "skipped"
    assert jobs["last"]["status"] == "skipped"


AWKWARD = r"""
name: awkward
on: push
jobs:
  bytes:
    run: |
      printf 'caf\303'; sleep 0.3; printf '\251\n'
      printf '\377 not utf-8\n'
      printf 'no newline at the end'
  slow:
    timeout: 1
    run: |
      echo "starting"
      sleep 30
"""


def test_output_decoding_and_timeout(workflows_dir: Path, server_factory, workers) -> None:
    write_workflow(workflows_dir, "awkward", AWKWARD)
    server = server_factory(workflows_dir)
    workers(server.url, "--concurrency", "2")
    run_workflow(server.url, "awkward")
    jobs = wait_until_finished(server.url, "awkward", timeout=15)

    assert jobs["bytes"]["status"] == "success"
    text = log_text(job_logs(server.url, "awkward", "bytes"))
    # A character split across two reads survives; bad bytes become U+FFFD.
    assert "café\n" in text
    assert "\ufffd not utf-8\n" in text
    assert text.endswith("no newline at the end")

    assert jobs["slow"]["status"] == "failure"
    assert jobs["slow"]["output"] == "timeout after 1 s"
    assert jobs["slow"]["duration_secs"] < 10


LONG = """
name: long
on: push
jobs:
  long:
    run: |
      echo $$ > "$PID_DIR/sh.pid"
      sleep 60 &
      echo $! > "$PID_DIR/sleep.pid"
      wait
"""


def test_cancel_kills_the_process_group(
    workflows_dir: Path, tmp_path: Path, server_factory, workers
) -> None:
    write_workflow(workflows_dir, "long", LONG)
    server = server_factory(workflows_dir)
    workers(server.url, env={"PID_DIR": str(tmp_path)})
    run_workflow(server.url, "long")
    wait_for(lambda: (tmp_path / "sleep.pid").exists(), 10, "the job to start")
    pids = [int((tmp_path / name).read_text()) for name in ("sh.pid", "sleep.pid")]
    assert all(process_alive(pid) for pid in pids)

    cancel_workflow(server.url, "long")
    # SIGTERM reaches the shell and its child: both are gone well before the 5 s grace.
    wait_for(lambda: not any(process_alive(pid) for pid in pids), 5, "the job's processes to end")
    assert jobs_status(server.url, "long") == "cancelled"


def jobs_status(url: str, workflow_id: str) -> str:
    (job,) = status(url, workflow_id)["jobs"]
    return job["status"]


RESCUED = """
name: rescued
on: push
jobs:
  job:
    retries: 1
    backoff: {Fixed: {delay_secs: 0}}
    run: |
      echo $$ > "$PID_DIR/attempt-$WFG_ATTEMPT.pid"
      if [ "$WFG_ATTEMPT" = 0 ]; then sleep 60; fi
      echo "done on attempt $WFG_ATTEMPT"
"""


def test_killed_worker_lease_expires_and_another_worker_finishes(
    workflows_dir: Path, tmp_path: Path, server_factory, workers
) -> None:
    write_workflow(workflows_dir, "rescued", RESCUED)
    server = server_factory(workflows_dir, env={"REAP_INTERVAL_SECS": "1"})
    env = {"PID_DIR": str(tmp_path)}
    first = workers(server.url, "--lease-ttl", "2", "--id", "doomed", env=env)
    run_workflow(server.url, "rescued")
    try:
        wait_for(lambda: (tmp_path / "attempt-0.pid").exists(), 10, "attempt 0 to start")
        first.signal(signal.SIGKILL)
        first.wait(5)
        workers(server.url, "--lease-ttl", "2", "--id", "rescuer", env=env)
        jobs = wait_until_finished(server.url, "rescued", timeout=20)
    finally:
        # Should the watchdog have failed to end attempt 0 along with its worker.
        kill_group_quietly(tmp_path / "attempt-0.pid")
    assert jobs["job"]["status"] == "success"
    assert jobs["job"]["attempt"] == 1
    assert "done on attempt 1" in log_text(job_logs(server.url, "rescued", "job"))


GRACEFUL = """
name: graceful
on: push
jobs:
  running:
    run: |
      touch "$PID_DIR/started"
      sleep 1.5
      echo "finished cleanly"
  next:
    needs: running
    run: echo "must not be claimed by a stopping worker"
"""


def test_sigterm_lets_the_running_job_finish(
    workflows_dir: Path, tmp_path: Path, server_factory, workers
) -> None:
    write_workflow(workflows_dir, "graceful", GRACEFUL)
    server = server_factory(workflows_dir)
    worker = workers(server.url, env={"PID_DIR": str(tmp_path)})
    run_workflow(server.url, "graceful")
    wait_for(lambda: (tmp_path / "started").exists(), 10, "the job to start")
    # To the worker's whole process group, as a terminal's Ctrl-C or `kill -- -PGID`
    # would: the job has its own session and must not get it.
    worker.signal_group(signal.SIGTERM)
    assert worker.wait(15) == 0, worker.output()

    jobs = jobs_by_id(status(server.url, "graceful"))
    assert jobs["running"]["status"] == "success", worker.output()
    assert "finished cleanly" in log_text(job_logs(server.url, "graceful", "running"))
    # `next` became claimable as `running` completed; a stopping worker leaves it.
    assert jobs["next"]["status"] == "queued"
    assert "stopped" in worker.output().splitlines()[-1]


def test_second_sigterm_kills_and_reports_the_job(
    workflows_dir: Path, tmp_path: Path, server_factory, workers
) -> None:
    write_workflow(workflows_dir, "long", LONG)
    server = server_factory(workflows_dir)
    worker = workers(server.url, env={"PID_DIR": str(tmp_path)})
    run_workflow(server.url, "long")
    wait_for(lambda: (tmp_path / "sleep.pid").exists(), 10, "the job to start")
    pids = [int((tmp_path / name).read_text()) for name in ("sh.pid", "sleep.pid")]
    worker.signal(signal.SIGTERM)
    worker.wait_for_output("SIGTERM")
    worker.signal(signal.SIGTERM)
    assert worker.wait(15) == 128 + signal.SIGTERM, worker.output()

    assert not any(process_alive(pid) for pid in pids)
    job = wait_job_status(server.url, "long", "long", "failure")
    assert job["output"] == "worker stopped before the job finished"


HEARTBEAT = """
name: heartbeat
on: push
jobs:
  steady:
    run: |
      for i in 1 2 3 4 5 6 7 8 9 10; do
        echo "tick $i"
        sleep 0.5
      done
"""


def test_heartbeats_outlive_the_ttl_and_logs_stream(
    workflows_dir: Path, server_factory, workers
) -> None:
    write_workflow(workflows_dir, "heartbeat", HEARTBEAT)
    server = server_factory(workflows_dir, env={"REAP_INTERVAL_SECS": "1"})
    workers(server.url, "--lease-ttl", "2")
    run_workflow(server.url, "heartbeat")

    # Lines are readable while the job still runs.
    def live_ticks() -> bool:
        text = log_text(job_logs(server.url, "heartbeat", "steady"))
        return "tick 2" in text and jobs_status(server.url, "heartbeat") == "running"

    wait_for(live_ticks, 5, "log lines while the job runs")
    jobs = wait_until_finished(server.url, "heartbeat", timeout=20)
    # 5 s of work on a 2 s lease: only renewals kept it (no retries were allowed).
    assert jobs["steady"]["status"] == "success"
    assert jobs["steady"]["attempt"] == 0
    text = log_text(job_logs(server.url, "heartbeat", "steady"))
    assert text == "".join(f"tick {i}\n" for i in range(1, 11))


def test_refused_worker_exits_with_a_clear_error(
    workflows_dir: Path, server_factory, workers
) -> None:
    server = server_factory(workflows_dir)
    worker = workers(server.url, "--id", "not a valid id!")
    assert worker.wait(10) == 2, worker.output()
    assert "invalid worker id 'not a valid id!'" in worker.output()
