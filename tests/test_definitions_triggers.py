"""Triggers: GitHub's filter patterns and event rules as tables, cron lines and their
time zones, `notify`, and how a definition declares them."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from actors.definitions import parse_definition, parse_definition_text
from actors.spec import DefinitionError
from actors.triggers import (
    PullRequestTrigger,
    PushTrigger,
    Schedule,
    Triggers,
    cron_problem,
    filter_matches,
    next_fire,
    pattern_problem,
    pull_request_matches,
    push_matches,
    timezone_problem,
)

# --- patterns (GitHub's cheat sheet) -------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "name", "matches"),
    [
        ("main", "main", True),
        ("main", "main2", False),
        ("feature/*", "feature/my-branch", True),
        ("feature/*", "feature/a/b", False),
        ("feature/**", "feature/a/b", True),
        ("feature/**", "feature/", True),
        ("*", "main", True),
        ("*", "releases/v1", False),
        ("**", "releases/v1", True),
        ("v2*", "v2.0.1", True),
        ("v[12].[0-9]+.[0-9]+", "v1.10.1", True),
        ("v[12].[0-9]+.[0-9]+", "v3.1.1", False),
        ("v[12].[0-9]+.[0-9]+", "v1..1", False),
        # ? is zero or one of the preceding character (not any one character)
        ("Octoc?t", "Octoct", True),
        ("Octoc?t", "Octot", True),
        ("Octoc?t", "Octocat", False),
        ("ab+c", "abbbc", True),
        ("ab+c", "ac", False),
        ("[CB]at", "Bat", True),
        ("[CB]at", "Rat", False),
        ("[1-2]00", "200", True),
        ("**/README.md", "README.md", True),
        ("**/README.md", "docs/a/README.md", True),
        ("docs/**", "docs/x/y.md", True),
        ("*.js", "app.js", True),
        ("*.js", "src/app.js", False),
        ("**.js", "src/app.js", True),
        ("feature\\*", "feature*", True),
        ("feature\\*", "featureX", False),
        ("release+", "release+", False),  # + is special
        ("release\\+", "release+", True),
        ("+", "+", True),  # with nothing before it, + is itself
        ("a.b", "axb", False),  # . is literal
    ],
)
def test_a_pattern_matches_as_on_github(pattern: str, name: str, matches: bool) -> None:
    assert filter_matches([pattern], name) is matches


@pytest.mark.parametrize(
    ("patterns", "name", "matches"),
    [
        (["releases/**", "!releases/**-alpha"], "releases/10", True),
        (["releases/**", "!releases/**-alpha"], "releases/10-alpha", False),
        (
            ["releases/**", "!releases/**-alpha", "releases/beta/**-alpha"],
            "releases/beta/3-alpha",
            True,
        ),
        (["!main"], "main", False),  # only negative patterns select nothing
        (["!main"], "dev", False),
        (["*", "!main", "main"], "main", True),  # the last match decides
    ],
)
def test_patterns_are_read_in_order(patterns: list[str], name: str, matches: bool) -> None:
    assert filter_matches(patterns, name) is matches


@pytest.mark.parametrize(
    ("pattern", "problem"),
    [
        ("", "a pattern must not be empty"),
        ("!", "a pattern must not be empty"),
        ("v[0-9", "a '[' has no closing ']'"),
        ("v[]", "empty brackets '[]'"),
        ("v[a-Z]", "range 'a-Z' must be within a-z, A-Z or 0-9"),
        ("v[9-0]", "range '9-0' must be within a-z, A-Z or 0-9"),
        ("v[._]", "brackets may hold only letters, digits and ranges of them"),
        ("main\\", "a '\\' ends the pattern"),
    ],
)
def test_bad_patterns_say_why(pattern: str, problem: str) -> None:
    found = pattern_problem(pattern)
    assert found is not None and found.startswith(problem)


# --- events ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("trigger", "ref", "paths", "matches"),
    [
        (PushTrigger(), "refs/heads/any", None, True),
        (PushTrigger(), "refs/tags/v1", None, True),
        (PushTrigger(branches=("main",)), "refs/heads/main", None, True),
        (PushTrigger(branches=("main",)), "refs/heads/dev", None, False),
        # only branch filters: a tag push does not run it; only tag filters: a branch push
        (PushTrigger(branches=("main",)), "refs/tags/v1", None, False),
        (PushTrigger(tags=("v*",)), "refs/tags/v1", None, True),
        (PushTrigger(tags=("v*",)), "refs/heads/main", None, False),
        (PushTrigger(branches=("main",), tags=("v*",)), "refs/tags/v1", None, True),
        (PushTrigger(branches=("main",), tags=("v*",)), "refs/heads/main", None, True),
        (PushTrigger(branches_ignore=("dev/**",)), "refs/heads/dev/x", None, False),
        (PushTrigger(branches_ignore=("dev/**",)), "refs/heads/main", None, True),
        (PushTrigger(tags_ignore=("*-rc",)), "refs/tags/v1-rc", None, False),
        (PushTrigger(tags_ignore=("*-rc",)), "refs/heads/main", None, False),
        # paths: some changed file selected; paths-ignore: some file not ignored
        (PushTrigger(paths=("src/**",)), "refs/heads/main", ["docs/a.md", "src/x.py"], True),
        (PushTrigger(paths=("src/**",)), "refs/heads/main", ["docs/a.md"], False),
        (PushTrigger(paths=("src/**", "!src/gen/**")), "refs/heads/main", ["src/gen/a"], False),
        (PushTrigger(paths_ignore=("docs/**",)), "refs/heads/main", ["docs/a.md"], False),
        (PushTrigger(paths_ignore=("docs/**",)), "refs/heads/main", ["docs/a", "x"], True),
        (PushTrigger(paths=("src/**",)), "refs/heads/main", None, True),  # diff unknown
        (PushTrigger(paths=("src/**",)), "refs/tags/v1", ["docs/a.md"], True),  # tags: no paths
        # branches and paths must both pass
        (PushTrigger(branches=("main",), paths=("src/**",)), "refs/heads/dev", ["src/a"], False),
        (PushTrigger(branches=("main",), paths=("src/**",)), "refs/heads/main", ["src/a"], True),
        (None, "refs/heads/main", None, False),
    ],
)
def test_push_matches(
    trigger: PushTrigger | None, ref: str, paths: list[str] | None, matches: bool
) -> None:
    assert push_matches(trigger, ref, paths) is matches


@pytest.mark.parametrize(
    ("trigger", "action", "base", "paths", "matches"),
    [
        (PullRequestTrigger(), "opened", "main", None, True),
        (PullRequestTrigger(), "synchronize", "refs/heads/main", None, True),
        (PullRequestTrigger(), "reopened", "main", None, True),
        (PullRequestTrigger(), "closed", "main", None, False),  # not a default type
        (PullRequestTrigger(types=("closed",)), "closed", "main", None, True),
        (PullRequestTrigger(branches=("main",)), "opened", "dev", None, False),
        (PullRequestTrigger(branches=("releases/**",)), "opened", "releases/1", None, True),
        (PullRequestTrigger(branches_ignore=("wip/*",)), "opened", "wip/x", None, False),
        (PullRequestTrigger(paths=("*.md",)), "opened", "main", ["README.md"], True),
        (PullRequestTrigger(paths=("*.md",)), "opened", "main", ["src/a.py"], False),
        (None, "opened", "main", None, False),
    ],
)
def test_pull_request_matches(
    trigger: PullRequestTrigger | None,
    action: str,
    base: str,
    paths: list[str] | None,
    matches: bool,
) -> None:
    assert pull_request_matches(trigger, action, base, paths) is matches


# --- schedules ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("*/15 * * * *", None),
        ("0 3 * * 1-5", None),
        ("0 0 1,15 jan-jun MON-FRI", None),
        ("0 0 * * sun", None),
        ("5 4 * * 7", None),
        ("@daily", "a cron line has 5 fields"),
        ("0 0 * *", "a cron line has 5 fields"),
        ("0 0 0 * * *", "a cron line has 5 fields"),
        ("61 * * * *", "Bad minute"),
        ("0 24 * * *", "Bad hour"),
        ("0 0 L * *", "the day of month field 'L' is not cron syntax"),
        ("0 0 * * MON#2", "the day of week field 'MON#2' is not cron syntax"),
        ("0 0 ? * *", "the day of month field '?' is not cron syntax"),
        ("0 jan * * *", "the hour field 'jan' is not cron syntax"),
    ],
)
def test_cron_lines(line: str, problem: str | None) -> None:
    found = cron_problem(line)
    if problem is None:
        assert found is None
    else:
        assert found is not None and found.startswith(problem)


def test_time_zones_are_checked() -> None:
    assert timezone_problem("Europe/Berlin") is None
    assert timezone_problem("UTC") is None
    assert "unknown time zone 'Mars/Olympus'" in (timezone_problem("Mars/Olympus") or "")
    assert timezone_problem("../etc/passwd") is not None


def test_next_fire_follows_cron_through_daylight_saving() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    daily = Schedule(cron="30 2 * * *", timezone="Europe/Berlin")
    # 2024-03-31: 02:00-02:59 does not exist in Berlin; it fires at the next valid minute.
    spring = next_fire(daily, datetime(2024, 3, 30, 12, tzinfo=berlin))
    assert spring == datetime(2024, 3, 31, 3, 0, tzinfo=berlin)
    assert next_fire(daily, spring) == datetime(2024, 4, 1, 2, 30, tzinfo=berlin)
    # 2024-10-27: 02:30 happens twice; it fires once.
    autumn = next_fire(daily, datetime(2024, 10, 26, 12, tzinfo=berlin))
    assert autumn.replace(tzinfo=None) == datetime(2024, 10, 27, 2, 30)
    again = next_fire(daily, autumn)
    assert again.replace(tzinfo=None) == datetime(2024, 10, 28, 2, 30)
    utc = Schedule(cron="*/15 * * * *")
    assert next_fire(utc, datetime(2024, 1, 1, 0, 7, tzinfo=UTC)) == datetime(
        2024, 1, 1, 0, 15, tzinfo=UTC
    )


# --- how a definition declares them -------------------------------------------------------------


def test_triggers_are_parsed_into_the_spec() -> None:
    spec = parse_definition_text(
        "t",
        """\
name: T
on:
  push:
    branches: [main, 'releases/**']
    tags: v*
    paths-ignore: ['docs/**']
  pull_request:
    types: [opened, labeled]
    branches: [main]
  schedule:
    - cron: '*/15  * * * *'
    - {cron: '0 3 * * 1-5', timezone: Europe/Berlin}
  workflow_dispatch:
notify:
  - url: https://hooks.example.invalid/ci
    on: [failure, success]
  - url: http://127.0.0.1:9000/x
jobs:
  a: {run: x}
""",
    )
    assert spec.trigger == "on: [push, pull_request, schedule, workflow_dispatch]"
    assert spec.triggers == Triggers(
        push=PushTrigger(branches=("main", "releases/**"), tags=("v*",), paths_ignore=("docs/**",)),
        pull_request=PullRequestTrigger(types=("opened", "labeled"), branches=("main",)),
        schedule=(
            Schedule(cron="*/15 * * * *"),
            Schedule(cron="0 3 * * 1-5", timezone="Europe/Berlin"),
        ),
        workflow_dispatch=True,
    )
    assert [(n.url, n.on) for n in spec.notify] == [
        ("https://hooks.example.invalid/ci", ("failure", "success")),
        ("http://127.0.0.1:9000/x", ("failure",)),
    ]


@pytest.mark.parametrize(
    ("on", "triggers"),
    [
        ("push", Triggers(push=PushTrigger())),
        (["push", "pull_request"], Triggers(push=PushTrigger(), pull_request=PullRequestTrigger())),
        (["workflow_dispatch"], Triggers(workflow_dispatch=True)),
        (
            {"push": None, "workflow_dispatch": None},
            Triggers(push=PushTrigger(), workflow_dispatch=True),
        ),
    ],
)
def test_the_short_forms(on: object, triggers: Triggers) -> None:
    spec = parse_definition("t", {"name": "T", "on": on, "jobs": {"a": {"run": "x"}}})
    assert spec.triggers == triggers


@pytest.mark.parametrize(
    ("on", "message"),
    [
        ("release", "event 'release' is not supported (supported: push, pull_request, sched"),
        ({"push": {"branch": ["main"]}}, "on.push has unknown field 'branch'"),
        (
            {"push": {"branches": ["main"], "branches-ignore": ["dev"]}},
            "on.push gives both branches and branches-ignore; use one",
        ),
        ({"push": {"branches": ["v[0-9"]}}, "on.push field 'branches' pattern 'v[0-9': a '['"),
        ({"push": {"paths": 5}}, "on.push field 'paths' must be a string or a list of strings"),
        ({"pull_request": {"types": ["opend"]}}, "on.pull_request type 'opend' is not"),
        (
            {"pull_request": {"tags": ["v1"]}},
            "on.pull_request has unknown field 'tags'",
        ),
        ({"schedule": "0 * * * *"}, "on.schedule must be a non-empty list"),
        ({"schedule": [{"cron": "0 0 L * *"}]}, "on.schedule entry 1 cron '0 0 L * *': the day"),
        (
            {"schedule": [{"cron": "0 0 * * *", "timezone": "Mars/Olympus"}]},
            "on.schedule entry 1: unknown time zone 'Mars/Olympus'",
        ),
        ({"schedule": [{"at": "noon"}]}, "on.schedule entry 1 has unknown field 'at'"),
        ({"workflow_dispatch": {"inputs": []}}, "workflow_dispatch inputs must be a mapping"),
    ],
)
def test_trigger_refusals(on: object, message: str) -> None:
    with pytest.raises(DefinitionError) as caught:
        parse_definition("t", {"name": "T", "on": on, "jobs": {"a": {"run": "x"}}})
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("notify", "message"),
    [
        ("https://x", "workflow field 'notify' must be a list"),
        ([{"url": "ftp://x/y"}], "notify entry 1 url 'ftp://x/y' must be an http(s) URL"),
        ([{"url": "https://"}], "notify entry 1 url 'https://' must be an http(s) URL"),
        ([{"on": ["failure"]}], "notify entry 1 field 'url' must be a string, got null"),
        ([{"url": "https://x", "on": ["failed"]}], "notify entry 1 'on' lists 'failed'"),
        ([{"url": "https://x", "when": "always"}], "notify entry 1 has unknown field 'when'"),
    ],
)
def test_notify_refusals(notify: object, message: str) -> None:
    with pytest.raises(DefinitionError) as caught:
        parse_definition("t", {"name": "T", "notify": notify, "jobs": {"a": {"run": "x"}}})
    assert message in str(caught.value)
