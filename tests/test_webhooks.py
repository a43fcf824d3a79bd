"""Webhooks: signatures and GitHub's payloads as tables, then signed deliveries over HTTP.

The payloads in `tests/data/github/` have the shape GitHub sends (its documented
examples, trimmed of URLs); tests change a field where they need another event.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio.testing

from actors.definitions import parse_definition_text
from actors.errors import Invalid
from actors.runtime import Runtime, open_runtime
from actors.trigger_store import DeliveryHandled
from actors.triggers import PullRequestTrigger, PushTrigger, Triggers
from actors.webhooks import read_delivery, sign, signature_matches, starts
from web.app import create_app

DATA = Path(__file__).parent / "data" / "github"
SECRET = "It's a Secret to Everybody"
DISPATCH_SECRET = "dispatch-secret-42"


def payload(name: str, **changes: Any) -> dict[str, Any]:
    data = json.loads((DATA / f"{name}.json").read_text())
    data.update(copy.deepcopy(changes))
    return data


# --- signatures ----------------------------------------------------------------------


def test_the_signature_is_githubs():
    # GitHub's documented example: this secret and body give this signature.
    body = b"Hello, World!"
    expected = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    assert sign(SECRET, body) == expected


@pytest.mark.parametrize(
    ("header", "valid"),
    [
        (sign(SECRET, b"{}"), True),
        (" " + sign(SECRET, b"{}") + " ", True),
        (sign(SECRET, b"{} "), False),  # another body
        (sign("other", b"{}"), False),
        (sign(SECRET, b"{}").replace("sha256=", "sha1="), False),
        (sign(SECRET, b"{}")[:-1], False),
        ("", False),
        (None, False),
        ("sha256=\u00e9", False),
    ],
)
def test_a_signature_is_checked(header: str | None, valid: bool):
    assert signature_matches(SECRET, b"{}", header) is valid


# --- what a payload says -----------------------------------------------------------------


def test_a_push_of_a_branch():
    delivery = read_delivery("push", payload("push"))
    assert delivery is not None
    assert (delivery.trigger, delivery.ref, delivery.sha) == (
        "push",
        "refs/heads/main",
        "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c",
    )
    assert delivery.changed_paths == ("README.md",)
    github = delivery.github
    assert {k: v for k, v in github.items() if k != "event"} == {
        "event_name": "push",
        "ref": "refs/heads/main",
        "ref_name": "main",
        "ref_type": "branch",
        "sha": "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c",
        "repository": "baxterthehacker/public-repo",
        "repository_owner": "baxterthehacker",
        "actor": "baxterthehacker",
    }
    assert github["event"] == payload("push")


def test_a_push_of_a_tag():
    delivery = read_delivery("push", payload("push_tag"))
    assert delivery is not None
    assert (delivery.ref, delivery.github["ref_name"], delivery.github["ref_type"]) == (
        "refs/tags/v1.2.0",
        "v1.2.0",
        "tag",
    )
    assert delivery.changed_paths is None  # no commits listed: not known


def test_a_pull_request():
    delivery = read_delivery("pull_request", payload("pull_request_synchronize"))
    assert delivery is not None
    assert (delivery.trigger, delivery.action, delivery.base_ref) == (
        "pull_request",
        "synchronize",
        "main",
    )
    assert delivery.ref == "refs/pull/7/merge"
    assert delivery.sha == "e2f1c1d3b2d1e3c9f0a9b8c7d6e5f4a3b2c1d0e9"  # the merge commit
    assert (delivery.github["head_ref"], delivery.github["base_ref"]) == ("changes", "main")
    pull = payload("pull_request_synchronize")
    pull["pull_request"]["merge_commit_sha"] = None
    unmerged = read_delivery("pull_request", pull)
    assert unmerged is not None and unmerged.sha == "c4295bd74fb0f4fda03689c3df3f2803b658fd85"


def test_events_that_start_nothing_here():
    assert read_delivery("issues", {"action": "opened"}) is None
    assert read_delivery("workflow_run", []) is None


@pytest.mark.parametrize(
    ("event", "data", "message"),
    [
        ("push", [], "a push payload must be a JSON object"),
        ("push", {"after": "abc"}, "push payload field 'ref' must be a non-empty string"),
        ("push", {"ref": "main", "after": "abc"}, "must be a full ref (refs/...), got 'main'"),
        ("push", {"ref": "refs/heads/x"}, "push payload field 'after' must be a non-empty"),
        ("pull_request", {"pull_request": {}}, "field 'action' must be a non-empty string"),
        ("pull_request", {"action": "opened"}, "field 'pull_request' must be an object"),
        (
            "pull_request",
            {"action": "opened", "pull_request": {"number": 1, "head": {"ref": "a", "sha": "b"}}},
            "field 'pull_request.base' must be an object",
        ),
        (
            "pull_request",
            {"action": "opened", "pull_request": {"number": "1"}},
            "field 'number' must be an integer",
        ),
    ],
)
def test_a_malformed_payload_says_what_is_wrong(event: str, data: Any, message: str):
    with pytest.raises(Invalid) as caught:
        read_delivery(event, data)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("triggers", "name", "changes", "runs"),
    [
        (Triggers(push=PushTrigger(branches=("main",))), "push", {}, True),
        (Triggers(push=PushTrigger(branches=("main",))), "push", {"ref": "refs/heads/dev"}, False),
        (Triggers(push=PushTrigger(branches=("main",))), "push", {"deleted": True}, False),
        (Triggers(push=PushTrigger(paths=("docs/**",))), "push", {}, False),
        (Triggers(push=PushTrigger(paths=("*.md",))), "push", {}, True),
        (Triggers(push=PushTrigger(tags=("v1.*",))), "push_tag", {}, True),
        (Triggers(push=PushTrigger(branches=("main",))), "push_tag", {}, False),
        (Triggers(pull_request=PullRequestTrigger()), "push", {}, False),
        (Triggers(pull_request=PullRequestTrigger()), "pull_request_synchronize", {}, True),
        (
            Triggers(pull_request=PullRequestTrigger()),
            "pull_request_synchronize",
            {"action": "closed"},
            False,
        ),
        (
            Triggers(pull_request=PullRequestTrigger(types=("closed",))),
            "pull_request_synchronize",
            {"action": "closed"},
            True,
        ),
        (
            Triggers(pull_request=PullRequestTrigger(branches=("release/**",))),
            "pull_request_synchronize",
            {},
            False,
        ),
        (Triggers(push=PushTrigger()), "pull_request_synchronize", {}, False),
    ],
)
def test_which_workflows_a_delivery_starts(
    triggers: Triggers, name: str, changes: dict, runs: bool
):
    event = "pull_request" if name.startswith("pull_request") else "push"
    delivery = read_delivery(event, payload(name, **changes))
    assert delivery is not None
    assert starts(triggers, delivery) is runs


# --- over HTTP ---------------------------------------------------------------------------------

DEFINITIONS = {
    "on-main": """\
name: Main
on:
  push:
    branches: [main]
jobs:
  build:
    run: echo "${{ github.event.head_commit.message }} by ${{ github.actor }}"
""",
    "on-tags": "name: Tags\non: {push: {tags: ['v*']}}\njobs: {a: {run: release}}\n",
    "docs-only": (
        "name: Docs\non: {push: {branches: [main], paths: ['docs/**']}}\njobs: {a: {run: x}}\n"
    ),
    "on-pr": "name: PR\non: {pull_request: {branches: [main]}}\njobs: {a: {run: test}}\n",
    "on-pr-closed": "name: Closed\non: {pull_request: {types: [closed]}}\njobs: {a: {run: x}}\n",
    "by-hand": (
        "name: Hand\non:\n  workflow_dispatch:\n    inputs: {target: {default: staging}}\n"
        "jobs:\n  a: {run: 'deploy ${{ inputs.target }}'}\n"
    ),
}


class Hooks:
    def __init__(self, client, runtime: Runtime) -> None:
        self.client = client
        self.runtime = runtime
        self.count = 0

    async def deliver(
        self,
        event: str,
        body: Any,
        *,
        delivery: str | None = None,
        secret: str = SECRET,
        headers: dict[str, str] | None = None,
    ):
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.count += 1
        sent = {
            # The test client sends no Content-Length by itself; GitHub does.
            "Content-Length": str(len(raw)),
            "Content-Type": "application/json",
            "User-Agent": "GitHub-Hookshot/abc123",
            "X-GitHub-Event": event,
            "X-GitHub-Delivery": delivery or f"72d3162e-cc78-11e3-81ab-{self.count:012d}",
            "X-Hub-Signature-256": sign(secret, raw),
            **(headers or {}),
        }
        return await self.client.post("/api/webhooks/github", data=raw, headers=sent)

    async def started(self, event: str, body: Any, **kw: Any) -> list[tuple[str, int]]:
        resp = await self.deliver(event, body, **kw)
        answer = await resp.get_json()
        assert resp.status_code == 202, answer
        return [(run["workflow_id"], run["number"]) for run in answer]

    async def dispatch(self, workflow_id: str, body: Any, secret: str = DISPATCH_SECRET):
        raw = json.dumps(body).encode()
        headers = {"Content-Type": "application/json", "X-Hub-Signature-256": sign(secret, raw)}
        return await self.client.post(
            f"/api/workflows/{workflow_id}/dispatch", data=raw, headers=headers
        )

    async def run_count(self) -> int:
        return sum([len(await self.runtime.list_runs(w)) for w in DEFINITIONS])


@asynccontextmanager
async def hooks(data_dir: Path | None = None, **app_kwargs: Any) -> AsyncIterator[Hooks]:
    specs = [parse_definition_text(name, text) for name, text in DEFINITIONS.items()]
    kwargs = {"github_webhook_secret": SECRET, "webhook_secret": DISPATCH_SECRET, **app_kwargs}
    async with open_runtime(specs=specs, data_dir=data_dir) as runtime:
        async with create_app(runtime, **kwargs).test_app() as app:
            yield Hooks(app.test_client(), runtime)


async def test_a_push_to_main_starts_the_workflows_it_matches():
    async with hooks() as h:
        assert await h.started("push", payload("push")) == [("on-main", 1)]
        run = await h.runtime.get_run("on-main", 1)
        assert run.trigger == "push"
        claim = await h.runtime.claim("w1", [])
        assert claim is not None
        command = claim.job.command
        for line in (
            "export GITHUB_EVENT_NAME=push\n",
            "export GITHUB_REF=refs/heads/main\n",
            "export GITHUB_REF_NAME=main\n",
            "export GITHUB_SHA=0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c\n",
            "export GITHUB_REPOSITORY=baxterthehacker/public-repo\n",
        ):
            assert line in command
        assert command.endswith('echo "Update README.md by baxterthehacker"')
        assert claim.job.event == payload("push")


async def test_other_branches_tags_and_pull_requests():
    async with hooks() as h:
        assert await h.started("push", payload("push", ref="refs/heads/feature/x")) == []
        assert await h.started("push", payload("push_tag")) == [("on-tags", 1)]
        assert await h.started("pull_request", payload("pull_request_synchronize")) == [
            ("on-pr", 1)
        ]
        claim = await h.runtime.claim("w1", [])
        assert claim is not None and claim.job.workflow_id == "on-tags"
        assert "export GITHUB_REF=refs/tags/v1.2.0\n" in claim.job.command
        claim = await h.runtime.claim("w1", [])
        assert claim is not None and claim.job.workflow_id == "on-pr"
        assert "export GITHUB_REF=refs/pull/7/merge\n" in claim.job.command
        assert "export GITHUB_HEAD_REF=changes\n" in claim.job.command
        assert "export GITHUB_EVENT_NAME=pull_request\n" in claim.job.command
        assert (await h.runtime.get_run("on-pr", 1)).trigger == "pull_request"
        closed = await h.started(
            "pull_request", payload("pull_request_synchronize", action="closed")
        )
        assert closed == [("on-pr-closed", 1)]
        assert await h.started("issues", {"action": "opened"}) == []


async def test_a_replayed_delivery_starts_nothing():
    async with hooks() as h:
        assert await h.started("push", payload("push"), delivery="d-1") == [("on-main", 1)]
        await h.runtime.cancel_workflow("on-main")
        assert await h.started("push", payload("push"), delivery="d-1") == []
        assert await h.run_count() == 1
        assert await h.started("push", payload("push"), delivery="d-2") == [("on-main", 2)]


async def test_a_delivery_is_remembered_across_a_restart(tmp_path):
    async with hooks(tmp_path) as h:
        assert await h.started("push", payload("push"), delivery="d-1") == [("on-main", 1)]
        await h.runtime.cancel_workflow("on-main")
    async with hooks(tmp_path) as h:
        assert await h.started("push", payload("push"), delivery="d-1") == []
        assert await h.run_count() == 1


async def test_a_delivery_cut_short_starts_only_what_it_had_not():
    async with hooks() as h:
        # As if the server died after starting on-main and before the rest of the delivery.
        handled = [DeliveryHandled("d-1", "on-main", 0)]
        await h.runtime._system.trigger_store.put_deliveries(handled, before_ms=0)
        assert await h.started("push", payload("push"), delivery="d-1") == []
        assert await h.started("push", payload("push_tag"), delivery="d-2") == [("on-tags", 1)]
        await h.runtime._system.trigger_store.put_deliveries(
            [DeliveryHandled("d-3", "on-main", 0)], before_ms=0
        )
        tagged = payload("push_tag")
        await h.runtime.cancel_workflow("on-tags")
        assert await h.started("push", tagged, delivery="d-3") == [("on-tags", 2)]


async def test_a_busy_workflow_is_skipped_and_logged(caplog):
    caplog.set_level(logging.WARNING)
    async with hooks() as h:
        assert await h.started("push", payload("push")) == [("on-main", 1)]
        assert await h.started("push", payload("push")) == []
        metrics = h.runtime._system.metrics.exposition().decode()
        assert 'wfg_trigger_skipped_total{trigger="push",workflow="on-main"} 1.0' in metrics
        assert "workflow on-main not started: workflow 'on-main' already has an active run" in (
            caplog.text
        )


async def test_bad_signatures_start_nothing():
    async with hooks() as h:
        resp = await h.deliver("push", payload("push"), secret="guess")
        assert resp.status_code == 401
        assert "signature is wrong" in (await resp.get_json())["error"]
        raw = json.dumps(payload("push")).encode()
        resp = await h.client.post(
            "/api/webhooks/github",
            data=raw,
            headers={"Content-Type": "application/json", "X-GitHub-Event": "push"},
        )
        assert resp.status_code == 401
        assert "signature is missing" in (await resp.get_json())["error"]
        # A signature is checked before anything is read: even malformed JSON is 401.
        resp = await h.deliver("push", b"{", secret="guess")
        assert resp.status_code == 401
        assert await h.run_count() == 0


async def test_without_a_secret_the_routes_are_not_there():
    async with hooks(github_webhook_secret=None, webhook_secret=None) as h:
        resp = await h.deliver("push", payload("push"))
        assert resp.status_code == 404
        assert "GITHUB_WEBHOOK_SECRET" in (await resp.get_json())["error"]
        resp = await h.dispatch("by-hand", {})
        assert resp.status_code == 404
        assert "WEBHOOK_SECRET" in (await resp.get_json())["error"]
        assert await h.run_count() == 0


@pytest.mark.parametrize(
    ("event", "body", "headers", "status", "message"),
    [
        ("push", b"{", {}, 400, "malformed JSON"),
        ("push", b"[]", {}, 422, "request body must be a JSON object"),
        ("push", {"ref": 5}, {}, 422, "push payload field 'ref' must be a non-empty string"),
        ("", {}, {}, 400, "header X-GitHub-Event is missing"),
        ("push", payload("push"), {"X-GitHub-Delivery": ""}, 400, "X-GitHub-Delivery is missing"),
        ("push", payload("push"), {"X-GitHub-Delivery": "x" * 201}, 400, "at most 200 printable"),
    ],
)
async def test_malformed_deliveries_are_refused(event, body, headers, status, message):
    async with hooks() as h:
        resp = await h.deliver(event, body, headers=headers)
        assert resp.status_code == status
        assert message in (await resp.get_json())["error"]
        assert await h.run_count() == 0


async def test_ping_answers_200():
    async with hooks() as h:
        resp = await h.deliver("ping", payload("ping"))
        assert resp.status_code == 200
        assert await resp.get_json() == {"ok": True, "event": "ping"}


async def test_a_form_encoded_delivery_is_refused_with_415():
    async with hooks() as h:
        resp = await h.deliver(
            "push",
            b"payload=%7B%7D",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert resp.status_code == 415
        assert "must be JSON" in (await resp.get_json())["error"]


async def test_an_oversized_delivery_is_413():
    async with hooks(max_body_bytes=2048) as h:
        resp = await h.deliver("push", payload("push", padding="x" * 4096))
        assert resp.status_code == 413
        assert "max_body_bytes (2048)" in (await resp.get_json())["error"]


async def test_webhooks_need_no_token_but_the_rest_does():
    async with hooks(api_token="api-token-123") as h:
        assert await h.started("push", payload("push")) == [("on-main", 1)]
        resp = await h.dispatch("by-hand", {})
        assert resp.status_code == 202
        resp = await h.client.get("/api/workflows/on-main/schedules")
        assert resp.status_code == 401


async def test_a_signed_dispatch_starts_one_run():
    async with hooks() as h:
        resp = await h.dispatch("by-hand", {"inputs": {"target": "prod"}, "reason": "release"})
        answer = await resp.get_json()
        assert resp.status_code == 202, answer
        assert answer == {"workflow_id": "by-hand", "number": 1, "status": "running"}
        run = await h.runtime.get_run("by-hand", 1)
        assert (run.trigger, run.inputs) == ("webhook", {"target": "prod"})
        claim = await h.runtime.claim("w1", [])
        assert claim is not None
        assert claim.job.event == {"inputs": {"target": "prod"}, "reason": "release"}
        assert "export GITHUB_EVENT_NAME=webhook\n" in claim.job.command
        assert (await h.dispatch("by-hand", {})).status_code == 409
        assert (await h.dispatch("by-hand", {}, secret="guess")).status_code == 401
        assert (await h.dispatch("nope", {})).status_code == 404
        resp = await h.dispatch("on-main", {"inputs": {"x": 1}})
        assert resp.status_code == 422
        assert "unknown input 'x'" in (await resp.get_json())["error"]
        assert await h.run_count() == 1


async def test_a_large_payload_is_kept_once_per_run(tmp_path):
    big = payload("push", padding="x" * 200_000)
    async with hooks(tmp_path, max_body_bytes=1024 * 1024) as h:
        assert await h.started("push", big) == [("on-main", 1)]
        claim = await h.runtime.claim("w1", [])
        assert claim is not None
        await h.runtime.complete(claim.lease.lease_id, {})

        def sizes(db):
            run = db.execute("SELECT length(record) FROM runs").fetchone()[0]
            jobs = db.execute("SELECT max(length(state)) FROM jobs").fetchone()[0]
            event = db.execute("SELECT length(event) FROM run_events").fetchone()[0]
            return run, jobs, event

        run, jobs, event = await h.runtime._system.journal.read(sizes)
        assert event > 200_000 and run < 2000 and jobs < 2000
    async with hooks(tmp_path) as h:  # read back whole after a restart
        run = await h.runtime.get_run("on-main", 1)
        assert run.status.value == "success"
        state, _ = await h.runtime._run_state(h.runtime._workflow("on-main"), 1)
        assert state.event is not None and state.event["github"]["event"] == big


@pytest.fixture
def autojump_clock():
    return trio.testing.MockClock(autojump_threshold=0)


async def test_the_routes_are_documented():
    async with hooks() as h:
        resp = await h.client.get("/openapi.json")
        paths = (await resp.get_json())["paths"]
        github = paths["/api/webhooks/github"]["post"]
        assert set(github["responses"]) >= {"200", "202", "400", "401", "404", "413", "415", "422"}
        headers = {p["name"] for p in github["parameters"] if p["in"] == "header"}
        assert headers >= {"X-GitHub-Event", "X-GitHub-Delivery", "X-Hub-Signature-256"}
        dispatch = paths["/api/workflows/{workflow_id}/dispatch"]["post"]
        assert set(dispatch["responses"]) >= {"202", "401", "404", "409", "422"}
        assert "200" in paths["/api/workflows/{workflow_id}/schedules"]["get"]["responses"]
        run = paths["/api/workflows/{workflow_id}/runs/{number}"]["get"]["responses"]["200"]
        assert "RunDetail" in json.dumps(run)


async def test_exactly_the_webhook_routes_skip_the_token():
    from web.auth import route_scope

    async with hooks() as h:
        app = h.client.app
        scopes = {rule.rule: route_scope(rule.rule, rule.rule) for rule in app.url_map.iter_rules()}
        signed = {rule for rule, scope in scopes.items() if scope == "signed"}
        assert signed == {"/api/webhooks/github", "/api/workflows/<workflow_id>/dispatch"}
        webhook_rules = {
            rule.rule for rule in app.url_map.iter_rules() if rule.endpoint.startswith("webhooks.")
        }
        assert webhook_rules == signed
        assert scopes["/api/workflows/<workflow_id>/schedules"] == "api"


def test_a_schema_2_store_moves_run_events_out_of_run_records(tmp_path):
    import sqlite3

    from actors.store import Store, read_run

    Store(tmp_path).close()
    db = sqlite3.connect(tmp_path / "state.db")
    event = {"github": {"event_name": "push", "event": {"ref": "refs/heads/main"}}}
    record = {"workflow_id": "w", "number": 1, "status": "success", "event": event}
    with db:
        db.execute("INSERT INTO definitions VALUES ('h', '{}')")
        db.execute("INSERT INTO runs VALUES ('w', 1, 1, 'success', 'h', ?)", (json.dumps(record),))
        db.execute("DROP TABLE run_events")
        db.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    db.close()
    store = Store(tmp_path)
    stored = store.read(lambda db: read_run(db, "w", 1))
    assert stored is not None and stored.row["event"] == event
    (kept,) = store.read(lambda db: db.execute("SELECT record FROM runs").fetchone())
    assert "event" not in json.loads(kept)
    store.close()


async def test_a_delivery_handled_by_another_node_is_not_counted_as_skipped():
    from test_schedules import ElsewhereRuntime

    from actors.automation import DeliveryIntake
    from actors.metrics import Metrics
    from actors.trigger_store import DELIVERY_DONE, MemoryTriggerStore

    runtime = ElsewhereRuntime([parse_definition_text("on-main", DEFINITIONS["on-main"])])
    store, metrics = MemoryTriggerStore(), Metrics()
    delivery = read_delivery("push", payload("push"))
    assert delivery is not None
    assert await DeliveryIntake(runtime, store, metrics).deliver("d-1", delivery) == []
    assert runtime.asked == 1
    assert await store.delivery("d-1") == {DELIVERY_DONE}
    assert "wfg_trigger_skipped_total{" not in metrics.exposition().decode()
