"""Workflow definition files: YAML or JSON documents turned into `WorkflowSpec`s.

A definition is checked field by field here; the graph rules (unknown
dependency, cycle, duplicate job id) are `WorkflowSpec`'s, so files and
`POST /api/workflows` refuse the same graphs with the same reasons. Every
refusal is a `DefinitionError` whose message names the job and the field.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pydantic
import yaml

from .models import ID_PATTERN, Backoff, ExponentialBackoff, FixedBackoff, RetryPolicy
from .spec import DefinitionError, JobSpec, WorkflowSpec

__all__ = ["DEFINITION_SUFFIXES", "load_definition", "load_workflows_dir", "parse_definition"]

DEFINITION_SUFFIXES = (".yml", ".yaml", ".json")

# The same bound `POST /api/workflows` puts on `max_retries`.
MAX_RETRIES = 100

_ID_RE = re.compile(ID_PATTERN)
_ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Workers set WFG_OUTPUT, WFG_ATTEMPT, ...; an export of the same name in the
# command would silently cut the job off from its outputs.
_RESERVED_ENV_PREFIX = "WFG_"

_WORKFLOW_FIELDS = frozenset({"name", "on", "env", "jobs"})
_JOB_FIELDS = frozenset(
    {"name", "run", "steps", "needs", "retries", "backoff", "labels", "timeout", "env"}
)
_STEP_FIELDS = frozenset({"name", "id", "run", "env"})

_BACKOFF_HINT = (
    'expected "None", {Fixed: {delay_secs: N}} or {Exponential: {base_secs: N, max_secs: M}}'
)
_BACKOFF_FORMS: dict[str, type[pydantic.BaseModel]] = {
    "Fixed": FixedBackoff,
    "Exponential": ExponentialBackoff,
}


# --- reading files -----------------------------------------------------------


class _DefinitionLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys and resolves scalars as YAML 1.2 does.

    PyYAML follows YAML 1.1, where `on`, `yes` and `no` are booleans, `1:30`
    is the integer 90, `0800` is a failing octal and `2024-01-01` a date. In a
    definition those are names and env values, so they stay strings; only
    `true`/`false`, plain decimal numbers and null keep their special meaning.
    """

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            _refuse_duplicate_keys(self, node)
        return super().construct_mapping(node, deep=deep)


def _refuse_duplicate_keys(loader: yaml.SafeLoader, node: yaml.MappingNode) -> None:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue  # `<<: *base` keys may be overridden; that is what merges are for
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in seen
            seen.add(key)
        except TypeError:
            continue  # unhashable key: SafeLoader itself refuses it with a mark
        if duplicate:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )


def _install_yaml12_scalars(loader: type[yaml.SafeLoader]) -> None:
    replaced = {"tag:yaml.org,2002:bool", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"}
    replaced.add("tag:yaml.org,2002:timestamp")
    loader.yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag not in replaced]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    loader.add_implicit_resolver(
        "tag:yaml.org,2002:bool",
        re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
        list("tTfF"),
    )
    # Int before float: the float pattern also matches plain integers.
    loader.add_implicit_resolver(
        "tag:yaml.org,2002:int", re.compile(r"^[-+]?(?:0|[1-9][0-9]*)$"), list("-+0123456789")
    )
    loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(
            r"^[-+]?(?:[0-9]+\.[0-9]*|\.[0-9]+|[0-9]+(?=[eE]))(?:[eE][-+]?[0-9]+)?$"
            r"|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$"
        ),
        list("-+.0123456789"),
    )


_install_yaml12_scalars(_DefinitionLoader)


def _read_yaml(text: str) -> object:
    try:
        # A SafeLoader subclass: it builds no arbitrary objects.
        return yaml.load(text, Loader=_DefinitionLoader)
    except yaml.MarkedYAMLError as exc:
        problem = exc.problem or exc.context or "malformed document"
        mark = exc.problem_mark or exc.context_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise DefinitionError(f"invalid YAML: {problem}{where}") from None
    except yaml.YAMLError as exc:
        raise DefinitionError(f"invalid YAML: {exc}") from None


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise DefinitionError(f"invalid JSON: duplicate key {key!r}")
        obj[key] = value
    return obj


def _read_json(text: str) -> object:
    try:
        return json.loads(text, object_pairs_hook=_json_object)
    except json.JSONDecodeError as exc:
        raise DefinitionError(
            f"invalid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from None


def load_definition(path: Path) -> WorkflowSpec:
    """Read one `.yml`, `.yaml` or `.json` file; its id is the file name without extension.

    Every way a file can be wrong (unreadable, not UTF-8, does not parse,
    breaks a rule) raises `DefinitionError`. The message is the reason alone:
    the caller already holds the path.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in DEFINITION_SUFFIXES:
        raise DefinitionError(f"not a definition file (expected one of {DEFINITION_SUFFIXES})")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DefinitionError("not UTF-8 text") from None
    except OSError as exc:
        raise DefinitionError(f"cannot read: {exc.strerror or exc}") from None
    try:
        data = _read_json(text) if suffix == ".json" else _read_yaml(text)
    except RecursionError:
        raise DefinitionError("nested too deeply") from None
    return parse_definition(path.stem, data)


def _warn_stderr(line: str) -> None:
    print(line, file=sys.stderr)


def load_workflows_dir(
    directory: Path, *, warn: Callable[[str], None] = _warn_stderr
) -> list[WorkflowSpec]:
    """Load every definition file in `directory`, in file-name order.

    A file that cannot be loaded costs exactly one `warn` line,
    `skipping <path>: <reason>`, and the others still load. Of two files with
    the same workflow id (`ci.yml`, `ci.json`) the later one is skipped.
    Other files (README, editor backups, hidden files, subdirectories) are
    ignored silently. A missing directory gives one warn line and `[]`.
    """
    directory = Path(directory)
    try:
        entries = sorted(directory.iterdir(), key=lambda p: p.name)
    except FileNotFoundError:
        warn(f"skipping {directory}: no such directory")
        return []
    except NotADirectoryError:
        warn(f"skipping {directory}: not a directory")
        return []
    except OSError as exc:
        warn(f"skipping {directory}: {exc.strerror or exc}")
        return []
    specs: dict[str, WorkflowSpec] = {}
    for path in entries:
        if not _is_definition_file(path):
            continue
        if path.stem in specs:
            warn(f"skipping {path}: duplicate workflow id {path.stem!r}")
            continue
        try:
            specs[path.stem] = load_definition(path)
        except DefinitionError as exc:
            # One line per file, whatever the reason's text holds.
            warn(f"skipping {path}: {' '.join(str(exc).split())}")
    return list(specs.values())


def _is_definition_file(path: Path) -> bool:
    return (
        not path.name.startswith(".")
        and path.suffix.lower() in DEFINITION_SUFFIXES
        and path.is_file()
    )


# --- checking documents ----------------------------------------------------------


def parse_definition(workflow_id: str, data: object, source: str = "") -> WorkflowSpec:
    """Turn a parsed YAML/JSON document into a `WorkflowSpec`.

    Guarantees on return: every field has its documented type, ids and labels
    match `ID_PATTERN`, env keys are shell identifiers, and the job graph is
    acyclic with known dependencies. Otherwise raises `DefinitionError`
    naming the job and field; `source`, when given, prefixes the message.
    """
    try:
        return _parse_workflow(workflow_id, data)
    except DefinitionError as exc:
        if source:
            raise DefinitionError(f"{source}: {exc}") from None
        raise


def _parse_workflow(workflow_id: str, data: object) -> WorkflowSpec:
    if not isinstance(workflow_id, str) or not _ID_RE.fullmatch(workflow_id):
        raise DefinitionError(f"workflow id {workflow_id!r} must match {ID_PATTERN}")
    doc = _top_level(data)
    _refuse_unknown(doc, _WORKFLOW_FIELDS, "workflow")
    if "name" not in doc:
        raise DefinitionError("workflow has no 'name'")
    name = _nonempty_text(doc["name"], "workflow field 'name'")
    trigger = _trigger(doc["on"]) if "on" in doc else ""
    global_env = _env(doc.get("env", {}), "workflow")
    if "jobs" not in doc:
        raise DefinitionError("workflow has no 'jobs'")
    jobs = doc["jobs"]
    if not isinstance(jobs, Mapping):
        raise DefinitionError(f"workflow field 'jobs' must be a mapping, got {_kind(jobs)}")
    if not jobs:
        raise DefinitionError("workflow field 'jobs' is empty")
    specs = tuple(_parse_job(job_id, job, global_env) for job_id, job in jobs.items())
    return WorkflowSpec(id=workflow_id, name=name, trigger=trigger, jobs=specs)


def _top_level(data: object) -> dict[str, Any]:
    """The document as a str-keyed mapping, with a YAML 1.1 `on` (parsed as True) renamed."""
    if not isinstance(data, Mapping):
        raise DefinitionError(f"a definition must be a mapping, got {_kind(data)}")
    doc: dict[str, Any] = {}
    for key, value in data.items():
        # `yaml.safe_load` reads the key `on` as True; accept documents it produced.
        name = "on" if key is True else key
        if not isinstance(name, str):
            raise DefinitionError(f"workflow has a non-string field {key!r}")
        if name in doc:
            raise DefinitionError(f"workflow field {name!r} is given twice")
        doc[name] = value
    return doc


def _trigger(on: object) -> str:
    """The contract's display text: `on: push`, `on: [push, pull_request]`."""
    if isinstance(on, str):
        return f"on: {on}"
    if isinstance(on, list):
        events = on
    elif isinstance(on, Mapping):
        events = list(on)
    else:
        raise DefinitionError(
            f"workflow field 'on' must be a string, list or mapping, got {_kind(on)}"
        )
    for event in events:
        if not isinstance(event, str):
            raise DefinitionError(f"workflow field 'on' lists {event!r}, which is not a string")
    return "on: [" + ", ".join(events) + "]"


def _parse_job(job_id: object, job: object, global_env: dict[str, str]) -> JobSpec:
    if not isinstance(job_id, str) or not _ID_RE.fullmatch(job_id):
        raise DefinitionError(f"job id {job_id!r} must match {ID_PATTERN}")
    where = f"job '{job_id}'"
    if not isinstance(job, Mapping):
        raise DefinitionError(f"{where} must be a mapping, got {_kind(job)}")
    _refuse_unknown(job, _JOB_FIELDS, where)
    env = {**global_env, **_env(job.get("env", {}), where)}
    return JobSpec(
        id=job_id,
        name=_nonempty_text(job["name"], f"{where} field 'name'") if "name" in job else job_id,
        command=_exports(env) + _body(job, where),
        depends_on=_ids(job.get("needs", []), f"{where} field 'needs'"),
        required_labels=_ids(job.get("labels", []), f"{where} field 'labels'"),
        retry_policy=RetryPolicy(
            max_retries=_retries(job.get("retries", 0), where),
            backoff=_backoff(job.get("backoff", "None"), where),
        ),
        timeout_secs=_timeout(job["timeout"], where) if "timeout" in job else None,
        env=env,
    )


def _body(job: Mapping[Any, Any], where: str) -> str:
    """The job's script after the env exports: its `run`, or its steps composed."""
    if "run" in job and "steps" in job:
        raise DefinitionError(f"{where} has both run and steps; give one")
    if "run" in job:
        return _nonempty_text(job["run"], f"{where} field 'run'")
    if "steps" in job:
        return _steps(job["steps"], where)
    raise DefinitionError(f"{where} has neither run nor steps")


def _steps(steps: object, where: str) -> str:
    if not isinstance(steps, list):
        raise DefinitionError(f"{where} field 'steps' must be a list, got {_kind(steps)}")
    if not steps:
        raise DefinitionError(f"{where} field 'steps' is empty")
    return "".join(_step(step, n, where) for n, step in enumerate(steps, start=1))


def _step(step: object, n: int, job_where: str) -> str:
    """One step: its announcement, then its script in a subshell that ends the job on failure.

    The subshell keeps the step's own env to the step; `|| exit $?` makes
    the job stop at the first failing step with that step's exit status.
    """
    where = f"{job_where} step {n}"
    if not isinstance(step, Mapping):
        raise DefinitionError(f"{where} must be a mapping, got {_kind(step)}")
    _refuse_unknown(step, _STEP_FIELDS, where)
    if "run" not in step:
        raise DefinitionError(f"{where} has no run")
    run = _nonempty_text(step["run"], f"{where} field 'run'")
    label = f"step {n}"
    for field in ("id", "name"):
        if field in step:
            label = _nonempty_text(step[field], f"{where} field '{field}'")
    env = _env(step.get("env", {}), where)
    # The newline before `)` keeps a trailing comment or heredoc from swallowing it.
    run = run if run.endswith("\n") else run + "\n"
    return f"{_announce(label)}\n(\n{_exports(env)}{run}) || exit $?\n"


def _announce(label: str) -> str:
    line = shlex.quote(f"=== {label} ===")
    # dash's echo expands backslash escapes; printf '%s' prints the name as written.
    return f"printf '%s\\n' {line}" if "\\" in label else f"echo {line}"


def _exports(env: Mapping[str, str]) -> str:
    return "".join(f"export {key}={shlex.quote(value)}\n" for key, value in env.items())


# --- fields ----------------------------------------------------------------------


def _refuse_unknown(mapping: Mapping[Any, Any], known: frozenset[str], where: str) -> None:
    for key in mapping:
        if key not in known:
            expected = ", ".join(sorted(known))
            raise DefinitionError(f"{where} has unknown field {key!r} (expected: {expected})")


def _text(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise DefinitionError(f"{where} must be a string, got {_kind(value)}")
    if "\x00" in value:
        raise DefinitionError(f"{where} contains a NUL character")
    return value


def _nonempty_text(value: object, where: str) -> str:
    text = _text(value, where)
    if not text.strip():
        raise DefinitionError(f"{where} is empty")
    return text


def _ids(value: object, where: str) -> tuple[str, ...]:
    """A string or a list of strings, each an id; repeats dropped, order kept."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list):
        raise DefinitionError(f"{where} must be a string or a list of strings, got {_kind(value)}")
    for item in items:
        if not isinstance(item, str):
            raise DefinitionError(f"{where} lists {item!r}, which is not a string")
        if not _ID_RE.fullmatch(item):
            raise DefinitionError(f"{where} lists {item!r}, which does not match {ID_PATTERN}")
    return tuple(dict.fromkeys(items))


def _is_int(value: object) -> bool:
    # bool is an int subclass; `retries: true` is a mistake, not 1.
    return isinstance(value, int) and not isinstance(value, bool)


def _retries(value: object, where: str) -> int:
    if not _is_int(value) or not 0 <= value <= MAX_RETRIES:
        raise DefinitionError(
            f"{where} field 'retries' must be an integer from 0 to {MAX_RETRIES}, "
            f"got {_shown(value)}"
        )
    return value


def _timeout(value: object, where: str) -> int:
    if not _is_int(value) or value <= 0:
        raise DefinitionError(
            f"{where} field 'timeout' must be a positive integer of seconds, got {_shown(value)}"
        )
    return value


def _backoff(value: object, where: str) -> Backoff:
    """Validated by the wire models, so a file accepts exactly what the API accepts."""
    if value == "None":
        return "None"
    if isinstance(value, Mapping) and len(value) == 1:
        (form,) = value
        model = _BACKOFF_FORMS.get(form) if isinstance(form, str) else None
        if model is not None:
            try:
                return model.model_validate(dict(value))
            except pydantic.ValidationError as exc:
                raise DefinitionError(
                    f"{where} field 'backoff' is invalid: {_first_error(exc)}"
                ) from None
    raise DefinitionError(f"{where} field 'backoff' is invalid: {_BACKOFF_HINT}")


def _first_error(exc: pydantic.ValidationError) -> str:
    error = exc.errors()[0]
    location = ".".join(str(part) for part in error["loc"])
    return f"{location}: {error['msg']}" if location else error["msg"]


def _env(value: object, where: str) -> dict[str, str]:
    """An env mapping: shell-identifier keys, scalar values as the strings a shell sees."""
    if not isinstance(value, Mapping):
        raise DefinitionError(f"{where} field 'env' must be a mapping, got {_kind(value)}")
    env: dict[str, str] = {}
    for key, raw in value.items():
        if not isinstance(key, str) or not _ENV_KEY_RE.fullmatch(key):
            raise DefinitionError(
                f"{where} env key {key!r} is not a shell variable name ([A-Za-z_][A-Za-z0-9_]*)"
            )
        if key.startswith(_RESERVED_ENV_PREFIX):
            raise DefinitionError(
                f"{where} env key {key!r} uses the prefix {_RESERVED_ENV_PREFIX} kept for workers"
            )
        env[key] = _env_value(raw, f"{where} env {key!r}")
    return env


def _env_value(value: object, where: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        return _text(value, where)
    raise DefinitionError(f"{where} must be a string, number or boolean, got {_kind(value)}")


def _kind(value: object) -> str:
    """How a wrong value is named in a message: by its type, as the document spells it."""
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


def _shown(value: object) -> str:
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        text = repr(value)
        return text if len(text) <= 40 else text[:37] + "..."
    return _kind(value)
