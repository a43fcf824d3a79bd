"""Matrix strategies: GitHub's expansion rules as a table, the concrete jobs they give,
and the refusals found before any run."""

from __future__ import annotations

import json
import textwrap
from typing import Any

import pytest

from actors import plan
from actors.definitions import parse_definition, parse_definition_text
from actors.plan import MatrixError, combination_id, combinations
from actors.spec import DefinitionError, WorkflowSpec


def load(text: str) -> WorkflowSpec:
    return parse_definition_text("wf", textwrap.dedent(text))


def context(**inputs: Any) -> dict[str, Any]:
    return {
        "inputs": inputs,
        "run": {"number": 1, "trigger": "manual", "rerun_of": None},
        "workflow": {"id": "wf", "name": "WF"},
        "github": {},
    }


# --- GitHub's expansion rules ------------------------------------------------------------------

EXPANSIONS = [
    (
        "product, first dimension slowest",
        {"os": ["ubuntu", "windows"], "node": [14, 16]},
        [
            {"os": "ubuntu", "node": 14},
            {"os": "ubuntu", "node": 16},
            {"os": "windows", "node": 14},
            {"os": "windows", "node": 16},
        ],
    ),
    (
        # docs: "Expanding or adding matrix configurations"
        "include extends the one combination it fits",
        {
            "os": ["windows-latest", "ubuntu-latest"],
            "node": [14, 16],
            "include": [{"os": "windows-latest", "node": 16, "npm": 6}],
        },
        [
            {"os": "windows-latest", "node": 14},
            {"os": "windows-latest", "node": 16, "npm": 6},
            {"os": "ubuntu-latest", "node": 14},
            {"os": "ubuntu-latest", "node": 16},
        ],
    ),
    (
        # docs: "Example: Expanding configurations" (fruit and animal)
        "include adds to every fitting combination, overwrites only added values",
        {
            "fruit": ["apple", "pear"],
            "animal": ["cat", "dog"],
            "include": [
                {"color": "green"},
                {"color": "pink", "animal": "cat"},
                {"fruit": "apple", "shape": "circle"},
                {"fruit": "banana"},
                {"fruit": "banana", "animal": "cat"},
            ],
        },
        [
            {"fruit": "apple", "animal": "cat", "color": "pink", "shape": "circle"},
            {"fruit": "apple", "animal": "dog", "color": "green", "shape": "circle"},
            {"fruit": "pear", "animal": "cat", "color": "pink"},
            {"fruit": "pear", "animal": "dog", "color": "green"},
            {"fruit": "banana"},
            {"fruit": "banana", "animal": "cat"},
        ],
    ),
    (
        # docs: "Example: Adding configurations"
        "include that fits nothing is a combination of its own",
        {
            "os": ["windows-latest", "ubuntu-latest"],
            "node": [14, 16],
            "include": [{"os": "windows-latest", "node": 17}],
        },
        [
            {"os": "windows-latest", "node": 14},
            {"os": "windows-latest", "node": 16},
            {"os": "ubuntu-latest", "node": 14},
            {"os": "ubuntu-latest", "node": 16},
            {"os": "windows-latest", "node": 17},
        ],
    ),
    (
        # docs: "Excluding matrix configurations": a partial match excludes
        "exclude removes every combination it partly matches",
        {
            "os": ["macos-latest", "windows-latest"],
            "version": [12, 14, 16],
            "environment": ["staging", "production"],
            "exclude": [
                {"os": "macos-latest", "version": 12, "environment": "production"},
                {"os": "windows-latest", "version": 16},
            ],
        },
        [
            {"os": "macos-latest", "version": 12, "environment": "staging"},
            {"os": "macos-latest", "version": 14, "environment": "staging"},
            {"os": "macos-latest", "version": 14, "environment": "production"},
            {"os": "macos-latest", "version": 16, "environment": "staging"},
            {"os": "macos-latest", "version": 16, "environment": "production"},
            {"os": "windows-latest", "version": 12, "environment": "staging"},
            {"os": "windows-latest", "version": 12, "environment": "production"},
            {"os": "windows-latest", "version": 14, "environment": "staging"},
            {"os": "windows-latest", "version": 14, "environment": "production"},
        ],
    ),
    (
        "include runs after exclude and can add an excluded combination back",
        {
            "os": ["linux", "mac"],
            "py": ["3.11", "3.12"],
            "exclude": [{"os": "mac"}],
            "include": [{"os": "mac", "py": "3.12"}],
        },
        [
            {"os": "linux", "py": "3.11"},
            {"os": "linux", "py": "3.12"},
            {"os": "mac", "py": "3.12"},
        ],
    ),
    (
        "only include: one combination per entry",
        {"include": [{"site": "prod", "dc": "eu"}, {"site": "prod", "dc": "us"}]},
        [{"site": "prod", "dc": "eu"}, {"site": "prod", "dc": "us"}],
    ),
    (
        "object values stay objects",
        {"node": [{"version": 20, "lts": True}, {"version": 22}]},
        [{"node": {"version": 20, "lts": True}}, {"node": {"version": 22}}],
    ),
]


@pytest.mark.parametrize(
    ("matrix", "expected"), [e[1:] for e in EXPANSIONS], ids=[e[0] for e in EXPANSIONS]
)
def test_expansion_follows_github(matrix: dict, expected: list[dict]) -> None:
    assert combinations(matrix) == expected
    # Key order too: ids and names list values in it.
    assert [list(c) for c in combinations(matrix)] == [list(c) for c in expected]


@pytest.mark.parametrize(
    ("matrix", "message"),
    [
        ({"os": "linux"}, "dimension 'os' must be a list, got a string"),
        ({"os": []}, "dimension 'os' has no values"),
        ({}, "a matrix needs at least one dimension or an include entry"),
        ({"os": ["a"], "exclude": [{"arch": "x"}]}, "exclude names 'arch', which is not a dim"),
        ({"os": ["a"], "exclude": [{"os": "a"}]}, "the matrix has no combinations"),
        ({"os": ["a"], "include": "x"}, "include must be a list of mappings, got a string"),
        ({"os": ["a"], "include": [1]}, "include entries must be mappings, got a number"),
        ({"os": ["a"], "include": [{}]}, "include has an empty entry"),
        ({"a": list(range(16)), "b": list(range(17))}, "the matrix has 272 combinations; at most"),
        (
            {"a": list(range(300)), "b": list(range(300))},
            "the matrix has 90000 combinations before exclude; at most 65536",
        ),
        ([1, 2], "a matrix must be a mapping, got a list"),
    ],
)
def test_malformed_matrices_say_why(matrix: Any, message: str) -> None:
    with pytest.raises(MatrixError, match=message.replace("(", r"\(")):
        combinations(matrix)


def test_256_combinations_is_the_most() -> None:
    assert len(combinations({"a": list(range(16)), "b": list(range(16))})) == 256


# --- concrete jobs ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("combo", "expected"),
    [
        ({"python": "3.11", "os": "linux"}, "test-3.11-linux"),
        ({"os": "ubuntu-latest", "arch": "x86/64"}, "test-ubuntu_latest-x86_64"),
        ({"flag": True, "n": 3, "ratio": 1.5, "none": None}, "test-true-3-1.5-"),
        ({"node": {"version": 20, "lts": True}, "os": ["a", "b"]}, "test-20-true-a-b"),
        ({"name": "émoji 🚀"}, "test-_moji__"),
    ],
)
def test_combination_ids(combo: dict, expected: str) -> None:
    assert combination_id("test", combo, set()) == expected


def test_a_long_combination_id_keeps_128_characters_and_a_hash() -> None:
    first = combination_id("test", {"v": "x" * 200}, set())
    second = combination_id("test", {"v": "x" * 199 + "y"}, set())
    assert len(first) == len(second) == 128
    assert first[:119] == second[:119] and first != second
    assert first[119] == "-"


def test_combinations_that_read_the_same_get_numbered() -> None:
    taken = {"test-a_b"}
    assert combination_id("test", {"v": "a b"}, taken) == "test-a_b-2"
    taken.add("test-a_b-2")
    assert combination_id("test", {"v": "a/b"}, taken) == "test-a_b-3"
    long_taken = {combination_id("t", {"v": "z" * 300}, set())}
    numbered = combination_id("t", {"v": "z" * 300}, long_taken)
    assert len(numbered) == 128 and numbered.endswith("-2")


def test_a_matrix_job_becomes_one_job_per_combination() -> None:
    spec = load(
        """\
        name: M
        jobs:
          lint:
            run: ruff check
          test:
            needs: lint
            runs-on: ${{ matrix.os }}
            strategy:
              matrix:
                python: ['3.11', '3.12']
                os: [linux, arm]
            run: tox -e py${{ matrix.python }}
          report:
            needs: test
            run: echo ${{ needs.test.result }}
        """
    )
    instances = plan.expand(spec, context())
    assert [(i.id, i.name, i.group, i.needs) for i in instances] == [
        ("lint", "lint", "lint", ()),
        ("test-3.11-linux", "test (3.11, linux)", "test", ("lint",)),
        ("test-3.11-arm", "test (3.11, arm)", "test", ("lint",)),
        ("test-3.12-linux", "test (3.12, linux)", "test", ("lint",)),
        ("test-3.12-arm", "test (3.12, arm)", "test", ("lint",)),
        (
            "report",
            "report",
            "report",
            ("test-3.11-linux", "test-3.11-arm", "test-3.12-linux", "test-3.12-arm"),
        ),
    ]
    rendered = plan.render(instances[2], context())
    assert (rendered.name, rendered.labels, rendered.command) == (
        "test (3.11, arm)",
        ("arm",),
        "tox -e py3.11",
    )


def test_a_name_showing_the_matrix_gets_no_suffix_and_objects_show_as_json() -> None:
    spec = load(
        """\
        name: M
        jobs:
          a:
            name: Build on ${{ matrix.os }}
            strategy: {matrix: {os: [linux]}}
            run: x
          b:
            strategy:
              matrix:
                node: [{version: 20, lts: true}]
            run: echo ${{ matrix.node.version }}
        """
    )
    a, b = plan.expand(spec, context())
    assert plan.render(a, context()).name == "Build on linux"
    assert b.name == 'b ({"version":20,"lts":true})'
    assert plan.render(b, context()).command == "echo 20"


def test_a_combination_never_takes_another_jobs_id() -> None:
    spec = load(
        """\
        name: M
        jobs:
          test:
            strategy: {matrix: {os: [linux, mac]}}
            run: x
          test-linux:
            run: x
        """
    )
    assert [i.id for i in plan.expand(spec, context())] == [
        "test-linux-2",
        "test-mac",
        "test-linux",
    ]


def test_fail_fast_and_max_parallel() -> None:
    spec = load(
        """\
        name: M
        jobs:
          default:
            strategy: {matrix: {n: [1, 2]}}
            run: x
          tuned:
            strategy: {matrix: {n: [1, 2]}, fail-fast: false, max-parallel: 1}
            run: x
          plain:
            run: x
        """
    )
    by_group = {i.group: i for i in plan.expand(spec, context())}
    assert (plan.fail_fast(by_group["default"]), plan.max_parallel(by_group["default"])) == (
        True,
        None,
    )
    assert (plan.fail_fast(by_group["tuned"]), plan.max_parallel(by_group["tuned"])) == (False, 1)
    assert (plan.fail_fast(by_group["plain"]), plan.max_parallel(by_group["plain"])) == (
        False,
        None,
    )


# --- matrices from expressions ----------------------------------------------------------------

DYNAMIC = """\
name: D
on:
  workflow_dispatch:
    inputs:
      matrix: {default: '{"os": ["linux", "mac"]}'}
      extra: {default: '["arm"]'}
jobs:
  whole:
    strategy:
      matrix: ${{ fromJSON(inputs.matrix) }}
    run: echo ${{ matrix.os }} ${{ matrix.anything }}
  parts:
    strategy:
      matrix:
        os: ${{ fromJSON(inputs.extra) }}
        include: [{os: linux, big: true}]
    run: echo ${{ matrix.os }} ${{ matrix.big }}
  after:
    needs: [whole, parts]
    run: x
"""


def test_a_matrix_from_inputs_expands_when_the_run_starts() -> None:
    spec = load(DYNAMIC)
    ctx = context(matrix='{"os": ["linux", "mac"], "include": [{"os": "bsd"}]}', extra='["arm"]')
    instances = plan.expand(spec, ctx)
    assert [i.id for i in instances] == [
        "whole-linux",
        "whole-mac",
        "whole-bsd",
        "parts-arm",
        "parts-linux-true",
        "after",
    ]
    assert instances[-1].needs == tuple(i.id for i in instances[:-1])
    assert plan.render(instances[1], ctx).command.endswith("\necho mac ")


@pytest.mark.parametrize(
    ("matrix", "message"),
    [
        ("not json", "matrix: strategy.matrix: fromJSON: invalid JSON"),
        ('{"os": "linux"}', "matrix: dimension 'os' must be a list, got a string"),
        (json.dumps({"a": list(range(17)), "b": list(range(17))}), "289 combinations"),
    ],
)
def test_a_matrix_that_fails_for_a_run_fails_its_job_with_the_reason(
    matrix: str, message: str
) -> None:
    spec = load(DYNAMIC)
    ctx = context(matrix=matrix, extra='["arm"]')
    instances = plan.expand(spec, ctx)
    whole = instances[0]
    assert (whole.id, whole.error is not None) == ("whole", True)
    assert instances[-1].needs[0] == "whole"  # dependents wait for it, then see it failed
    with pytest.raises(plan.EvaluationError, match=message):
        plan.render(whole, ctx)


@pytest.mark.parametrize(
    ("strategy", "message"),
    [
        (
            "{matrix: {os: '${{ needs.a.outputs.os }}'}}",
            "job 'b' matrix: a matrix cannot read needs: it is expanded when the run starts",
        ),
        ("{matrix: '${{ fromJSON(needs.a.outputs.m) }}'}", "a matrix cannot read needs"),
        ("{matrix: {os: [linux]}, max-parallel: 0}", "'max-parallel' must be a positive integer"),
        ("{matrix: {os: [linux]}, fail-fast: 'no'}", "'fail-fast' must be true or false"),
        ("{matrix: linux}", "job 'b' matrix must be a mapping or one ${{ }} expression"),
        ("{fail-fast: true}", "job 'b' strategy has no 'matrix'"),
        ("{matrix: {os: [linux]}, parallel: 2}", "job 'b' strategy has unknown field 'parallel'"),
        ("{matrix: {a: [.nan]}}", "job 'b' matrix holds nan, which is not a finite number"),
        (
            "{matrix: {a: [0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16], "
            "b: [0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16]}}",
            "job 'b' matrix: the matrix has 289 combinations; at most 256",
        ),
        (
            "{matrix: {os: [linux], exclude: [{arch: x}]}}",
            "job 'b' matrix: exclude names 'arch', which is not a dimension",
        ),
    ],
)
def test_matrix_refusals_before_any_run(strategy: str, message: str) -> None:
    text = f"name: M\njobs:\n  a:\n    run: x\n  b:\n    needs: a\n    strategy: {strategy}\n"
    text += "    run: x\n"
    with pytest.raises(DefinitionError) as caught:
        parse_definition_text("m", text)
    assert message in str(caught.value)
    assert all(p.line is not None for p in caught.value.problems)


def test_matrix_keys_are_known_for_a_static_matrix() -> None:
    base = {"strategy": {"matrix": {"os": ["linux"], "include": [{"os": "linux", "big": 1}]}}}
    parse_definition("m", {"name": "M", "jobs": {"a": {**base, "run": "${{ matrix.big }}"}}})
    with pytest.raises(DefinitionError, match=r"matrix.arch: not a key of this job's matrix"):
        parse_definition("m", {"name": "M", "jobs": {"a": {**base, "run": "${{ matrix.arch }}"}}})
