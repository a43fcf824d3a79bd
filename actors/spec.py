"""A workflow's definition as the runtime holds it, and the rules every definition obeys.

Both sources of definitions, files in `WORKFLOWS_DIR` and `POST /api/workflows`,
end here, so a cycle or an unknown dependency is refused by the same code.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .errors import Invalid
from .models import InputDecl, Job, JobCreate, RetryPolicy, Workflow, WorkflowCreate

_EMPTY: dict = {}  # shared by every job with no env/metadata/visual: never mutated
_POLICIES: dict[str, RetryPolicy] = {}


def _shared_policy(policy: RetryPolicy) -> RetryPolicy:
    """One instance per distinct retry policy (they are never mutated)."""
    return _POLICIES.setdefault(policy.model_dump_json(), policy)


class DefinitionError(ValueError):
    """A definition that cannot be loaded; the message names the reason."""


@dataclass(frozen=True, slots=True)
class JobSpec:
    id: str
    name: str
    command: str  # what the worker runs with `sh -c`, env exports and steps included
    depends_on: tuple[str, ...] = ()
    required_labels: tuple[str, ...] = ()
    retry_policy: RetryPolicy = field(default_factory=RetryPolicy)
    timeout_secs: int | None = None
    # A job not claimed this long after it was queued fails (no worker can take it).
    queue_timeout_secs: int | None = None
    env: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    # Visualizer fields (`ports`, `children`, `collapsed`) exactly as a client sent them.
    visual: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Thousands of idle workflows live in memory: share what repeats between jobs.
        share = object.__setattr__
        share(self, "id", sys.intern(self.id))
        share(self, "depends_on", tuple(sys.intern(d) for d in self.depends_on))
        share(self, "retry_policy", _shared_policy(self.retry_policy))
        for name in ("env", "metadata", "visual"):
            if not getattr(self, name):
                share(self, name, _EMPTY)

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


@dataclass(frozen=True, slots=True)
class WorkflowSpec:
    id: str
    name: str
    trigger: str
    jobs: tuple[JobSpec, ...]
    inputs: tuple[InputSpec, ...] = ()
    # None: the workflow is its own group and a second run is refused (409).
    concurrency: ConcurrencySpec | None = None

    def __post_init__(self) -> None:
        check_graph(self.jobs)
        check_inputs(self.inputs)

    def as_workflow(self) -> Workflow:
        return Workflow(
            id=self.id, name=self.name, trigger=self.trigger, jobs=[j.as_job() for j in self.jobs]
        )


def check_inputs(inputs: Iterable[InputSpec]) -> None:
    """Refuse an input declaration that no run could satisfy, naming the input."""
    names: set[str] = set()
    for spec in inputs:
        where = f"input '{spec.name}'"
        if spec.env_name in names:
            raise DefinitionError(f"{where} is declared twice")
        names.add(spec.env_name)
        if spec.type not in INPUT_TYPES:
            raise DefinitionError(f"{where} has type {spec.type!r}; expected one of {INPUT_TYPES}")
        if spec.type == "choice" and not spec.options:
            raise DefinitionError(f"{where} is a choice with no options")
        if spec.type != "choice" and spec.options:
            raise DefinitionError(f"{where} has options but is not a choice")
        if spec.default is not None:
            try:
                coerce_input(spec, spec.default)
            except Invalid as exc:
                raise DefinitionError(f"{where} default: {exc}") from None


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


def check_graph(jobs: Iterable[JobSpec]) -> None:
    """Refuse duplicate job ids, unknown dependencies and cycles, naming the job."""
    by_id: dict[str, JobSpec] = {}
    for job in jobs:
        if job.id in by_id:
            raise DefinitionError(f"duplicate job id '{job.id}'")
        by_id[job.id] = job
    if not by_id:
        raise DefinitionError("a workflow needs at least one job")
    for job in by_id.values():
        for dep in job.depends_on:
            if dep not in by_id:
                raise DefinitionError(f"job '{job.id}' depends on unknown job '{dep}'")
            if dep == job.id:
                raise DefinitionError(f"job '{job.id}' depends on itself")
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
                    cycle = on_path[on_path.index(nxt) :] + [nxt]
                    raise DefinitionError("dependency cycle: " + " -> ".join(cycle))
                if nxt not in done:
                    stack.append((nxt, 0))
            else:
                on_path.pop()
                in_path.discard(node)
                done.add(node)


def spec_from_create(workflow_id: str, body: WorkflowCreate) -> WorkflowSpec:
    """The definition of a workflow created through the API."""
    return WorkflowSpec(
        id=workflow_id,
        name=body.name,
        trigger=body.trigger,
        jobs=tuple(_job_from_create(j) for j in body.jobs),
        inputs=tuple(_input_from_create(n, d) for n, d in (body.inputs or {}).items()),
        concurrency=_concurrency_from_create(body.concurrency),
    )


def _input_from_create(name: str, decl: InputDecl) -> InputSpec:
    return InputSpec(
        name=name,
        type=decl.type,
        required=decl.required,
        default=decl.default,
        options=tuple(decl.options),
        description=decl.description,
    )


def _concurrency_from_create(value: Any) -> ConcurrencySpec | None:
    if value is None:
        return None
    if isinstance(value, str):
        return ConcurrencySpec(group=value)
    return ConcurrencySpec(group=value.group, cancel_in_progress=value.cancel_in_progress)


def _job_from_create(job: JobCreate) -> JobSpec:
    visual = {
        k: v for k in ("ports", "children", "collapsed") if (v := getattr(job, k)) is not None
    }
    return JobSpec(
        id=job.id,
        name=job.name if job.name is not None else job.id,
        command=job.command,
        depends_on=tuple(dict.fromkeys(job.depends_on)),
        required_labels=tuple(dict.fromkeys(job.required_labels)),
        retry_policy=RetryPolicy(max_retries=job.max_retries, backoff=job.backoff),
        timeout_secs=job.timeout_secs,
        env=dict(job.env),
        metadata=job.metadata,
        visual=visual,
    )


def spec_to_json(spec: WorkflowSpec) -> str:
    """The definition as JSON, for the durable store."""
    return json.dumps(
        {
            "id": spec.id,
            "name": spec.name,
            "trigger": spec.trigger,
            "jobs": [
                {
                    "id": j.id,
                    "name": j.name,
                    "command": j.command,
                    "depends_on": list(j.depends_on),
                    "required_labels": list(j.required_labels),
                    "retry_policy": j.retry_policy.model_dump(mode="json"),
                    "timeout_secs": j.timeout_secs,
                    "queue_timeout_secs": j.queue_timeout_secs,
                    "env": j.env,
                    "metadata": j.metadata,
                    "visual": j.visual,
                }
                for j in spec.jobs
            ],
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
        },
        separators=(",", ":"),
    )


def spec_from_json(text: str) -> WorkflowSpec:
    data = json.loads(text)
    jobs = tuple(
        JobSpec(
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
        )
        for j in data["jobs"]
    )
    inputs = tuple(
        InputSpec(**{**i, "options": tuple(i["options"])}) for i in data.get("inputs", ())
    )
    concurrency = data.get("concurrency")
    return WorkflowSpec(
        id=data["id"],
        name=data["name"],
        trigger=data["trigger"],
        jobs=jobs,
        inputs=inputs,
        concurrency=ConcurrencySpec(**concurrency) if concurrency else None,
    )
