"""What starts a workflow by itself: its triggers as a definition declares them, and
the pure functions that say whether an event matches them.

GitHub Actions' meaning throughout: `on.push` with `branches`/`tags`/`paths`
filters (and their `-ignore` forms), `on.pull_request` with activity `types`,
`on.schedule` with five-field cron lines, each in its own IANA time zone.
Nothing here does I/O or reads a clock: the caller passes the event or the
instant, so every rule is tested as a table.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

# cronsim rather than croniter: maintained, small, exact about ranges, steps, names and
# impossible dates ("0 0 30 2 *" is refused, not a loop), and it iterates both ways.
from cronsim import CronSim, CronSimError

__all__ = [
    "DEFAULT_PULL_REQUEST_TYPES",
    "EVENTS",
    "PULL_REQUEST_TYPES",
    "PullRequestTrigger",
    "PushTrigger",
    "Schedule",
    "Triggers",
    "cron_problem",
    "filter_matches",
    "next_fire",
    "pattern_problem",
    "previous_fire",
    "pull_request_matches",
    "push_matches",
    "timezone_problem",
]

# The events this server can start a run for; `workflow_dispatch` is a run started by hand.
EVENTS = ("push", "pull_request", "schedule", "workflow_dispatch")

PULL_REQUEST_TYPES = frozenset(
    {
        "assigned",
        "unassigned",
        "labeled",
        "unlabeled",
        "opened",
        "edited",
        "closed",
        "reopened",
        "synchronize",
        "converted_to_draft",
        "ready_for_review",
        "locked",
        "unlocked",
        "review_requested",
        "review_request_removed",
        "auto_merge_enabled",
        "auto_merge_disabled",
        "milestoned",
        "demilestoned",
        "enqueued",
        "dequeued",
    }
)
DEFAULT_PULL_REQUEST_TYPES = ("opened", "synchronize", "reopened")

Patterns = tuple[str, ...] | None  # None: the filter is not given (it is not the empty list)


@dataclass(frozen=True, slots=True)
class PushTrigger:
    """`on.push`: each filter None when absent; at most one of a pair is given."""

    branches: Patterns = None
    branches_ignore: Patterns = None
    tags: Patterns = None
    tags_ignore: Patterns = None
    paths: Patterns = None
    paths_ignore: Patterns = None


@dataclass(frozen=True, slots=True)
class PullRequestTrigger:
    """`on.pull_request`: `branches` filters the pull request's base branch."""

    types: tuple[str, ...] = DEFAULT_PULL_REQUEST_TYPES
    branches: Patterns = None
    branches_ignore: Patterns = None
    paths: Patterns = None
    paths_ignore: Patterns = None


@dataclass(frozen=True, slots=True)
class Schedule:
    """One `on.schedule` entry: a five-field cron line read in `timezone`."""

    cron: str
    timezone: str = "UTC"


@dataclass(frozen=True, slots=True)
class Triggers:
    push: PushTrigger | None = None
    pull_request: PullRequestTrigger | None = None
    schedule: tuple[Schedule, ...] = ()
    workflow_dispatch: bool = False

    def to_data(self) -> dict[str, Any]:
        def plain(trigger: PushTrigger | PullRequestTrigger | None) -> dict[str, Any] | None:
            if trigger is None:
                return None
            return {
                f.name: None if (value := getattr(trigger, f.name)) is None else list(value)
                for f in fields(trigger)
            }

        return {
            "push": plain(self.push),
            "pull_request": plain(self.pull_request),
            "schedule": [{"cron": s.cron, "timezone": s.timezone} for s in self.schedule],
            "workflow_dispatch": self.workflow_dispatch,
        }

    @classmethod
    def from_data(cls, data: dict[str, Any] | None) -> Triggers:
        if not data:
            return cls()

        def tupled(values: dict[str, Any]) -> dict[str, Any]:
            return {k: tuple(v) if v is not None else None for k, v in values.items()}

        push, pull = data.get("push"), data.get("pull_request")
        return cls(
            push=PushTrigger(**tupled(push)) if push is not None else None,
            pull_request=PullRequestTrigger(**tupled(pull)) if pull is not None else None,
            schedule=tuple(Schedule(**s) for s in data.get("schedule", ())),
            workflow_dispatch=bool(data.get("workflow_dispatch", False)),
        )


# --- filter patterns -----------------------------------------------------------------


class _PatternError(ValueError):
    pass


_RANGE_CHARS = re.compile(r"[A-Za-z0-9]")
_RANGE_KINDS = ("0123456789", "abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ")


@lru_cache(maxsize=1024)
def _compile(pattern: str) -> tuple[bool, re.Pattern[str]]:
    """A filter pattern as (negated, regex), following GitHub's cheat sheet:

    `*` any run without `/`; `**` any run; `?` and `+` zero-or-one and
    one-or-more of the preceding character (or bracket); `[...]` one listed
    alphanumeric character or range; `\\x` the character x itself; a leading `!`
    negates. A `**/` matches zero or more whole directories.
    """
    negated = pattern.startswith("!")
    text = pattern[1:] if negated else pattern
    atoms: list[str] = []  # regex pieces; a quantifier applies to the last one
    quantifiable = False  # whether the last atom is one character (or bracket)
    i = 0
    while i < len(text):
        char = text[i]
        if char == "*":
            if text.startswith("**/", i):
                atoms.append("(?:.*/)?")
                i += 3
            elif text.startswith("**", i):
                atoms.append(".*")
                i += 2
            else:
                atoms.append("[^/]*")
                i += 1
            quantifiable = False
            continue
        if char in "?+" and quantifiable:
            atoms[-1] += char
            quantifiable = False
        elif char == "[":
            end = text.find("]", i + 1)
            if end == -1:
                raise _PatternError("a '[' has no closing ']'")
            atoms.append(_bracket(text[i + 1 : end]))
            quantifiable = True
            i = end + 1
            continue
        elif char == "\\":
            if i + 1 == len(text):
                raise _PatternError("a '\\' ends the pattern; it escapes the character after it")
            atoms.append(re.escape(text[i + 1]))
            quantifiable = True
            i += 2
            continue
        else:
            atoms.append(re.escape(char))
            quantifiable = True
        i += 1
    return negated, re.compile("".join(atoms), re.DOTALL)


def _bracket(body: str) -> str:
    if not body:
        raise _PatternError("empty brackets '[]'")
    parts: list[str] = []
    i = 0
    while i < len(body):
        if i + 2 < len(body) and body[i + 1] == "-":
            low, high = body[i], body[i + 2]
            same_kind = any(low in kind and high in kind for kind in _RANGE_KINDS)
            if not same_kind or low > high:
                raise _PatternError(f"range '{low}-{high}' must be within a-z, A-Z or 0-9")
            parts.append(f"{low}-{high}")
            i += 3
            continue
        if not _RANGE_CHARS.fullmatch(body[i]):
            raise _PatternError("brackets may hold only letters, digits and ranges of them")
        parts.append(body[i])
        i += 1
    return "[" + "".join(parts) + "]"


def pattern_problem(pattern: str) -> str | None:
    """Why `pattern` is not a valid filter pattern, or None."""
    if not pattern or pattern == "!":
        return "a pattern must not be empty"
    try:
        _compile(pattern)
    except _PatternError as exc:
        return str(exc)
    return None


def filter_matches(patterns: Sequence[str], name: str) -> bool:
    """Whether `name` is selected by `patterns`, read in order: a later matching
    pattern overrides an earlier one, a `!` pattern deselects."""
    selected = False
    for pattern in patterns:
        negated, regex = _compile(pattern)
        if regex.fullmatch(name):
            selected = not negated
    return selected


def _ref_selected(include: Patterns, ignore: Patterns, name: str) -> bool:
    if include is not None:
        return filter_matches(include, name)
    if ignore is not None:
        return not filter_matches(ignore, name)
    return True


def _paths_selected(include: Patterns, ignore: Patterns, changed: Iterable[str] | None) -> bool:
    """`paths`: some changed file is selected; `paths-ignore`: some changed file is not
    ignored. Unknown changes (None, e.g. a new branch) select, as on GitHub."""
    if changed is None or (include is None and ignore is None):
        return True
    if include is not None:
        return any(filter_matches(include, path) for path in changed)
    assert ignore is not None
    return any(not filter_matches(ignore, path) for path in changed)


def push_matches(
    trigger: PushTrigger | None, ref: str, changed_paths: Iterable[str] | None = None
) -> bool:
    """Whether a push of `ref` (`refs/heads/main`, `refs/tags/v1.2`) changing
    `changed_paths` starts the workflow.

    As on GitHub: with only branch filters a tag push does not match, and with
    only tag filters a branch push does not; path filters apply to branch
    pushes only (never to tags); branch and path filters must both pass.
    """
    if trigger is None:
        return False
    has_branch_filter = trigger.branches is not None or trigger.branches_ignore is not None
    has_tag_filter = trigger.tags is not None or trigger.tags_ignore is not None
    if ref.startswith("refs/tags/"):
        if has_tag_filter:
            return _ref_selected(trigger.tags, trigger.tags_ignore, ref[len("refs/tags/") :])
        return not has_branch_filter
    branch = ref.removeprefix("refs/heads/")
    if has_branch_filter:
        if not _ref_selected(trigger.branches, trigger.branches_ignore, branch):
            return False
    elif has_tag_filter:
        return False
    return _paths_selected(trigger.paths, trigger.paths_ignore, changed_paths)


def pull_request_matches(
    trigger: PullRequestTrigger | None,
    action: str,
    base_ref: str,
    changed_paths: Iterable[str] | None = None,
) -> bool:
    """Whether a pull request event (`action`: opened, synchronize...) against the base
    branch `base_ref` (`main` or `refs/heads/main`) starts the workflow."""
    if trigger is None or action not in trigger.types:
        return False
    base = base_ref.removeprefix("refs/heads/")
    if not _ref_selected(trigger.branches, trigger.branches_ignore, base):
        return False
    return _paths_selected(trigger.paths, trigger.paths_ignore, changed_paths)


# --- schedules ---------------------------------------------------------------------

_CRON_FIELDS = ("minute", "hour", "day of month", "month", "day of week")
_NUMERIC_FIELD = re.compile(r"^[0-9*,/-]+$")
_NAMED_FIELD = re.compile(r"^[0-9A-Za-z*,/-]+$")


def cron_problem(expression: str) -> str | None:
    """Why `expression` is not a five-field POSIX cron line, or None.

    Ranges, lists, steps and month/day names (`JAN`, `MON-FRI`) are cron's;
    the non-POSIX `L`, `W`, `#`, `?` and `@daily` forms are refused, as on GitHub.
    """
    fields = expression.split()
    if len(fields) != 5:
        return f"a cron line has 5 fields (minute hour day month weekday), got {len(fields)}"
    for name, value in zip(_CRON_FIELDS, fields, strict=True):
        allowed = _NAMED_FIELD if name in ("month", "day of week") else _NUMERIC_FIELD
        if not allowed.fullmatch(value):
            return f"the {name} field {value!r} is not cron syntax (numbers, *, ',', '-', '/')"
    try:
        CronSim(expression, datetime(2000, 1, 1))
    except CronSimError as exc:
        return str(exc)
    return None


def timezone_problem(name: str) -> str | None:
    """Why `name` is not an IANA time zone (`Europe/Berlin`, `UTC`), or None."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return f"unknown time zone {name[:60]!r} (expected an IANA name such as Europe/Berlin)"
    return None


# Longer than any daylight-saving shift: near one, a search starts this far back (or on).
_SHIFT_MARGIN = timedelta(hours=3)
_MINUTE = timedelta(minutes=1)


def next_fire(schedule: Schedule, after: datetime) -> datetime:
    """The first instant after `after` (time-zone aware) at which `schedule` fires,
    in the schedule's zone. A local time repeated by a daylight-saving change fires
    once (at its first occurrence); one skipped by it fires at the next valid minute
    (several skipped ones fire once there)."""
    zone = ZoneInfo(schedule.timezone)
    start = after - _SHIFT_MARGIN if _shift_near(zone, after) else after
    for local in CronSim(schedule.cron, _wall(start, zone)):
        fire = _instant(local, zone)
        if fire > after:
            return fire
    raise AssertionError("unreachable: cronsim iterates without end")


def previous_fire(schedule: Schedule, at: datetime) -> datetime:
    """The last instant at or before `at` at which `schedule` fires, by the same rules
    as `next_fire` (so the two agree on every fire time)."""
    zone = ZoneInfo(schedule.timezone)
    # cronsim's reverse search excludes its start: a millisecond on includes `at`.
    start = at + timedelta(milliseconds=1)
    if _shift_near(zone, at):
        start += _SHIFT_MARGIN
    for local in CronSim(schedule.cron, _wall(start, zone), reverse=True):
        fire = _instant(local, zone)
        if fire <= at:
            return fire
    raise AssertionError("unreachable: cronsim iterates without end")


# cronsim reads the cron line against local wall-clock times (naive datetimes here);
# what a daylight-saving change does to them is decided below, the same way for every
# line. (cronsim's own handling, Debian cron's, differs between fixed-time lines and
# lines with a wildcard or step hour, which would fire a repeated 02:30 twice.)


def _wall(moment: datetime, zone: ZoneInfo) -> datetime:
    return moment.astimezone(zone).replace(tzinfo=None)


def _exists(moment: datetime, zone: ZoneInfo) -> bool:
    return _wall(moment.astimezone(UTC), zone) == moment.replace(tzinfo=None)


def _instant(local: datetime, zone: ZoneInfo) -> datetime:
    """The instant a local fire time means: the first occurrence of a repeated time; for
    one that does not exist, the first valid minute after it. Never earlier than a
    local time before it means, so fire times stay in order."""
    moment = local.replace(tzinfo=zone, fold=0)
    while not _exists(moment, zone):
        local += _MINUTE
        moment = local.replace(tzinfo=zone, fold=0)
    return moment


def _shift_near(zone: ZoneInfo, moment: datetime) -> bool:
    """Whether the zone's offset changes within `_SHIFT_MARGIN` of `moment`."""
    before = (moment - _SHIFT_MARGIN).astimezone(zone).utcoffset()
    return before != (moment + _SHIFT_MARGIN).astimezone(zone).utcoffset()
