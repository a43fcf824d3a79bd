"""Definition files: every field, every refusal, and the shell script a job becomes."""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path

import pytest
import yaml

from actors.definitions import (
    load_definition,
    load_workflows_dir,
    parse_definition,
    parse_definition_text,
)
from actors.models import ExponentialBackoff, FixedBackoff
from actors.spec import DefinitionError, JobSpec, WorkflowSpec

EXAMPLES = Path(__file__).resolve().parent.parent / "workflows"


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load_yaml(tmp_path: Path, text: str, name: str = "wf.yml") -> WorkflowSpec:
    return load_definition(write(tmp_path, name, text))


def job(spec: WorkflowSpec, job_id: str) -> JobSpec:
    return next(j for j in spec.jobs if j.id == job_id)


def sh(command: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", "-c", command],
        capture_output=True,
        text=True,
        timeout=20,
        env={**os.environ, **env},
    )


# --- fields ------------------------------------------------------------------


def test_minimal_definition_takes_the_defaults(tmp_path: Path) -> None:
    spec = load_yaml(
        tmp_path,
        """
        name: Minimal
        jobs:
          build:
            run: make
        """,
        name="minimal.yml",
    )
    assert (spec.id, spec.name, spec.trigger) == ("minimal", "Minimal", "")
    (build,) = spec.jobs
    assert build.id == "build"
    assert build.name == "build"
    assert build.command == "make"  # no env: the run text exactly
    assert build.depends_on == ()
    assert build.required_labels == ()
    assert build.retry_policy.max_retries == 0
    assert build.retry_policy.backoff == "None"
    assert build.timeout_secs is None
    assert build.env == {}


def test_every_job_field(tmp_path: Path) -> None:
    spec = load_yaml(
        tmp_path,
        """
        name: All fields
        jobs:
          lint:
            run: ruff check
          test:
            name: Unit Tests
            run: pytest
            needs: lint
            retries: 2
            backoff: {Exponential: {base_secs: 1, max_secs: 30}}
            labels: [linux, gpu, linux]
            timeout: 600
          deploy:
            needs: [test, lint, test]
            retries: 1
            backoff: {Fixed: {delay_secs: 5}}
            labels: linux
            run: ./deploy.sh
          docs:
            backoff: "None"
            run: mkdocs build
        """,
    )
    test = job(spec, "test")
    assert test.name == "Unit Tests"
    assert test.depends_on == ("lint",)
    assert test.required_labels == ("linux", "gpu")  # repeats dropped, order kept
    assert test.retry_policy.max_retries == 2
    assert test.retry_policy.backoff == ExponentialBackoff.model_validate(
        {"Exponential": {"base_secs": 1, "max_secs": 30}}
    )
    assert test.timeout_secs == 600
    deploy = job(spec, "deploy")
    assert deploy.depends_on == ("test", "lint")
    assert deploy.required_labels == ("linux",)
    assert deploy.retry_policy.backoff == FixedBackoff.model_validate({"Fixed": {"delay_secs": 5}})
    assert job(spec, "docs").retry_policy.backoff == "None"
    # The spec turns into the wire shape the status endpoint shows.
    wire = spec.as_workflow()
    assert [j.id for j in wire.jobs] == ["lint", "test", "deploy", "docs"]
    assert wire.jobs[1].max_retries == 2
    assert wire.jobs[1].required_labels == ["linux", "gpu"]


@pytest.mark.parametrize(
    ("on", "trigger"),
    [
        ("on: push", "on: push"),
        ("on: [push, pull_request]", "on: [push, pull_request]"),
        ("on:\n  push: {branches: [main]}\n  pull_request:\n", "on: [push, pull_request]"),
        ("", ""),
    ],
    ids=["string", "list", "mapping", "absent"],
)
def test_the_three_on_forms(tmp_path: Path, on: str, trigger: str) -> None:
    text = f"name: T\n{on}\njobs:\n  a:\n    run: 'true'\n"
    assert load_yaml(tmp_path, text).trigger == trigger


def test_on_read_as_true_by_plain_pyyaml_is_still_on() -> None:
    # yaml.safe_load is YAML 1.1: the key `on` becomes the boolean True.
    data = yaml.safe_load("name: T\non: [push]\njobs: {a: {run: 'true'}}\n")
    assert True in data
    assert parse_definition("t", data).trigger == "on: [push]"


def test_on_given_twice_is_refused() -> None:
    with pytest.raises(DefinitionError, match="'on' is given twice"):
        parse_definition(
            "t", {"name": "T", "on": "push", True: "pull", "jobs": {"a": {"run": "x"}}}
        )


def test_env_merges_global_then_job_and_is_exported(tmp_path: Path) -> None:
    spec = load_yaml(
        tmp_path,
        """
        name: Env
        env: {STAGE: global, REGION: eu, FLAG: true, COUNT: 3, RATIO: 1.5}
        jobs:
          a:
            env: {STAGE: job, EXTRA: "yes"}
            run: echo "$STAGE $REGION $FLAG $COUNT $RATIO $EXTRA"
          b:
            run: echo "$STAGE"
        """,
    )
    a = job(spec, "a")
    assert a.env == {
        "STAGE": "job",
        "REGION": "eu",
        "FLAG": "true",
        "COUNT": "3",
        "RATIO": "1.5",
        "EXTRA": "yes",
    }
    assert a.command.startswith("export STAGE=job\n")
    assert sh(a.command).stdout == "job eu true 3 1.5 yes\n"
    assert job(spec, "b").env["STAGE"] == "global"
    assert sh(job(spec, "b").command).stdout == "global\n"


def test_yaml_scalars_that_yaml_1_1_would_mangle_stay_verbatim(tmp_path: Path) -> None:
    spec = load_yaml(
        tmp_path,
        """
        name: Scalars
        env: {ANSWER: yes, OFF: off, TIME: 1:30, ZIP: 0800, DAY: 2024-01-01, HEX: 0x1F}
        jobs:
          a: {run: env}
        """,
    )
    assert job(spec, "a").env == {
        "ANSWER": "yes",
        "OFF": "off",
        "TIME": "1:30",
        "ZIP": "0800",
        "DAY": "2024-01-01",
        "HEX": "0x1F",
    }


def test_hostile_env_values_arrive_verbatim(tmp_path: Path) -> None:
    value = 'it\'s "quoted" $(echo pwned) `echo tick` $HOME  two  spaces \\n; exit 9\nline2'
    path = tmp_path / "hostile.json"
    path.write_text(
        json.dumps(
            {
                "name": "Hostile",
                "env": {"GLOBAL_V": value},
                "jobs": {
                    "a": {"env": {"JOB_V": value}, "run": 'printf "%s|%s" "$GLOBAL_V" "$JOB_V"'},
                    "b": {
                        "steps": [
                            {"env": {"STEP_V": value}, "run": 'printf "%s" "$STEP_V"'},
                        ]
                    },
                },
            }
        )
    )
    spec = load_definition(path)
    result = sh(job(spec, "a").command)
    assert result.returncode == 0
    assert result.stdout == f"{value}|{value}"
    result = sh(job(spec, "b").command)
    assert result.returncode == 0
    assert result.stdout.endswith(value)
    assert "pwned" not in result.stdout.replace(value, "")


# --- steps -----------------------------------------------------------------------


def test_steps_are_announced_by_name_then_id_then_number(tmp_path: Path) -> None:
    spec = load_yaml(
        tmp_path,
        """
        name: Steps
        jobs:
          deploy:
            steps:
              - name: Migrate
                id: migrate
                run: echo migrating
              - id: upload
                run: echo uploading
              - run: echo finishing
        """,
    )
    result = sh(job(spec, "deploy").command)
    assert result.returncode == 0
    assert result.stdout.splitlines() == [
        "=== Migrate ===",
        "migrating",
        "=== upload ===",
        "uploading",
        "=== step 3 ===",
        "finishing",
    ]
    assert "echo '=== Migrate ==='" in job(spec, "deploy").command


def test_steps_stop_at_the_first_failing_step_with_its_status(tmp_path: Path) -> None:
    spec = load_yaml(
        tmp_path,
        """
        name: Steps
        jobs:
          a:
            steps:
              - run: echo one
              - name: Breaks
                run: |
                  echo two
                  exit 7
              - run: echo three
        """,
    )
    result = sh(job(spec, "a").command)
    assert result.returncode == 7
    assert result.stdout.splitlines() == ["=== step 1 ===", "one", "=== Breaks ===", "two"]


def test_a_steps_failing_last_command_fails_the_job(tmp_path: Path) -> None:
    spec = load_yaml(
        tmp_path,
        """
        name: Steps
        jobs:
          a:
            steps:
              - run: "false"
              - run: echo unreachable
        """,
    )
    result = sh(job(spec, "a").command)
    assert result.returncode == 1
    assert "unreachable" not in result.stdout


def test_step_env_stays_in_its_step_and_job_env_reaches_all(tmp_path: Path) -> None:
    spec = load_yaml(
        tmp_path,
        """
        name: Steps
        env: {SHARED: global}
        jobs:
          a:
            env: {SHARED: job}
            steps:
              - env: {ONLY_HERE: first, SHARED: step}
                run: echo "$ONLY_HERE $SHARED"
              - run: echo "${ONLY_HERE-unset} $SHARED"
        """,
    )
    a = job(spec, "a")
    assert a.env == {"SHARED": "job"}  # step env is not part of the job's env
    lines = sh(a.command).stdout.splitlines()
    assert lines[1] == "first step"
    assert lines[3] == "unset job"


def test_step_names_with_shell_syntax_are_printed_verbatim() -> None:
    name = "it's $(echo pwned) `x` \\n done"
    spec = parse_definition(
        "t", {"name": "T", "jobs": {"a": {"steps": [{"name": name, "run": "true"}]}}}
    )
    result = sh(job(spec, "a").command)
    assert result.returncode == 0
    assert result.stdout == f"=== {name} ===\n"


def test_step_run_ending_in_a_comment_or_heredoc_still_composes(tmp_path: Path) -> None:
    spec = load_yaml(
        tmp_path,
        """
        name: Steps
        jobs:
          a:
            steps:
              - run: "echo one # a trailing comment"
              - run: |-
                  cat <<EOF
                  two
                  EOF
              - run: echo three
        """,
    )
    result = sh(job(spec, "a").command)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1::2] == ["one", "two", "three"]


# --- refusals --------------------------------------------------------------------

BASE = {"name": "T", "jobs": {"a": {"run": "true"}}}


def with_job(**fields: object) -> dict[str, object]:
    return {"name": "T", "jobs": {"a": {"run": "true", **fields}}}


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (["not", "a", "mapping"], "a definition must be a mapping, got a list"),
        (None, "a definition must be a mapping, got null"),
        ({"jobs": BASE["jobs"]}, "workflow has no 'name'"),
        ({"name": 5, "jobs": BASE["jobs"]}, "workflow field 'name' must be a string"),
        ({"name": "  ", "jobs": BASE["jobs"]}, "workflow field 'name' is empty"),
        ({"name": "T"}, "workflow has no 'jobs'"),
        ({"name": "T", "jobs": {}}, "workflow field 'jobs' is empty"),
        ({"name": "T", "jobs": ["a"]}, "workflow field 'jobs' must be a mapping"),
        ({**BASE, "on": 5}, "workflow field 'on' must be a string, list or mapping"),
        ({**BASE, "on": ["push", 3]}, "workflow field 'on' lists 3"),
        ({**BASE, "permissions": {}}, "workflow has unknown field 'permissions'"),
        ({**BASE, "env": ["A=1"]}, "workflow field 'env' must be a mapping"),
        ({"name": "T", "jobs": {"a": "make"}}, "job 'a' must be a mapping, got a string"),
        ({"name": "T", "jobs": {"bad id": {"run": "x"}}}, "job id 'bad id' must match"),
        ({"name": "T", "jobs": {1: {"run": "x"}}}, "job id 1 must match"),
        # Python's `$` also matches before a final newline; ids must not carry one.
        ({"name": "T", "jobs": {"a\n": {"run": "x"}}}, "job id 'a\\n' must match"),
        (with_job(labels=["linux\n"]), "job 'a' field 'labels' lists 'linux\\n'"),
        (with_job(env={"A\n": "x"}), "job 'a' env key 'A\\n' is not a shell variable name"),
        ({"name": "T", "jobs": {"a": {}}}, "job 'a' has neither run nor steps"),
        (with_job(steps=[{"run": "x"}]), "job 'a' has both run and steps"),
        (with_job(need=["b"]), "job 'a' has unknown field 'need'"),
        (with_job(name=3), "job 'a' field 'name' must be a string"),
        ({"name": "T", "jobs": {"a": {"run": 3}}}, "job 'a' field 'run' must be a string"),
        ({"name": "T", "jobs": {"a": {"run": ""}}}, "job 'a' field 'run' is empty"),
        (with_job(needs=[1]), "job 'a' field 'needs' lists 1, which is not a string"),
        (with_job(needs={"b": 1}), "job 'a' field 'needs' must be a string or a list"),
        (with_job(needs="b c"), "job 'a' field 'needs' lists 'b c', which does not match"),
        (with_job(needs="ghost"), "job 'a' depends on unknown job 'ghost'"),
        (with_job(needs="a"), "job 'a' depends on itself"),
        (with_job(retries=-1), "job 'a' field 'retries' must be an integer from 0 to 100, got -1"),
        (
            with_job(retries="2"),
            "job 'a' field 'retries' must be an integer from 0 to 100, got '2'",
        ),
        (with_job(retries=True), "job 'a' field 'retries' must be an integer"),
        (with_job(retries=101), "job 'a' field 'retries' must be an integer from 0 to 100"),
        (with_job(timeout=0), "job 'a' field 'timeout' must be a positive integer"),
        (with_job(timeout=1.5), "job 'a' field 'timeout' must be a positive integer"),
        (with_job(timeout="60"), "job 'a' field 'timeout' must be a positive integer"),
        (with_job(labels=["has space"]), "job 'a' field 'labels' lists 'has space'"),
        (with_job(labels=[7]), "job 'a' field 'labels' lists 7, which is not a string"),
        (with_job(labels={"linux": True}), "job 'a' field 'labels' must be a string or a list"),
        (with_job(backoff="none"), "job 'a' field 'backoff' is invalid: expected \"None\""),
        (with_job(backoff={"Linear": {"delay_secs": 1}}), "job 'a' field 'backoff' is invalid"),
        (
            with_job(backoff={"Fixed": {"delay_secs": -1}}),
            "job 'a' field 'backoff' is invalid: Fixed.delay_secs",
        ),
        (
            with_job(backoff={"Fixed": {"delay_secs": "5"}}),
            "job 'a' field 'backoff' is invalid: Fixed.delay_secs",
        ),
        (
            with_job(backoff={"Exponential": {"base_secs": 1}}),
            "job 'a' field 'backoff' is invalid: Exponential.max_secs",
        ),
        (with_job(env={"1BAD": "x"}), "job 'a' env key '1BAD' is not a shell variable name"),
        (with_job(env={"A-B": "x"}), "job 'a' env key 'A-B' is not a shell variable name"),
        (with_job(env={"WFG_OUTPUT": "x"}), "job 'a' env key 'WFG_OUTPUT' uses the prefix WFG_"),
        (with_job(env={"A": ["x"]}), "job 'a' env 'A' must be a string, number or boolean"),
        (with_job(env={"A": None}), "job 'a' env 'A' must be a string, number or boolean"),
        (with_job(env={"A": "x\x00y"}), "job 'a' env 'A' contains a NUL character"),
        ({**BASE, "env": {"bad key": 1}}, "workflow env key 'bad key' is not a shell variable"),
        ({"name": "T", "jobs": {"a": {"steps": []}}}, "job 'a' field 'steps' is empty"),
        ({"name": "T", "jobs": {"a": {"steps": "x"}}}, "job 'a' field 'steps' must be a list"),
        ({"name": "T", "jobs": {"a": {"steps": ["echo"]}}}, "job 'a' step 1 must be a mapping"),
        (
            {"name": "T", "jobs": {"a": {"steps": [{"run": "x"}, {"name": "N"}]}}},
            "job 'a' step 2 has no run",
        ),
        (
            {"name": "T", "jobs": {"a": {"steps": [{"run": "x", "uses": "y"}]}}},
            "job 'a' step 1 uses an action ('y'): actions are not supported",
        ),
        (
            {"name": "T", "jobs": {"a": {"steps": [{"run": "x", "name": 1}]}}},
            "job 'a' step 1 field 'name' must be a string",
        ),
        (
            {"name": "T", "jobs": {"a": {"steps": [{"run": "x", "env": {"9": 1}}]}}},
            "job 'a' step 1 env key '9' is not a shell variable name",
        ),
    ],
)
def test_refusals_name_the_job_and_field(data: object, reason: str) -> None:
    with pytest.raises(DefinitionError) as caught:
        parse_definition("t", data)
    assert reason in str(caught.value)
    # Written as a file, the same refusal names its line and column.
    with pytest.raises(DefinitionError) as from_text:
        parse_definition_text("t", yaml.safe_dump(data, allow_unicode=True))
    assert reason in str(from_text.value)
    assert all(p.line and p.column for p in from_text.value.problems), from_text.value.problems


def test_bad_workflow_id_is_refused() -> None:
    with pytest.raises(DefinitionError, match="workflow id 'my ci' must match"):
        parse_definition("my ci", BASE)


def test_cycle_is_refused_with_its_path(tmp_path: Path) -> None:
    with pytest.raises(DefinitionError, match=r"dependency cycle: (a|b|c) -> .* -> \1"):
        load_yaml(
            tmp_path,
            """
            name: Cycle
            jobs:
              a: {needs: c, run: x}
              b: {needs: a, run: x}
              c: {needs: b, run: x}
            """,
        )


def test_duplicate_job_id_in_yaml_is_refused_with_its_line(tmp_path: Path) -> None:
    with pytest.raises(DefinitionError) as caught:
        load_yaml(
            tmp_path,
            """\
            name: Dup
            jobs:
              build: {run: make}
              build: {run: make again}
            """,
        )
    assert str(caught.value) == "invalid YAML: duplicate key 'build' (line 4, column 3)"


def test_duplicate_key_anywhere_in_yaml_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DefinitionError, match=r"duplicate key 'run' \(line 5, column 5\)"):
        load_yaml(
            tmp_path,
            """\
            name: Dup
            jobs:
              build:
                run: make
                run: make again
            """,
        )


def test_duplicate_job_id_in_json_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "dup.json"
    path.write_text('{"name": "D", "jobs": {"a": {"run": "x"}, "a": {"run": "y"}}}')
    with pytest.raises(DefinitionError, match="invalid JSON: duplicate key 'a'"):
        load_definition(path)


def test_yaml_merge_keys_may_be_overridden(tmp_path: Path) -> None:
    spec = load_yaml(
        tmp_path,
        """
        name: Merge
        jobs:
          a: &base {run: make, retries: 1}
          b:
            <<: *base
            retries: 2
        """,
    )
    assert job(spec, "b").retry_policy.max_retries == 2
    assert job(spec, "b").command == "make"


def test_yaml_that_does_not_parse_gives_its_line(tmp_path: Path) -> None:
    with pytest.raises(DefinitionError) as caught:
        load_yaml(tmp_path, "name: Broken\njobs:\n  a: {run: [unclosed\n")
    message = str(caught.value)
    assert message.startswith("invalid YAML: ")
    assert "(line 4, column 1)" in message


def test_json_that_does_not_parse_gives_its_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"name": "B",\n "jobs": {"a": {"run": "x"}\n')
    with pytest.raises(DefinitionError, match=r"invalid JSON: .* \(line 3, column 1\)"):
        load_definition(path)


def test_unreadable_and_unsupported_files_are_definition_errors(tmp_path: Path) -> None:
    with pytest.raises(DefinitionError, match="cannot read"):
        load_definition(tmp_path / "missing.yml")
    with pytest.raises(DefinitionError, match="not a definition file"):
        load_definition(write(tmp_path, "ci.toml", "name = 'x'"))
    latin1 = tmp_path / "latin1.yml"
    latin1.write_bytes(b"name: caf\xe9\njobs: {a: {run: x}}\n")
    with pytest.raises(DefinitionError, match="not UTF-8"):
        load_definition(latin1)
    with pytest.raises(DefinitionError, match="a definition must be a mapping, got null"):
        load_definition(write(tmp_path, "empty.yaml", ""))


def test_source_prefixes_the_reason() -> None:
    with pytest.raises(DefinitionError, match=r"^upload\.yml: workflow has no 'jobs'$"):
        parse_definition("t", {"name": "T"}, source="upload.yml")


def test_json_definition_loads_like_yaml(tmp_path: Path) -> None:
    path = tmp_path / "api-ci.json"
    path.write_text(
        json.dumps(
            {
                "name": "From JSON",
                "on": ["push"],
                "env": {"DEBUG": False, "LEVEL": 2},
                "jobs": {
                    "test": {"run": "pytest", "labels": "linux", "timeout": 30},
                    "ship": {"needs": "test", "steps": [{"run": "echo ship"}]},
                },
            }
        )
    )
    spec = load_definition(path)
    assert (spec.id, spec.name, spec.trigger) == ("api-ci", "From JSON", "on: [push]")
    assert job(spec, "test").env == {"DEBUG": "false", "LEVEL": "2"}
    assert job(spec, "test").required_labels == ("linux",)
    assert job(spec, "test").timeout_secs == 30
    assert job(spec, "ship").depends_on == ("test",)
    assert sh(job(spec, "ship").command).stdout == "=== step 1 ===\nship\n"


# --- directories -------------------------------------------------------------------

GOOD = "name: Good\njobs:\n  a: {run: 'true'}\n"


def test_directory_skips_each_bad_file_with_one_line(tmp_path: Path) -> None:
    write(tmp_path, "a-good.yml", GOOD)
    write(tmp_path, "b-unparsable.yml", "name: [unclosed\n")
    write(tmp_path, "c-unknown-dep.yaml", "name: C\njobs:\n  a: {needs: ghost, run: x}\n")
    write(
        tmp_path,
        "d-cycle.yml",
        "name: D\njobs:\n  a: {needs: b, run: x}\n  b: {needs: a, run: x}\n",
    )
    write(tmp_path, "e-good.json", '{"name": "E", "jobs": {"a": {"run": "true"}}}')
    write(tmp_path, "f-no-run.yml", "name: F\njobs:\n  a: {name: A}\n")
    write(tmp_path, "README.md", "# not a definition\n")
    write(tmp_path, "notes.txt", "ignored")
    write(tmp_path, ".hidden.yml", "broken: [")
    (tmp_path / "nested.yml").mkdir()
    warnings: list[str] = []

    specs = load_workflows_dir(tmp_path, warn=warnings.append)

    assert [s.id for s in specs] == ["a-good", "e-good"]
    assert len(warnings) == 4
    assert all("\n" not in w for w in warnings)
    expected = [
        ("b-unparsable.yml", "invalid YAML"),
        ("c-unknown-dep.yaml", "job 'a' depends on unknown job 'ghost'"),
        ("d-cycle.yml", "dependency cycle"),
        ("f-no-run.yml", "job 'a' has neither run nor steps"),
    ]
    for line, (name, reason) in zip(warnings, expected, strict=True):
        assert line.startswith(f"skipping {tmp_path / name}: ")
        assert reason in line


def test_duplicate_workflow_id_skips_the_later_file(tmp_path: Path) -> None:
    write(tmp_path, "ci.json", '{"name": "From JSON", "jobs": {"a": {"run": "true"}}}')
    write(tmp_path, "ci.yml", "name: From YAML\njobs:\n  a: {run: 'true'}\n")
    warnings: list[str] = []

    specs = load_workflows_dir(tmp_path, warn=warnings.append)

    assert [(s.id, s.name) for s in specs] == [("ci", "From JSON")]
    assert warnings == [f"skipping {tmp_path / 'ci.yml'}: duplicate workflow id 'ci'"]


def test_a_bad_first_file_does_not_reserve_its_id(tmp_path: Path) -> None:
    write(tmp_path, "ci.json", "{broken")
    write(tmp_path, "ci.yml", GOOD)
    warnings: list[str] = []
    specs = load_workflows_dir(tmp_path, warn=warnings.append)
    assert [s.id for s in specs] == ["ci"]
    assert len(warnings) == 1 and "ci.json" in warnings[0]


def test_file_name_that_is_not_an_id_is_skipped(tmp_path: Path) -> None:
    write(tmp_path, "my ci.yml", GOOD)
    warnings: list[str] = []
    assert load_workflows_dir(tmp_path, warn=warnings.append) == []
    assert len(warnings) == 1 and "workflow id 'my ci' must match" in warnings[0]


def test_missing_directory_warns_once_and_loads_nothing(tmp_path: Path) -> None:
    warnings: list[str] = []
    assert load_workflows_dir(tmp_path / "nope", warn=warnings.append) == []
    assert warnings == [f"skipping {tmp_path / 'nope'}: no such directory"]


def test_default_warn_prints_to_stderr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path, "bad.yml", "name: [")
    assert load_workflows_dir(tmp_path) == []
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"skipping {tmp_path / 'bad.yml'}: invalid YAML")
    assert captured.err.count("\n") == 1


# --- the shipped examples ------------------------------------------------------------


def load_examples() -> dict[str, WorkflowSpec]:
    warnings: list[str] = []
    specs = load_workflows_dir(EXAMPLES, warn=warnings.append)
    assert warnings == []
    return {s.id: s for s in specs}


def test_shipped_workflows_load_without_warnings() -> None:
    assert set(load_examples()) == {"ci-1", "hello", "labels-and-retries"}


def test_ci_1_has_the_eight_job_shape() -> None:
    ci = load_examples()["ci-1"]
    assert ci.trigger == "on: [push, pull_request]"
    assert {j.id: set(j.depends_on) for j in ci.jobs} == {
        "unit-tests": set(),
        "lint": set(),
        "typecheck": set(),
        "build": {"unit-tests", "lint", "typecheck"},
        "deploy-db": {"build"},
        "e2e-tests": {"build"},
        "deploy-preview": {"build"},
        "deploy-web": {"deploy-db"},
    }
    # Label-less default workers must be able to claim every job.
    assert all(j.required_labels == () for j in ci.jobs)
    assert all(j.env for j in ci.jobs)  # the top-level env reaches every job
    assert any(j.retry_policy.max_retries > 0 for j in ci.jobs)
    assert any("=== " in j.command for j in ci.jobs)  # some job uses steps


def test_labels_and_retries_example_shows_both() -> None:
    spec = load_examples()["labels-and-retries"]
    assert job(spec, "linux-only").required_labels == ("linux",)
    flaky = job(spec, "flaky")
    assert flaky.retry_policy.max_retries == 2
    assert isinstance(flaky.retry_policy.backoff, FixedBackoff)


def run_job(spec: WorkflowSpec, j: JobSpec, tmp: Path, attempt: int) -> subprocess.Popen[str]:
    output = tmp / f"{spec.id}.{j.id}.out"
    output.touch()
    upstream = tmp / f"{spec.id}.{j.id}.upstream.json"
    upstream.write_text(json.dumps({"unit-tests": {"coverage": "94%"}}))
    env = {
        **os.environ,
        "WFG_ATTEMPT": str(attempt),
        "WFG_OUTPUT": str(output),
        "WFG_UPSTREAM_OUTPUTS": str(upstream),
        "WFG_WORKFLOW_ID": spec.id,
        "WFG_JOB_ID": j.id,
    }
    return subprocess.Popen(
        ["sh", "-c", j.command], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def test_every_shipped_job_succeeds_when_run(tmp_path: Path) -> None:
    specs = load_examples()
    # The last attempt a job gets: a flaky job must pass by then.
    running = {
        (s.id, j.id): run_job(s, j, tmp_path, attempt=j.retry_policy.max_retries)
        for s in specs.values()
        for j in s.jobs
    }
    results = {key: (p.wait(timeout=30), *p.communicate()) for key, p in running.items()}
    failed = {key: r for key, r in results.items() if r[0] != 0}
    assert failed == {}
    assert "coverage=94%" in (tmp_path / "ci-1.unit-tests.out").read_text()
    assert "94%" in results[("ci-1", "build")][1]  # build reads its upstream outputs


def test_flaky_example_fails_its_first_attempt(tmp_path: Path) -> None:
    spec = load_examples()["labels-and-retries"]
    first = run_job(spec, job(spec, "flaky"), tmp_path, attempt=0)
    assert first.wait(timeout=10) == 1
    first.communicate()
