"""Workflow definitions: YAML or JSON text, or a create body, turned into `WorkflowSpec`s.

A definition is checked field by field here, every expression included, and
every problem is collected (not only the first): a refusal is one
`DefinitionError` whose `problems` each name the job and field, the place in
the document (`jobs.build.steps[1].run`, or `jobs[2].command` for a create
body) and, for text, the line and column. Files in `WORKFLOWS_DIR`,
`POST /api/workflows` (both its forms) and `wfg validate` all read through
here, so they accept and refuse exactly the same definitions.

The reader is bounded: YAML aliases may expand a document by at most
`MAX_ALIAS_NODES` nodes (a "billion laughs" file is refused at once), every
echo of user data in a message is cut at 80 characters, and at most
`MAX_PROBLEMS` problems are listed.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard
from urllib.parse import urlsplit

import pydantic
import yaml

from . import expressions as ex
from . import plan
from .models import (
    ID_PATTERN,
    INPUT_NAME_PATTERN,
    Backoff,
    ExponentialBackoff,
    FixedBackoff,
    RetryPolicy,
    WorkflowCreate,
)
from .spec import (
    INPUT_TYPES,
    NOTIFY_ON,
    ConcurrencySpec,
    DefinitionError,
    InputSpec,
    JobSpec,
    NotifySpec,
    Problem,
    StepSpec,
    StrategySpec,
    WorkflowSpec,
    graph_problems,
    input_problems,
)
from .triggers import (
    DEFAULT_PULL_REQUEST_TYPES,
    EVENTS,
    PULL_REQUEST_TYPES,
    PullRequestTrigger,
    PushTrigger,
    Schedule,
    Triggers,
    cron_problem,
    pattern_problem,
    timezone_problem,
)

__all__ = [
    "DEFINITION_SUFFIXES",
    "load_definition",
    "load_workflows_dir",
    "parse_definition",
    "parse_definition_text",
    "spec_from_body",
]

DEFINITION_SUFFIXES = (".yml", ".yaml", ".json")

# The same bound `POST /api/workflows` puts on `max_retries`.
MAX_RETRIES = 100
# Nodes that YAML aliases may add to a document once expanded: far above any real
# definition's use of anchors, far below what exhausts memory.
MAX_ALIAS_NODES = 10_000
MAX_PROBLEMS = 200
MAX_SHOWN = 80  # characters of user data echoed in one message
MAX_GROUP_LENGTH = 256

_ID_RE = re.compile(ID_PATTERN)
_INPUT_NAME_RE = re.compile(INPUT_NAME_PATTERN)
_STEP_ID_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,99}$")
_ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_FIELD_POSITION = re.compile(r" at (?:line \d+, )?column \d+")
# Workers set WFG_OUTPUT, WFG_ATTEMPT, ...; an export of the same name in the
# command would silently cut the job off from its outputs.
_RESERVED_ENV_PREFIX = "WFG_"

_BACKOFF_HINT = (
    'expected "None", {Fixed: {delay_secs: N}} or {Exponential: {base_secs: N, max_secs: M}}'
)
_BACKOFF_FORMS: dict[str, type[pydantic.BaseModel]] = {
    "Fixed": FixedBackoff,
    "Exponential": ExponentialBackoff,
}

# --- the keys of the language, and hints for GitHub Actions keys it has no use for --------

_WORKFLOW_FIELDS = frozenset(
    {"name", "on", "env", "jobs", "concurrency", "defaults", "timeout", "notify"}
)
_JOB_FIELDS = frozenset(
    {
        "name",
        "run",
        "steps",
        "needs",
        "retries",
        "backoff",
        "labels",
        "runs-on",
        "timeout",
        "timeout-minutes",
        "queue-timeout",
        "env",
        "if",
        "continue-on-error",
        "strategy",
        "defaults",
    }
)
_STEP_FIELDS = frozenset(
    {"name", "id", "run", "env", "if", "continue-on-error", "working-directory", "shell"}
)
_OUTPUT_HINT = (
    "job outputs are what the job writes to $GITHUB_OUTPUT or $WFG_OUTPUT "
    '(echo "name=value" >> "$WFG_OUTPUT"); dependents read needs.<job>.outputs.<name>'
)
_WORKFLOW_HINTS = {
    "permissions": "this server hands jobs no GitHub token, so there are no permissions to set",
    "run-name": "runs are named by their number; run-name is not supported",
}
_JOB_HINTS = {
    "outputs": _OUTPUT_HINT,
    "permissions": _WORKFLOW_HINTS["permissions"],
    "services": "service containers are not supported; start services from the job's script",
    "container": "jobs run on the worker itself; run a container from the script",
    "environment": "deployment environments are not supported",
    "concurrency": "concurrency applies to the whole workflow: set it at the top level",
    "uses": "reusable workflows are not supported; write the jobs in this definition",
    "with": "reusable workflows are not supported; write the jobs in this definition",
    "secrets": "pass a secret to a job through env: {TOKEN: ${{ secrets.TOKEN }}}",
}
_STEP_HINTS = {
    "with": "actions are not supported; write the step as run commands",
    "timeout-minutes": "set timeout-minutes on the job",
}

# Which contexts an expression may read, by where it is written (GitHub's table, where
# this engine can provide the context). `secrets` only in env values: a secret must
# never be part of a command, a name or a label that status shows.
_RUN = frozenset({"inputs", "run", "workflow", "github"})
_WORKFLOW_ENV = _RUN | {"secrets"}
_JOB = _RUN | {"needs", "matrix"}
_JOB_ENV = _JOB | {"secrets"}
_SCRIPT = _JOB | {"env"}
_STEP_ENV = _SCRIPT | {"secrets"}
_KNOWN_CONTEXTS = _STEP_ENV | {"steps"}
_PROPERTIES = {
    "run": ("number", "trigger", "rerun_of"),
    "workflow": ("id", "name"),
}

# Field names as a create body spells them, for messages and paths about a body.
_BODY_FIELDS = {
    "run": "command",
    "needs": "depends_on",
    "labels": "required_labels",
    "retries": "max_retries",
    "timeout": "timeout_secs",
    "queue-timeout": "queue_timeout_secs",
    "continue-on-error": "continue_on_error",
    "fail-fast": "fail_fast",
    "max-parallel": "max_parallel",
}


# --- reading text ------------------------------------------------------------------------


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
                None, None, f"duplicate key {_shown(key)}", key_node.start_mark
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

Path_ = tuple[Any, ...]  # a place in a document: keys and list indexes from the top


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _check_aliases(root: yaml.Node) -> None:
    """Refuse a document whose aliases expand it by more than MAX_ALIAS_NODES nodes,
    or that contains itself; linear in the number of distinct nodes."""
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        if finished:
            on_path.discard(key)
            sizes[key] = 1 + sum(sizes[id(child)] for child in _children(node))
            continue
        if key in sizes:
            continue
        if key in on_path:
            raise DefinitionError(_yaml_problem("an alias refers to a node that contains it", node))
        on_path.add(key)
        stack.append((node, True))
        for child in _children(node):
            if id(child) in on_path:
                raise DefinitionError(
                    _yaml_problem("an alias refers to a node that contains it", child)
                )
            if id(child) not in sizes:
                stack.append((child, False))
    if sizes[id(root)] - len(sizes) > MAX_ALIAS_NODES:
        raise DefinitionError(
            Problem(
                f"invalid YAML: aliases expand the document by more than {MAX_ALIAS_NODES} nodes"
            )
        )


def _yaml_problem(message: str, node: yaml.Node) -> Problem:
    mark = node.start_mark
    return Problem(f"invalid YAML: {message}", line=mark.line + 1, column=mark.column + 1)


@dataclass(slots=True)
class _Text:
    """Where each value of a document was written, to name lines and columns."""

    text: str
    lines: list[str]
    # path -> (the key's node, the value's node); the top has path ().
    nodes: dict[Path_, tuple[yaml.Node | None, yaml.Node]] = field(default_factory=dict)

    def position(self, path: Path_, key: bool, offset: int | None) -> tuple[int, int] | None:
        """(line, column) from 1 of the value at `path` (of its key with `key`),
        at `offset` characters into a scalar's text where that can be mapped."""
        probe = path
        while probe not in self.nodes and probe:
            probe = probe[:-1]  # a missing field is reported where its parent is
        found = self.nodes.get(probe)
        if found is None:
            return None
        key_node, node = found
        if key and key_node is not None and probe == path:
            mark = key_node.start_mark
            return mark.line + 1, mark.column + 1
        mark = node.start_mark
        if offset and probe == path and isinstance(node, yaml.ScalarNode):
            mapped = self._scalar_offset(node, offset)
            if mapped is not None:
                return mapped
        return mark.line + 1, mark.column + 1

    def _scalar_offset(self, node: yaml.ScalarNode, offset: int) -> tuple[int, int] | None:
        value = node.value
        if offset > len(value):
            return None
        start = node.start_mark
        if node.style == "|":
            # A literal block: value line i is source line (header + 1 + i), indented.
            line_in_value = value.count("\n", 0, offset)
            column_in_line = offset - (value.rfind("\n", 0, offset) + 1)
            source_line = start.line + 1 + line_in_value
            if source_line >= len(self.lines):
                return None
            wanted = value.split("\n")[line_in_value]
            source = self.lines[source_line]
            indent = len(source) - len(source.lstrip(" "))
            if source[indent:] != wanted and not source.endswith(wanted):
                return None
            indent = len(source) - len(wanted)
            return source_line + 1, indent + column_in_line + 1
        if node.style in (None, "'", '"') and start.line == node.end_mark.line:
            quote = 0 if node.style is None else 1
            begin = start.index + quote
            if self.text[begin : begin + len(value)] == value:
                return start.line + 1, start.column + quote + offset + 1
        return None


def _index_nodes(loader: yaml.SafeLoader, root: yaml.Node, text: str) -> _Text:
    located = _Text(text=text, lines=text.split("\n"))
    stack: list[tuple[Path_, yaml.Node | None, yaml.Node]] = [((), None, root)]
    while stack:
        path, key_node, node = stack.pop()
        located.nodes.setdefault(path, (key_node, node))
        if isinstance(node, yaml.MappingNode):
            for k_node, v_node in node.value:
                if not isinstance(k_node, yaml.ScalarNode):
                    continue
                try:
                    key = loader.construct_object(k_node, deep=True)
                    hash(key)
                except (yaml.YAMLError, TypeError):
                    continue
                if path == () and key is True:
                    key = "on"  # what `_top_level` calls it
                stack.append(((*path, key), k_node, v_node))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                stack.append(((*path, i), None, item))
    return located


def _read_yaml(text: str, *, locate: bool = True) -> tuple[object, _Text | None]:
    try:
        loader = _DefinitionLoader(text)
    except yaml.reader.ReaderError as exc:
        raise DefinitionError(_reader_problem(text, exc)) from None
    try:
        root = loader.get_single_node()
        if root is None:
            return None, None
        _check_aliases(root)
        data = loader.construct_document(root)
        return data, _index_nodes(loader, root, text) if locate else None
    except yaml.MarkedYAMLError as exc:
        problem = exc.problem or exc.context or "malformed document"
        mark = exc.problem_mark or exc.context_mark
        raise DefinitionError(
            Problem(
                f"invalid YAML: {_cut(problem)}",
                line=mark.line + 1 if mark else None,
                column=mark.column + 1 if mark else None,
            )
        ) from None
    except yaml.reader.ReaderError as exc:
        raise DefinitionError(_reader_problem(text, exc)) from None
    except yaml.YAMLError as exc:
        raise DefinitionError(f"invalid YAML: {_cut(' '.join(str(exc).split()))}") from None
    except RecursionError:
        raise DefinitionError("invalid YAML: nested too deeply") from None
    finally:
        loader.dispose()


def _reader_problem(text: str, exc: yaml.reader.ReaderError) -> Problem:
    """A character YAML does not allow (a control character, a lone surrogate)."""
    at = min(exc.position, len(text))
    line = text.count("\n", 0, at) + 1
    column = at - (text.rfind("\n", 0, at) + 1) + 1
    char = exc.character
    shown = f"U+{char:04X}" if isinstance(char, int) else repr(char)
    return Problem(f"invalid YAML: character {shown} is not allowed", line=line, column=column)


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise DefinitionError(f"invalid JSON: duplicate key {_shown(key)}")
        obj[key] = value
    return obj


def _read_json(text: str) -> tuple[object, _Text | None]:
    try:
        data = json.loads(text, object_pairs_hook=_json_object)
    except json.JSONDecodeError as exc:
        raise DefinitionError(
            Problem(f"invalid JSON: {exc.msg}", line=exc.lineno, column=exc.colno)
        ) from None
    except RecursionError:
        raise DefinitionError("invalid JSON: nested too deeply") from None
    # JSON is YAML: its nodes give each value's line and column where PyYAML reads it.
    try:
        _, located = _read_yaml(text)
    except DefinitionError:
        located = None
    return data, located


def read_text(text: str, *, json_text: bool | None = None) -> tuple[object, _Text | None]:
    """Parse definition text: JSON when `json_text` (or, when None, when it starts
    with `{` and parses as JSON), else YAML. Raises `DefinitionError` with the line
    and column of a syntax error."""
    if json_text is None:
        json_text = text.lstrip().startswith("{")
        if json_text:
            try:
                return _read_json(text)
            except DefinitionError:
                pass  # a YAML flow mapping; YAML says what is wrong with it
            json_text = False
    return _read_json(text) if json_text else _read_yaml(text)


def load_definition(path: Path, *, secrets: Collection[str] | None = None) -> WorkflowSpec:
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
    return parse_definition_text(path.stem, text, json_text=suffix == ".json", secrets=secrets)


def parse_definition_text(
    workflow_id: str,
    text: str,
    *,
    json_text: bool | None = None,
    secrets: Collection[str] | None = None,
) -> WorkflowSpec:
    """Parse and check definition text; problems carry their line and column."""
    data, located = read_text(text, json_text=json_text)
    locate = _text_locator(located)
    return _Reader(workflow_id, locate, secrets=secrets).workflow(data)


def _warn_stderr(line: str) -> None:
    print(line, file=sys.stderr)


def load_workflows_dir(
    directory: Path,
    *,
    warn: Callable[[str], None] = _warn_stderr,
    secrets: Collection[str] | None = None,
) -> list[WorkflowSpec]:
    """Load every definition file in `directory`, in file-name order.

    A file that cannot be loaded costs exactly one short `warn` line,
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
            specs[path.stem] = load_definition(path, secrets=secrets)
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


# --- where a problem is ------------------------------------------------------------------

Locator = Callable[[Path_, bool, int | None], tuple[str, int | None, int | None]]


def path_text(path: Path_) -> str:
    """`jobs.build.steps[1].run`: keys joined by dots, list indexes in brackets."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z0-9_-]+", str(part)):
            out += f".{part}" if out else str(part)
        else:
            out += f"[{json.dumps(str(part)[:MAX_SHOWN])}]"
    return out


def _text_locator(located: _Text | None) -> Locator:
    def locate(path: Path_, key: bool, offset: int | None) -> tuple[str, int | None, int | None]:
        where = located.position(path, key, offset) if located is not None else None
        line, column = where if where is not None else (None, None)
        return path_text(path), line, column

    return locate


# --- checking documents ------------------------------------------------------------------


def parse_definition(
    workflow_id: str,
    data: object,
    source: str = "",
    *,
    secrets: Collection[str] | None = None,
) -> WorkflowSpec:
    """Turn a parsed YAML/JSON document into a `WorkflowSpec`.

    Guarantees on return: every field has its documented type, ids and labels
    match `ID_PATTERN`, env keys are shell identifiers, every expression parses
    and reads only what can exist, and the job graph is acyclic with known
    dependencies. Otherwise raises `DefinitionError` with every problem;
    `source`, when given, prefixes its message. `secrets`, when given, is the
    set of secret names the definition may read (None: not checked).
    """
    try:
        return _Reader(workflow_id, _text_locator(None), secrets=secrets).workflow(data)
    except DefinitionError as exc:
        if source:
            raise DefinitionError(exc.problems, prefix=source) from None
        raise


def spec_from_body(
    workflow_id: str, body: WorkflowCreate, *, secrets: Collection[str] | None = None
) -> WorkflowSpec:
    """The definition of a workflow created through the API (see `spec_from_create`)."""
    if body.definition is not None:
        return parse_definition_text(workflow_id, body.definition, secrets=secrets)
    index: dict[str, int] = {}
    problems: list[Problem] = []
    jobs: dict[str, Any] = {}
    extras: dict[str, dict[str, Any]] = {}
    for i, job in enumerate(body.jobs):
        if job.id in index:
            problems.append(Problem(f"duplicate job id '{job.id}'", path=f"jobs[{i}].id"))
            continue
        index[job.id] = i
        jobs[job.id] = _body_job(job)
        visual = {
            k: v for k in ("ports", "children", "collapsed") if (v := getattr(job, k)) is not None
        }
        extras[job.id] = {"metadata": job.metadata, "visual": visual}
    doc: dict[str, Any] = {"name": body.name, "jobs": jobs}
    if body.env:
        doc["env"] = body.env
    if body.timeout_secs is not None:
        doc["timeout"] = body.timeout_secs
    if body.concurrency is not None:
        doc["concurrency"] = (
            body.concurrency
            if isinstance(body.concurrency, str)
            else body.concurrency.model_dump(by_alias=True)
        )
    if body.inputs:
        doc["on"] = {
            "workflow_dispatch": {
                "inputs": {name: decl.model_dump() for name, decl in body.inputs.items()}
            }
        }
    reader = _Reader(
        workflow_id,
        _body_locator(index),
        secrets=secrets,
        body=True,
        trigger=body.trigger,
        extras=extras,
    )
    reader.problems.extend(problems)
    return reader.workflow(doc)


def _body_job(job: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"run": job.command}
    if job.name is not None:
        out["name"] = job.name
    if job.depends_on:
        out["needs"] = job.depends_on
    if job.required_labels:
        out["labels"] = job.required_labels
    if job.max_retries:
        out["retries"] = job.max_retries
    if job.backoff != "None":
        out["backoff"] = job.backoff.model_dump()
    if job.timeout_secs is not None:
        out["timeout"] = job.timeout_secs
    if job.queue_timeout_secs is not None:
        out["queue-timeout"] = job.queue_timeout_secs
    if job.env:
        out["env"] = job.env
    if job.condition is not None:
        out["if"] = job.condition
    if job.continue_on_error is not False:
        out["continue-on-error"] = job.continue_on_error
    if job.strategy is not None:
        strategy = job.strategy
        out["strategy"] = {"matrix": strategy.matrix, "fail-fast": strategy.fail_fast}
        if strategy.max_parallel is not None:
            out["strategy"]["max-parallel"] = strategy.max_parallel
    return out


def _body_locator(index: Mapping[str, int]) -> Locator:
    """Paths of a create body: `jobs[2].command`, `inputs.env.default`."""

    def locate(path: Path_, key: bool, offset: int | None) -> tuple[str, int | None, int | None]:
        parts = [_BODY_FIELDS.get(p, p) if isinstance(p, str) else p for p in path]
        if len(path) >= 2 and path[0] == "jobs" and path[1] in index:
            head = f"jobs[{index[path[1]]}]"
            rest = path_text(tuple(parts[2:]))
            return (
                (f"{head}.{rest}" if rest and not rest.startswith("[") else head + rest),
                None,
                None,
            )
        if path[:3] == ("on", "workflow_dispatch", "inputs"):
            return path_text(("inputs", *parts[3:])), None, None
        return path_text(tuple(parts)), None, None

    return locate


@dataclass(frozen=True, slots=True)
class _Scope:
    """What an expression in one field may read."""

    contexts: frozenset[str]
    needs: tuple[str, ...] = ()
    # None: the job's matrix is an expression, its keys are known only at run time.
    matrix_keys: frozenset[str] | None = frozenset()
    env_keys: frozenset[str] = frozenset()
    secret_env: frozenset[str] = frozenset()  # env keys whose value reads a secret


class _Reader:
    """One definition document checked into a `WorkflowSpec`, every problem collected."""

    def __init__(
        self,
        workflow_id: str,
        locate: Locator,
        *,
        secrets: Collection[str] | None,
        body: bool = False,
        trigger: str | None = None,
        extras: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        self.workflow_id = workflow_id
        self.locate = locate
        self.secrets = None if secrets is None else frozenset(s.upper() for s in secrets)
        self.body = body  # a create body: its field names, its command shown as sent
        self.trigger = trigger
        self.extras = extras or {}
        self.problems: list[Problem] = []
        self.dropped = 0
        self.inputs: frozenset[str] = frozenset()

    # --- problems ---

    def add(self, path: Path_, message: str, *, key: bool = False, offset: int | None = None):
        if len(self.problems) >= MAX_PROBLEMS:
            self.dropped += 1
            return
        where, line, column = self.locate(path, key, offset)
        if line is not None and offset is not None:
            # The expression's own "at column N" counts within the field; the file's
            # line and column replace it.
            message = _FIELD_POSITION.sub("", message, count=1)
        self.problems.append(Problem(message, path=where, line=line, column=column))

    def name(self, key: str) -> str:
        """A field's name as the document spells it."""
        return _BODY_FIELDS.get(key, key) if self.body else key

    def field_where(self, where: str, key: str) -> str:
        return f"{where} field '{self.name(key)}'"

    def raise_problems(self) -> None:
        if self.problems:
            # In reading order where the text says it; the rest (graph rules) after.
            problems = sorted(
                self.problems,
                key=lambda p: (p.line is None, p.line or 0, p.column or 0),
            )
            if self.dropped:
                problems.append(Problem(f"... and {self.dropped} more problems"))
            raise DefinitionError(problems)

    # --- the workflow ---

    def workflow(self, data: object) -> WorkflowSpec:
        if not isinstance(self.workflow_id, str) or not _ID_RE.fullmatch(self.workflow_id):
            self.add((), f"workflow id {_shown(self.workflow_id)} must match {ID_PATTERN}")
        doc = self.top_level(data)
        if doc is None:
            self.raise_problems()
            raise AssertionError("unreachable")
        self.refuse_unknown(doc, (), _WORKFLOW_FIELDS, "workflow", _WORKFLOW_HINTS)
        name = ""
        if "name" not in doc or (self.body and doc["name"] is None):
            self.add((), "workflow has no 'name'")
        else:
            name = self.nonempty_text(doc["name"], ("name",), "workflow field 'name'") or ""
        trigger, triggers = "", Triggers()
        inputs: tuple[InputSpec, ...] = ()
        if "on" in doc:
            trigger, triggers, inputs = self.on(doc["on"], ("on",))
        if self.trigger is not None:
            trigger = self.trigger
        self.inputs = frozenset(i.name.lower() for i in inputs)
        concurrency = self.concurrency(doc["concurrency"]) if "concurrency" in doc else None
        timeout = (
            self.seconds(doc["timeout"], ("timeout",), "workflow field 'timeout'")
            if "timeout" in doc
            else None
        )
        run_scope = _Scope(_WORKFLOW_ENV)
        global_env = self.env(doc.get("env", {}), ("env",), "workflow", run_scope)
        defaults = self.defaults(doc.get("defaults"), ("defaults",), "workflow", _Scope(_RUN))
        notify = self.notify(doc["notify"]) if "notify" in doc else ()
        jobs = self.jobs(doc, global_env, defaults)
        # No job at all was reported above (missing, empty, or each one invalid).
        for job_id, message in graph_problems(jobs) if jobs else ():
            self.add(("jobs", job_id, "needs") if job_id else ("jobs",), message)
        self.raise_problems()
        return WorkflowSpec(
            id=self.workflow_id,
            name=name,
            trigger=trigger,
            jobs=tuple(jobs),
            inputs=inputs,
            concurrency=concurrency,
            timeout_secs=timeout,
            triggers=triggers,
            notify=notify,
        )

    def top_level(self, data: object) -> dict[str, Any] | None:
        """The document as a str-keyed mapping, with a YAML 1.1 `on` (parsed as True) renamed."""
        if not isinstance(data, Mapping):
            self.add((), f"a definition must be a mapping, got {plan.kind(data)}")
            return None
        doc: dict[str, Any] = {}
        for key, value in data.items():
            # `yaml.safe_load` reads the key `on` as True; accept documents it produced.
            name = "on" if key is True else key
            if not isinstance(name, str):
                self.add((), f"workflow has a non-string field {_shown(key)}")
                continue
            if name in doc:
                self.add((name,), f"workflow field {name!r} is given twice", key=True)
            doc[name] = value
        return doc

    def jobs(
        self, doc: Mapping[str, Any], global_env: dict[str, str], defaults: dict[str, str]
    ) -> list[JobSpec]:
        if "jobs" not in doc:
            self.add((), "workflow has no 'jobs'")
            return []
        jobs = doc["jobs"]
        if not isinstance(jobs, Mapping):
            self.add(("jobs",), f"workflow field 'jobs' must be a mapping, got {plan.kind(jobs)}")
            return []
        if not jobs:
            self.add(("jobs",), "workflow field 'jobs' is empty")
            return []
        specs = []
        for job_id, job in jobs.items():
            spec = self.job(job_id, job, global_env, defaults)
            if spec is not None:
                specs.append(spec)
        return specs

    # --- triggers ---

    def on(self, on: object, path: Path_) -> tuple[str, Triggers, tuple[InputSpec, ...]]:
        """The contract's display text (`on: push`, `on: [push, pull_request]`), the
        triggers and the run inputs `workflow_dispatch` declares."""
        if isinstance(on, str):
            events: list[Any] = [on]
            config: Mapping[Any, Any] = {on: None}
            text = f"on: {on}"
        elif isinstance(on, list):
            events = on
            config = {event: None for event in on if isinstance(event, str)}
            text = ""
        elif isinstance(on, Mapping):
            events = list(on)
            config = on
            text = ""
        else:
            self.add(
                path, f"workflow field 'on' must be a string, list or mapping, got {plan.kind(on)}"
            )
            return "", Triggers(), ()
        good = True
        for i, event in enumerate(events):
            where = (*path, i) if isinstance(on, list) else (*path, event)
            if not isinstance(event, str):
                self.add(where, f"workflow field 'on' lists {_shown(event)}, which is not a string")
                good = False
            elif event not in EVENTS:
                self.add(
                    where,
                    f"event {_shown(event)} is not supported (supported: {', '.join(EVENTS)})",
                    key=isinstance(on, Mapping),
                )
        if not good:
            return "", Triggers(), ()
        text = text or "on: [" + ", ".join(events) + "]"
        push = pull = None
        schedule: tuple[Schedule, ...] = ()
        inputs: tuple[InputSpec, ...] = ()
        if "push" in config:
            push = self.push(config["push"], (*path, "push"))
        if "pull_request" in config:
            pull = self.pull_request(config["pull_request"], (*path, "pull_request"))
        if "schedule" in config:
            schedule = self.schedule(config["schedule"], (*path, "schedule"))
        if "workflow_dispatch" in config:
            inputs = self.dispatch(config["workflow_dispatch"], (*path, "workflow_dispatch"))
        triggers = Triggers(
            push=push,
            pull_request=pull,
            schedule=schedule,
            workflow_dispatch="workflow_dispatch" in config,
        )
        return text, triggers, inputs

    def event_config(
        self, value: object, path: Path_, event: str, known: frozenset[str]
    ) -> Mapping[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self.add(path, f"on.{event} must be a mapping, got {plan.kind(value)}")
            return {}
        self.refuse_unknown(value, path, known, f"on.{event}", {})
        return value

    def push(self, value: object, path: Path_) -> PushTrigger:
        keys = ("branches", "branches-ignore", "tags", "tags-ignore", "paths", "paths-ignore")
        config = self.event_config(value, path, "push", frozenset(keys))
        filters = self.filters(config, path, "push", keys)
        return PushTrigger(**{k.replace("-", "_"): v for k, v in filters.items()})

    def pull_request(self, value: object, path: Path_) -> PullRequestTrigger:
        keys = ("branches", "branches-ignore", "paths", "paths-ignore")
        config = self.event_config(value, path, "pull_request", frozenset((*keys, "types")))
        filters = self.filters(config, path, "pull_request", keys)
        types: tuple[str, ...] = DEFAULT_PULL_REQUEST_TYPES
        if "types" in config:
            given = self.strings(config["types"], (*path, "types"), "on.pull_request field 'types'")
            for i, kind in enumerate(given or ()):
                if kind not in PULL_REQUEST_TYPES:
                    self.add(
                        (*path, "types", i),
                        f"on.pull_request type {_shown(kind)} is not a pull request activity "
                        "(e.g. opened, synchronize, reopened, closed)",
                    )
            types = tuple(dict.fromkeys(given or ()))
        return PullRequestTrigger(
            types=types, **{k.replace("-", "_"): v for k, v in filters.items()}
        )

    def filters(
        self, config: Mapping[str, Any], path: Path_, event: str, keys: tuple[str, ...]
    ) -> dict[str, tuple[str, ...] | None]:
        out: dict[str, tuple[str, ...] | None] = {}
        for key in keys:
            if key not in config:
                continue
            where = f"on.{event} field '{key}'"
            patterns = self.strings(config[key], (*path, key), where)
            for i, pattern in enumerate(patterns or ()):
                problem = pattern_problem(pattern)
                if problem:
                    self.add((*path, key, i), f"{where} pattern {_shown(pattern)}: {problem}")
            out[key] = patterns
        for base in ("branches", "tags", "paths"):
            if base in config and f"{base}-ignore" in config:
                self.add(
                    (*path, f"{base}-ignore"),
                    f"on.{event} gives both {base} and {base}-ignore; use one "
                    f"(a '!' pattern in {base} excludes)",
                    key=True,
                )
        return out

    def schedule(self, value: object, path: Path_) -> tuple[Schedule, ...]:
        if not isinstance(value, list) or not value:
            self.add(path, "on.schedule must be a non-empty list of {cron: '...'} entries")
            return ()
        out = []
        for i, entry in enumerate(value):
            where = f"on.schedule entry {i + 1}"
            here = (*path, i)
            if not isinstance(entry, Mapping):
                self.add(here, f"{where} must be a mapping with 'cron', got {plan.kind(entry)}")
                continue
            self.refuse_unknown(entry, here, frozenset({"cron", "timezone"}), where, {})
            if "cron" not in entry:
                self.add(here, f"{where} has no 'cron'")
                continue
            cron = self.text(entry["cron"], (*here, "cron"), f"{where} field 'cron'")
            if cron is None:
                continue
            problem = cron_problem(cron)
            if problem:
                self.add((*here, "cron"), f"{where} cron {_shown(cron)}: {problem}")
            zone = "UTC"
            if "timezone" in entry:
                zone = self.text(entry["timezone"], (*here, "timezone"), f"{where} timezone") or ""
                problem = timezone_problem(zone) if zone else "the time zone is empty"
                if problem:
                    self.add((*here, "timezone"), f"{where}: {problem}")
            out.append(Schedule(cron=" ".join(cron.split()), timezone=zone))
        return tuple(out)

    def dispatch(self, value: object, path: Path_) -> tuple[InputSpec, ...]:
        config = self.event_config(value, path, "workflow_dispatch", frozenset({"inputs"}))
        raw = config.get("inputs")
        if raw is None:
            return ()
        here = (*path, "inputs")
        if not isinstance(raw, Mapping):
            self.add(here, f"workflow_dispatch inputs must be a mapping, got {plan.kind(raw)}")
            return ()
        inputs: list[InputSpec] = []
        for name, decl in raw.items():
            spec = self.input(name, decl, (*here, name))
            if spec is not None:
                inputs.append(spec)
        for name, message in input_problems(inputs):
            self.add((*here, name), message)
        return tuple(inputs)

    def input(self, name: object, decl: object, path: Path_) -> InputSpec | None:
        if not isinstance(name, str) or not _INPUT_NAME_RE.fullmatch(name):
            self.add(path, f"input name {_shown(name)} must match {INPUT_NAME_PATTERN}", key=True)
            return None
        where = f"input '{name}'"
        if decl is None:
            return InputSpec(name=name)
        if not isinstance(decl, Mapping):
            self.add(path, f"{where} must be a mapping, got {plan.kind(decl)}")
            return None
        keys = frozenset({"type", "required", "default", "options", "description"})
        self.refuse_unknown(decl, path, keys, where, {})
        kind = decl.get("type", "string")
        if kind not in INPUT_TYPES:
            hint = " (deployment environments are not supported)" if kind == "environment" else ""
            self.add(
                (*path, "type"),
                f"{where} has type {_shown(kind)}; expected one of {', '.join(INPUT_TYPES)}{hint}",
            )
            return None
        required = decl.get("required", False)
        if not isinstance(required, bool):
            self.add((*path, "required"), f"{where} field 'required' must be true or false")
        default = decl.get("default")
        if default is not None and not isinstance(default, str | bool | int | float):
            self.add(
                (*path, "default"), f"{where} default must be a scalar, got {plan.kind(default)}"
            )
            default = None
        options: list[str] = []
        if "options" in decl:
            raw = decl["options"]
            if not isinstance(raw, list):
                self.add((*path, "options"), f"{where} options must be a list")
            else:
                for i, option in enumerate(raw):
                    if isinstance(option, bool) or not isinstance(option, str | int | float):
                        self.add((*path, "options", i), f"{where} option must be a string")
                    else:
                        options.append(option if isinstance(option, str) else str(option))
        description = decl.get("description", "")
        if not isinstance(description, str):
            self.add((*path, "description"), f"{where} description must be a string")
            description = ""
        return InputSpec(
            name=name,
            type=kind,
            required=required is True,
            default=default,
            options=tuple(options),
            description=description,
        )

    def concurrency(self, value: object) -> ConcurrencySpec | None:
        path: Path_ = ("concurrency",)
        cancel = False
        if isinstance(value, Mapping):
            self.refuse_unknown(
                value, path, frozenset({"group", "cancel-in-progress"}), "concurrency", {}
            )
            cancel_value = value.get("cancel-in-progress", False)
            if not isinstance(cancel_value, bool):
                self.add(
                    (*path, "cancel-in-progress"),
                    "concurrency field 'cancel-in-progress' must be true or false",
                )
            cancel = cancel_value is True
            if "group" not in value:
                self.add(path, "concurrency has no 'group'")
                return None
            value, path = value["group"], (*path, "group")
        group = self.nonempty_text(value, path, "concurrency group")
        if group is None:
            return None
        if len(group) > MAX_GROUP_LENGTH:
            self.add(path, f"concurrency group is longer than {MAX_GROUP_LENGTH} characters")
        self.template(group, path, "concurrency group", _Scope(_RUN))
        return ConcurrencySpec(group=group, cancel_in_progress=cancel)

    def notify(self, value: object) -> tuple[NotifySpec, ...]:
        path: Path_ = ("notify",)
        if not isinstance(value, list):
            self.add(path, f"workflow field 'notify' must be a list, got {plan.kind(value)}")
            return ()
        out = []
        for i, entry in enumerate(value):
            where, here = f"notify entry {i + 1}", (*path, i)
            if not isinstance(entry, Mapping):
                self.add(here, f"{where} must be a mapping with 'url', got {plan.kind(entry)}")
                continue
            entry = {("on" if k is True else k): v for k, v in entry.items()}
            self.refuse_unknown(entry, here, frozenset({"url", "on"}), where, {})
            url = self.nonempty_text(entry.get("url"), (*here, "url"), f"{where} field 'url'")
            if url is not None:
                parts = urlsplit(url)
                if parts.scheme not in ("http", "https") or not parts.hostname:
                    self.add((*here, "url"), f"{where} url {_shown(url)} must be an http(s) URL")
            on: tuple[str, ...] = ("failure",)
            if "on" in entry:
                given = self.strings(entry["on"], (*here, "on"), f"{where} field 'on'") or ()
                for j, status in enumerate(given):
                    if status not in NOTIFY_ON:
                        self.add(
                            (*here, "on", j),
                            f"{where} 'on' lists {_shown(status)}; expected {', '.join(NOTIFY_ON)}",
                        )
                on = tuple(dict.fromkeys(given))
            if url is not None:
                out.append(NotifySpec(url=url, on=on))
        return tuple(out)

    # --- jobs ---

    def job(
        self, job_id: object, job: object, global_env: dict[str, str], wf_defaults: dict[str, str]
    ) -> JobSpec | None:
        path: Path_ = ("jobs", job_id)
        if not isinstance(job_id, str) or not _ID_RE.fullmatch(job_id):
            self.add(path, f"job id {_shown(job_id)} must match {ID_PATTERN}", key=True)
            return None
        where = f"job '{job_id}'"
        if not isinstance(job, Mapping):
            self.add(path, f"{where} must be a mapping, got {plan.kind(job)}")
            return None
        self.refuse_unknown(job, path, _JOB_FIELDS, where, _JOB_HINTS)
        needs = self.ids(job.get("needs", []), (*path, "needs"), self.field_where(where, "needs"))
        strategy: StrategySpec | None = None
        matrix_keys: frozenset[str] | None = frozenset()
        if "strategy" in job:
            strategy, matrix_keys = self.strategy(job["strategy"], (*path, "strategy"), where)
        job_scope = _Scope(_JOB, needs=needs, matrix_keys=matrix_keys)
        env_scope = _Scope(_JOB_ENV, needs=needs, matrix_keys=matrix_keys)
        env = {**global_env, **self.env(job.get("env", {}), (*path, "env"), where, env_scope)}
        secret_env = frozenset(k for k, v in env.items() if _reads(v, "secrets"))
        script_scope = _Scope(
            _SCRIPT,
            needs=needs,
            matrix_keys=matrix_keys,
            env_keys=frozenset(env),
            secret_env=secret_env,
        )
        name: str | None = job_id
        if "name" in job and not (self.body and job["name"] is None):
            name = self.nonempty_text(job["name"], (*path, "name"), self.field_where(where, "name"))
            if name is not None:
                self.template(name, (*path, "name"), self.field_where(where, "name"), job_scope)
        labels = self.labels(job, path, where, job_scope)
        condition = None
        if "if" in job:
            condition = self.condition(
                job["if"], (*path, "if"), self.field_where(where, "if"), job_scope
            )
        continue_on_error: bool | str = False
        if "continue-on-error" in job:
            continue_on_error = self.flag(
                job["continue-on-error"],
                (*path, "continue-on-error"),
                self.field_where(where, "continue-on-error"),
                job_scope,
            )
        timeout = self.job_timeout(job, path, where)
        queue_timeout = None
        if "queue-timeout" in job:
            queue_timeout = self.seconds(
                job["queue-timeout"],
                (*path, "queue-timeout"),
                self.field_where(where, "queue-timeout"),
            )
        defaults = {
            **wf_defaults,
            **self.defaults(job.get("defaults"), (*path, "defaults"), where, script_scope),
        }
        run, steps = self.body_of(job, path, where, script_scope, defaults)
        retries = self.retries(job.get("retries", 0), (*path, "retries"), where)
        backoff = self.backoff(job.get("backoff", "None"), (*path, "backoff"), where)
        if self.body:
            command, own_run = run or "", None
        elif steps:
            command, own_run = plan.exports(env) + _display_steps(steps), None
        else:
            command, own_run = plan.exports(env) + (run or ""), run
        extras = self.extras.get(job_id, {})
        return JobSpec(
            id=job_id,
            name=name or job_id,
            command=command,
            depends_on=needs,
            required_labels=labels,
            retry_policy=RetryPolicy(max_retries=retries, backoff=backoff),
            timeout_secs=timeout,
            queue_timeout_secs=queue_timeout,
            env=env,
            metadata=extras.get("metadata", {}),
            visual=extras.get("visual", {}),
            run=own_run,
            steps=steps,
            condition=condition,
            continue_on_error=continue_on_error,
            strategy=strategy,
        )

    def labels(
        self, job: Mapping[str, Any], path: Path_, where: str, scope: _Scope
    ) -> tuple[str, ...]:
        """`labels` (ours) or `runs-on` (GitHub's): labels a worker must all have."""
        if "labels" in job and "runs-on" in job:
            self.add((*path, "runs-on"), f"{where} has both labels and runs-on; give one", key=True)
        key = "runs-on" if "runs-on" in job else "labels"
        value = job.get(key, [])
        here = (*path, key)
        label_where = self.field_where(where, key)
        if isinstance(value, Mapping) and key == "runs-on":
            if set(value) - {"labels"} or "labels" not in value:
                self.add(
                    here,
                    f"{label_where} as a mapping may only give 'labels' "
                    "(runner groups are not supported)",
                )
                return ()
            value, here = value["labels"], (*here, "labels")
        return self.ids(value, here, label_where, scope)

    def job_timeout(self, job: Mapping[str, Any], path: Path_, where: str) -> int | None:
        if "timeout" in job and "timeout-minutes" in job:
            self.add(
                (*path, "timeout-minutes"),
                f"{where} has both timeout and timeout-minutes; give one",
                key=True,
            )
        if "timeout-minutes" in job:
            value = job["timeout-minutes"]
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                self.add(
                    (*path, "timeout-minutes"),
                    f"{where} field 'timeout-minutes' must be a positive number, "
                    f"got {_shown(value)}",
                )
                return None
            if not math.isfinite(value) or value > 10**7:
                self.add(
                    (*path, "timeout-minutes"), f"{where} field 'timeout-minutes' is too large"
                )
                return None
            return math.ceil(value * 60)
        if "timeout" in job:
            return self.seconds(
                job["timeout"], (*path, "timeout"), self.field_where(where, "timeout")
            )
        return None

    def strategy(
        self, value: object, path: Path_, where: str
    ) -> tuple[StrategySpec | None, frozenset[str] | None]:
        """The strategy, and the keys `matrix.<key>` may name (None: known at run time)."""
        if not isinstance(value, Mapping):
            self.add(path, f"{where} field 'strategy' must be a mapping, got {plan.kind(value)}")
            return None, frozenset()
        keys = frozenset({"matrix", "fail-fast", "max-parallel"})
        self.refuse_unknown(value, path, keys, f"{where} strategy", {})
        fail_fast = value.get("fail-fast", True)
        if not isinstance(fail_fast, bool):
            self.add(
                (*path, "fail-fast"),
                f"{where} strategy field '{self.name('fail-fast')}' must be true or false",
            )
        max_parallel = value.get("max-parallel")
        if max_parallel is not None and not (_is_int(max_parallel) and max_parallel > 0):
            self.add(
                (*path, "max-parallel"),
                f"{where} strategy field '{self.name('max-parallel')}' must be a positive integer, "
                f"got {_shown(max_parallel)}",
            )
            max_parallel = None
        if "matrix" not in value:
            self.add(path, f"{where} strategy has no 'matrix'")
            return None, frozenset()
        matrix = value["matrix"]
        matrix_keys = self.matrix(matrix, (*path, "matrix"), f"{where} matrix")
        spec = StrategySpec(
            matrix=matrix, fail_fast=fail_fast is not False, max_parallel=max_parallel
        )
        return spec, matrix_keys

    def matrix(self, matrix: object, path: Path_, where: str) -> frozenset[str] | None:
        scope = _Scope(_RUN)
        if isinstance(matrix, str):
            if not _has_expression(matrix):
                self.add(path, f"{where} must be a mapping or one ${{{{ }}}} expression")
            else:
                self.template(matrix, path, where, scope, matrix=True)
            return None
        if not isinstance(matrix, Mapping):
            self.add(path, f"{where} must be a mapping or one ${{{{ }}}} expression")
            return frozenset()
        good = self.matrix_values(matrix, path, where, scope)
        keys: set[str] = set()
        known = True
        for key, values in matrix.items():
            if key in ("include", "exclude"):
                if key == "include":
                    if isinstance(values, list):
                        for entry in values:
                            if isinstance(entry, Mapping):
                                keys.update(str(k) for k in entry)
                            else:
                                known = False
                    else:
                        known = False
                continue
            keys.add(str(key))
        if good and plan.matrix_is_static(matrix):
            try:
                combos = plan.combinations(matrix)
            except plan.MatrixError as exc:
                self.add(path, f"{where}: {exc}")
            else:
                keys = {k for combo in combos for k in combo}
        return frozenset(keys) if known else None

    def matrix_values(self, value: object, path: Path_, where: str, scope: _Scope) -> bool:
        """Check the templates and numbers anywhere in a matrix; False on a problem."""
        good = True
        stack: list[tuple[Path_, object]] = [(path, value)]
        while stack:
            here, item = stack.pop()
            if isinstance(item, str):
                if _has_expression(item) and not self.template(
                    item, here, where, scope, matrix=True
                ):
                    good = False
            elif isinstance(item, float) and not math.isfinite(item):
                self.add(here, f"{where} holds {item}, which is not a finite number")
                good = False
            elif isinstance(item, Mapping):
                for k, v in item.items():
                    if not isinstance(k, str):
                        self.add(here, f"{where} has a non-string key {_shown(k)}")
                        good = False
                    stack.append(((*here, k), v))
            elif isinstance(item, list):
                stack.extend(((*here, i), v) for i, v in enumerate(item))
        return good

    def body_of(
        self,
        job: Mapping[str, Any],
        path: Path_,
        where: str,
        scope: _Scope,
        defaults: Mapping[str, str],
    ) -> tuple[str | None, tuple[StepSpec, ...]]:
        """The job's `run`, or its steps."""
        if "run" in job and "steps" in job:
            self.add(path, f"{where} has both {self.name('run')} and steps; give one")
            return None, ()
        if "run" in job:
            run_where = self.field_where(where, "run")
            run = self.nonempty_text(job["run"], (*path, "run"), run_where)
            if run is not None:
                self.template(run, (*path, "run"), run_where, scope)
            return run, ()
        if "steps" in job:
            return None, self.steps(job["steps"], (*path, "steps"), where, scope, defaults)
        self.add(path, f"{where} has neither run nor steps")
        return None, ()

    def steps(
        self,
        steps: object,
        path: Path_,
        where: str,
        scope: _Scope,
        defaults: Mapping[str, str],
    ) -> tuple[StepSpec, ...]:
        if not isinstance(steps, list):
            self.add(path, f"{where} field 'steps' must be a list, got {plan.kind(steps)}")
            return ()
        if not steps:
            self.add(path, f"{where} field 'steps' is empty")
            return ()
        out = []
        ids: set[str] = set()
        for i, raw in enumerate(steps):
            step = self.step(raw, i, (*path, i), where, scope, defaults)
            if step is None:
                continue
            if step.id:
                if step.id in ids:
                    self.add((*path, i, "id"), f"{where} step {i + 1} id '{step.id}' is used twice")
                ids.add(step.id)
            out.append(step)
        return tuple(out)

    def step(
        self,
        step: object,
        i: int,
        path: Path_,
        job_where: str,
        job_scope: _Scope,
        defaults: Mapping[str, str],
    ) -> StepSpec | None:
        where = f"{job_where} step {i + 1}"
        if not isinstance(step, Mapping):
            self.add(path, f"{where} must be a mapping, got {plan.kind(step)}")
            return None
        if "uses" in step:
            self.add(
                (*path, "uses"),
                f"{where} uses an action ({_shown(step['uses'])}): actions are not supported; "
                "write the step as run commands",
                key=True,
            )
        # `with` is the action's arguments: the refused `uses` already covers it.
        known = _STEP_FIELDS | ({"uses", "with"} if "uses" in step else set())
        self.refuse_unknown(step, path, known, where, _STEP_HINTS)
        if "run" not in step:
            if "uses" not in step:
                self.add(path, f"{where} has no run")
            return None
        env_scope = _Scope(
            _STEP_ENV,
            needs=job_scope.needs,
            matrix_keys=job_scope.matrix_keys,
            env_keys=job_scope.env_keys,
            secret_env=job_scope.secret_env,
        )
        env = self.env(step.get("env", {}), (*path, "env"), where, env_scope)
        scope = _Scope(
            _SCRIPT,
            needs=job_scope.needs,
            matrix_keys=job_scope.matrix_keys,
            env_keys=job_scope.env_keys | frozenset(env),
            secret_env=(job_scope.secret_env - frozenset(env))
            | frozenset(k for k, v in env.items() if _reads(v, "secrets")),
        )
        run = self.nonempty_text(step["run"], (*path, "run"), f"{where} field 'run'")
        if run is not None:
            self.template(run, (*path, "run"), f"{where} field 'run'", scope)
        texts: dict[str, str] = {}
        for key in ("id", "name", "working-directory"):
            if key in step:
                value = self.nonempty_text(step[key], (*path, key), f"{where} field '{key}'")
                if value is not None:
                    texts[key] = value
        if "id" in texts and not _STEP_ID_RE.fullmatch(texts["id"]):
            self.add(
                (*path, "id"),
                f"{where} id {_shown(texts['id'])} must start with a letter or _ and hold only "
                "letters, digits, _ and -",
            )
        for key in ("name", "working-directory"):
            if key in texts:
                self.template(texts[key], (*path, key), f"{where} field '{key}'", scope)
        condition = None
        if "if" in step:
            condition = self.condition(step["if"], (*path, "if"), f"{where} field 'if'", scope)
        continue_on_error: bool | str = False
        if "continue-on-error" in step:
            continue_on_error = self.flag(
                step["continue-on-error"],
                (*path, "continue-on-error"),
                f"{where} field 'continue-on-error'",
                scope,
            )
        shell = defaults.get("shell")
        if "shell" in step:
            shell = self.shell(step["shell"], (*path, "shell"), f"{where} field 'shell'")
        if run is None:
            return None
        return StepSpec(
            run=run,
            name=texts.get("name", ""),
            id=texts.get("id", ""),
            env=env,
            condition=condition,
            continue_on_error=continue_on_error,
            working_directory=texts.get("working-directory", defaults.get("working-directory")),
            shell=shell,
        )

    def shell(self, value: object, path: Path_, where: str) -> str | None:
        if value not in plan.SHELLS:
            self.add(
                path,
                f"{where} must be one of {', '.join(plan.SHELLS)}, got {_shown(value)}",
            )
            return None
        return str(value)

    def defaults(self, value: object, path: Path_, where: str, scope: _Scope) -> dict[str, str]:
        """`defaults.run.shell` and `.working-directory`, for the steps."""
        if value is None:
            return {}
        if not isinstance(value, Mapping) or set(value) - {"run"}:
            self.add(path, f"{where} field 'defaults' must be a mapping with only 'run'")
            return {}
        run = value.get("run") or {}
        here = (*path, "run")
        if not isinstance(run, Mapping):
            self.add(here, f"{where} defaults.run must be a mapping, got {plan.kind(run)}")
            return {}
        keys = frozenset({"shell", "working-directory"})
        self.refuse_unknown(run, here, keys, f"{where} defaults.run", {})
        out: dict[str, str] = {}
        if "shell" in run:
            shell = self.shell(run["shell"], (*here, "shell"), f"{where} defaults.run shell")
            if shell is not None:
                out["shell"] = shell
        if "working-directory" in run:
            spot = (*here, "working-directory")
            text = self.nonempty_text(run["working-directory"], spot, f"{where} defaults.run dir")
            if text is not None and self.template(text, spot, f"{where} defaults.run", scope):
                out["working-directory"] = text
        return out

    # --- expressions ---

    def template(
        self, text: str, path: Path_, where: str, scope: _Scope, *, matrix: bool = False
    ) -> bool:
        """Check every `${{ }}` of `text`; False when it has a problem."""
        try:
            parsed = plan.template(text)
        except ex.ExpressionError as exc:
            self.add(path, f"{where}: {exc.message}", offset=exc.offset)
            return False
        good = True
        for expression in parsed.expressions:
            offset = text.find(expression.source)
            if expression.calls_status_function():
                self.add(
                    path,
                    f"{where}: status functions (success(), failure(), always(), cancelled()) "
                    "may only be used in if",
                    offset=offset,
                )
                good = False
            for ref in expression.references:
                good &= self.reference(ref, path, where, scope, offset, matrix=matrix)
        return good

    def condition(self, value: object, path: Path_, where: str, scope: _Scope) -> str | None:
        """An `if`: an expression with or without `${{ }}`, or a boolean."""
        if isinstance(value, bool):
            return "true" if value else "false"
        text = self.nonempty_text(value, path, where)
        if text is None:
            return None
        try:
            parsed = plan.condition_expression(text)
        except ex.ExpressionError as exc:
            self.add(path, f"{where}: {exc.message}", offset=exc.offset)
            return None
        offset = text.find(parsed.source) if parsed.source else None
        good = True
        for ref in parsed.references:
            good &= self.reference(ref, path, where, scope, offset)
        return text if good else None

    def flag(self, value: object, path: Path_, where: str, scope: _Scope) -> bool | str:
        """`continue-on-error`: true, false, or an expression."""
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and _has_expression(value):
            self.template(value, path, where, scope)
            return value
        self.add(
            path, f"{where} must be true, false or a ${{{{ }}}} expression, got {_shown(value)}"
        )
        return False

    def reference(
        self,
        ref: tuple[Any, ...],
        path: Path_,
        where: str,
        scope: _Scope,
        offset: int | None,
        *,
        matrix: bool = False,
    ) -> bool:
        """Refuse a context path that is known not to exist before the run."""
        if not ref:
            return True
        context = str(ref[0]).lower()
        prop = str(ref[1]) if len(ref) > 1 else None

        def bad(message: str) -> bool:
            self.add(path, f"{where}: {message}", offset=offset)
            return False

        available = ", ".join(sorted(scope.contexts))
        if context not in _KNOWN_CONTEXTS:
            return bad(f"unknown context '{_cut(context)}' (available here: {available})")
        if context == "steps":
            return bad(
                "the steps context is not available: a job's steps run as one script on the "
                "worker (pass values between steps in files or $GITHUB_ENV)"
            )
        if context not in scope.contexts:
            if context == "secrets":
                return bad(
                    "secrets may only be read in env values, so that no secret is ever part "
                    "of a command, a name or a label (use env: {NAME: ${{ secrets.NAME }}} "
                    "and $NAME in the script)"
                )
            if context == "needs" and matrix:
                return bad(
                    "a matrix cannot read needs: it is expanded when the run starts, before "
                    "any job has run"
                )
            return bad(f"context '{context}' is not available here (available: {available})")
        if prop is None:
            return True
        if context == "needs":
            known = {n.lower(): n for n in scope.needs}
            if prop.lower() not in known:
                listed = ", ".join(scope.needs) or "none"
                return bad(
                    f"needs.{_cut(prop)}: '{_cut(prop)}' is not a job this job needs "
                    f"(its needs: {listed})"
                )
            if len(ref) > 2 and str(ref[2]).lower() not in ("result", "outputs"):
                return bad(f"needs.{prop}.{_cut(str(ref[2]))}: a need has only result and outputs")
        elif context == "inputs":
            if prop.lower() not in self.inputs:
                declared = ", ".join(sorted(self.inputs)) or "none"
                return bad(f"unknown input '{_cut(prop)}' (declared: {declared})")
        elif context == "matrix":
            if scope.matrix_keys is not None and prop not in scope.matrix_keys:
                if not scope.matrix_keys:
                    return bad(f"matrix.{_cut(prop)}: this job has no matrix")
                keys = ", ".join(sorted(scope.matrix_keys))
                return bad(f"matrix.{_cut(prop)}: not a key of this job's matrix (keys: {keys})")
        elif context in _PROPERTIES:
            if prop.lower() not in _PROPERTIES[context]:
                return bad(
                    f"{context}.{_cut(prop)} does not exist "
                    f"({context} has {', '.join(_PROPERTIES[context])})"
                )
        elif context == "env":
            if prop in scope.secret_env:
                return bad(
                    f"env.{prop} holds a secret, which must not become part of the command; "
                    f"use ${prop} in the script"
                )
            if prop not in scope.env_keys:
                return bad(
                    f"env.{_cut(prop)} is not set by this definition (variables a script "
                    "exports at run time are not visible to expressions)"
                )
        elif context == "secrets":
            if self.secrets is not None and prop.upper() not in self.secrets:
                return bad(f"unknown secret '{_cut(prop)}'")
        return True

    # --- fields ---

    def refuse_unknown(
        self,
        mapping: Mapping[Any, Any],
        path: Path_,
        known: frozenset[str],
        where: str,
        hints: Mapping[str, str],
    ) -> None:
        for key in mapping:
            if key in known:
                continue
            if isinstance(key, str) and key in hints:
                self.add(
                    (*path, key), f"{where} has unknown field {key!r} ({hints[key]})", key=True
                )
                continue
            expected = ", ".join(sorted(self.name(k) for k in known if k not in ("uses", "with")))
            self.add(
                (*path, key),
                f"{where} has unknown field {_shown(key)} (expected: {expected})",
                key=True,
            )

    def text(self, value: object, path: Path_, where: str) -> str | None:
        if not isinstance(value, str):
            self.add(path, f"{where} must be a string, got {plan.kind(value)}")
            return None
        if "\x00" in value:
            self.add(path, f"{where} contains a NUL character")
            return None
        return value

    def nonempty_text(self, value: object, path: Path_, where: str) -> str | None:
        text = self.text(value, path, where)
        if text is not None and not text.strip():
            self.add(path, f"{where} is empty")
            return None
        return text

    def strings(self, value: object, path: Path_, where: str) -> tuple[str, ...] | None:
        """A string or a list of strings."""
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list):
            self.add(path, f"{where} must be a string or a list of strings, got {plan.kind(value)}")
            return None
        out = []
        for i, item in enumerate(items):
            spot = path if isinstance(value, str) else (*path, i)
            text = self.text(item, spot, f"{where} item")
            if text is not None:
                out.append(text)
        return tuple(out)

    def ids(
        self, value: object, path: Path_, where: str, scope: _Scope | None = None
    ) -> tuple[str, ...]:
        """A string or a list of strings, each an id (or, given a `scope`, a template
        to render into one); repeats dropped, order kept."""
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list):
            self.add(path, f"{where} must be a string or a list of strings, got {plan.kind(value)}")
            return ()
        out = []
        for i, item in enumerate(items):
            spot = path if isinstance(value, str) else (*path, i)
            if not isinstance(item, str):
                self.add(spot, f"{where} lists {_shown(item)}, which is not a string")
            elif scope is not None and _has_expression(item):
                if self.template(item, spot, where, scope):
                    out.append(item)
            elif not _ID_RE.fullmatch(item):
                self.add(spot, f"{where} lists {_shown(item)}, which does not match {ID_PATTERN}")
            else:
                out.append(item)
        return tuple(dict.fromkeys(out))

    def retries(self, value: object, path: Path_, where: str) -> int:
        if not _is_int(value) or not 0 <= value <= MAX_RETRIES:
            self.add(
                path,
                f"{self.field_where(where, 'retries')} must be an integer from 0 to {MAX_RETRIES}, "
                f"got {_shown(value)}",
            )
            return 0
        return value

    def seconds(self, value: object, path: Path_, where: str) -> int | None:
        if not _is_int(value) or value <= 0:
            self.add(path, f"{where} must be a positive integer of seconds, got {_shown(value)}")
            return None
        return value

    def backoff(self, value: object, path: Path_, where: str) -> Backoff:
        """Validated by the wire models, so a file accepts exactly what the API accepts."""
        if value == "None":
            return "None"
        field_where = self.field_where(where, "backoff")
        if isinstance(value, Mapping) and len(value) == 1:
            (form,) = value
            model = _BACKOFF_FORMS.get(form) if isinstance(form, str) else None
            if model is not None:
                try:
                    return model.model_validate(dict(value))  # type: ignore[return-value]
                except pydantic.ValidationError as exc:
                    self.add(path, f"{field_where} is invalid: {_first_error(exc)}")
                    return "None"
        self.add(path, f"{field_where} is invalid: {_BACKOFF_HINT}")
        return "None"

    def env(self, value: object, path: Path_, where: str, scope: _Scope) -> dict[str, str]:
        """An env mapping: shell-identifier keys, scalar values as the strings a shell sees."""
        if not isinstance(value, Mapping):
            self.add(path, f"{where} field 'env' must be a mapping, got {plan.kind(value)}")
            return {}
        env: dict[str, str] = {}
        for key, raw in value.items():
            if not isinstance(key, str) or not _ENV_KEY_RE.fullmatch(key):
                self.add(
                    (*path, key),
                    f"{where} env key {_shown(key)} is not a shell variable name "
                    "([A-Za-z_][A-Za-z0-9_]*)",
                    key=True,
                )
                continue
            if key.startswith(_RESERVED_ENV_PREFIX):
                self.add(
                    (*path, key),
                    f"{where} env key {key!r} uses the prefix {_RESERVED_ENV_PREFIX} kept for "
                    "workers",
                    key=True,
                )
                continue
            text = self.env_value(raw, (*path, key), f"{where} env {key!r}")
            if text is None:
                continue
            if _has_expression(text):
                self.template(text, (*path, key), f"{where} env {key!r}", scope)
            env[key] = text
        return env

    def env_value(self, value: object, path: Path_, where: str) -> str | None:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, int | float):
            return str(value)
        if isinstance(value, str):
            return self.text(value, path, where)
        self.add(path, f"{where} must be a string, number or boolean, got {plan.kind(value)}")
        return None


# --- helpers ----------------------------------------------------------------------------


def _has_expression(text: str) -> bool:
    return "${{" in text


def _reads(text: str, context: str) -> bool:
    try:
        return plan.reads_context(text, context)
    except ex.ExpressionError:
        return False  # reported where the text is checked


def _display_steps(steps: tuple[StepSpec, ...]) -> str:
    """The composed steps as status shows them before a run: templates as written;
    a step's `if` decided from the status functions alone (contexts read as empty)."""
    composed = []
    for n, step in enumerate(steps, start=1):
        passing, failed = _static_condition(step.condition)
        composed.append(
            plan.ComposedStep(
                label=plan.step_label(step, n),
                run=step.run,
                shell=step.shell,
                env=step.env,
                working_directory=step.working_directory,
                when_passing=passing,
                when_failed=failed,
                continue_on_error=step.continue_on_error is True,
            )
        )
    return plan.compose_steps(composed)


def _static_condition(text: str | None) -> tuple[bool, bool]:
    if text is None:
        return True, False
    try:
        expression = plan.condition_expression(text)
        return (
            ex.truthy(expression.evaluate({}, status=ex.Status(True, False, False))),
            ex.truthy(expression.evaluate({}, status=ex.Status(False, True, False))),
        )
    except ex.ExpressionError:
        return True, False


def _first_error(exc: pydantic.ValidationError) -> str:
    error = exc.errors()[0]
    location = ".".join(str(part) for part in error["loc"])
    return f"{location}: {error['msg']}" if location else error["msg"]


def _is_int(value: object) -> TypeGuard[int]:
    # bool is an int subclass; `retries: true` is a mistake, not 1.
    return isinstance(value, int) and not isinstance(value, bool)


def _cut(text: str) -> str:
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 3] + "..."


def _shown(value: object) -> str:
    """A value echoed in a message: scalars as written (cut at 80 characters), other
    values by their kind, so a huge value never makes a huge message."""
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        return _cut(repr(value))
    return plan.kind(value)
