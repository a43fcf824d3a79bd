"""`wfg` and runs: history, inputs, re-runs, `--run`, following one run.

Commands that return at once run in-process (click's runner) against a real
server process; commands that follow a run while the test drives its jobs run
as real `wfg` processes.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest
from click.testing import CliRunner, Result
from conftest import ServerProcess, start_server
from pydantic import TypeAdapter
from test_cli import assert_one_error_line, assert_plain, wfg
from test_client import FakeWorker, claim_one, finish, free_port, pipeline, unique

from actors.models import (
    InputDecl,
    Job,
    JobStatus,
    LogChunk,
    LogChunkIn,
    Run,
    RunAccepted,
    RunStatus,
    Workflow,
)
from wfg import Client
from wfg import _render as render
from wfg.cli import cli

INPUTS = {
    "env_name": InputDecl(type="choice", options=["staging", "prod"], default="staging"),
    "dry-run": InputDecl(type="boolean", default=True),
    "replicas": InputDecl(type="number", required=True),
    "note": InputDecl(type="string"),
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    workflows = tmp_path_factory.mktemp("cli-runs") / "workflows"
    workflows.mkdir()
    proc = start_server(workflows)
    yield proc
    proc.stop()


@pytest.fixture
def client(server: ServerProcess) -> Iterator[Client]:
    with Client(server.url) as c:
        yield c


@pytest.fixture
def label() -> str:
    return unique("runs")


def run_wfg(server: ServerProcess, *args: str) -> Result:
    """`wfg --server URL ARGS` in this process; stdout is not a terminal, so plain."""
    return CliRunner().invoke(cli, ["--server", server.url, *args], catch_exceptions=False)


def create(client: Client, label: str, **extra: object) -> Workflow:
    """A one-job workflow `only` for `label`, with extensions (inputs, concurrency)."""
    return client.create_workflow(pipeline(label, only="x").model_copy(update=extra))


def rows(stdout: str) -> list[list[str]]:
    """A plain table's rows (after its header) as whitespace-split cells."""
    return [line.split() for line in stdout.splitlines()[1:]]


# --- the command line itself -----------------------------------------------------


@pytest.mark.parametrize(
    ("inputs", "says"),
    [
        (["-i", "novalue"], "'novalue' is not KEY=VALUE"),
        (["--input", "=prod"], "'=prod' has no KEY"),
        (["-i", "env=a", "-i", "env=b"], "input 'env' is given twice"),
    ],
)
def test_a_malformed_input_is_one_line_and_exit_2_before_any_request(
    inputs: list[str], says: str
) -> None:
    # Nothing listens here: had wfg sent a request, it would say so instead.
    result = CliRunner().invoke(
        cli, ["--server", f"http://127.0.0.1:{free_port()}", "run", "w", *inputs]
    )
    assert result.exit_code == 2
    assert result.stdout == ""
    assert_one_error_line(result.stderr, "error: Invalid value for '--input'")
    assert says in result.stderr and "cannot reach" not in result.stderr


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["runs"], "Missing argument 'ID'"),
        (["status", "w", "--run", "0"], "'--run'"),
        (["rerun", "w", "last"], "'last' is not a valid integer"),
        (["runs", "w", "--limit", "0"], "'--limit'"),
        (["cancel", "w", "--run", "x"], "'--run'"),
        (["nosuch"], "No such command 'nosuch'"),
    ],
)
def test_every_usage_error_is_one_line_and_exit_2(args: list[str], says: str) -> None:
    result = CliRunner().invoke(cli, ["--server", f"http://127.0.0.1:{free_port()}", *args])
    assert result.exit_code == 2
    assert_one_error_line(result.stderr, "error: ")
    assert says in result.stderr and "--help" in result.stderr


# --- run with inputs -------------------------------------------------------------


def test_run_inputs_reach_the_run_as_their_declared_types(
    server: ServerProcess, client: Client, label: str
) -> None:
    workflow = create(client, label, inputs=INPUTS)
    result = run_wfg(
        server, "run", workflow.id, "-i", "replicas=3", "--input", "dry-run=false", "-i", "note=a=b"
    )
    assert result.exit_code == 0, result.stderr
    assert result.stdout == f"run 1 of {workflow.id} started\n"
    run = client.get_run(workflow.id, 1)
    # Split at the first "=" only; strings become the declared number and boolean.
    assert run.inputs == {"env_name": "staging", "dry-run": False, "replicas": 3, "note": "a=b"}

    status = run_wfg(server, "status", workflow.id)
    assert status.stdout.splitlines()[0] == (
        f"Pipeline [{workflow.id}] run 1: running "
        "(manual; inputs env_name=staging, dry-run=false, replicas=3, note=a=b)"
    )


def test_a_bad_input_prints_the_servers_message_and_starts_nothing(
    server: ServerProcess, client: Client, label: str
) -> None:
    workflow = create(client, label, inputs=INPUTS)
    for args, named in (
        (["-i", "replicas=many"], "replicas"),
        (["-i", "replicas=1", "-i", "env_name=qa"], "env_name"),
        (["-i", "replicas=1", "-i", "bogus=1"], "bogus"),
        ([], "replicas"),  # required, and not given
    ):
        result = run_wfg(server, "run", workflow.id, *args)
        assert result.exit_code == 1
        assert_one_error_line(result.stderr, "error: 422 Unprocessable Entity: ")
        assert named in result.stderr
    assert client.list_runs(workflow.id) == []
    empty = run_wfg(server, "run", workflow.id, "-i", "replicas=1", "-i", "note=")
    assert empty.exit_code == 0, empty.stderr
    assert client.get_run(workflow.id, 1).inputs["note"] == ""


def test_run_says_when_its_run_is_queued_behind_its_group(
    server: ServerProcess, client: Client, label: str
) -> None:
    group = unique("group")
    first = create(client, label, concurrency=group)
    second = create(client, label, concurrency=group)
    assert run_wfg(server, "run", first.id).stdout == f"run 1 of {first.id} started\n"
    queued = run_wfg(server, "run", second.id)
    assert queued.exit_code == 0, queued.stderr
    assert queued.stdout == f"run 1 of {second.id} queued: waiting for its concurrency group\n"
    as_json = run_wfg(server, "run", second.id, "--json")
    assert RunAccepted.model_validate_json(as_json.stdout) == RunAccepted(
        workflow_id=second.id, number=2, status=RunStatus.queued
    )
    client.cancel_workflow(first.id)
    client.cancel_workflow(second.id)


# --- following one run -------------------------------------------------------------


def test_follow_watches_its_own_run_not_a_newer_one(
    server: ServerProcess, client: Client, label: str
) -> None:
    """Run 2 fails while run 3, started meanwhile, succeeds: `run --follow` of run 2
    reports run 2's failure and exits 1."""
    workflow = create(client, label, concurrency=unique("group"))
    client.run_workflow(workflow.id)
    holder = claim_one(client, unique("w"), label)  # run 1 holds the group
    proc = subprocess.Popen(
        [sys.executable, "-m", "wfg", "--server", server.url, "run", workflow.id, "--follow"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    first_line = proc.stdout.readline()
    assert first_line == f"run 2 of {workflow.id} queued: waiting for its concurrency group\n"
    assert client.run_workflow(workflow.id).number == 3
    client.complete(holder.lease.lease_id)
    second = claim_one(client, unique("w"), label)
    assert second.job.run_id == 2
    client.fail(second.lease.lease_id, "exit code 1: broke")
    third = claim_one(client, unique("w"), label)
    assert third.job.run_id == 3
    client.complete(third.lease.lease_id)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 1, out + err
    assert_plain(out)
    assert "only: failure" in out and "exit code 1: broke" in out
    assert out.splitlines()[-1].startswith(f"run 2 of {workflow.id}: failure (only), 1 failure")
    assert "run 3" not in out


def test_rerun_failed_follow_defaults_to_the_latest_run(
    server: ServerProcess, client: Client, label: str
) -> None:
    workflow = client.create_workflow(pipeline(label, a="x", b="y"))
    client.run_workflow(workflow.id)
    finish(client, label, fail=frozenset({"b"}))
    worker = FakeWorker(server.url, label)
    worker.start()
    try:
        result = wfg("rerun", workflow.id, "--failed", "--follow", server=server.url)
    finally:
        worker.stop()
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"run 2 of {workflow.id} started (re-run of 1)"
    assert lines[-1].startswith(f"run 2 of {workflow.id}: success, 2 job(s) in ")
    assert [c.job.job_id for c in worker.claimed] == ["b"]  # a was kept from run 1
    run = client.get_run(workflow.id, 2)
    assert (run.trigger, run.rerun_of, run.status) == ("rerun", 1, RunStatus.success)


def test_rerun_of_a_number_and_its_refusals(
    server: ServerProcess, client: Client, label: str
) -> None:
    workflow = create(client, label)
    never = run_wfg(server, "rerun", workflow.id)
    assert never.exit_code == 1
    assert_one_error_line(never.stderr, f"error: workflow '{workflow.id}' has never run")
    client.run_workflow(workflow.id)
    finish(client, label)
    client.run_workflow(workflow.id)
    finish(client, label)

    result = run_wfg(server, "rerun", workflow.id, "1")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == f"run 3 of {workflow.id} started (re-run of 1)\n"
    assert client.get_run(workflow.id, 3).rerun_of == 1
    busy = run_wfg(server, "rerun", workflow.id, "3")
    assert busy.exit_code == 1
    assert_one_error_line(busy.stderr, "error: 409 Conflict: ")
    assert "has not finished" in busy.stderr
    unknown = run_wfg(server, "rerun", workflow.id, "9")
    assert unknown.exit_code == 1
    assert_one_error_line(unknown.stderr, "error: 404 Not Found: ")
    assert "no run 9" in unknown.stderr
    client.cancel_workflow(workflow.id)


def test_follow_json_of_a_cancelled_rerun_prints_the_run_and_exits_1(
    server: ServerProcess, client: Client, label: str
) -> None:
    workflow = create(client, label)
    client.run_workflow(workflow.id)
    finish(client, label, fail=frozenset({"only"}))
    proc = subprocess.Popen(
        [sys.executable, "-m", "wfg", "--server", server.url, "rerun", workflow.id, "1"]
        + ["--follow", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    claim = claim_one(client, unique("w"), label)
    assert claim.job.run_id == 2
    client.cancel_run(workflow.id, 2)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 1, out + err
    final = Run.model_validate_json(out)
    assert (final.number, final.status, final.rerun_of) == (2, RunStatus.cancelled, 1)


# --- reading one run with --run -----------------------------------------------------


def test_run_option_selects_that_runs_jobs_and_logs(
    server: ServerProcess, client: Client, label: str
) -> None:
    workflow = create(client, label)
    client.run_workflow(workflow.id)
    finish(client, label, fail=frozenset({"only"}), log="first run\n")
    client.run_workflow(workflow.id)
    finish(client, label, log="second run\n")

    latest = run_wfg(server, "status", workflow.id)
    assert latest.exit_code == 0, latest.stderr
    assert latest.stdout.splitlines()[0] == f"Pipeline [{workflow.id}] run 2: success (manual)"
    assert rows(latest.stdout)[1][:3] == ["only", "only", "success"]
    first = run_wfg(server, "status", workflow.id, "--run", "1")
    assert first.stdout.splitlines()[0] == f"Pipeline [{workflow.id}] run 1: failure (manual)"
    assert rows(first.stdout)[1][:3] == ["only", "only", "failure"]
    assert "only broke" in first.stdout
    as_json = run_wfg(server, "status", workflow.id, "--run", "1", "--json")
    assert Run.model_validate_json(as_json.stdout) == client.get_run(workflow.id, 1)

    assert run_wfg(server, "logs", workflow.id, "only").stdout == "second run\n"
    assert run_wfg(server, "logs", workflow.id, "only", "--run", "1").stdout == "first run\n"
    chunks = run_wfg(server, "logs", workflow.id, "only", "--run", "1", "--json").stdout
    assert [c.data for c in TypeAdapter(list[LogChunk]).validate_json(chunks)] == ["first run\n"]
    followed = run_wfg(server, "logs", workflow.id, "only", "--run", "1", "--follow")
    assert (followed.exit_code, followed.stdout) == (0, "first run\n")

    for args in (("status", workflow.id), ("logs", workflow.id, "only")):
        missing = run_wfg(server, *args, "--run", "7")
        assert missing.exit_code == 1
        assert_one_error_line(missing.stderr, "error: 404 Not Found: ")
        assert "no run 7" in missing.stderr

    listed = run_wfg(server, "list", "--limit", "1000")
    row = next(r for r in rows(listed.stdout) if r[0] == workflow.id)
    assert row[1:5] == ["Pipeline", "2", "success", "1"]


def test_logs_follow_of_a_running_run_streams_that_run(
    server: ServerProcess, client: Client, label: str
) -> None:
    workflow = create(client, label)
    client.run_workflow(workflow.id)
    finish(client, label, log="old\n")
    client.run_workflow(workflow.id)
    lease = claim_one(client, unique("w"), label).lease.lease_id
    client.push_logs(lease, [LogChunkIn(sequence=0, data="new\n")])
    proc = subprocess.Popen(
        [sys.executable, "-m", "wfg", "--server", server.url]
        + ["logs", workflow.id, "only", "--run", "2", "-f"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == "new\n"
    client.push_logs(lease, [LogChunkIn(sequence=1, data="live\n")])
    assert proc.stdout.readline() == "live\n"
    client.complete(lease)
    assert proc.wait(10) == 0
    assert proc.stdout.read() == ""


def test_a_pruned_run_says_so(server_factory, workflows_dir, label: str) -> None:
    server = server_factory(workflows_dir, env={"RETAIN_RUNS": "2"})
    with Client(server.url) as client:
        workflow = create(client, label)
        for _ in range(3):
            client.run_workflow(workflow.id)
            finish(client, label)
    result = run_wfg(server, "status", workflow.id, "--run", "1")
    assert result.exit_code == 1
    assert_one_error_line(result.stderr, "error: 404 Not Found: ")
    assert "pruned" in result.stderr
    assert [r[0] for r in rows(run_wfg(server, "runs", workflow.id).stdout)] == ["3", "2"]


# --- history ---------------------------------------------------------------------


def test_runs_lists_history_newest_first(server: ServerProcess, client: Client, label: str) -> None:
    workflow = create(client, label)
    empty = run_wfg(server, "runs", workflow.id)
    assert (empty.exit_code, empty.stdout) == (0, f"no runs of {workflow.id}\n")
    client.run_workflow(workflow.id)
    finish(client, label)
    client.run_workflow(workflow.id)
    finish(client, label, fail=frozenset({"only"}))
    client.rerun(workflow.id, 2)  # left running

    result = run_wfg(server, "runs", workflow.id)
    assert result.exit_code == 0, result.stderr
    assert_plain(result.stdout)
    header = result.stdout.splitlines()[0]
    assert header.split() == ["RUN", "STATUS", "TRIGGER", "STARTED", "DURATION", "RE-RUN", "OF"]
    three, two, one = rows(result.stdout)
    assert three[:3] == ["3", "running", "rerun"] and three[-1] == "2"
    assert two[:3] == ["2", "failure", "manual"] and two[4].endswith("ago")
    assert one[:3] == ["1", "success", "manual"] and one[4].endswith("ago")

    page = run_wfg(server, "runs", workflow.id, "-L", "1", "--offset", "1")
    assert [r[0] for r in rows(page.stdout)] == ["2"]
    as_json = run_wfg(server, "runs", workflow.id, "--json")
    assert TypeAdapter(list[Run]).validate_json(as_json.stdout) == client.list_runs(workflow.id)
    unknown = run_wfg(server, "runs", "no-such-workflow")
    assert unknown.exit_code == 1
    assert_one_error_line(unknown.stderr, "error: 404 Not Found: ")
    client.cancel_workflow(workflow.id)


# --- cancel --run ------------------------------------------------------------------


def test_cancel_run_cancels_that_run_only(
    server: ServerProcess, client: Client, label: str
) -> None:
    workflow = create(client, label, concurrency=unique("group"))
    client.run_workflow(workflow.id)
    client.run_workflow(workflow.id)  # queued behind run 1
    result = run_wfg(server, "cancel", workflow.id, "--run", "2")
    assert (result.exit_code, result.stdout) == (0, f"cancelled run 2 of {workflow.id}\n")
    assert client.get_run(workflow.id, 2).status == RunStatus.cancelled
    assert client.get_run(workflow.id, 1).status == RunStatus.running
    missing = run_wfg(server, "cancel", workflow.id, "--run", "5")
    assert missing.exit_code == 1
    assert_one_error_line(missing.stderr, "error: 404 Not Found: ")

    finish(client, label)
    ended = run_wfg(server, "cancel", workflow.id, "--run", "1")
    assert ended.exit_code == 0
    assert ended.stdout == f"run 1 of {workflow.id} had already ended: success\n"
    assert client.get_run(workflow.id, 1).status == RunStatus.success


# --- what the tables and lines say (no server) -------------------------------------


def _run(**fields: object) -> Run:
    base: dict[str, object] = {
        "workflow_id": "ci",
        "number": 4,
        "status": RunStatus.running,
        "trigger": "manual",
        "inputs": {},
        "created_at_ms": 1_000,
        "jobs": [Job(id="build", name="build", command="make")],
    }
    return Run.model_validate({**base, **fields})


def test_a_run_waiting_to_start_has_no_start_or_duration() -> None:
    table = render.runs_rows([_run(status=RunStatus.queued)])
    assert table.rows == [["4", "queued", "manual", "", "", ""]]
    ended = _run(status=RunStatus.failure, started_at_ms=1_000, finished_at_ms=126_000, rerun_of=3)
    assert render.runs_rows([ended]).rows[0][4:] == ["2m05s", "3"]


def test_run_lines_name_origin_inputs_and_reason() -> None:
    run = _run(
        status=RunStatus.failure,
        trigger="rerun",
        rerun_of=3,
        inputs={"env": "prod", "dry-run": False, "replicas": 2},
        reason="run timed out after 60s",
        started_at_ms=1_000,
        finished_at_ms=4_000,
        jobs=[Job(id="build", name="build", command="make", status=JobStatus.cancelled)],
    )
    assert render.run_line(run) == (
        "run 4: failure (re-run of 3; inputs env=prod, dry-run=false, replicas=2)"
        ": run timed out after 60s"
    )
    assert render.run_summary_line(run) == (
        "run 4 of ci: failure: run timed out after 60s, 1 cancelled after 3s"
    )
    queued = RunAccepted(workflow_id="ci", number=5, status=RunStatus.queued)
    assert render.accepted_line(queued, rerun_of=4) == (
        "run 5 of ci queued (re-run of 4): waiting for its concurrency group"
    )
    kept = RunAccepted(workflow_id="ci", number=6, status=RunStatus.success)
    assert render.accepted_line(kept, rerun_of=5) == "run 6 of ci (re-run of 5): success"
