"""A workflow's definition as the runtime holds it, and the rules every definition obeys.

Both sources of definitions, files in `WORKFLOWS_DIR` and `POST /api/workflows`,
end here, so a cycle, an unknown dependency, a name past `max_name_chars` or
a NUL byte in what a worker will run is refused by the same code.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from contextvars import ContextVar
from dataclasses import InitVar, dataclass, field
from typing import Any

from .models import Job, JobCreate, RetryPolicy, Workflow, WorkflowCreate

_EMPTY: dict = {}  # shared by every job with no env/metadata/visual: never mutated
_POLICIES: dict[str, RetryPolicy] = {}


def _shared_policy(policy: RetryPolicy) -> RetryPolicy:
    """One instance per distinct retry policy (they are never mutated)."""
    return _POLICIES.setdefault(policy.model_dump_json(), policy)


class DefinitionError(ValueError):
    """A definition that cannot be loaded; the message names the reason."""


DEFAULT_MAX_NAME_CHARS = 256
# The limit max_name_chars on workflow and job names. A context variable, so one
# setting reaches both the files loaded at start and API creates: `wfg serve` sets
# it (MAX_NAME_CHARS) in its main task, before any definition is read.
MAX_NAME_CHARS: ContextVar[int] = ContextVar("max_name_chars", default=DEFAULT_MAX_NAME_CHARS)


@dataclass(frozen=True, slots=True)
class JobSpec:
    id: str
    name: str
    command: str  # what the worker runs with `sh -c`, env exports and steps included
    depends_on: tuple[str, ...] = ()
    required_labels: tuple[str, ...] = ()
    retry_policy: RetryPolicy = field(default_factory=RetryPolicy)
    timeout_secs: int | None = None
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


@dataclass(frozen=True, slots=True)
class WorkflowSpec:
    id: str
    name: str
    trigger: str
    jobs: tuple[JobSpec, ...]
    # False for a definition read back from the store: it passed `check_text` when it
    # was accepted, and a limit lowered since must not lose it on a restart.
    new: InitVar[bool] = True

    def __post_init__(self, new: bool) -> None:
        if new:
            check_text(self.name, self.jobs)
        check_graph(self.jobs)

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
    )


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
                    "env": j.env,
                    "metadata": j.metadata,
                    "visual": j.visual,
                }
                for j in spec.jobs
            ],
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
            env=j["env"],
            metadata=j["metadata"],
            visual=j["visual"],
        )
        for j in data["jobs"]
    )
    return WorkflowSpec(
        id=data["id"], name=data["name"], trigger=data["trigger"], jobs=jobs, new=False
    )
