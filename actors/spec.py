"""A workflow's definition as the runtime holds it, and the rules every definition obeys.

Both sources of definitions, files in `WORKFLOWS_DIR` and `POST /api/workflows`,
end here, so a cycle, an unknown dependency, a name past `max_name_chars` or
a NUL byte in what a worker will run is refused by the same code.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Collection, Iterable
from contextvars import ContextVar
from dataclasses import InitVar, dataclass, field
from typing import Any

from .errors import Invalid
from .models import Job, RetryPolicy, Workflow, WorkflowCreate
from .triggers import Triggers

_EMPTY: dict = {}  # shared by every job with no env/metadata/visual: never mutated
_POLICIES: dict[str, RetryPolicy] = {}


def _shared_policy(policy: RetryPolicy) -> RetryPolicy:
    """One instance per distinct retry policy (they are never mutated)."""
    return _POLICIES.setdefault(policy.model_dump_json(), policy)


MAX_LISTED_PROBLEMS = 3  # in a one-line summary; `DefinitionError.problems` holds them all


@dataclass(frozen=True, slots=True)
class Problem:
    """One reason a definition cannot load, and where it is.

    `path` names the place in the document (`jobs.build.steps[1].run` in a
    file, `jobs[2].command` in a create body); `line` and `column` (from 1)
    are set when the definition came as text.
    """

    message: str
    path: str = ""
    line: int | None = None
    column: int | None = None

    def __str__(self) -> str:
        if self.line is None:
            return self.message
        return f"{self.message} (line {self.line}, column {self.column})"

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"message": self.message, "path": self.path}
        if self.line is not None:
            data["line"] = self.line
            data["column"] = self.column
        return data


class DefinitionError(ValueError):
    """A definition that cannot be loaded; `problems` holds every reason found.

    `str()` is one line: the only problem, or `<n> problems: first; second; ...`.
    """

    def __init__(self, problems: str | Problem | Iterable[Problem], prefix: str = "") -> None:
        if isinstance(problems, str):
            problems = [Problem(problems)]
        elif isinstance(problems, Problem):
            problems = [problems]
        self.problems: tuple[Problem, ...] = tuple(problems) or (Problem("invalid definition"),)
        self.prefix = prefix
        super().__init__(self.summary())

    def summary(self) -> str:
        problems = self.problems
        if len(problems) == 1:
            text = str(problems[0])
        else:
            listed = "; ".join(str(p) for p in problems[:MAX_LISTED_PROBLEMS])
            more = "; ..." if len(problems) > MAX_LISTED_PROBLEMS else ""
            text = f"{len(problems)} problems: {listed}{more}"
        return f"{self.prefix}: {text}" if self.prefix else text

    def errors(self) -> list[dict[str, Any]]:
        """Every problem as JSON: `{"message", "path"}`, plus `line`/`column` for text."""
        return [p.to_json() for p in self.problems]


@dataclass(frozen=True, slots=True)
class StepSpec:
    """One step of a job, as written: its fields may hold `${{ }}` templates."""

    run: str
    name: str = ""  # as written; announced as its name, else its id, else `step N`
    id: str = ""
    env: dict[str, str] = field(default_factory=dict)
    condition: str | None = None  # `if`, as written; None: success()
    continue_on_error: bool | str = False  # a template when it is an expression
    working_directory: str | None = None
    shell: str | None = None  # bash, sh or python; None: bash -e where bash exists, else sh -e

    def __post_init__(self) -> None:
        if not self.env:
            object.__setattr__(self, "env", _EMPTY)

    def to_data(self) -> dict[str, Any]:
        return {
            "run": self.run,
            "name": self.name,
            "id": self.id,
            "env": self.env,
            "condition": self.condition,
            "continue_on_error": self.continue_on_error,
            "working_directory": self.working_directory,
            "shell": self.shell,
        }


@dataclass(frozen=True, slots=True)
class StrategySpec:
    """A job's `strategy`: its matrix (a mapping of dimensions with `include` and
    `exclude`, or one `${{ }}` expression; either may hold templates evaluated
    when a run starts) and how its combinations run."""

    matrix: Any
    fail_fast: bool = True
    max_parallel: int | None = None

    def to_data(self) -> dict[str, Any]:
        return {
            "matrix": self.matrix,
            "fail_fast": self.fail_fast,
            "max_parallel": self.max_parallel,
        }


DEFAULT_MAX_NAME_CHARS = 256
# The limit max_name_chars on workflow and job names. A context variable, so one
# setting reaches both the files loaded at start and API creates: `wfg serve` sets
# it (MAX_NAME_CHARS) in its main task, before any definition is read.
MAX_NAME_CHARS: ContextVar[int] = ContextVar("max_name_chars", default=DEFAULT_MAX_NAME_CHARS)


@dataclass(frozen=True, slots=True)
class JobSpec:
    id: str
    name: str  # may hold `${{ }}` templates, rendered when the job is queued
    # What status shows before a run: for a file, the env exports then the `run` or
    # the composed steps, templates as written; for the API, the command as sent.
    command: str
    depends_on: tuple[str, ...] = ()
    required_labels: tuple[str, ...] = ()  # may hold templates (`runs-on: ${{ matrix.os }}`)
    retry_policy: RetryPolicy = field(default_factory=RetryPolicy)
    timeout_secs: int | None = None
    # A job not claimed this long after it was queued fails (no worker can take it).
    queue_timeout_secs: int | None = None
    env: dict[str, str] = field(default_factory=dict)  # values may hold templates and secrets
    metadata: dict[str, Any] = field(default_factory=dict)
    # Visualizer fields (`ports`, `children`, `collapsed`) exactly as a client sent them.
    visual: dict[str, Any] = field(default_factory=dict)
    # The job's own script when `command` also shows its env exports (a file's `run`);
    # None when `command` is the script (the API) or the job has steps.
    run: str | None = None
    steps: tuple[StepSpec, ...] = ()
    condition: str | None = None  # `if`, as written; None: success()
    continue_on_error: bool | str = False  # a template when it is an expression
    strategy: StrategySpec | None = None

    def __post_init__(self) -> None:
        # Thousands of idle workflows live in memory: share what repeats between jobs.
        share = object.__setattr__
        share(self, "id", sys.intern(self.id))
        share(self, "depends_on", tuple(sys.intern(d) for d in self.depends_on))
        share(self, "retry_policy", _shared_policy(self.retry_policy))
        for name in ("env", "metadata", "visual"):
            if not getattr(self, name):
                share(self, name, _EMPTY)

    @property
    def script(self) -> str:
        """The job's script without env exports, when it has no steps."""
        return self.run if self.run is not None else self.command

    def as_job(self) -> Job:
        """The job as status shows it before any run: queued, attempt 0."""
        return Job(
            id=self.id,
            name=self.name,
            command=self.command,
            depends_on=list(self.depends_on),
            required_labels=list(self.required_labels),
            max_retries=self.retry_policy.max_retries,
            metadata=self.metadata,
            **self.visual,
        )


INPUT_TYPES = ("string", "boolean", "number", "choice")


@dataclass(frozen=True, slots=True)
class InputSpec:
    """One declared run input, as GitHub's `workflow_dispatch.inputs` declares it."""

    name: str
    type: str = "string"
    required: bool = False
    default: Any = None
    options: tuple[str, ...] = ()
    description: str = ""

    @property
    def env_name(self) -> str:
        """The variable a job sees it as: `INPUT_<NAME>`, upper-cased, `-` as `_`."""
        return "INPUT_" + self.name.upper().replace("-", "_")


@dataclass(frozen=True, slots=True)
class ConcurrencySpec:
    """Runs naming one `group` run one at a time; later ones wait as `queued` runs.

    `group` may hold `${{ }}` expressions, rendered per run from its inputs.
    """

    group: str
    cancel_in_progress: bool = False


NOTIFY_ON = ("success", "failure", "cancelled")


@dataclass(frozen=True, slots=True)
class NotifySpec:
    """`notify`: POST the finished run to `url` when it ends with one of `on`."""

    url: str
    on: tuple[str, ...] = ("failure",)


@dataclass(frozen=True, slots=True)
class WorkflowSpec:
    id: str
    name: str
    trigger: str  # the contract's display text: `on: push`, `on: [push, pull_request]`
    jobs: tuple[JobSpec, ...]
    inputs: tuple[InputSpec, ...] = ()
    # None: the workflow is its own group and a second run is refused (409).
    concurrency: ConcurrencySpec | None = None
    timeout_secs: int | None = None  # the whole run's limit
    triggers: Triggers = field(default_factory=Triggers)
    notify: tuple[NotifySpec, ...] = ()
    # False for a definition read back from the store: it passed `check_text` when it
    # was accepted, and a limit lowered since must not lose it on a restart.
    new: InitVar[bool] = True

    def __post_init__(self, new: bool) -> None:
        if new:
            check_text(self.name, self.jobs)
        check_graph(self.jobs)
        check_inputs(self.inputs)

    def as_workflow(self) -> Workflow:
        return Workflow(
            id=self.id, name=self.name, trigger=self.trigger, jobs=[j.as_job() for j in self.jobs]
        )


def check_text(name: str, jobs: Iterable[JobSpec]) -> None:
    """Refuse names past `MAX_NAME_CHARS`, and NUL bytes where a worker would pass them
    to the operating system (command, env), which cannot hold them, or show them."""
    limit = MAX_NAME_CHARS.get()
    _check_name("the workflow name", name, limit)
    for job in jobs:
        where = f"job '{job.id}'"
        _check_name(f"the name of {where}", job.name, limit)
        _refuse_nul(f"{where}: command", job.command)
        for key, value in job.env.items():
            _refuse_nul(f"{where}: env", key)
            _refuse_nul(f"{where}: env {key!r}", value)


def _check_name(where: str, name: str, limit: int) -> None:
    if len(name) > limit:
        raise DefinitionError(
            f"limit max_name_chars ({limit}) exceeded by {where} ({len(name)} characters)"
        )
    _refuse_nul(where, name)


def _refuse_nul(where: str, text: str) -> None:
    if "\0" in text:
        raise DefinitionError(f"{where} contains a NUL byte")


def input_problems(inputs: Iterable[InputSpec]) -> list[tuple[str, str]]:
    """(input name, reason) for each declaration no run could satisfy."""
    problems: list[tuple[str, str]] = []
    names: set[str] = set()
    for spec in inputs:
        where = f"input '{spec.name}'"
        if spec.env_name in names:
            problems.append((spec.name, f"{where} is declared twice"))
        names.add(spec.env_name)
        if spec.type not in INPUT_TYPES:
            problems.append(
                (spec.name, f"{where} has type {spec.type!r}; expected one of {INPUT_TYPES}")
            )
            continue
        if spec.type == "choice" and not spec.options:
            problems.append((spec.name, f"{where} is a choice with no options"))
        if spec.type != "choice" and spec.options:
            problems.append((spec.name, f"{where} has options but is not a choice"))
        if spec.default is not None and (spec.type != "choice" or spec.options):
            try:
                coerce_input(spec, spec.default)
            except Invalid as exc:
                problems.append((spec.name, f"{where} default: {exc}"))
    return problems


def check_inputs(inputs: Iterable[InputSpec]) -> None:
    """Refuse an input declaration that no run could satisfy, naming the input."""
    problems = input_problems(inputs)
    if problems:
        raise DefinitionError([Problem(message) for _, message in problems])


def coerce_input(spec: InputSpec, value: Any) -> Any:
    """The input's value as its type holds it, or `Invalid` saying what was wrong.

    Booleans and numbers may also come as the strings a command line sends
    (`"true"`, `"3"`), as GitHub's dispatch API sends every input as a string.
    """
    kind = spec.type
    if kind == "boolean":
        if isinstance(value, bool):
            return value
        if value in ("true", "false"):
            return value == "true"
        raise Invalid(f"input '{spec.name}' must be a boolean, got {_shown(value)}")
    if kind == "number":
        if isinstance(value, int | float) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                pass
            else:
                if number == number and abs(number) != float("inf"):
                    return int(number) if number.is_integer() and "." not in value else number
        raise Invalid(f"input '{spec.name}' must be a number, got {_shown(value)}")
    if not isinstance(value, str):
        raise Invalid(f"input '{spec.name}' must be a string, got {_shown(value)}")
    if kind == "choice" and value not in spec.options:
        raise Invalid(
            f"input '{spec.name}' must be one of {', '.join(spec.options)}; got {_shown(value)}"
        )
    return value


def validate_inputs(spec: WorkflowSpec, given: dict[str, Any]) -> dict[str, Any]:
    """A run's inputs: the given ones checked, defaults filling the rest; `Invalid` names
    the first input that is unknown, of the wrong type, missing, or not among its options."""
    declared = {i.name: i for i in spec.inputs}
    for name in given:
        if name not in declared:
            known = ", ".join(declared) or "none"
            raise Invalid(f"unknown input '{name}' (declared: {known})")
    values: dict[str, Any] = {}
    for name, decl in declared.items():
        if name in given and given[name] is not None:
            values[name] = coerce_input(decl, given[name])
        elif decl.default is not None:
            values[name] = coerce_input(decl, decl.default)
        elif decl.required:
            raise Invalid(f"input '{name}' is required")
        else:
            # GitHub gives an undeclared-default input its type's empty value.
            values[name] = {"boolean": False, "number": 0}.get(decl.type, "")
    return values


def input_text(value: Any) -> str:
    """An input as a job's environment holds it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _shown(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def graph_problems(jobs: Iterable[JobSpec]) -> list[tuple[str, str]]:
    """(job id, reason) for each duplicate id, unknown or self dependency, and for the
    first dependency cycle found."""
    problems: list[tuple[str, str]] = []
    by_id: dict[str, JobSpec] = {}
    for job in jobs:
        if job.id in by_id:
            problems.append((job.id, f"duplicate job id '{job.id}'"))
        else:
            by_id[job.id] = job
    if not by_id:
        return [("", "a workflow needs at least one job")]
    broken = False
    for job in by_id.values():
        for dep in job.depends_on:
            if dep not in by_id:
                problems.append((job.id, f"job '{job.id}' depends on unknown job '{dep}'"))
                broken = True
            elif dep == job.id:
                problems.append((job.id, f"job '{job.id}' depends on itself"))
                broken = True
    if broken:
        return problems
    cycle = _find_cycle(by_id)
    if cycle:
        problems.append((cycle[0], "dependency cycle: " + " -> ".join(cycle)))
    return problems


def _find_cycle(by_id: dict[str, JobSpec]) -> list[str] | None:
    # Iterative three-colour DFS: deep chains must not hit the recursion limit.
    done: set[str] = set()
    for root in by_id:
        if root in done:
            continue
        on_path: list[str] = []
        in_path: set[str] = set()
        stack: list[tuple[str, int]] = [(root, 0)]
        while stack:
            node, i = stack.pop()
            if i == 0:
                on_path.append(node)
                in_path.add(node)
            deps = by_id[node].depends_on
            if i < len(deps):
                stack.append((node, i + 1))
                nxt = deps[i]
                if nxt in in_path:
                    return on_path[on_path.index(nxt) :] + [nxt]
                if nxt not in done:
                    stack.append((nxt, 0))
            else:
                on_path.pop()
                in_path.discard(node)
                done.add(node)
    return None


def check_graph(jobs: Iterable[JobSpec]) -> None:
    """Refuse duplicate job ids, unknown dependencies and cycles, naming the job."""
    problems = graph_problems(jobs)
    if problems:
        raise DefinitionError([Problem(message) for _, message in problems])


def spec_from_create(
    workflow_id: str, body: WorkflowCreate, secrets: Collection[str] | None = None
) -> WorkflowSpec:
    """The definition of a workflow created through the API: a create body, or the
    text of a definition file in its `definition` key. Raises `DefinitionError`
    with every problem found; `secrets` (names), when given, must hold every
    secret the definition names."""
    from .definitions import spec_from_body

    return spec_from_body(workflow_id, body, secrets=secrets)


# --- the stored form ---------------------------------------------------------------


def spec_to_json(spec: WorkflowSpec) -> str:
    """The definition as JSON, for the durable store; `spec_from_json` rebuilds it equal."""
    return json.dumps(
        {
            "id": spec.id,
            "name": spec.name,
            "trigger": spec.trigger,
            "jobs": [_job_to_data(j) for j in spec.jobs],
            "inputs": [
                {
                    "name": i.name,
                    "type": i.type,
                    "required": i.required,
                    "default": i.default,
                    "options": list(i.options),
                    "description": i.description,
                }
                for i in spec.inputs
            ],
            "concurrency": None
            if spec.concurrency is None
            else {
                "group": spec.concurrency.group,
                "cancel_in_progress": spec.concurrency.cancel_in_progress,
            },
            "timeout_secs": spec.timeout_secs,
            "triggers": spec.triggers.to_data(),
            "notify": [{"url": n.url, "on": list(n.on)} for n in spec.notify],
        },
        separators=(",", ":"),
    )


def _job_to_data(job: JobSpec) -> dict[str, Any]:
    return {
        "id": job.id,
        "name": job.name,
        "command": job.command,
        "depends_on": list(job.depends_on),
        "required_labels": list(job.required_labels),
        "retry_policy": job.retry_policy.model_dump(mode="json"),
        "timeout_secs": job.timeout_secs,
        "queue_timeout_secs": job.queue_timeout_secs,
        "env": job.env,
        "metadata": job.metadata,
        "visual": job.visual,
        "run": job.run,
        "steps": [s.to_data() for s in job.steps],
        "condition": job.condition,
        "continue_on_error": job.continue_on_error,
        "strategy": job.strategy.to_data() if job.strategy else None,
    }


def _job_from_data(j: dict[str, Any]) -> JobSpec:
    strategy = j.get("strategy")
    return JobSpec(
        id=j["id"],
        name=j["name"],
        command=j["command"],
        depends_on=tuple(j["depends_on"]),
        required_labels=tuple(j["required_labels"]),
        retry_policy=RetryPolicy.model_validate(j["retry_policy"]),
        timeout_secs=j["timeout_secs"],
        queue_timeout_secs=j.get("queue_timeout_secs"),
        env=j["env"],
        metadata=j["metadata"],
        visual=j["visual"],
        run=j.get("run"),
        steps=tuple(StepSpec(**s) for s in j.get("steps", ())),
        condition=j.get("condition"),
        continue_on_error=j.get("continue_on_error", False),
        strategy=StrategySpec(**strategy) if strategy else None,
    )


def spec_from_json(text: str) -> WorkflowSpec:
    """The definition `spec_to_json` stored (older stored forms lack the newer keys)."""
    data = json.loads(text)
    inputs = tuple(
        InputSpec(**{**i, "options": tuple(i["options"])}) for i in data.get("inputs", ())
    )
    concurrency = data.get("concurrency")
    return WorkflowSpec(
        id=data["id"],
        name=data["name"],
        trigger=data["trigger"],
        jobs=tuple(_job_from_data(j) for j in data["jobs"]),
        inputs=inputs,
        concurrency=ConcurrencySpec(**concurrency) if concurrency else None,
        timeout_secs=data.get("timeout_secs"),
        triggers=Triggers.from_data(data.get("triggers")),
        notify=tuple(NotifySpec(url=n["url"], on=tuple(n["on"])) for n in data.get("notify", ())),
        new=False,
    )
