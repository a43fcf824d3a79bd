"""Run inputs (`on.workflow_dispatch.inputs`) and concurrency groups, from a file and
from a create body."""

from __future__ import annotations

import json
import textwrap
from typing import Any

import pytest

from actors import plan
from actors.definitions import parse_definition, parse_definition_text
from actors.errors import Invalid
from actors.models import WorkflowCreate
from actors.spec import (
    ConcurrencySpec,
    DefinitionError,
    InputSpec,
    spec_from_create,
    validate_inputs,
)


def with_on(on: Any, **extra: Any) -> dict[str, Any]:
    return {"name": "I", "on": on, "jobs": {"a": {"run": "x"}}, **extra}


def test_dispatch_inputs_are_declared_as_on_github() -> None:
    spec = parse_definition_text(
        "i",
        textwrap.dedent(
            """\
            name: Deploy
            on:
              push:
              workflow_dispatch:
                inputs:
                  environment:
                    description: Where to deploy
                    type: choice
                    options: [dev, staging, prod]
                    default: dev
                  dry-run:
                    type: boolean
                    default: true
                  replicas:
                    type: number
                    required: true
                  note:
                  level:
                    type: choice
                    options: [1, 2]
            jobs:
              a:
                run: echo ${{ inputs.environment }} ${{ inputs.dry-run }} $INPUT_DRY_RUN
            """
        ),
    )
    assert spec.inputs == (
        InputSpec(
            name="environment",
            type="choice",
            default="dev",
            options=("dev", "staging", "prod"),
            description="Where to deploy",
        ),
        InputSpec(name="dry-run", type="boolean", default=True),
        InputSpec(name="replicas", type="number", required=True),
        InputSpec(name="note"),
        InputSpec(name="level", type="choice", options=("1", "2")),
    )
    assert spec.triggers.workflow_dispatch
    assert validate_inputs(spec, {"replicas": "3"}) == {
        "environment": "dev",
        "dry-run": True,
        "replicas": 3,
        "note": "",
        "level": "",
    }
    with pytest.raises(Invalid, match="input 'replicas' is required"):
        validate_inputs(spec, {})


@pytest.mark.parametrize("on", ["workflow_dispatch", ["push", "workflow_dispatch"]])
def test_dispatch_without_inputs(on: Any) -> None:
    spec = parse_definition("i", with_on(on))
    assert spec.inputs == () and spec.triggers.workflow_dispatch


@pytest.mark.parametrize(
    ("inputs", "path", "message"),
    [
        (
            {"x": {"type": "text"}},
            "on.workflow_dispatch.inputs.x.type",
            "input 'x' has type 'text'",
        ),
        (
            {"x": {"type": "environment"}},
            "on.workflow_dispatch.inputs.x.type",
            "(deployment environments are not supported)",
        ),
        ({"x": {"type": "choice"}}, "on.workflow_dispatch.inputs.x", "is a choice with no options"),
        ({"x": {"options": ["a"]}}, "on.workflow_dispatch.inputs.x", "has options but is not a ch"),
        (
            {"x": {"type": "number", "default": "many"}},
            "on.workflow_dispatch.inputs.x",
            "input 'x' default: input 'x' must be a number, got 'many'",
        ),
        (
            {"x": {"type": "choice", "options": ["a"], "default": "b"}},
            "on.workflow_dispatch.inputs.x",
            "input 'x' default: input 'x' must be one of a; got 'b'",
        ),
        (
            {"a-b": {}, "a_b": {}},
            "on.workflow_dispatch.inputs.a_b",
            "input 'a_b' is declared twice",
        ),
        ({"1st": {}}, "on.workflow_dispatch.inputs.1st", "input name '1st' must match"),
        ({"x": {"secret": True}}, "on.workflow_dispatch.inputs.x.secret", "has unknown field"),
        ({"x": {"required": "yes"}}, "on.workflow_dispatch.inputs.x.required", "true or false"),
        ({"x": "string"}, "on.workflow_dispatch.inputs.x", "input 'x' must be a mapping"),
    ],
)
def test_input_refusals_name_the_input(inputs: dict, path: str, message: str) -> None:
    with pytest.raises(DefinitionError) as caught:
        parse_definition("i", with_on({"workflow_dispatch": {"inputs": inputs}}))
    (problem,) = caught.value.problems
    assert problem.path == path
    assert message in problem.message


def test_body_input_refusals_name_the_input() -> None:
    body = WorkflowCreate.model_validate_json(
        json.dumps(
            {
                "name": "I",
                "inputs": {"mode": {"type": "boolean", "default": "maybe"}},
                "jobs": [{"id": "a", "command": "x"}],
            }
        )
    )
    with pytest.raises(DefinitionError) as caught:
        spec_from_create("u", body)
    assert caught.value.errors() == [
        {
            "message": "input 'mode' default: input 'mode' must be a boolean, got 'maybe'",
            "path": "inputs.mode",
        }
    ]


# --- concurrency -------------------------------------------------------------------------------

CONCURRENT = """\
name: C
on:
  workflow_dispatch:
    inputs:
      env: {default: dev}
concurrency: {concurrency}
jobs:
  a: {run: x}
"""


def context(**inputs: Any) -> dict[str, Any]:
    return {
        "inputs": inputs,
        "run": {"number": 3, "trigger": "manual", "rerun_of": None},
        "workflow": {"id": "c", "name": "C"},
        "github": {},
    }


@pytest.mark.parametrize(
    ("concurrency", "expected", "group"),
    [
        ("deploy", ConcurrencySpec("deploy"), "deploy"),
        ("deploy-${{ inputs.env }}", ConcurrencySpec("deploy-${{ inputs.env }}"), "deploy-prod"),
        (
            "{group: '${{ github.workflow }}-${{ workflow.id }}', cancel-in-progress: true}",
            ConcurrencySpec("${{ github.workflow }}-${{ workflow.id }}", cancel_in_progress=True),
            "C-c",
        ),
        (
            "{group: '${{ github.event_name }}-${{ run.number }}'}",
            ConcurrencySpec("${{ github.event_name }}-${{ run.number }}"),
            "workflow_dispatch-3",
        ),
    ],
)
def test_concurrency_groups(concurrency: str, expected: ConcurrencySpec, group: str) -> None:
    spec = parse_definition_text("c", CONCURRENT.replace("{concurrency}", concurrency))
    assert spec.concurrency == expected
    assert plan.concurrency_group(spec, context(env="prod")) == group


def test_no_concurrency_is_no_group() -> None:
    spec = parse_definition("c", {"name": "C", "jobs": {"a": {"run": "x"}}})
    assert plan.concurrency_group(spec, context()) is None


def test_a_group_that_renders_empty_is_an_evaluation_error() -> None:
    spec = parse_definition_text("c", CONCURRENT.replace("{concurrency}", "${{ inputs.env }}"))
    with pytest.raises(plan.EvaluationError, match="the group name is empty"):
        plan.concurrency_group(spec, context(env=""))


@pytest.mark.parametrize(
    ("concurrency", "message"),
    [
        ("${{ inputs.nope }}", "concurrency group: unknown input 'nope' (declared: env)"),
        ("${{ needs.a.result }}", "concurrency group: context 'needs' is not available here"),
        ("${{ secrets.X }}", "concurrency group: secrets may only be read in env values"),
        ("{cancel-in-progress: true}", "concurrency has no 'group'"),
        ("{group: x, cancel-in-progress: 'yes'}", "'cancel-in-progress' must be true or false"),
        ("{group: x, queue: 1}", "concurrency has unknown field 'queue'"),
        ("''", "concurrency group is empty"),
        ("x" * 300, "concurrency group is longer than 256 characters"),
    ],
)
def test_concurrency_refusals(concurrency: str, message: str) -> None:
    with pytest.raises(DefinitionError) as caught:
        parse_definition_text("c", CONCURRENT.replace("{concurrency}", concurrency))
    assert message in str(caught.value)
    assert all(p.line == 6 for p in caught.value.problems)


def test_body_concurrency_is_checked_the_same_way() -> None:
    body = WorkflowCreate.model_validate(
        {"name": "C", "concurrency": "x-${{ inputs.nope }}", "jobs": [{"id": "a", "command": "x"}]}
    )
    with pytest.raises(DefinitionError) as caught:
        spec_from_create("u", body)
    assert caught.value.errors() == [
        {
            "message": "concurrency group: unknown input 'nope' (declared: none)",
            "path": "concurrency",
        }
    ]
