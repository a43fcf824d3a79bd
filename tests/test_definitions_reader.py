"""The definition reader under attack and under load: bounded aliases, bounded echoes,
every problem reported with its place, and the API's two body forms."""

from __future__ import annotations

import json
import os
import re
import textwrap
import time
import tracemalloc
from pathlib import Path

import pytest
from click.testing import CliRunner

from actors import open_runtime
from actors.definitions import (
    MAX_PROBLEMS,
    load_definition,
    load_workflows_dir,
    parse_definition,
    parse_definition_text,
)
from actors.models import WorkflowCreate
from actors.spec import DefinitionError, spec_from_create
from web import create_app
from wfg.cli import cli


def laughs(levels: int, where: str = "labels") -> str:
    """A 'billion laughs' definition: each level an alias list of nine of the one below."""
    anchors = ['[&a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels):
        anchors.append(f"&a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]")
    return f"name: x\njobs:\n  a:\n    run: x\n    {where}: {', '.join(anchors)}]\n"


def problems_of(call) -> list[tuple[str, int | None, int | None, str]]:
    with pytest.raises(DefinitionError) as caught:
        call()
    return [(p.path, p.line, p.column, p.message) for p in caught.value.problems]


# --- aliases ---------------------------------------------------------------------------


@pytest.mark.parametrize("levels", [9, 10])
@pytest.mark.parametrize("where", ["labels", "needs"])
def test_alias_bombs_are_refused_fast_and_small(levels: int, where: str) -> None:
    text = laughs(levels, where)
    assert len(text) < 700
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(DefinitionError) as caught:
            parse_definition_text("bomb", text)
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert str(caught.value) == "invalid YAML: aliases expand the document by more than 10000 nodes"
    assert elapsed < 1.0
    assert peak < 5_000_000


def test_alias_bomb_in_a_directory_costs_one_short_line(tmp_path: Path) -> None:
    (tmp_path / "a-good.yml").write_text("name: A\njobs:\n  a: {run: 'true'}\n")
    (tmp_path / "b-bomb.yml").write_text(laughs(10))
    (tmp_path / "c-good.yml").write_text("name: C\njobs:\n  a: {run: 'true'}\n")
    warnings: list[str] = []
    specs = load_workflows_dir(tmp_path, warn=warnings.append)
    assert [s.id for s in specs] == ["a-good", "c-good"]
    assert len(warnings) == 1 and len(warnings[0]) < 200
    assert "aliases expand" in warnings[0]


def test_alias_bomb_through_the_api_and_validate(tmp_path: Path) -> None:
    with pytest.raises(DefinitionError, match="aliases expand"):
        spec_from_create("x", WorkflowCreate(definition=laughs(10)))
    path = tmp_path / "bomb.yml"
    path.write_text(laughs(10))
    started = time.perf_counter()
    result = CliRunner().invoke(cli, ["validate", str(path)])
    assert time.perf_counter() - started < 2
    assert result.exit_code == 1
    assert len(result.output) < 300 and "aliases expand" in result.output


def test_aliases_within_the_bound_still_work() -> None:
    text = textwrap.dedent(
        """\
        name: Anchors
        jobs:
          a: &job {run: make, labels: &labels [linux, x64], retries: 1}
          b:
            <<: *job
            labels: *labels
            needs: a
        """
    )
    spec = parse_definition_text("anchors", text)
    assert [j.required_labels for j in spec.jobs] == [("linux", "x64"), ("linux", "x64")]


def test_a_node_containing_itself_is_refused() -> None:
    with pytest.raises(DefinitionError, match="an alias refers to a node that contains it"):
        parse_definition_text("x", "name: x\njobs: &j\n  a: {run: x, labels: *j}\n")


# --- echoes --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "doc",
    [
        {"name": "x", "jobs": {"a" * 100_000: {"run": "x"}}},
        {"name": "x", "jobs": {"a": {"run": "x", "labels": ["b" * 100_000]}}},
        {"name": "x", "jobs": {"a": {"run": "x", "retries": "9" * 100_000}}},
        {"name": "x", "jobs": {"a": {"run": "x", "y" * 100_000: 1}}},
        {"name": "x", "jobs": {"a": {"run": "x", "needs": [["deep"] * 10_000]}}},
        {"name": "x", "jobs": {"a": {"run": "x", "env": {"K" * 100_000 + "-": 1}}}},
        {"name": "x", "on": "e" * 100_000, "jobs": {"a": {"run": "x"}}},
    ],
)
def test_messages_echo_at_most_80_characters_of_user_data(doc: dict) -> None:
    with pytest.raises(DefinitionError) as caught:
        parse_definition("x", doc)
    assert len(str(caught.value)) < 300
    assert all(len(p.message) < 300 for p in caught.value.problems)


def test_a_yaml_error_with_user_data_is_cut_too() -> None:
    text = "name: x\njobs:\n  " + "k" * 100_000 + ": [\n"
    with pytest.raises(DefinitionError) as caught:
        parse_definition_text("x", text)
    assert len(str(caught.value)) < 300


# --- every problem, each in its place -----------------------------------------------------

MANY = """\
name: Many
on: [push, release]
jobs:
  build:
    runs-on: ubuntu-latest
    permissions: {contents: read}
    steps:
      - uses: actions/checkout@v4
      - run: echo ${{ matrix.os }}
      - run: |
          echo one
          echo ${{ bogus( }}
  test:
    needs: [build, missing]
    retries: -1
    run: "echo ${{ inputs.nope }}"
"""


def test_every_problem_is_reported_with_line_and_column() -> None:
    assert problems_of(lambda: parse_definition_text("many", MANY)) == [
        (
            "on[1]",
            2,
            12,
            "event 'release' is not supported "
            "(supported: push, pull_request, schedule, workflow_dispatch)",
        ),
        (
            "jobs.build.permissions",
            6,
            5,
            "job 'build' has unknown field 'permissions' "
            "(this server hands jobs no GitHub token, so there are no permissions to set)",
        ),
        (
            "jobs.build.steps[0].uses",
            8,
            9,
            "job 'build' step 1 uses an action ('actions/checkout@v4'): actions are not "
            "supported; write the step as run commands",
        ),
        (
            "jobs.build.steps[1].run",
            9,
            23,
            "job 'build' step 2 field 'run': matrix.os: this job has no matrix",
        ),
        (
            "jobs.build.steps[2].run",
            12,
            20,
            "job 'build' step 3 field 'run': Unrecognized function: 'bogus'",
        ),
        ("jobs.test.needs", 14, 12, "job 'test' depends on unknown job 'missing'"),
        (
            "jobs.test.retries",
            15,
            14,
            "job 'test' field 'retries' must be an integer from 0 to 100, got -1",
        ),
        (
            "jobs.test.run",
            16,
            20,
            "job 'test' field 'run': unknown input 'nope' (declared: none)",
        ),
    ]


def test_summary_is_one_line_counting_the_problems() -> None:
    with pytest.raises(DefinitionError) as caught:
        parse_definition_text("many", MANY)
    summary = str(caught.value)
    assert "\n" not in summary
    assert summary.startswith("8 problems: event 'release' is not supported")
    assert summary.endswith("(line 8, column 9); ...")  # three listed, then "..."
    assert "(line 9, column 23)" not in summary


def test_validate_prints_one_line_per_problem(tmp_path: Path) -> None:
    path = tmp_path / "many.yml"
    path.write_text(MANY)
    good = tmp_path / "good.yml"
    good.write_text("name: G\njobs:\n  a: {run: 'true'}\n")
    result = CliRunner().invoke(cli, ["validate", str(good), str(path)])
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert lines[0] == f"{good}: ok"
    assert len(lines) == 9
    assert lines[1] == (
        f"{path}:2:12: event 'release' is not supported "
        "(supported: push, pull_request, schedule, workflow_dispatch)"
    )
    assert (
        lines[-1] == f"{path}:16:20: job 'test' field 'run': unknown input 'nope' (declared: none)"
    )


def test_problems_past_the_cap_are_counted() -> None:
    jobs = {f"j{i}": {"run": "x", "retries": -1} for i in range(MAX_PROBLEMS + 25)}
    with pytest.raises(DefinitionError) as caught:
        parse_definition("x", {"name": "x", "jobs": jobs})
    problems = caught.value.problems
    assert len(problems) == MAX_PROBLEMS + 1
    assert problems[-1].message == "... and 25 more problems"


def test_json_files_report_lines_and_columns(tmp_path: Path) -> None:
    path = tmp_path / "wf.json"
    path.write_text(
        '{\n  "name": "J",\n  "jobs": {\n    "a": {"run": "x", "retries": "2"}\n  }\n}\n'
    )
    assert problems_of(lambda: load_definition(path)) == [
        (
            "jobs.a.retries",
            4,
            34,
            "job 'a' field 'retries' must be an integer from 0 to 100, got '2'",
        )
    ]


@pytest.mark.parametrize(
    ("text", "line", "column"),
    [
        # plain, single-quoted and double-quoted scalars, and a literal block
        ("    run: echo ${{ 1 + }}\n", 5, 21),
        ("    run: 'echo ${{ 1 + }}'\n", 5, 22),
        ('    run: "echo ${{ 1 + }}"\n', 5, 22),
        ("    run: |\n      echo ok\n      echo ${{ 1 + }}\n", 7, 18),
    ],
)
def test_expression_syntax_errors_point_into_the_file(text: str, line: int, column: int) -> None:
    doc = "name: x\non: push\njobs:\n  a:\n" + text
    ((_, got_line, got_column, message),) = problems_of(lambda: parse_definition_text("x", doc))
    assert (got_line, got_column) == (line, column)
    assert message.startswith("job 'a' field 'run': ")
    assert "column" not in message  # the field's own column is replaced by the file's


@pytest.mark.parametrize(
    "doc",
    [
        {"name": "x", "jobs": {"a": {"run": "echo \x00"}}},
        {"name": "x\x00", "jobs": {"a": {"run": "x"}}},
        {"name": "x", "jobs": {"a": {"name": "a\x00", "run": "x"}}},
        {"name": "x", "jobs": {"a": {"steps": [{"run": "\x00"}]}}},
    ],
)
def test_nul_characters_are_refused(doc: dict) -> None:
    with pytest.raises(DefinitionError, match="contains a NUL character"):
        parse_definition("x", doc)


def test_control_characters_yaml_refuses_are_one_problem_with_a_place() -> None:
    assert problems_of(lambda: parse_definition_text("x", "name: x\n\x00\n")) == [
        ("", 2, 1, "invalid YAML: character U+0000 is not allowed")
    ]


# --- the create body --------------------------------------------------------------------------


def create(**body: object) -> WorkflowCreate:
    return WorkflowCreate.model_validate_json(json.dumps(body))


def test_body_problems_name_json_paths() -> None:
    body = create(
        name="B",
        jobs=[
            {"id": "a", "command": "echo ${{ inputs.x }}"},
            {"id": "b", "command": "x", "depends_on": ["zz"], "if": "${{ nope.x }}"},
            {"id": "a", "command": "y"},
            {"id": "c", "command": "x", "env": {"K": "${{ secrets.T }}"}, "timeout_secs": 5},
            {"id": "d", "command": "echo \x00"},
        ],
        inputs={"mode": {"type": "choice"}},
    )
    with pytest.raises(DefinitionError) as caught:
        spec_from_create("u", body, secrets={"OTHER"})
    assert caught.value.errors() == [
        {"message": "duplicate job id 'a'", "path": "jobs[2].id"},
        {"message": "input 'mode' is a choice with no options", "path": "inputs.mode"},
        {
            "message": "job 'a' field 'command': unknown input 'x' (declared: mode)",
            "path": "jobs[0].command",
        },
        {
            "message": "job 'b' field 'if': unknown context 'nope' "
            "(available here: github, inputs, matrix, needs, run, workflow)",
            "path": "jobs[1].if",
        },
        {
            "message": "job 'c' env 'K': unknown secret 'T'",
            "path": "jobs[3].env.K",
        },
        {"message": "job 'd' field 'command' contains a NUL character", "path": "jobs[4].command"},
        {"message": "job 'b' depends on unknown job 'zz'", "path": "jobs[1].depends_on"},
    ]
    assert str(caught.value).startswith("7 problems: duplicate job id 'a'; ")


def test_body_keys_of_the_language() -> None:
    body = create(
        name="Lang",
        timeout_secs=600,
        env={"STAGE": "ci"},
        concurrency={"group": "deploy-${{ inputs.env }}", "cancel-in-progress": True},
        inputs={"env": {"type": "choice", "options": ["dev", "prod"], "default": "dev"}},
        jobs=[
            {
                "id": "test",
                "command": "pytest -k ${{ matrix.py }}",
                "strategy": {"matrix": {"py": ["3.11", "3.12"]}, "max_parallel": 1},
                "queue_timeout_secs": 30,
                "continue_on_error": "${{ inputs.env == 'dev' }}",
                "metadata": {"x": 1},
                "ports": [1],
            },
            {"id": "deploy", "command": "./deploy", "depends_on": ["test"], "if": "always()"},
        ],
    )
    spec = spec_from_create("u", body)
    test, deploy = spec.jobs
    assert spec.timeout_secs == 600
    assert spec.concurrency is not None and spec.concurrency.cancel_in_progress
    assert [i.name for i in spec.inputs] == ["env"]
    assert test.command == "pytest -k ${{ matrix.py }}"  # as sent: no env exports shown
    assert test.env == {"STAGE": "ci"}
    assert test.strategy is not None and test.strategy.max_parallel == 1
    assert test.queue_timeout_secs == 30
    assert test.continue_on_error == "${{ inputs.env == 'dev' }}"
    assert (test.metadata, test.visual) == ({"x": 1}, {"ports": [1]})
    assert deploy.condition == "always()"


def test_a_definition_body_reads_like_the_file(tmp_path: Path) -> None:
    text = textwrap.dedent(
        """\
        name: From text
        on: [push]
        env: {A: "1"}
        jobs:
          a: {run: echo a}
          b: {needs: a, steps: [{name: S, run: echo b}]}
        """
    )
    path = tmp_path / "wf.yml"
    path.write_text(text)
    from_file = load_definition(path)
    from_body = spec_from_create("new-id", create(definition=text))
    assert from_body == type(from_file)(**{**_fields(from_file), "id": "new-id"})
    as_json = json.dumps({"name": "J", "jobs": {"a": {"run": "x"}}})
    assert spec_from_create("j", create(definition=as_json)).jobs[0].command == "x"


def _fields(spec: object) -> dict:
    return {name: getattr(spec, name) for name in spec.__dataclass_fields__}  # type: ignore[attr-defined]


def test_a_definition_body_reports_lines_and_columns() -> None:
    with pytest.raises(DefinitionError) as caught:
        spec_from_create("u", create(definition="name: x\njobs:\n  a:\n    run: 5\n"))
    assert caught.value.errors() == [
        {
            "message": "job 'a' field 'run' must be a string, got a number",
            "path": "jobs.a.run",
            "line": 4,
            "column": 10,
        }
    ]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"definition": "x", "name": "n"}, "give either 'definition' or the workflow's fields"),
        ({"trigger": "x"}, "missing name and jobs (or give 'definition')"),
        ({"name": "n"}, "missing jobs"),
    ],
)
def test_the_two_body_forms_do_not_mix(body: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        WorkflowCreate.model_validate(body)


def test_a_client_dumping_the_definition_form_sends_only_it() -> None:
    sent = WorkflowCreate(definition="name: x").model_dump(mode="json", exclude_none=True)
    assert WorkflowCreate.model_validate(sent).definition == "name: x"


def test_validate_checks_secret_names_against_its_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in list(os.environ):
        if key.startswith("WFG_SECRET_") or key == "SECRETS_DIR":
            monkeypatch.delenv(key)
    path = tmp_path / "s.yml"
    path.write_text(
        "name: S\njobs:\n  a:\n    env:\n      A: ${{ secrets.DEPLOY_TOKEN }}\n"
        "      B: ${{ secrets.api_key }}\n    run: x\n"
    )
    runner = CliRunner()
    assert runner.invoke(cli, ["validate", str(path)]).exit_code == 0  # nothing to check against
    only_env = runner.invoke(cli, ["validate", str(path)], env={"WFG_SECRET_DEPLOY_TOKEN": "x"})
    assert only_env.exit_code == 1
    assert only_env.output == f"{path}:6:14: job 'a' env 'B': unknown secret 'api_key'\n"
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    (secrets_dir / "API_KEY").write_text("k")
    both = runner.invoke(
        cli,
        ["validate", str(path)],
        env={"WFG_SECRET_DEPLOY_TOKEN": "x", "SECRETS_DIR": str(secrets_dir)},
    )
    assert (both.exit_code, both.output) == (0, f"{path}: ok\n")


# --- over HTTP -------------------------------------------------------------------------------


async def test_post_workflows_takes_a_definition_and_refuses_every_problem() -> None:
    async with open_runtime() as runtime:
        app = create_app(runtime)
        async with app.test_app() as test_app:
            client = test_app.test_client()
            text = "name: Posted\non: [push]\njobs:\n  a: {run: echo a}\n  b: {needs: a, run: b}\n"
            created = await client.post("/api/workflows", json={"definition": text})
            body = await created.get_json()
            assert created.status_code == 201, body
            assert (body["name"], body["trigger"]) == ("Posted", "on: [push]")
            assert [(j["id"], j["depends_on"]) for j in body["jobs"]] == [("a", []), ("b", ["a"])]

            refused = await client.post("/api/workflows", json={"definition": MANY})
            error = await refused.get_json()
            assert refused.status_code == 422
            assert error["error"].startswith("invalid workflow: 8 problems: event 'release'")
            bomb = await client.post("/api/workflows", json={"definition": laughs(10)})
            assert bomb.status_code == 422
            assert len((await bomb.get_json())["error"]) < 200
            # The refused definitions left nothing behind.
            assert [w.name for w in await runtime.list_workflows()] == ["Posted"]
