"""The definition language: GitHub Actions' keys and meaning, expressions and their
contexts, conditions, secrets, timeouts, and the stored form."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path
from typing import Any

import pytest

from actors import plan
from actors.definitions import parse_definition, parse_definition_text
from actors.plan import EvaluationError, JobInstance, Status
from actors.spec import DefinitionError, JobSpec, WorkflowSpec, spec_from_json, spec_to_json


def load(text: str, secrets: set[str] | None = None) -> WorkflowSpec:
    return parse_definition_text("wf", textwrap.dedent(text), secrets=secrets)


def job(spec: WorkflowSpec, job_id: str) -> JobSpec:
    return next(j for j in spec.jobs if j.id == job_id)


def instance(spec: WorkflowSpec, job_id: str, ctx: dict[str, Any] | None = None) -> JobInstance:
    return next(i for i in plan.expand(spec, ctx or context()) if i.id == job_id)


def context(**overrides: Any) -> dict[str, Any]:
    ctx: dict[str, Any] = {
        "inputs": {},
        "run": {"number": 7, "trigger": "manual", "rerun_of": None},
        "workflow": {"id": "wf", "name": "WF"},
        "github": {},
        "needs": {},
    }
    ctx.update(overrides)
    return ctx


def refusal(text: str, secrets: set[str] | None = None) -> tuple[int | None, int | None, str]:
    with pytest.raises(DefinitionError) as caught:
        load(text, secrets)
    (problem,) = caught.value.problems
    return problem.line, problem.column, problem.message


PASSED = Status(success=True, failure=False, cancelled=False)
FAILED = Status(success=False, failure=True, cancelled=False)
CANCELLED = Status(success=False, failure=False, cancelled=True)


# --- contexts: what can be known not to exist is refused before any run -----------------

WF = """\
name: WF
on:
  workflow_dispatch:
    inputs:
      target: {type: choice, options: [dev, prod]}
env:
  REGION: eu
jobs:
  build:
    run: make
  deploy:
    needs: build
    env:
      TOKEN: ${{ secrets.TOKEN }}
    {field}
"""


@pytest.mark.parametrize(
    ("field", "column", "message"),
    [
        (
            "run: echo ${{ needs.test.result }}",
            19,
            "job 'deploy' field 'run': needs.test: 'test' is not a job this job needs "
            "(its needs: build)",
        ),
        (
            "run: echo ${{ needs.build.status }}",
            19,
            "job 'deploy' field 'run': needs.build.status: a need has only result and outputs",
        ),
        (
            "run: echo ${{ inputs.targte }}",
            19,
            "job 'deploy' field 'run': unknown input 'targte' (declared: target)",
        ),
        (
            "run: echo ${{ matrix.os }}",
            19,
            "job 'deploy' field 'run': matrix.os: this job has no matrix",
        ),
        (
            "run: echo ${{ runner.os }}",
            19,
            "job 'deploy' field 'run': unknown context 'runner' "
            "(available here: env, github, inputs, matrix, needs, run, workflow)",
        ),
        (
            "run: echo ${{ steps.x.outputs.y }}",
            19,
            "job 'deploy' field 'run': the steps context is not available: a job's steps "
            "run as one script on the worker (pass values between steps in files or "
            "$GITHUB_ENV)",
        ),
        (
            "run: echo ${{ secrets.TOKEN }}",
            19,
            "job 'deploy' field 'run': secrets may only be read in env values, so that no "
            "secret is ever part of a command, a name or a label (use env: "
            "{NAME: ${{ secrets.NAME }}} and $NAME in the script)",
        ),
        (
            "run: echo ${{ env.TOKEN }}",
            19,
            "job 'deploy' field 'run': env.TOKEN holds a secret, which must not become part "
            "of the command; use $TOKEN in the script",
        ),
        (
            "run: echo ${{ env.PATH }}",
            19,
            "job 'deploy' field 'run': env.PATH is not set by this definition (variables a "
            "script exports at run time are not visible to expressions)",
        ),
        (
            "run: echo ${{ run.id }}",
            19,
            "job 'deploy' field 'run': run.id does not exist (run has number, trigger, rerun_of)",
        ),
        (
            "run: echo ${{ success() }}",
            19,
            "job 'deploy' field 'run': status functions (success(), failure(), always(), "
            "cancelled()) may only be used in if",
        ),
        (
            "if: ${{ env.REGION == 'eu' }}\n    run: x",
            13,
            "job 'deploy' field 'if': context 'env' is not available here "
            "(available: github, inputs, matrix, needs, run, workflow)",
        ),
        (
            "name: Deploy ${{ secrets.TOKEN }}\n    run: x",
            22,
            "job 'deploy' field 'name': secrets may only be read in env values, so that no "
            "secret is ever part of a command, a name or a label (use env: "
            "{NAME: ${{ secrets.NAME }}} and $NAME in the script)",
        ),
        (
            "runs-on: ${{ inputs.nope }}\n    run: x",
            18,
            "job 'deploy' field 'runs-on': unknown input 'nope' (declared: target)",
        ),
        (
            "if: needs.build.outputs.x ==\n    run: x",
            31,
            "job 'deploy' field 'if': Unexpected end of expression",
        ),
        (
            "run: echo ${{ toJSON(needs) }} ${{ noSuch(1) }}",
            40,
            "job 'deploy' field 'run': Unrecognized function: 'noSuch'",
        ),
    ],
)
def test_a_reference_that_cannot_exist_is_refused_with_its_place(
    field: str, column: int, message: str
) -> None:
    line, got_column, got = refusal(WF.replace("{field}", field))
    assert (line, got_column) == (15, column)
    assert got.startswith(message), got


@pytest.mark.parametrize(
    "field",
    [
        "run: echo ${{ needs.build.outputs.anything }} ${{ needs.BUILD.result }}",
        "run: echo ${{ inputs.target }} ${{ inputs.TARGET }} ${{ github.sha }}",
        "run: echo ${{ env.REGION }} ${{ run.number }} ${{ workflow.id }}",
        "run: echo ${{ github.event.pull_request.head.ref }} ${{ toJSON(github) }}",
        "if: needs.build.result == 'success' && github.ref == 'refs/heads/main'\n    run: x",
        "if: ${{ always() }}\n    run: x",
        "if: false\n    run: x",
        "continue-on-error: ${{ inputs.target == 'dev' }}\n    run: x",
        "runs-on: ${{ inputs.target }}\n    run: x",
    ],
)
def test_references_that_can_exist_are_accepted(field: str) -> None:
    load(WF.replace("{field}", field))


def test_secret_names_are_checked_when_known() -> None:
    text = WF.replace("{field}", "run: x")
    load(text, secrets=None)  # unknown store: not checked
    load(text, secrets={"token"})  # names are case-insensitive, as on GitHub
    assert refusal(text, secrets={"OTHER"}) == (
        14,
        18,
        "job 'deploy' env 'TOKEN': unknown secret 'TOKEN'",
    )


def test_secrets_are_allowed_in_every_env_and_nowhere_else() -> None:
    spec = load(
        """\
        name: S
        env:
          A: ${{ secrets.A }}
        jobs:
          j:
            env:
              B: "Bearer ${{ secrets.B }}"
            steps:
              - env:
                  C: ${{ secrets.C }}
                run: echo "$A $B $C"
        """,
        secrets={"A", "B", "C"},
    )
    assert job(spec, "j").env == {"A": "${{ secrets.A }}", "B": "Bearer ${{ secrets.B }}"}
    for field in ("name", "if", "working-directory", "continue-on-error"):
        value = "${{ secrets.A != '' }}" if field != "name" else "${{ secrets.A }}"
        with pytest.raises(DefinitionError, match="secrets may only be read in env values"):
            parse_definition(
                "s", {"name": "S", "jobs": {"j": {"steps": [{"run": "x", field: value}]}}}
            )


# --- conditions ---------------------------------------------------------------------------

CONDITIONS = """\
name: C
on:
  workflow_dispatch:
    inputs:
      deploy: {type: boolean, default: false}
jobs:
  a:
    run: x
  b:
    needs: a
    if: {condition}
    run: x
"""


@pytest.mark.parametrize(
    ("condition", "outcomes"),
    [
        # (passed, failed, cancelled) with deploy=true and needs.a.result=success
        ("always()", (True, True, True)),
        ("${{ always() }}", (True, True, True)),
        ("success()", (True, False, False)),
        ("failure()", (False, True, False)),
        ("cancelled()", (False, False, True)),
        ("${{ failure() || cancelled() }}", (False, True, True)),
        ("inputs.deploy", (True, False, False)),  # joined with success()
        ("${{ !inputs.deploy }}", (False, False, False)),
        ("needs.a.result == 'success'", (True, False, False)),
        ("${{ always() && needs.a.result == 'success' }}", (True, True, True)),
        ("github.event_name == 'workflow_dispatch'", (True, False, False)),
        ("github.workflow == 'C' && run.number == 7", (True, False, False)),
        ("false", (False, False, False)),
        ("'${{ inputs.deploy }}'", (True, False, False)),
    ],
)
def test_conditions_read_as_on_github(condition: str, outcomes: tuple[bool, ...]) -> None:
    spec = load(CONDITIONS.replace("{condition}", json.dumps(condition)))
    inst = instance(spec, "b")
    ctx = context(
        inputs={"deploy": True}, needs={"a": {"result": "success", "outputs": {}}}, github={}
    )
    ctx["workflow"]["name"] = "C"
    got = tuple(plan.condition(inst, ctx, s) for s in (PASSED, FAILED, CANCELLED))
    assert got == outcomes


def test_no_condition_is_success() -> None:
    spec = load(CONDITIONS.replace("    if: {condition}\n", ""))
    inst = instance(spec, "b")
    assert [plan.condition(inst, context(), s) for s in (PASSED, FAILED)] == [True, False]
    assert not plan.survives_cancel(inst)


@pytest.mark.parametrize(
    ("condition", "survives"),
    [
        ("always()", True),
        ("${{ cancelled() }}", True),
        ("${{ !cancelled() }}", True),  # decided by the condition once needs are terminal
        ("failure()", False),
        ("success() && inputs.deploy", False),
        ("inputs.deploy", False),
    ],
)
def test_a_job_naming_always_or_cancelled_survives_a_cancel(condition: str, survives: bool) -> None:
    spec = load(CONDITIONS.replace("{condition}", json.dumps(condition)))
    assert plan.survives_cancel(instance(spec, "b")) is survives


def test_a_condition_that_fails_to_evaluate_is_an_evaluation_error() -> None:
    spec = load(CONDITIONS.replace("{condition}", json.dumps("fromJSON('{') == 1")))
    with pytest.raises(EvaluationError, match="^if: fromJSON: invalid JSON"):
        plan.condition(instance(spec, "b"), context(), PASSED)


# --- GitHub Actions keys ---------------------------------------------------------------------


def test_runs_on_timeout_minutes_continue_on_error_and_queue_timeout() -> None:
    spec = load(
        """\
        name: K
        timeout: 3600
        jobs:
          a:
            runs-on: [self-hosted, linux]
            timeout-minutes: 1.5
            queue-timeout: 120
            continue-on-error: true
            run: x
          b:
            runs-on: ubuntu-latest
            timeout: 30
            continue-on-error: ${{ github.ref == 'refs/heads/main' }}
            run: x
          c:
            runs-on: {labels: [gpu]}
            run: x
        """
    )
    a, b, c = spec.jobs
    assert (a.required_labels, a.timeout_secs, a.queue_timeout_secs) == (
        ("self-hosted", "linux"),
        90,
        120,
    )
    assert plan.run_timeout_secs(spec) == 3600
    assert (b.required_labels, b.timeout_secs) == (("ubuntu-latest",), 30)
    assert c.required_labels == ("gpu",)
    assert plan.render(instance(spec, "a"), context()).continue_on_error is True
    main = context(github={"ref": "refs/heads/main"})
    assert plan.render(instance(spec, "b", main), main).continue_on_error is True
    assert plan.render(instance(spec, "b"), context()).continue_on_error is False
    assert plan.run_timeout_secs(load("name: N\njobs:\n  a: {run: x}\n")) is None


def test_expressions_are_rendered_when_a_job_is_queued() -> None:
    spec = load(
        """\
        name: R
        on:
          workflow_dispatch:
            inputs:
              target: {default: dev}
        env:
          STAGE: ${{ inputs.target }}
        jobs:
          build:
            run: echo build
          deploy:
            name: Deploy ${{ inputs.target }} after ${{ needs.build.result }}
            needs: build
            runs-on: [linux, "${{ inputs.target }}"]
            env:
              VERSION: ${{ needs.build.outputs.version }}
            run: ./deploy --to ${{ inputs.target }} --run ${{ run.number }} "$VERSION"
        """
    )
    ctx = context(
        inputs={"target": "prod"},
        needs={"build": {"result": "success", "outputs": {"version": "1.2"}}},
    )
    rendered = plan.render(instance(spec, "deploy"), ctx)
    assert rendered.name == "Deploy prod after success"
    assert rendered.labels == ("linux", "prod")
    assert rendered.command == (
        "export INPUT_TARGET=prod\n"
        "export STAGE=prod\n"
        "export VERSION=1.2\n"
        './deploy --to prod --run 7 "$VERSION"'
    )
    assert rendered.env == {"STAGE": "prod", "VERSION": "1.2"}  # the claim carries it too
    # Before a run, status shows the templates as written.
    shown = spec.as_workflow().jobs[1]
    assert shown.name == "Deploy ${{ inputs.target }} after ${{ needs.build.result }}"
    assert shown.required_labels == ["linux", "${{ inputs.target }}"]
    assert "--to ${{ inputs.target }}" in shown.command


def test_a_rendered_label_must_be_a_label() -> None:
    spec = load(
        """\
        name: L
        on:
          workflow_dispatch:
            inputs:
              os: {}
        jobs:
          a:
            runs-on: ${{ inputs.os }}
            run: x
        """
    )
    ctx = context(inputs={"os": "not a label"})
    with pytest.raises(EvaluationError, match="runs-on: label 'not a label' does not match"):
        plan.render(instance(spec, "a", ctx), ctx)
    listed = context(inputs={"os": '["a", "b"]'})
    spec_list = load(
        "name: L\non:\n  workflow_dispatch:\n    inputs:\n      os: {}\njobs:\n"
        "  a:\n    runs-on: ${{ fromJSON(inputs.os) }}\n    run: x\n"
    )
    assert plan.render(instance(spec_list, "a", listed), listed).labels == ("a", "b")


def test_secret_env_goes_to_the_claim_and_never_into_the_command() -> None:
    spec = load(
        """\
        name: S
        env:
          PLAIN: visible
          TOKEN: ${{ secrets.TOKEN }}
        jobs:
          a:
            env:
              AUTH: Bearer ${{ secrets.token }}
            run: 'curl -H "Authorization: $AUTH" -d "$PLAIN"'
        """,
        secrets={"TOKEN"},
    )
    ctx = context(secrets={"TOKEN": "s3cr3t"})
    rendered = plan.render(instance(spec, "a"), ctx)
    assert rendered.env == {"PLAIN": "visible", "TOKEN": "s3cr3t", "AUTH": "Bearer s3cr3t"}
    assert "s3cr3t" not in rendered.command and "s3cr3t" not in rendered.name
    assert rendered.command.startswith("export PLAIN=visible\n")
    with pytest.raises(EvaluationError, match="secret 'TOKEN' is not set"):
        plan.render(instance(spec, "a"), context())


@pytest.mark.parametrize(
    ("field", "hint"),
    [
        ("permissions: {contents: read}", "no GitHub token"),
        ("services: {db: {image: postgres}}", "service containers are not supported"),
        ("container: node:20", "run a container from the script"),
        ("outputs: {v: '${{ steps.x.outputs.v }}'}", "$GITHUB_OUTPUT or $WFG_OUTPUT"),
        ("environment: prod", "deployment environments are not supported"),
        ("concurrency: x", "set it at the top level"),
        ("uses: ./.github/workflows/x.yml", "reusable workflows are not supported"),
        ("secrets: inherit", "env: {TOKEN: ${{ secrets.TOKEN }}}"),
    ],
)
def test_github_keys_with_no_meaning_here_are_refused_with_a_hint(field: str, hint: str) -> None:
    line, column, message = refusal(f"name: H\njobs:\n  a:\n    run: x\n    {field}\n")
    assert (line, column) == (5, 5)
    key = field.split(":")[0]
    assert message.startswith(f"job 'a' has unknown field '{key}' (")
    assert hint in message


def test_a_step_using_an_action_is_refused_with_its_line() -> None:
    assert refusal(
        "name: U\njobs:\n  a:\n    steps:\n      - run: x\n      - uses: actions/setup-node@v4\n"
        "        with: {node-version: 20}\n"
    ) == (
        6,
        9,
        "job 'a' step 2 uses an action ('actions/setup-node@v4'): actions are not "
        "supported; write the step as run commands",
    )


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"timeout": 0}, "workflow field 'timeout' must be a positive integer of seconds"),
        ({"run-name": "x"}, "workflow has unknown field 'run-name' (runs are named"),
        (
            {"jobs": {"a": {"run": "x", "timeout": 5, "timeout-minutes": 1}}},
            "job 'a' has both timeout and timeout-minutes",
        ),
        (
            {"jobs": {"a": {"run": "x", "labels": ["a"], "runs-on": "b"}}},
            "job 'a' has both labels and runs-on",
        ),
        (
            {"jobs": {"a": {"run": "x", "runs-on": {"group": "big"}}}},
            "runner groups are not supported",
        ),
        ({"jobs": {"a": {"run": "x", "if": 3}}}, "job 'a' field 'if' must be a string"),
        (
            {"jobs": {"a": {"run": "x", "continue-on-error": "yes"}}},
            "job 'a' field 'continue-on-error' must be true, false or a ${{ }} expression",
        ),
        (
            {"jobs": {"a": {"run": "x", "queue-timeout": -1}}},
            "job 'a' field 'queue-timeout' must be a positive integer of seconds",
        ),
        (
            {"jobs": {"a": {"steps": [{"run": "x", "shell": "pwsh"}]}}},
            "job 'a' step 1 field 'shell' must be one of bash, sh, python",
        ),
        (
            {"jobs": {"a": {"steps": [{"run": "x", "id": "s"}, {"run": "y", "id": "s"}]}}},
            "job 'a' step 2 id 's' is used twice",
        ),
        (
            {"jobs": {"a": {"steps": [{"run": "x", "id": "1st"}]}}},
            "job 'a' step 1 id '1st' must start with a letter or _",
        ),
        (
            {"jobs": {"a": {"steps": [{"run": "x", "timeout-minutes": 1}]}}},
            "set timeout-minutes on the job",
        ),
        (
            {"defaults": {"run": {"shell": "cmd"}}, "jobs": {"a": {"run": "x"}}},
            "workflow defaults.run shell must be one of bash, sh, python",
        ),
        (
            {"jobs": {"a": {"run": "x", "defaults": {"build": {}}}}},
            "job 'a' field 'defaults' must be a mapping with only 'run'",
        ),
    ],
)
def test_refusals_of_the_language(doc: dict, message: str) -> None:
    with pytest.raises(DefinitionError) as caught:
        parse_definition("x", {"name": "X", "jobs": {"a": {"run": "x"}}, **doc})
    assert message in str(caught.value)


# --- the stored form -------------------------------------------------------------------------

EVERYTHING = """\
name: Everything ${{ github.sha }}
on:
  push:
    branches: [main, 'releases/**']
    paths-ignore: ['docs/**']
  pull_request:
    types: [opened, labeled]
    branches: [main]
  schedule:
    - cron: '*/15 * * * *'
    - cron: '0 3 * * 1-5'
      timezone: Europe/Berlin
  workflow_dispatch:
    inputs:
      env: {type: choice, options: [dev, prod], default: dev, description: Where}
      dry: {type: boolean, required: true}
concurrency:
  group: deploy-${{ inputs.env }}
  cancel-in-progress: true
timeout: 7200
env:
  TOKEN: ${{ secrets.TOKEN }}
defaults:
  run:
    shell: bash
notify:
  - url: https://hooks.example.invalid/ci
    on: [failure, cancelled]
  - url: http://localhost:9000/x
jobs:
  test:
    name: Test ${{ matrix.py }}
    runs-on: ${{ matrix.os }}
    strategy:
      fail-fast: false
      max-parallel: 2
      matrix:
        py: ['3.11', '3.12']
        os: [linux, arm]
        include: [{py: '3.13', os: linux, experimental: true}]
    continue-on-error: ${{ matrix.experimental == true }}
    timeout-minutes: 5
    queue-timeout: 60
    retries: 2
    backoff: {Exponential: {base_secs: 1, max_secs: 30}}
    steps:
      - id: unit
        name: Unit
        run: pytest
        env: {COV: "1"}
        working-directory: src
        if: always()
        continue-on-error: true
      - run: print("hi")
        shell: python
  deploy:
    needs: test
    if: ${{ !cancelled() && inputs.env == 'prod' }}
    run: ./deploy
"""


def test_every_field_round_trips_through_the_store() -> None:
    spec = load(EVERYTHING)
    again = spec_from_json(spec_to_json(spec))
    assert again == spec
    assert spec_to_json(again) == spec_to_json(spec)
    test = job(spec, "test")
    assert test.strategy is not None and test.strategy.max_parallel == 2
    assert test.steps[0].working_directory == "src" and test.steps[1].shell == "python"
    assert test.steps[0].shell == "bash"  # from defaults.run
    assert [s.timezone for s in spec.triggers.schedule] == ["UTC", "Europe/Berlin"]
    assert [n.on for n in spec.notify] == [("failure", "cancelled"), ("failure",)]


def test_a_stored_definition_from_before_the_language_still_loads() -> None:
    old = {
        "id": "old",
        "name": "Old",
        "trigger": "on: push",
        "jobs": [
            {
                "id": "a",
                "name": "a",
                "command": "make",
                "depends_on": [],
                "required_labels": [],
                "retry_policy": {"max_retries": 0, "backoff": "None"},
                "timeout_secs": None,
                "env": {},
                "metadata": {},
                "visual": {},
            }
        ],
    }
    spec = spec_from_json(json.dumps(old))
    assert spec.jobs[0].command == "make" and spec.jobs[0].steps == ()
    rendered = plan.render(plan.expand(spec, context())[0], context())
    assert rendered.command == "make"


# --- real GitHub Actions workflows, their `uses:` steps taken out -------------------------

GITHUB_WORKFLOWS = {
    "python-package": """\
        name: Python package
        on:
          push:
            branches: [ "main" ]
          pull_request:
            branches: [ "main" ]
        jobs:
          build:
            runs-on: ubuntu-latest
            strategy:
              fail-fast: false
              matrix:
                python-version: ["3.9", "3.10", "3.11"]
            steps:
            - name: Install dependencies
              run: |
                python -m pip install --upgrade pip
                python -m pip install flake8 pytest
                if [ -f requirements.txt ]; then pip install -r requirements.txt; fi
            - name: Lint with flake8
              run: |
                flake8 . --count --select=E9,F63,F7,F82 --show-source --statistics
                flake8 . --count --exit-zero --max-complexity=10 --max-line-length=127
            - name: Test with pytest
              run: |
                pytest
        """,
    "node": """\
        name: Node.js CI
        on:
          push:
            branches: [ "main" ]
          pull_request:
            branches: [ "main" ]
        jobs:
          build:
            runs-on: ubuntu-latest
            strategy:
              matrix:
                node-version: [18.x, 20.x, 22.x]
            steps:
            - run: npm ci
            - run: npm run build --if-present
            - run: npm test
        """,
    "release": """\
        name: Release
        on:
          workflow_dispatch:
            inputs:
              version:
                description: 'Version to release'
                required: true
                type: string
              dry-run:
                type: boolean
                default: true
        concurrency:
          group: ${{ github.workflow }}-${{ github.ref }}
          cancel-in-progress: true
        env:
          REGISTRY: ghcr.io
        jobs:
          check:
            runs-on: ubuntu-latest
            timeout-minutes: 10
            steps:
              - id: version
                run: echo "tag=v${{ inputs.version }}" >> "$GITHUB_OUTPUT"
          publish:
            needs: check
            if: ${{ !inputs.dry-run }}
            runs-on: [self-hosted, linux]
            env:
              TAG: ${{ needs.check.outputs.tag }}
              TOKEN: ${{ secrets.REGISTRY_TOKEN }}
            steps:
              - name: Publish
                shell: bash
                run: |
                  echo "publishing $TAG to ${{ env.REGISTRY }}"
          report:
            needs: [check, publish]
            if: always()
            runs-on: ubuntu-latest
            steps:
              - run: echo "publish was ${{ needs.publish.result }}"
        """,
    "nightly": """\
        name: Nightly
        on:
          schedule:
            - cron: '30 2 * * 1-5'
          workflow_dispatch:
        defaults:
          run:
            shell: bash
            working-directory: ./app
        jobs:
          nightly:
            runs-on: ubuntu-22.04
            continue-on-error: true
            steps:
              - run: make nightly
              - if: failure()
                run: echo "nightly failed"
        """,
    "cross": """\
        name: Cross
        on: [push, pull_request]
        jobs:
          test:
            name: Test ${{ matrix.os }} / py${{ matrix.python }}
            runs-on: ${{ matrix.os }}
            strategy:
              fail-fast: false
              max-parallel: 4
              matrix:
                os: [ubuntu-latest, macos-latest]
                python: ["3.11", "3.12"]
                include:
                  - os: ubuntu-latest
                    python: "3.13"
                    experimental: true
                exclude:
                  - os: macos-latest
                    python: "3.11"
            continue-on-error: ${{ matrix.experimental == true }}
            steps:
              - run: python -m pytest
        """,
}


@pytest.mark.parametrize("name", sorted(GITHUB_WORKFLOWS))
def test_real_github_workflows_load(name: str) -> None:
    spec = load(GITHUB_WORKFLOWS[name])
    assert spec.jobs
    ctx = context(inputs={"version": "1.0", "dry-run": False})
    for inst in plan.expand(spec, ctx):
        plan.render(inst, {**ctx, "secrets": {"REGISTRY_TOKEN": "t"}})


def test_the_cross_matrix_expands_as_on_github() -> None:
    spec = load(GITHUB_WORKFLOWS["cross"])
    rendered = [
        (i.id, plan.render(i, context()).name, plan.render(i, context()).labels)
        for i in plan.expand(spec, context())
    ]
    assert rendered == [
        ("test-ubuntu_latest-3.11", "Test ubuntu-latest / py3.11", ("ubuntu-latest",)),
        ("test-ubuntu_latest-3.12", "Test ubuntu-latest / py3.12", ("ubuntu-latest",)),
        ("test-macos_latest-3.12", "Test macos-latest / py3.12", ("macos-latest",)),
        ("test-ubuntu_latest-3.13-true", "Test ubuntu-latest / py3.13", ("ubuntu-latest",)),
    ]
    experimental = plan.expand(spec, context())[-1]
    assert plan.render(experimental, context()).continue_on_error is True
    assert plan.fail_fast(experimental) is False and plan.max_parallel(experimental) == 4


def test_the_release_workflow_reads_its_contexts() -> None:
    spec = load(GITHUB_WORKFLOWS["release"])
    assert [i.name for i in spec.inputs] == ["version", "dry-run"]
    ctx = context(inputs={"version": "1.0", "dry-run": False})
    ctx["workflow"]["name"] = "Release"
    assert plan.concurrency_group(spec, ctx) == "Release-"
    pushed = {**ctx, "github": {"ref": "refs/heads/main"}}
    assert plan.concurrency_group(spec, pushed) == "Release-refs/heads/main"
    publish = instance(spec, "publish", ctx)
    assert plan.condition(publish, ctx, PASSED) is True
    assert plan.condition(publish, {**ctx, "inputs": {"dry-run": True}}, PASSED) is False
    check = plan.render(instance(spec, "check", ctx), ctx)
    assert 'echo "tag=v1.0" >> "$GITHUB_OUTPUT"' in check.command


# --- the documentation's examples -----------------------------------------------------------


def documented_workflows() -> list[tuple[str, str]]:
    root = Path(__file__).resolve().parent.parent
    found = []
    for doc in ("README.md", "docs/definitions.md"):
        text = (root / doc).read_text(encoding="utf-8")
        for n, block in enumerate(re.findall(r"```yaml\n(.*?)```", text, re.DOTALL)):
            if block.startswith("name:") and "\njobs:" in block:
                found.append((f"{doc}#{n}", block))
    return found


@pytest.mark.parametrize(("where", "text"), documented_workflows(), ids=lambda v: str(v)[:30])
def test_the_documented_workflows_load(where: str, text: str) -> None:
    spec = parse_definition_text("doc", text)
    ctx = context(inputs={i.name: i.default for i in spec.inputs})
    for inst in plan.expand(spec, ctx):
        plan.render(inst, {**ctx, "secrets": {"DEPLOY_TOKEN": "t"}})
