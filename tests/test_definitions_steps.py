"""Steps composed into the one `sh` script a worker runs, executed for real: GitHub's
shells, `if` after a failure, `continue-on-error`, `working-directory`, env and secrets."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest

from actors import plan
from actors.definitions import parse_definition_text
from actors.plan import Rendered
from actors.spec import WorkflowSpec


def load(text: str) -> WorkflowSpec:
    return parse_definition_text("wf", textwrap.dedent(text))


def context(**extra: Any) -> dict[str, Any]:
    return {
        "inputs": {},
        "run": {"number": 1, "trigger": "manual", "rerun_of": None},
        "workflow": {"id": "wf", "name": "WF"},
        "github": {},
        **extra,
    }


def rendered(text: str, ctx: dict[str, Any] | None = None, job: int = 0) -> Rendered:
    spec = load(text)
    ctx = ctx or context()
    return plan.render(plan.expand(spec, ctx)[job], ctx)


def run(job: Rendered, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """As a worker runs a job: its claim's env exported, its command with `sh -c`."""
    return subprocess.run(
        ["sh", "-c", job.command],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=cwd,
        env={**os.environ, **(job.env or {}), **env},
    )


def test_after_a_failure_only_always_and_failure_steps_run(tmp_path: Path) -> None:
    job = rendered(
        """\
        name: S
        jobs:
          a:
            steps:
              - name: Build
                run: echo building
              - name: Test
                run: |
                  echo testing
                  exit 3
              - name: Deploy
                run: echo deploying
              - name: Upload logs
                if: always()
                run: echo uploading
              - name: On failure
                if: ${{ failure() }}
                run: |
                  echo cleaning
                  exit 9
              - name: On success
                if: success()
                run: echo never
        """
    )
    result = run(job, tmp_path)
    assert result.returncode == 3  # the first failing step's status
    assert result.stdout.splitlines() == [
        "=== Build ===",
        "building",
        "=== Test ===",
        "testing",
        "=== Upload logs ===",
        "uploading",
        "=== On failure ===",
        "cleaning",
    ]


def test_failure_steps_do_not_run_when_all_passed(tmp_path: Path) -> None:
    job = rendered(
        """\
        name: S
        jobs:
          a:
            steps:
              - run: echo one
              - if: failure()
                run: echo rescue
              - if: always()
                run: echo always
        """
    )
    result = run(job, tmp_path)
    assert (result.returncode, result.stdout.split()) == (
        0,
        ["===", "step", "1", "===", "one", "===", "step", "3", "===", "always"],
    )


def test_continue_on_error_does_not_fail_the_job(tmp_path: Path) -> None:
    job = rendered(
        """\
        name: S
        jobs:
          a:
            steps:
              - name: Flaky
                continue-on-error: true
                run: exit 4
              - name: Next
                run: echo next
              - name: Flaky by expression
                continue-on-error: ${{ run.number == 1 }}
                run: exit 5
              - if: failure()
                run: echo unreachable
        """
    )
    result = run(job, tmp_path)
    assert result.returncode == 0
    assert "next" in result.stdout.splitlines() and "unreachable" not in result.stdout
    assert result.stderr.splitlines() == [
        "=== Flaky failed (exit status 4; continue-on-error) ===",
        "=== Flaky by expression failed (exit status 5; continue-on-error) ===",
    ]


def test_working_directory_and_defaults(tmp_path: Path) -> None:
    (tmp_path / "app" / "sub").mkdir(parents=True)
    job = rendered(
        """\
        name: S
        defaults:
          run:
            working-directory: app
        jobs:
          a:
            steps:
              - run: pwd
              - working-directory: app/sub
                run: pwd
              - run: pwd
              - working-directory: missing
                run: echo unreachable
        """
    )
    result = run(job, tmp_path)
    lines = [line for line in result.stdout.splitlines() if not line.startswith("===")]
    assert lines == [str(tmp_path / "app"), str(tmp_path / "app" / "sub"), str(tmp_path / "app")]
    assert result.returncode != 0 and "unreachable" not in result.stdout


def test_shells(tmp_path: Path) -> None:
    job = rendered(
        """\
        name: S
        jobs:
          a:
            steps:
              - name: python
                shell: python
                run: |
                  import sys
                  print("python", sys.version_info[0])
              - name: sh
                shell: sh
                run: false | true; echo "sh ignores a failing pipe head"
              - name: bash
                shell: bash
                run: 'false | true; echo "never (bash has pipefail)"'
        """
    )
    result = run(job, tmp_path)
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines[1] == "python 3"
    assert lines[3] == "sh ignores a failing pipe head"
    assert "never" not in result.stdout


def test_the_default_shell_is_bash_e_else_sh_e(tmp_path: Path) -> None:
    job = rendered(
        """\
        name: S
        jobs:
          a:
            steps:
              - run: |
                  echo "$0"
                  false
                  echo unreachable
        """
    )
    with_bash = run(job, tmp_path)
    assert (with_bash.returncode, with_bash.stdout.splitlines()[1:]) == (1, ["bash"])
    only_sh = tmp_path / "bin"
    only_sh.mkdir()
    sh_path = shutil.which("sh")
    assert sh_path is not None
    (only_sh / "sh").symlink_to(sh_path)
    without_bash = subprocess.run(
        [sh_path, "-c", job.command],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": str(only_sh)},
    )
    assert (without_bash.returncode, without_bash.stdout.splitlines()[1:]) == (1, ["sh"])


def test_step_conditions_on_contexts_are_decided_by_the_server() -> None:
    text = """\
        name: S
        on:
          workflow_dispatch:
            inputs:
              deploy: {type: boolean}
        jobs:
          a:
            steps:
              - run: echo build
              - name: Deploy
                if: inputs.deploy
                run: echo deploy
              - name: Never
                if: false
                run: echo never
        """
    off = rendered(text, context(inputs={"deploy": False}))
    on = rendered(text, context(inputs={"deploy": True}))
    assert "echo deploy" not in off.command and "Deploy" not in off.command
    assert "echo deploy" in on.command
    assert "never" not in on.command


def test_step_env_and_secrets(tmp_path: Path) -> None:
    job = rendered(
        """\
        name: S
        env:
          GLOBAL: g
        jobs:
          a:
            env:
              TOKEN: ${{ secrets.JOB_TOKEN }}
            steps:
              - name: ${{ env.GLOBAL }} one
                env:
                  LOCAL: l-${{ env.GLOBAL }}
                  TOKEN: ${{ secrets.STEP_TOKEN }}
                run: echo "$GLOBAL $LOCAL $TOKEN"
              - run: echo "$GLOBAL ${LOCAL-unset} $TOKEN"
        """,
        context(secrets={"JOB_TOKEN": "job-secret", "STEP_TOKEN": "step-secret"}),
    )
    assert "secret" not in job.command.replace("secrets", "")
    assert job.env == {"GLOBAL": "g", "TOKEN": "job-secret", "_WFG_STEP1_TOKEN": "step-secret"}
    result = run(job, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "=== g one ===",
        "g l-g step-secret",
        "=== step 2 ===",
        "g unset job-secret",
    ]


def test_hostile_text_stays_text(tmp_path: Path) -> None:
    value = 'it\'s "q" $(echo pwned) `echo tick` \\n; exit 9'
    text = (
        "name: S\non:\n  workflow_dispatch:\n    inputs:\n      v: {}\njobs:\n  a:\n"
        f"    steps:\n      - name: {json.dumps(value)}\n        env:\n"
        "          V: ${{ inputs.v }}\n        run: printf '%s' \"$V\"\n"
    )
    job = rendered(text, context(inputs={"v": value}))
    result = run(job, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"=== {value} ===\n{value}"
    assert "pwned" not in result.stdout.replace(value, "")


@pytest.mark.parametrize("with_steps", [True, False])
def test_status_shows_a_script_that_runs_before_the_language_is_rendered(
    tmp_path: Path, with_steps: bool
) -> None:
    body = (
        "steps:\n      - run: echo one\n      - if: always()\n        run: echo two"
        if with_steps
        else "run: echo one"
    )
    spec = load(f"name: S\nenv:\n  A: a\njobs:\n  j:\n    {body}\n")
    command = spec.jobs[0].command
    assert command.startswith("export A=a\n")
    result = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and "one" in result.stdout
