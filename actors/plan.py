"""What a run asks of its definition: its concrete jobs, their fields, their conditions.

The run rules (`rules.py`) decide *when* a job is queued, skipped or
cancelled; this module answers *what* a job is in a given run: the concrete
jobs a definition expands to (one per matrix combination), the command,
labels, name and env each is queued with, and whether its condition holds.
Everything here is pure: no I/O, no trio, no clock. Both homes of the engine
use it through the rules.

A context (`ctx`) is the plain data expressions see: `inputs`, `run`
(`number`, `trigger`, `rerun_of`), `workflow` (`id`, `name`), `needs` (per
needed job id: `result` and `outputs`), `github` (the triggering event, empty
otherwise) and, when the caller has them, `secrets` (name -> value). `render`
adds `matrix` and `env` itself.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from . import expressions as ex
from .models import ID_PATTERN
from .spec import JobSpec, StepSpec, WorkflowSpec, input_text

MAX_COMBINATIONS = 256  # GitHub's bound on one matrix
# Combinations enumerated before `exclude` filters them: past this, the matrix is
# refused without building it (the 256 bound applies after exclude and include).
MAX_RAW_COMBINATIONS = 65_536
MAX_ID_LENGTH = 128

_ID_RE = re.compile(ID_PATTERN)
_ID_UNSAFE = re.compile(r"[^A-Za-z0-9._]")
# Step environment values that come from secrets reach the worker through the
# claim's `env` under this prefix and the step's script copies them to their names.
STEP_SECRET_PREFIX = "_WFG_STEP"


class EvaluationError(Exception):
    """A definition's expression failed for this run; the job (or the run) fails with it."""


class MatrixError(ValueError):
    """A matrix that cannot be expanded; the message says why."""


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
    # Set when the job's matrix could not be expanded for this run: the job is one
    # instance that fails with this message when it would be queued.
    error: str | None = None

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


# --- expressions -------------------------------------------------------------------


# Parsed templates are cached (definitions are immutable) up to this length each, so
# the cache's memory stays bounded whatever the definitions hold.
_CACHED_LENGTH = 4096
_LITERAL = ex.parse_template("")


@lru_cache(maxsize=8192)
def _cached_template(text: str) -> ex.Template:
    return ex.parse_template(text)


def template(text: str) -> ex.Template:
    """`text` parsed as a template; raises `expressions.ExpressionError`."""
    if "${{" not in text:
        return _LITERAL  # no expression: the text is itself
    return _cached_template(text) if len(text) <= _CACHED_LENGTH else ex.parse_template(text)


@lru_cache(maxsize=4096)
def _cached_condition(text: str) -> ex.Expr:
    return ex.condition(text)


def condition_expression(text: str) -> ex.Expr:
    """An `if` value parsed, joined with `success()` when it calls no status function."""
    return _cached_condition(text) if len(text) <= _CACHED_LENGTH else ex.condition(text)


def references(text: str) -> list[tuple[str, ...]]:
    """The static context paths a template reads (context names are lower-cased)."""
    return [ref for expr in template(text).expressions for ref in expr.references]


def reads_context(text: str, name: str) -> bool:
    return any(ref and ref[0] == name for ref in references(text))


def _status(status: Status) -> ex.Status:
    return ex.Status(success=status.success, failure=status.failure, cancelled=status.cancelled)


def _render_value(text: str, ctx: Mapping[str, Any], where: str, *, as_text: bool = False) -> Any:
    """The template's value (one `${{ }}` keeps its type), or with `as_text` its text;
    an expression that fails is an `EvaluationError` naming `where`."""
    try:
        parsed = template(text)
        if parsed.is_literal:
            return text
        return parsed.render(ctx) if as_text else parsed.evaluate(ctx)
    except ex.ExpressionError as exc:
        raise EvaluationError(f"{where}: {exc.message}") from None


def _render_text(text: str, ctx: Mapping[str, Any], where: str) -> str:
    rendered: str = _render_value(text, ctx, where, as_text=True)
    return rendered


def _flag(value: bool | str, ctx: Mapping[str, Any], where: str) -> bool:
    """`continue-on-error`: a boolean, or a template whose value is truthy."""
    if isinstance(value, bool):
        return value
    return ex.truthy(_render_value(value, ctx, where))


def _holds(text: str | None, ctx: Mapping[str, Any], status: ex.Status, where: str) -> bool:
    if text is None:
        return status.success
    try:
        return ex.truthy(condition_expression(text).evaluate(ctx, status=status))
    except ex.ExpressionError as exc:
        raise EvaluationError(f"{where}: {exc.message}") from None


def run_context(ctx: Mapping[str, Any]) -> dict[str, Any]:
    """`ctx` with the `github` values every run has filled in where the triggering
    event gives none: `github.workflow` (the name), `github.run_number`, and
    `github.event_name` (`workflow_dispatch` for a run started by hand)."""
    run = ctx.get("run") or {}
    workflow = ctx.get("workflow") or {}
    trigger = run.get("trigger") or "manual"
    defaults = {
        "workflow": workflow.get("name", ""),
        "run_number": run.get("number"),
        "event_name": "workflow_dispatch" if trigger == "manual" else trigger,
    }
    github = {k: v for k, v in defaults.items() if v is not None}
    github.update(ctx.get("github") or {})
    return {**ctx, "github": github}


# --- the run's jobs --------------------------------------------------------------------


def expand(spec: WorkflowSpec, ctx: Mapping[str, Any]) -> list[JobInstance]:
    """The run's concrete jobs in definition order: a matrix job becomes one job per
    combination, and a job needing it waits for every combination.

    A matrix that cannot be expanded for this run (its expression fails, it has
    too many combinations) leaves one instance carrying the error; it fails
    when it would be queued, so the run still starts and says why.
    """
    rctx = run_context(ctx)
    taken = {job.id for job in spec.jobs}  # a combination never takes a job's own id
    planned: list[tuple[JobSpec, list[tuple[str, Mapping[str, Any] | None]], str | None]] = []
    for job in spec.jobs:
        if job.strategy is None:
            planned.append((job, [(job.id, None)], None))
            continue
        try:
            combos = combinations(evaluate_matrix(job.strategy.matrix, rctx))
        except (MatrixError, EvaluationError) as exc:
            planned.append((job, [(job.id, None)], f"matrix: {exc}"))
            continue
        members: list[tuple[str, Mapping[str, Any] | None]] = []
        for combo in combos:
            member_id = combination_id(job.id, combo, taken)
            taken.add(member_id)
            members.append((member_id, combo))
        planned.append((job, members, None))
    ids_of = {job.id: [member_id for member_id, _ in members] for job, members, _ in planned}
    instances = []
    for job, members, error in planned:
        needs = tuple(itertools.chain.from_iterable(ids_of[d] for d in job.depends_on))
        for member_id, member_matrix in members:
            instances.append(
                JobInstance(
                    id=member_id,
                    spec=job,
                    needs=needs,
                    name=job.name + name_suffix(job, member_matrix),
                    matrix=member_matrix,
                    group=job.id,
                    error=error,
                )
            )
    return instances


def evaluate_matrix(raw: Any, ctx: Mapping[str, Any]) -> Any:
    """The matrix with every `${{ }}` in it evaluated (a template that is one
    expression keeps its value's type: `${{ fromJSON(inputs.os) }}` is a list)."""
    if isinstance(raw, str):
        return _render_value(raw, ctx, "strategy.matrix")
    if isinstance(raw, Mapping):
        return {key: evaluate_matrix(value, ctx) for key, value in raw.items()}
    if isinstance(raw, list):
        return [evaluate_matrix(value, ctx) for value in raw]
    return raw


def matrix_is_static(raw: Any) -> bool:
    """Whether the matrix holds no `${{ }}` anywhere (it can be expanded now)."""
    if isinstance(raw, str):
        return template(raw).is_literal
    if isinstance(raw, Mapping):
        return all(matrix_is_static(v) for v in raw.values())
    if isinstance(raw, list):
        return all(matrix_is_static(v) for v in raw)
    return True


def combinations(matrix: Any) -> list[dict[str, Any]]:
    """A matrix's combinations, by GitHub's rules.

    The dimensions' cartesian product (first dimension slowest) less every
    combination an `exclude` entry matches (a partial match suffices); then
    each `include` entry is merged into every combination whose original
    values it does not change (it may change values earlier entries added),
    and becomes a combination of its own when it fits none. A matrix with
    only `include` has one combination per entry. Raises `MatrixError` for a
    malformed matrix, no combination, or more than 256.
    """
    if not isinstance(matrix, Mapping):
        raise MatrixError(f"a matrix must be a mapping, got {kind(matrix)}")
    dimensions: dict[str, list[Any]] = {}
    include = _entries(matrix.get("include", []), "include")
    exclude = _entries(matrix.get("exclude", []), "exclude")
    for key, values in matrix.items():
        if key in ("include", "exclude"):
            continue
        if not isinstance(values, list):
            raise MatrixError(f"dimension '{key}' must be a list, got {kind(values)}")
        if not values:
            raise MatrixError(f"dimension '{key}' has no values")
        dimensions[str(key)] = values
    if not dimensions and not include:
        raise MatrixError("a matrix needs at least one dimension or an include entry")
    for entry in exclude:
        for key in entry:
            if key not in dimensions:
                raise MatrixError(f"exclude names '{key}', which is not a dimension")
    raw = 1
    for values in dimensions.values():
        raw *= len(values)
    if dimensions and raw > MAX_RAW_COMBINATIONS:
        raise MatrixError(
            f"the matrix has {raw} combinations before exclude; at most {MAX_RAW_COMBINATIONS}"
        )
    base: list[dict[str, Any]] = []
    if dimensions:
        keys = list(dimensions)
        for values in itertools.product(*dimensions.values()):
            combo = dict(zip(keys, values, strict=True))
            if not any(_matches(combo, entry) for entry in exclude):
                base.append(combo)
    result = [dict(combo) for combo in base]
    added: list[dict[str, Any]] = []
    for entry in include:
        fits = False
        for original, combo in zip(base, result, strict=True):
            if all(original[k] == v for k, v in entry.items() if k in dimensions):
                combo.update(entry)
                fits = True
        if not fits:
            added.append(dict(entry))
    result.extend(added)
    if not result:
        raise MatrixError("the matrix has no combinations (exclude removes them all)")
    if len(result) > MAX_COMBINATIONS:
        raise MatrixError(f"the matrix has {len(result)} combinations; at most {MAX_COMBINATIONS}")
    return result


def _entries(value: Any, name: str) -> list[Mapping[str, Any]]:
    if not isinstance(value, list):
        raise MatrixError(f"{name} must be a list of mappings, got {kind(value)}")
    for entry in value:
        if not isinstance(entry, Mapping):
            raise MatrixError(f"{name} entries must be mappings, got {kind(entry)}")
        if not entry:
            raise MatrixError(f"{name} has an empty entry")
    return value


def _matches(combo: Mapping[str, Any], entry: Mapping[str, Any]) -> bool:
    return all(combo.get(key) == value for key, value in entry.items())


def _leaves(value: Any) -> Iterable[Any]:
    if isinstance(value, Mapping):
        for item in value.values():
            yield from _leaves(item)
    elif isinstance(value, list):
        for item in value:
            yield from _leaves(item)
    else:
        yield value


def combination_id(job_id: str, combo: Mapping[str, Any], taken: set[str]) -> str:
    """`<job>-<values joined by '-'>`, in the combination's key order.

    Each value is written as expressions write it (`true`, `3.1`) with every
    character outside `[A-Za-z0-9._]` replaced by `_`; an object or list
    value contributes its scalar values in order. An id longer than 128
    characters keeps 119 and ends with `-` and 8 hex characters of the full
    id's SHA-256. An id already `taken` (two combinations that read the same,
    or another job's id) gets `-2`, `-3`... (shortened to fit).
    """
    parts = [_ID_UNSAFE.sub("_", ex.to_text(leaf)) for leaf in _leaves(list(combo.values()))]
    base = "-".join([job_id, *parts])
    if len(base) > MAX_ID_LENGTH:
        digest = hashlib.sha256(base.encode()).hexdigest()[:8]
        base = f"{base[: MAX_ID_LENGTH - 9]}-{digest}"
    candidate, n = base, 1
    while candidate in taken:
        n += 1
        suffix = f"-{n}"
        candidate = base[: MAX_ID_LENGTH - len(suffix)] + suffix
    return candidate


def name_suffix(job: JobSpec, combo: Mapping[str, Any] | None) -> str:
    """` (<values joined by ', '>)` for a combination, as GitHub names it; nothing
    when the job's name already shows the matrix (it reads `matrix`). An object
    or list value is shown as compact JSON."""
    if not combo or reads_context(job.name, "matrix"):
        return ""
    shown = [
        json.dumps(v, separators=(",", ":")) if isinstance(v, Mapping | list) else ex.to_text(v)
        for v in combo.values()
    ]
    return f" ({', '.join(shown)})"


# --- one job as it is queued -------------------------------------------------------------


def job_context(inst: JobInstance, ctx: Mapping[str, Any]) -> dict[str, Any]:
    """The contexts the job's own fields see: the run's, `github` filled in, its `matrix`."""
    jctx = run_context(ctx)
    jctx["matrix"] = dict(inst.matrix or {})
    return jctx


def static_job_count(job: JobSpec) -> int:
    """How many jobs a definition's job becomes in a run, as far as can be known before
    one: its matrix's combinations when the matrix is written out, else 1."""
    strategy = job.strategy
    if strategy is None or not matrix_is_static(strategy.matrix):
        return 1
    try:
        return len(combinations(strategy.matrix))
    except MatrixError:
        return 1  # refused by the definition's own checks


def render(inst: JobInstance, ctx: Mapping[str, Any]) -> Rendered:
    """The job as it is queued: every template evaluated, so any worker receives a
    plain command. The command exports the run's inputs as `INPUT_<NAME>`, the
    triggering event's `GITHUB_*` values and the job's env, then runs its `run`
    (with `sh -c`) or its composed steps. Env
    values that read `secrets` are not in the command: they go to `Rendered.env`,
    which the worker exports."""
    if inst.error is not None:
        raise EvaluationError(inst.error)
    spec = inst.spec
    jctx = job_context(inst, ctx)
    plain, hidden = _render_env(spec.env, jctx, "env")
    jctx["env"] = plain
    name = _render_text(spec.name, jctx, "name") + name_suffix(spec, inst.matrix)
    labels = _render_labels(spec.required_labels, jctx)
    if spec.steps:
        body = compose_steps(
            [_render_step(step, n, jctx, hidden) for n, step in enumerate(spec.steps, start=1)]
        )
    else:
        body = _render_text(spec.script, jctx, "run")
    prelude = exports({**input_env(ctx), **github_env(ctx), **plain})
    return Rendered(
        name=name,
        command=prelude + body,
        labels=labels,
        timeout_secs=spec.timeout_secs,
        continue_on_error=_flag(spec.continue_on_error, jctx, "continue-on-error"),
        # The claim's `env`: the job's whole environment, secrets included; the
        # command above exports all of it but the secret-bearing values.
        env={**plain, **hidden} or None,
    )


def _render_env(
    env: Mapping[str, str], ctx: Mapping[str, Any], where: str
) -> tuple[dict[str, str], dict[str, str]]:
    """(values for the command, values from secrets that it must not show)."""
    plain: dict[str, str] = {}
    hidden: dict[str, str] = {}
    for key, value in env.items():
        if reads_context(value, "secrets"):
            _check_secrets_known(value, ctx, f"{where} {key}")
            hidden[key] = _render_text(value, ctx, f"{where} {key}")
        else:
            plain[key] = _render_text(value, ctx, f"{where} {key}")
    return plain, hidden


def _check_secrets_known(text: str, ctx: Mapping[str, Any], where: str) -> None:
    known = {str(name).upper() for name in (ctx.get("secrets") or {})}
    for ref in references(text):
        if ref[0] == "secrets" and len(ref) > 1 and str(ref[1]).upper() not in known:
            raise EvaluationError(f"{where}: secret '{ref[1]}' is not set")


def _render_labels(labels: Iterable[str], ctx: Mapping[str, Any]) -> tuple[str, ...]:
    out: list[str] = []
    for label in labels:
        value = _render_value(label, ctx, "runs-on")
        for item in value if isinstance(value, list) else [value]:
            text = ex.to_text(item)
            if not _ID_RE.fullmatch(text):
                raise EvaluationError(f"runs-on: label {_shown(text)} does not match {ID_PATTERN}")
            out.append(text)
    return tuple(dict.fromkeys(out))


def input_env(ctx: Mapping[str, Any]) -> dict[str, str]:
    """`INPUT_<NAME>` for each of the run's inputs, as GitHub names them for actions."""
    return {
        "INPUT_" + name.upper().replace("-", "_"): input_text(value)
        for name, value in (ctx.get("inputs") or {}).items()
    }


# The `github` values a job of a run started by an event sees in its environment.
GITHUB_ENV = {
    "event_name": "GITHUB_EVENT_NAME",
    "ref": "GITHUB_REF",
    "ref_name": "GITHUB_REF_NAME",
    "sha": "GITHUB_SHA",
    "repository": "GITHUB_REPOSITORY",
    "head_ref": "GITHUB_HEAD_REF",
    "base_ref": "GITHUB_BASE_REF",
}


def github_env(ctx: Mapping[str, Any]) -> dict[str, str]:
    """`GITHUB_REF`, `GITHUB_SHA`, `GITHUB_EVENT_NAME`... as GitHub names them, for each
    value the triggering event gives (a run started by hand has none)."""
    github = ctx.get("github") or {}
    return {
        name: github[key] for key, name in GITHUB_ENV.items() if isinstance(github.get(key), str)
    }


def condition(inst: JobInstance, ctx: Mapping[str, Any], status: Status) -> bool:
    """Whether the job runs once its needs are terminal: its `if` (default
    `success()`), evaluated with the status the rules computed."""
    return _holds(inst.spec.condition, job_context(inst, ctx), _status(status), "if")


def requires_success(inst: JobInstance) -> bool:
    """Whether the job's condition can only hold when `success()` does (no `if`, or
    one that calls no status function and so is joined with `success()`): such a
    job is skipped as soon as an ancestor fails, without waiting for its other needs."""
    text = inst.spec.condition
    if text is None:
        return True
    written = ex.parse_template(text)
    expressions = [ex.parse_expression(text)] if written.is_literal else written.expressions
    called = {f for e in expressions for f in e.functions} & ex.STATUS_FUNCTIONS
    if not called:
        return True  # joined with success()
    bare = [e.source.strip().lower() for e in expressions]
    return called == {"success"} and bare == ["success()"]


def survives_cancel(inst: JobInstance) -> bool:
    """Whether a cancel leaves the job to decide by its condition (it names
    `always()` or `cancelled()`), instead of cancelling it outright."""
    text = inst.spec.condition
    if text is None:
        return False
    functions = condition_expression(text).functions
    return "always" in functions or "cancelled" in functions


def max_parallel(inst: JobInstance) -> int | None:
    """How many of the job's matrix combinations may be queued or running at once."""
    strategy = inst.spec.strategy
    return strategy.max_parallel if strategy is not None else None


def fail_fast(inst: JobInstance) -> bool:
    """Whether a failed combination cancels its unfinished siblings (default true)."""
    strategy = inst.spec.strategy
    return strategy.fail_fast if strategy is not None else False


def concurrency_group(spec: WorkflowSpec, ctx: Mapping[str, Any]) -> str | None:
    """The run's concurrency group name, or None when the workflow is its own group."""
    if spec.concurrency is None:
        return None
    group = _render_text(spec.concurrency.group, run_context(ctx), "concurrency.group")
    if not group.strip():
        raise EvaluationError("concurrency.group: the group name is empty for this run")
    return group


def run_timeout_secs(spec: WorkflowSpec) -> int | None:
    """The whole run's time limit, if the definition sets one."""
    return spec.timeout_secs


# --- steps ----------------------------------------------------------------------------

SHELLS = ("bash", "sh", "python")
_SHELL_COMMANDS = {
    "bash": "bash --noprofile --norc -eo pipefail -c",
    "sh": "sh -e -c",
    "python": "python3 -c",
    None: '"$_wfg_shell" -e -c',
}


@dataclass(frozen=True, slots=True)
class ComposedStep:
    """One step as the job's script runs it; every field is final text."""

    label: str
    run: str
    shell: str | None = None  # one of SHELLS; None: bash -e where bash exists, else sh -e
    env: Mapping[str, str] | None = None  # exported in the step's subshell
    env_from: Mapping[str, str] | None = None  # name -> variable holding its value
    working_directory: str | None = None
    when_passing: bool = True  # runs when no earlier step failed
    when_failed: bool = False  # runs when an earlier step failed
    continue_on_error: bool = False


def _render_step(
    step: StepSpec, n: int, jctx: Mapping[str, Any], hidden: dict[str, str]
) -> ComposedStep:
    where = f"step {n}"
    plain, secret = _render_env(step.env, jctx, f"{where} env")
    env_from = {}
    for key, value in secret.items():
        variable = f"{STEP_SECRET_PREFIX}{n}_{key}"
        hidden[variable] = value
        env_from[key] = variable
    sctx = {**jctx, "env": {**jctx["env"], **plain}}
    passing = ex.Status(success=True, failure=False, cancelled=False)
    failed = ex.Status(success=False, failure=True, cancelled=False)
    return ComposedStep(
        label=_render_text(step_label(step, n), sctx, f"{where} name"),
        run=_render_text(step.run, sctx, f"{where} run"),
        shell=step.shell,
        env=plain,
        env_from=env_from,
        working_directory=None
        if step.working_directory is None
        else _render_text(step.working_directory, sctx, f"{where} working-directory"),
        when_passing=_holds(step.condition, sctx, passing, f"{where} if"),
        when_failed=_holds(step.condition, sctx, failed, f"{where} if"),
        continue_on_error=_flag(step.continue_on_error, sctx, f"{where} continue-on-error"),
    )


def step_label(step: StepSpec, n: int) -> str:
    """How a step is announced: its name, else its id, else `step N`."""
    return step.name or step.id or f"step {n}"


def compose_steps(steps: list[ComposedStep]) -> str:
    """The steps as one POSIX `sh` script, with GitHub's step semantics.

    Each step runs in its own shell process (`bash -e` where bash exists,
    else `sh -e`; `shell: bash` adds `-o pipefail`, `python` runs python3)
    inside a subshell holding its env and working directory, announced by
    `=== <label> ===`. After a step fails, the steps that run only while all
    passed (the default `success()`) are skipped and those whose `if` holds
    after a failure (`always()`, `failure()`) still run. A failing
    `continue-on-error` step does not count as a failure. The script exits
    with the first failing step's status, else 0.
    """
    lines = ["_wfg_failed=0", "_wfg_status=0"]
    if any(s.shell is None for s in steps if s.when_passing or s.when_failed):
        lines.append("_wfg_shell=sh")
        lines.append("if command -v bash >/dev/null 2>&1; then _wfg_shell=bash; fi")
    may_have_failed = False  # until a step that can fail is in, no guard is needed
    for step in steps:
        runs = step.when_passing or (may_have_failed and step.when_failed)
        if not runs:
            continue
        guard = None
        if may_have_failed and not step.when_failed:
            guard = 'if [ "$_wfg_failed" = 0 ]; then'
        elif may_have_failed and not step.when_passing:
            guard = 'if [ "$_wfg_failed" != 0 ]; then'
        may_have_failed = may_have_failed or not step.continue_on_error
        if guard:
            lines.append(guard)
        lines.append(_announce(f"=== {step.label} ==="))
        lines.append("(")
        lines.extend(f"export {k}={shlex.quote(v)}" for k, v in (step.env or {}).items())
        lines.extend(f'export {k}="${v}"' for k, v in (step.env_from or {}).items())
        if step.working_directory is not None:
            lines.append(f"cd -- {shlex.quote(step.working_directory)} || exit")
        lines.append(f"{_SHELL_COMMANDS[step.shell]} {shlex.quote(step.run)}")
        lines.append(")")
        lines.append("_wfg_rc=$?")
        if step.continue_on_error:
            notice = shlex.quote(f"=== {step.label} failed (exit status ")
            lines.append(
                f'if [ "$_wfg_rc" != 0 ]; then printf \'%s%s%s\\n\' {notice} "$_wfg_rc" '
                "'; continue-on-error) ===' >&2; fi"
            )
        else:
            lines.append(
                'if [ "$_wfg_rc" != 0 ] && [ "$_wfg_failed" = 0 ]; then '
                "_wfg_failed=1; _wfg_status=$_wfg_rc; fi"
            )
        if guard:
            lines.append("fi")
    lines.append('exit "$_wfg_status"')
    return "\n".join(lines) + "\n"


def _announce(line: str) -> str:
    # dash's echo expands backslash escapes; printf '%s' prints the text as written.
    quoted = shlex.quote(line)
    return f"printf '%s\\n' {quoted}" if "\\" in line else f"echo {quoted}"


def exports(env: Mapping[str, str]) -> str:
    """`export NAME='value'` lines, each value quoted for the shell."""
    return "".join(f"export {key}={shlex.quote(value)}\n" for key, value in env.items())


def kind(value: Any) -> str:
    """How a wrong value is named in a message: by its type, as a document spells it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, Mapping):
        return "a mapping"
    return type(value).__name__


def _shown(value: str) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
