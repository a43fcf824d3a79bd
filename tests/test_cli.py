"""The `wfg` command, run as a real process against a real server.

Jobs are driven by `FakeWorker` (the worker protocol through `Client`, in a
thread), so these tests do not depend on the worker agent.
"""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ServerProcess, start_server
from pydantic import TypeAdapter
from test_client import (
    FakeWorker,
    Outcome,
    claim_one,
    free_port,
    job_of,
    pipeline,
    unique,
    wait_for,
)

from actors.models import (
    JobCreate,
    JobStatus,
    LogChunk,
    LogChunkIn,
    LogStream,
    Run,
    RunAccepted,
    RunStatus,
    WorkerInfo,
    Workflow,
    WorkflowCreate,
)
from wfg import Client

GOOD_YML = """\
name: Good
on: push
jobs:
  one:
    run: echo one
  two:
    needs: one
    run: echo two
"""

CYCLE_YML = """\
name: Cycle
jobs:
  a: {needs: b, run: "true"}
  b: {needs: a, run: "true"}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    workflows = tmp_path_factory.mktemp("cli") / "workflows"
    workflows.mkdir()
    (workflows / "good.yml").write_text(GOOD_YML)
    proc = start_server(workflows)
    yield proc
    proc.stop()


@pytest.fixture
def client(server: ServerProcess) -> Iterator[Client]:
    with Client(server.url) as c:
        yield c


@pytest.fixture
def label() -> str:
    return unique("cli")


def wfg(*args: str, server: str | None = None, timeout: float = 30, **env: str):
    """Run `python -m wfg ARGS` with stdout and stderr piped."""
    full_env = {**os.environ, **env}
    full_env.pop("NO_COLOR", None)
    full_env.pop("SERVER_URL", None)
    if server is not None:
        full_env["SERVER_URL"] = server
    return subprocess.run(
        [sys.executable, "-m", "wfg", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )


def assert_plain(text: str) -> None:
    assert "\x1b" not in text, f"escape codes in piped output: {text!r}"


def assert_one_error_line(stderr: str, starts: str) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith(starts), stderr
    assert "Traceback" not in stderr


# --- reads ------------------------------------------------------------------------


def test_list_prints_a_plain_table(server: ServerProcess) -> None:
    result = wfg("list", server=server.url)
    assert result.returncode == 0, result.stderr
    assert_plain(result.stdout)
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["ID", "NAME", "RUN", "STATUS", "JOBS", "TRIGGER"]
    good = next(row for row in rows if row.startswith("good "))
    # Never run: not "queued", which would read as work waiting for a worker.
    assert good.split()[:6] == ["good", "Good", "never", "run", "2", "job(s)"]
    assert "queued" not in good


def test_list_json_is_the_apis_json(server: ServerProcess, client: Client) -> None:
    result = wfg("--server", server.url, "list", "--json")
    assert result.returncode == 0, result.stderr
    workflows = TypeAdapter(list[Workflow]).validate_json(result.stdout)
    assert workflows == client.list_workflows()


def test_list_status_filter(server: ServerProcess, client: Client, label: str) -> None:
    workflow = client.create_workflow(pipeline(label))
    client.run_workflow(workflow.id)
    claim_one(client, unique("w"), label)
    result = wfg("list", "--status", "running", "--json", server=server.url)
    ids = [w.id for w in TypeAdapter(list[Workflow]).validate_json(result.stdout)]
    assert workflow.id in ids and "good" not in ids
    bad = wfg("list", "--status", "bogus", server=server.url)
    assert bad.returncode == 2  # a usage error, caught before any request


def test_status_table_lists_jobs_in_layer_order(server: ServerProcess, client: Client) -> None:
    result = wfg("status", "good", server=server.url)
    assert result.returncode == 0, result.stderr
    assert_plain(result.stdout)
    lines = result.stdout.splitlines()
    assert lines[0] == "Good [good]: never run  (on: push)"
    assert lines[1].split()[:3] == ["JOB", "NAME", "STATUS"]
    assert [line.split()[0] for line in lines[2:]] == ["one", "two"]
    assert "queued" not in result.stdout

    as_json = wfg("status", "good", "--json", server=server.url)
    assert Workflow.model_validate_json(as_json.stdout) == client.get_status("good")


def test_status_of_unknown_workflow_is_one_error_line(server: ServerProcess) -> None:
    result = wfg("status", "nope", server=server.url)
    assert result.returncode == 1
    assert result.stdout == ""
    assert_one_error_line(result.stderr, "error: 404 Not Found: ")
    assert "nope" in result.stderr


def test_workers_table_and_json(server: ServerProcess, client: Client) -> None:
    worker_id = unique("table-worker")
    client.register_worker(worker_id, ["gpu"])
    result = wfg("workers", server=server.url)
    assert result.returncode == 0, result.stderr
    assert_plain(result.stdout)
    row = next(line for line in result.stdout.splitlines() if line.startswith(worker_id))
    assert row.split()[1:3] == ["idle", "gpu"]

    as_json = wfg("workers", "--json", server=server.url)
    workers = TypeAdapter(list[WorkerInfo]).validate_json(as_json.stdout)
    assert worker_id in [w.worker_id for w in workers]


# --- run ------------------------------------------------------------------------------


def test_run_follow_succeeds_with_exit_0(server: ServerProcess, client: Client, label: str) -> None:
    workflow = client.create_workflow(pipeline(label, build="make", test="make test"))
    worker = FakeWorker(server.url, label, {"build": Outcome(seconds=0.5)})
    worker.start()
    try:
        result = wfg("run", workflow.id, "--follow", server=server.url)
    finally:
        worker.stop()
    assert result.returncode == 0, result.stdout + result.stderr
    assert_plain(result.stdout)
    lines = result.stdout.splitlines()
    # One line per change, in order: build runs and ends before test starts. (The
    # worker may claim build before the first look, so build may first show running.)
    assert lines[1] == "build: queued" or lines[1].startswith("build: running")
    assert lines[2] == "test: queued"
    assert any(line.startswith("build: running") for line in lines)
    success = [i for i, line in enumerate(lines) if line.startswith("build: success")]
    test_done = [i for i, line in enumerate(lines) if line.startswith("test: success")]
    assert success and test_done and success[0] < test_done[0]
    assert lines[0] == f"run 1 of {workflow.id} started"
    assert lines[-1].startswith(f"run 1 of {workflow.id}: success, 2 job(s) in ")
    assert [c.job.job_id for c in worker.claimed] == ["build", "test"]


def test_run_follow_failure_prints_the_log_and_exits_1(
    server: ServerProcess, client: Client, label: str
) -> None:
    workflow = client.create_workflow(pipeline(label, build="make", deploy="deploy"))
    log = [(LogStream.stdout, f"line {n}\n") for n in range(30)]
    plan = {"build": Outcome(logs=log, error="exit code 2: compilation failed")}
    worker = FakeWorker(server.url, label, plan)
    worker.start()
    try:
        result = wfg("run", workflow.id, "--follow", server=server.url)
    finally:
        worker.stop()
    assert result.returncode == 1, result.stdout + result.stderr
    assert_plain(result.stdout)
    out = result.stdout
    assert "build: failure" in out and "exit code 2: compilation failed" in out
    assert "deploy: skipped" in out
    # The last 20 log lines of the failed job, and not the earlier ones.
    assert "  | line 29" in out and "  | line 10" in out
    assert "line 9\n" not in out
    assert out.splitlines()[-1].startswith(f"run 1 of {workflow.id}: failure (build)")


def test_run_follow_shows_attempts_of_a_retried_job(
    server: ServerProcess, client: Client, label: str
) -> None:
    body = WorkflowCreate(
        name="Retry",
        jobs=[JobCreate(id="flaky", command="x", required_labels=[label], max_retries=2)],
    )
    workflow = client.create_workflow(body)
    plan = {"flaky#0": Outcome(error="network down", retryable=True)}
    worker = FakeWorker(server.url, label, plan)
    worker.start()
    try:
        result = wfg("run", workflow.id, "--follow", server=server.url)
    finally:
        worker.stop()
    assert result.returncode == 0, result.stdout + result.stderr
    assert [c.job.attempt for c in worker.claimed] == [0, 1]
    assert "flaky: success" in result.stdout
    assert "attempt 2/3" in result.stdout.splitlines()[-2]


def test_run_follow_of_cancelled_run_exits_1(
    server: ServerProcess, client: Client, label: str
) -> None:
    workflow = client.create_workflow(pipeline(label, slow="sleep 60"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "wfg", "--server", server.url, "run", workflow.id, "--follow"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    claim_one(client, unique("w"), label)
    wait_for(client, workflow.id, lambda w: job_of(w, "slow").status == JobStatus.running)
    cancel = wfg("cancel", workflow.id, server=server.url)
    assert cancel.returncode == 0 and workflow.id in cancel.stdout
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 1, out + err
    assert "slow: cancelled" in out


def test_ctrl_c_stops_watching_but_not_the_run(
    server: ServerProcess, client: Client, label: str
) -> None:
    workflow = client.create_workflow(pipeline(label, slow="sleep 60"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "wfg", "--server", server.url, "run", workflow.id, "--follow"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    claim = claim_one(client, unique("w"), label)
    assert proc.stdout is not None
    for line in proc.stdout:  # ends (and fails below) if wfg exits early
        if line.startswith("slow: running"):
            break
    else:
        pytest.fail(f"wfg exited before the job ran: {proc.stderr and proc.stderr.read()}")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 130
    assert "Traceback" not in err
    assert f"stopped watching; run 1 of {workflow.id} continues" in err
    assert f"wfg cancel {workflow.id} --run 1" in err
    assert job_of(client.get_status(workflow.id), "slow").status == JobStatus.running
    client.complete(claim.lease.lease_id)


def test_run_without_follow_and_json(server: ServerProcess, client: Client, label: str) -> None:
    workflow = client.create_workflow(pipeline(label))
    result = wfg("run", workflow.id, "--json", server=server.url)
    assert result.returncode == 0, result.stderr
    accepted = RunAccepted.model_validate_json(result.stdout)
    assert (accepted.workflow_id, accepted.number, accepted.status) == (workflow.id, 1, "running")
    again = wfg("run", workflow.id, server=server.url)  # the run is still active
    assert again.returncode == 1
    assert_one_error_line(again.stderr, "error: 409 Conflict: ")


def test_run_follow_json_prints_the_final_status(
    server: ServerProcess, client: Client, label: str
) -> None:
    workflow = client.create_workflow(pipeline(label))
    worker = FakeWorker(server.url, label)
    worker.start()
    try:
        result = wfg("run", workflow.id, "--follow", "--json", server=server.url)
    finally:
        worker.stop()
    assert result.returncode == 0, result.stderr
    final = Run.model_validate_json(result.stdout)
    assert (final.number, final.status) == (1, RunStatus.success)
    assert {j.status for j in final.jobs} == {JobStatus.success}


def _run_in_pty(args: list[str], env: dict[str, str], timeout: float = 30) -> tuple[int, str]:
    """Run `wfg` with its stdout on a pseudo-terminal; returns (exit code, output)."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "wfg", *args],
        stdout=follower,
        stderr=follower,
        env={**os.environ, "COLUMNS": "100", "TERM": "xterm", **env},
    )
    os.close(follower)
    output = bytearray()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.1)
        if ready:
            try:
                data = os.read(leader, 65536)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            output += data
        elif proc.poll() is not None:
            break
    os.close(leader)
    return proc.wait(5), output.decode(errors="replace")


def test_run_follow_on_a_terminal_draws_the_live_view(
    server: ServerProcess, client: Client, label: str
) -> None:
    workflow = client.create_workflow(pipeline(label, build="make", test="make test"))
    worker = FakeWorker(server.url, label, {"build": Outcome(seconds=0.6)})
    worker.start()
    try:
        code, out = _run_in_pty(["--server", server.url, "run", workflow.id, "--follow"], {})
    finally:
        worker.stop()
    assert code == 0, out
    assert "\x1b[" in out  # a redrawn view, not plain lines
    assert "✓" in out and "build" in out and "test" in out
    assert f"{workflow.id} run 1: running" in out  # the run's line above the jobs
    assert f"run 1 of {workflow.id}: success" in out


def test_no_color_on_a_terminal_is_plain(server: ServerProcess) -> None:
    code, out = _run_in_pty(["--server", server.url, "status", "good"], {"NO_COLOR": "1"})
    assert code == 0, out
    assert "\x1b" not in out
    assert "Good [good]" in out


# --- logs -----------------------------------------------------------------------------


def test_logs_print_raw_data_with_stderr_on_stderr(
    server: ServerProcess, client: Client, label: str
) -> None:
    workflow = client.create_workflow(pipeline(label, only="x"))
    client.run_workflow(workflow.id)
    lease = claim_one(client, unique("w"), label).lease.lease_id
    client.push_logs(
        lease,
        [
            LogChunkIn(sequence=0, data="out one\n"),
            LogChunkIn(sequence=1, data="err one\n", stream=LogStream.stderr),
            LogChunkIn(sequence=2, data="no newline"),
        ],
    )
    result = wfg("logs", workflow.id, "only", server=server.url)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "out one\nno newline"
    assert result.stderr == "err one\n"

    as_json = wfg("logs", workflow.id, "only", "--json", server=server.url)
    chunks = TypeAdapter(list[LogChunk]).validate_json(as_json.stdout)
    assert [c.sequence for c in chunks] == [0, 1, 2]


def test_logs_follow_streams_until_the_job_ends(
    server: ServerProcess, client: Client, label: str
) -> None:
    workflow = client.create_workflow(pipeline(label, only="x"))
    client.run_workflow(workflow.id)
    lease = claim_one(client, unique("w"), label).lease.lease_id
    client.push_logs(lease, [LogChunkIn(sequence=0, data="before\n")])
    proc = subprocess.Popen(
        [sys.executable, "-m", "wfg", "--server", server.url, "logs", workflow.id, "only", "-f"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == "before\n"  # replayed at once, while the job runs
    client.push_logs(lease, [LogChunkIn(sequence=1, data="after\n")])
    assert proc.stdout.readline() == "after\n"  # live
    client.complete(lease)
    assert proc.wait(10) == 0
    assert proc.stdout.read() == ""


def test_logs_of_unknown_job_is_404(server: ServerProcess) -> None:
    for args in (("logs", "good", "nope"), ("logs", "good", "nope", "--follow")):
        result = wfg(*args, server=server.url)
        assert result.returncode == 1
        assert_one_error_line(result.stderr, "error: 404 Not Found: ")


# --- create, cancel, validate -----------------------------------------------------------


def test_create_prints_the_new_id(server: ServerProcess, client: Client, tmp_path: Path) -> None:
    path = tmp_path / "good.yml"
    path.write_text(GOOD_YML)
    result = wfg("create", str(path), server=server.url)
    assert result.returncode == 0, result.stderr
    new_id = result.stdout.strip()
    assert client.get_status(new_id).name == "Good"

    as_json = wfg("create", str(path), "--json", server=server.url)
    created = Workflow.model_validate_json(as_json.stdout)
    assert created.id != new_id and [j.id for j in created.jobs] == ["one", "two"]


def test_create_of_an_invalid_file_names_the_file(server: ServerProcess, tmp_path: Path) -> None:
    path = tmp_path / "cycle.yml"
    path.write_text(CYCLE_YML)
    result = wfg("create", str(path), server=server.url)
    assert result.returncode == 1
    # Checked before sending: the problem with its line and column, as `validate` gives it.
    assert_one_error_line(result.stderr, f"error: {path}:3:14: ")
    assert "cycle" in result.stderr


def test_cancel_of_unknown_workflow_is_404(server: ServerProcess) -> None:
    result = wfg("cancel", "nope", server=server.url)
    assert result.returncode == 1
    assert_one_error_line(result.stderr, "error: 404 Not Found: ")


def test_validate_reports_each_file(tmp_path: Path) -> None:
    good = tmp_path / "good.yml"
    good.write_text(GOOD_YML)
    cycle = tmp_path / "cycle.yml"
    cycle.write_text(CYCLE_YML)
    broken = tmp_path / "broken.yml"
    broken.write_text("name: [unclosed\n")
    missing = tmp_path / "missing.yml"

    ok = wfg("validate", str(good))
    assert (ok.returncode, ok.stdout, ok.stderr) == (0, f"{good}: ok\n", "")

    result = wfg("validate", str(good), str(cycle), str(broken), str(missing))
    assert result.returncode == 1
    assert result.stdout == f"{good}: ok\n"
    problems = result.stderr.splitlines()
    assert len(problems) == 3, result.stderr
    assert problems[0].startswith(f"{cycle}:3:14: ") and "cycle" in problems[0]
    assert problems[1].startswith(f"{broken}:2:1: ") and "YAML" in problems[1]
    assert problems[2].startswith(f"{missing}: ")
    assert "Traceback" not in result.stderr


# --- failures of the command itself ---------------------------------------------------------


@pytest.mark.parametrize("command", [["list"], ["status", "x"], ["run", "x", "--follow"]])
def test_unreachable_server_is_one_line_and_exit_2(command: list[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = wfg("--server", url, *command)
    assert result.returncode == 2
    assert result.stdout == ""
    assert_one_error_line(result.stderr, f"error: cannot reach server at {url}: ")
    assert "connection refused" in result.stderr


def test_server_url_comes_from_the_environment(server: ServerProcess) -> None:
    result = wfg("list", "--json", server=server.url)  # SERVER_URL, no --server
    assert result.returncode == 0, result.stderr
    assert "good" in [w.id for w in TypeAdapter(list[Workflow]).validate_json(result.stdout)]


def test_help_documents_exit_codes_and_serve_options() -> None:
    top = wfg("--help")
    assert top.returncode == 0
    assert "Exit status" in top.stdout and "cannot be reached" in top.stdout
    serve = wfg("serve", "--help")
    for option in (
        "--port",
        "--host",
        "--workflows-dir",
        "--data-dir",
        "--in-memory",
        "--api-only",
        "--local-workers",
    ):
        assert option in serve.stdout


def test_serve_options_override_the_environment(tmp_path: Path) -> None:
    (tmp_path / "only.yml").write_text(GOOD_YML)
    server = start_server(
        tmp_path / "elsewhere",
        env={"DATA_DIR": str(tmp_path / "data")},
        args=("--workflows-dir", str(tmp_path), "--in-memory"),
    )
    try:
        with Client(server.url) as client:
            assert [w.id for w in client.list_workflows()] == ["only"]
        assert not (tmp_path / "data").exists()  # --in-memory won over DATA_DIR
    finally:
        server.stop()


def test_python_dash_m_and_console_script_agree() -> None:
    module = wfg("--version")
    assert module.returncode == 0 and "wfg" in module.stdout
    script = Path(sys.executable).with_name("wfg")
    if script.exists():
        direct = subprocess.run([str(script), "--version"], capture_output=True, text=True)
        assert direct.stdout == module.stdout


def test_json_flag_output_is_valid_json_for_every_read(server: ServerProcess) -> None:
    for args in (["list"], ["status", "good"], ["workers"], ["logs", "good", "one"]):
        result = wfg(*args, "--json", server=server.url)
        assert result.returncode == 0, result.stderr
        json.loads(result.stdout)


def test_status_shows_when_a_schedule_fires_next(server: ServerProcess, client: Client) -> None:
    definition = (
        "name: Nightly\non:\n  schedule:\n    - cron: '0 3 * * *'\n      timezone: Europe/Berlin\n"
        "jobs: {build: {run: make}}\n"
    )
    created = client.create_workflow(WorkflowCreate(definition=definition))
    [schedule] = client.schedules(created.id)
    result = wfg("status", created.id, server=server.url)
    assert result.returncode == 0, result.stderr
    last = result.stdout.splitlines()[-1]
    assert last.startswith("schedule '0 3 * * *' (Europe/Berlin): next ")
    assert " 03:00 CE" in last and "(in " in last  # CET or CEST, in the schedule's zone
    assert schedule.next_at_ms > time.time() * 1000
    plain = wfg("status", "good", server=server.url)
    assert "schedule" not in plain.stdout
