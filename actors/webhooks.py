"""Webhook deliveries: their signature, what a GitHub event says, which workflows it starts.

Pure: no I/O. The HTTP layer checks the signature on the raw body before it
parses anything; `read_delivery` turns a parsed `push` or `pull_request`
payload into a `Delivery` (the run's trigger, its `github` context, the ref,
the changed paths), and `starts` says whether a workflow's `on:` matches it,
with GitHub's rules from `triggers`.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Any

from .errors import Invalid
from .triggers import Triggers, pull_request_matches, push_matches

__all__ = [
    "SIGNATURE_HEADER",
    "Delivery",
    "dispatch_event",
    "read_delivery",
    "run_event",
    "sign",
    "signature_matches",
    "starts",
]

SIGNATURE_HEADER = "X-Hub-Signature-256"
# GitHub's push payload lists at most this many commits; a full list may be truncated,
# so its changed files are unknown (and path filters select, as for a new branch).
MAX_PUSH_COMMITS = 2048


def sign(secret: str, body: bytes) -> str:
    """The `X-Hub-Signature-256` value of `body`: `sha256=` and the HMAC's hex digest."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def signature_matches(secret: str, body: bytes, header: str | None) -> bool:
    """Whether `header` is the signature of `body` under `secret` (constant time)."""
    if not header:
        return False
    return hmac.compare_digest(sign(secret, body).encode(), header.strip().encode("latin-1"))


@dataclass(frozen=True, slots=True)
class Delivery:
    """A GitHub event that can start runs, as the matching rules and the runs see it."""

    trigger: str  # the run's trigger: `push` or `pull_request`
    ref: str  # `refs/heads/main`, `refs/tags/v1`, `refs/pull/7/merge`
    sha: str
    github: dict[str, Any]  # the runs' `github` context
    action: str = ""  # a pull request's activity type
    base_ref: str = ""  # a pull request's base branch
    changed_paths: tuple[str, ...] | None = None  # None: not known from the payload
    deleted: bool = False  # a push that deletes its ref: starts nothing, as on GitHub


def starts(triggers: Triggers, delivery: Delivery) -> bool:
    """Whether a workflow with these triggers runs for the delivery."""
    if delivery.trigger == "push":
        return not delivery.deleted and push_matches(
            triggers.push, delivery.ref, delivery.changed_paths
        )
    return pull_request_matches(
        triggers.pull_request, delivery.action, delivery.base_ref, delivery.changed_paths
    )


def run_event(delivery: Delivery) -> dict[str, Any]:
    """What a run started by the delivery keeps as its event (`rules.Run.event`)."""
    return {"github": delivery.github}


def dispatch_event(body: dict[str, Any]) -> dict[str, Any]:
    """The event of a run started by a signed dispatch: its body is `github.event`."""
    return {"github": {"event_name": "webhook", "event": body}}


def read_delivery(event_name: str, payload: Any) -> Delivery | None:
    """The delivery of GitHub event `event_name` (the `X-GitHub-Event` header), or None
    for an event that starts no run here. `Invalid` says what a `push` or
    `pull_request` payload lacks."""
    if event_name not in ("push", "pull_request"):
        return None
    if not isinstance(payload, dict):
        raise Invalid(f"a {event_name} payload must be a JSON object")
    if event_name == "push":
        return _push(payload)
    return _pull_request(payload)


def _push(payload: dict[str, Any]) -> Delivery:
    ref = _text(payload, "ref", "push")
    if not ref.startswith("refs/"):
        raise Invalid(f"push payload field 'ref' must be a full ref (refs/...), got {ref[:80]!r}")
    sha = _text(payload, "after", "push")
    tag = ref.startswith("refs/tags/")
    github = {
        **_common(payload, "push"),
        "ref": ref,
        "ref_name": ref.removeprefix("refs/tags/" if tag else "refs/heads/"),
        "ref_type": "tag" if tag else "branch",
        "sha": sha,
    }
    return Delivery(
        trigger="push",
        ref=ref,
        sha=sha,
        github=github,
        changed_paths=_changed_paths(payload.get("commits")),
        deleted=payload.get("deleted") is True,
    )


def _pull_request(payload: dict[str, Any]) -> Delivery:
    action = _text(payload, "action", "pull_request")
    pull = payload.get("pull_request")
    if not isinstance(pull, dict):
        raise Invalid("pull_request payload field 'pull_request' must be an object")
    number = pull.get("number", payload.get("number"))
    if not isinstance(number, int) or isinstance(number, bool):
        raise Invalid("pull_request payload field 'number' must be an integer")
    base = _text(_object(pull, "base"), "ref", "pull_request.base")
    head = _object(pull, "head")
    head_ref = _text(head, "ref", "pull_request.head")
    head_sha = _text(head, "sha", "pull_request.head")
    merge_sha = pull.get("merge_commit_sha")
    # GitHub runs a pull request on its merge ref; the merge commit, once GitHub made it.
    sha = merge_sha if isinstance(merge_sha, str) and merge_sha else head_sha
    ref = f"refs/pull/{number}/merge"
    github = {
        **_common(payload, "pull_request"),
        "ref": ref,
        "ref_name": f"{number}/merge",
        "ref_type": "branch",
        "sha": sha,
        "head_ref": head_ref,
        "base_ref": base,
    }
    return Delivery(
        trigger="pull_request", ref=ref, sha=sha, github=github, action=action, base_ref=base
    )


def _common(payload: dict[str, Any], event_name: str) -> dict[str, Any]:
    """The context keys every event has: the payload itself, the repository, the actor."""
    github: dict[str, Any] = {"event_name": event_name, "event": payload}
    repository = payload.get("repository")
    if isinstance(repository, dict):
        if isinstance(name := repository.get("full_name"), str):
            github["repository"] = name
        owner = repository.get("owner")
        if isinstance(owner, dict):
            login = owner.get("login", owner.get("name"))
            if isinstance(login, str):
                github["repository_owner"] = login
    sender = payload.get("sender")
    if isinstance(sender, dict) and isinstance(login := sender.get("login"), str):
        github["actor"] = login
    return github


def _changed_paths(commits: Any) -> tuple[str, ...] | None:
    """Every file the pushed commits add, remove or modify; None when not known."""
    if not isinstance(commits, list) or not commits or len(commits) >= MAX_PUSH_COMMITS:
        return None
    paths: dict[str, None] = {}
    for commit in commits:
        if not isinstance(commit, dict):
            return None
        for key in ("added", "removed", "modified"):
            files = commit.get(key) or []
            if not isinstance(files, list):
                return None
            paths.update((f, None) for f in files if isinstance(f, str))
    return tuple(paths)


def _object(data: dict[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key)
    if not isinstance(value, dict):
        raise Invalid(f"pull_request payload field 'pull_request.{key}' must be an object")
    return value


def _text(data: dict[str, Any], key: str, where: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise Invalid(f"{where} payload field '{key}' must be a non-empty string")
    return value
