"""What a run asks of its definition: its concrete jobs, their fields, their conditions.

The run rules (`rules.py`) decide *when* a job is queued, skipped or
cancelled; this module answers *what* a job is in a given run: the concrete
jobs a definition expands to, the command, labels, name and env each is
queued with, and whether its condition holds. Everything here is pure: no
I/O, no trio, no clock. Both homes of the engine use it through the rules.

A context (`ctx`) is the plain data expressions see: `inputs`, `run`
(`number`, `trigger`), `workflow` (`id`, `name`), `needs` (per needed job id:
`result` and `outputs`) and `github` (the triggering event, empty otherwise).
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .spec import JobSpec, WorkflowSpec, input_text


class EvaluationError(Exception):
    """A definition's expression failed for this run; the job (or the run) fails with it."""


@dataclass(frozen=True, slots=True)
class Status:
    """What the status functions of a job's condition answer."""

    success: bool  # `success()`: every need passed, no ancestor failed, not cancelled
    failure: bool  # `failure()`: some ancestor failed
    cancelled: bool  # `cancelled()`: the run was cancelled


@dataclass(frozen=True, slots=True)
class JobInstance:
    """One concrete job of a run (a matrix expands a job into several)."""

    id: str
    spec: JobSpec
    needs: tuple[str, ...]  # concrete ids it waits for
    name: str
    matrix: Mapping[str, Any] | None = None
    group: str = ""  # the definition's job id; the combinations of a matrix share it

    def __post_init__(self) -> None:
        if not self.group:
            object.__setattr__(self, "group", self.spec.id)


@dataclass(frozen=True, slots=True)
class Rendered:
    """A job's fields as a worker receives them once it is queued."""

    name: str
    command: str
    labels: tuple[str, ...]
    timeout_secs: int | None = None
    continue_on_error: bool = False
    # Extension `env` of the claim: the job's whole environment, secrets included
    # (the command exports all of it but the secret-bearing values).
    env: Mapping[str, str] | None = None

    def to_row(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "command": self.command,
            "labels": list(self.labels),
            "timeout_secs": self.timeout_secs,
            "continue_on_error": self.continue_on_error,
            "env": dict(self.env) if self.env else None,
        }

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Rendered:
        return cls(**{**row, "labels": tuple(row["labels"])})


def expand(spec: WorkflowSpec, ctx: Mapping[str, Any]) -> list[JobInstance]:
    """The run's concrete jobs in definition order."""
    return [JobInstance(id=j.id, spec=j, needs=j.depends_on, name=j.name) for j in spec.jobs]


def render(inst: JobInstance, ctx: Mapping[str, Any]) -> Rendered:
    """The job as it is queued: inputs exported as `INPUT_<NAME>` before its command."""
    spec = inst.spec
    exports = "".join(
        f"export {name}={shlex.quote(value)}\n" for name, value in input_env(ctx).items()
    )
    return Rendered(
        name=inst.name,
        command=exports + spec.command,
        labels=spec.required_labels,
        timeout_secs=spec.timeout_secs,
        env={**spec.env, **input_env(ctx)} or None,
    )


def input_env(ctx: Mapping[str, Any]) -> dict[str, str]:
    """`INPUT_<NAME>` for each of the run's inputs, as GitHub names them for actions."""
    return {
        "INPUT_" + name.upper().replace("-", "_"): input_text(value)
        for name, value in (ctx.get("inputs") or {}).items()
    }


def condition(inst: JobInstance, ctx: Mapping[str, Any], status: Status) -> bool:
    """Whether the job runs once its needs are terminal (the default is `success()`)."""
    return status.success


def requires_success(inst: JobInstance) -> bool:
    """Whether the job's condition can only hold when `success()` does (no `if`, or
    one that calls no status function and so is joined with `success()`): such a
    job is skipped as soon as an ancestor fails, without waiting for its other needs."""
    return True


def survives_cancel(inst: JobInstance) -> bool:
    """Whether a cancel leaves the job to decide by its condition (it names
    `always()` or `cancelled()`), instead of cancelling it outright."""
    return False


def max_parallel(inst: JobInstance) -> int | None:
    """How many of the job's matrix combinations may be queued or running at once."""
    return None


def fail_fast(inst: JobInstance) -> bool:
    """Whether a failed combination cancels its unfinished siblings."""
    return False


def concurrency_group(spec: WorkflowSpec, ctx: Mapping[str, Any]) -> str | None:
    """The run's concurrency group name, or None when the workflow is its own group."""
    if spec.concurrency is None:
        return None
    return spec.concurrency.group


def run_timeout_secs(spec: WorkflowSpec) -> int | None:
    """The whole run's time limit, if the definition sets one."""
    return None
