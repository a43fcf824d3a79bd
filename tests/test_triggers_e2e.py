"""Triggers from outside: real server processes, a real worker, signed deliveries built from
GitHub's payloads, and a local receiver for notifications."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import ServerProcess
from test_notify import Receiver, free_port, receiving
from test_webhooks import payload
from worker_helpers import job_logs, log_text, start_worker, wait_for, write_workflow

from actors.webhooks import sign
from wfg import Client

GITHUB_SECRET = "gh-secret-for-tests"
DISPATCH_SECRET = "dispatch-secret-for-tests"

BUILD = """\
name: Build
on:
  push:
    branches: [main, 'release/**']
  pull_request:
    types: [opened, synchronize]
notify:
  - url: {url}
    on: [success, failure]
jobs:
  show:
    run: |
      echo "event=$GITHUB_EVENT_NAME ref=$GITHUB_REF sha=$GITHUB_SHA repo=$GITHUB_REPOSITORY"
      python3 - <<'EOF'
      import json, os
      event = json.load(open(os.environ["GITHUB_EVENT_PATH"]))
      print("number", event.get("number"), "pusher", event.get("pusher", {{}}).get("name"))
      EOF
"""
RELEASE = "name: Release\non: {push: {tags: ['v*']}}\njobs: {publish: {run: echo $GITHUB_REF}}\n"


@pytest.fixture
def workers():
    started = []

    def start(url: str, *args: str):
        worker = start_worker(url, *args)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.shutdown()


def deliver(
    url: str, event: str, body: dict[str, Any], delivery: str, secret: str = GITHUB_SECRET
) -> httpx.Response:
    raw = json.dumps(body).encode()
    return httpx.post(
        f"{url}/api/webhooks/github",
        content=raw,
        headers={
            "Content-Type": "application/json",
            "User-Agent": "GitHub-Hookshot/044aadd",
            "X-GitHub-Event": event,
            "X-GitHub-Delivery": delivery,
            "X-GitHub-Hook-ID": "292430182",
            "X-Hub-Signature-256": sign(secret, raw),
        },
    )


def started(response: httpx.Response) -> list[tuple[str, int]]:
    assert response.status_code == 202, response.text
    return [(run["workflow_id"], run["number"]) for run in response.json()]


def run_record(url: str, workflow_id: str, number: int) -> dict[str, Any]:
    response = httpx.get(f"{url}/api/workflows/{workflow_id}/runs/{number}")
    assert response.status_code == 200, response.text
    return response.json()


def wait_run(url: str, workflow_id: str, number: int, status: str = "success") -> dict:
    return wait_for(
        lambda: (r := run_record(url, workflow_id, number))["status"] == status and r,
        30,
        f"run {number} of {workflow_id} to end {status}",
    )


def serve(server_factory, workflows_dir: Path, data_dir: Path) -> ServerProcess:
    env = {
        "GITHUB_WEBHOOK_SECRET": GITHUB_SECRET,
        "WEBHOOK_SECRET": DISPATCH_SECRET,
        "DATA_DIR": str(data_dir),
    }
    return server_factory(workflows_dir, env=env)


def test_signed_deliveries_start_runs_that_see_their_event(
    workflows_dir: Path, tmp_path: Path, server_factory, workers
) -> None:
    with receiving(Receiver(failures=2)) as receiver:
        write_workflow(workflows_dir, "build", BUILD.format(url=receiver.url))
        write_workflow(workflows_dir, "release", RELEASE)
        server = serve(server_factory, workflows_dir, tmp_path / "data")
        assert "webhook route on: POST /api/webhooks/github" in server.output()
        url = server.url
        workers(url, "--id", "hooks-worker")

        push = payload("push")
        assert started(deliver(url, "push", push, "d-push")) == [("build", 1)]
        record = wait_run(url, "build", 1)
        assert record["trigger"] == "push"
        text = log_text(job_logs(url, "build", "show"))
        assert (
            "event=push ref=refs/heads/main sha=0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c "
            "repo=baxterthehacker/public-repo"
        ) in text
        assert "number None pusher baxterthehacker" in text

        # The receiver answers 503 twice, then 200: delivered on the third attempt.
        record = wait_for(
            lambda: (
                (r := run_record(url, "build", 1))["notifications"][0]["state"] == "delivered" and r
            ),
            30,
            "the notification to be delivered",
        )
        assert record["notifications"][0]["attempts"] == 3
        assert record["notifications"][0]["last_status"] == 200
        with Client(url) as client:
            [note] = client.run_notifications("build", 1)
            assert (note.state, note.attempts, note.url) == ("delivered", 3, receiver.url)
            assert [s.cron for s in client.schedules("build")] == []
        headers, body = receiver.requests[-1]
        assert json.loads(body)["status"] == "success"
        assert "X-Hub-Signature-256" in headers
        assert headers["X-Hub-Signature-256"] == sign(DISPATCH_SECRET, body)

        assert started(deliver(url, "push", payload("push", ref="refs/heads/dev"), "d-dev")) == []
        assert started(deliver(url, "push", payload("push_tag"), "d-tag")) == [("release", 1)]
        wait_run(url, "release", 1)
        assert "refs/tags/v1.2.0" in log_text(job_logs(url, "release", "publish"))

        pull = payload("pull_request_synchronize")
        assert started(deliver(url, "pull_request", pull, "d-pr")) == [("build", 2)]
        wait_run(url, "build", 2)
        text = log_text(job_logs(url, "build", "show"))
        assert "event=pull_request ref=refs/pull/7/merge" in text
        assert "number 7 pusher None" in text

        response = deliver(url, "push", push, "d-forged", secret="not-the-secret")
        assert response.status_code == 401
        assert started(deliver(url, "push", push, "d-push")) == []  # a replay
        runs = httpx.get(f"{url}/api/workflows/build/runs").json()
        assert [r["number"] for r in runs] == [2, 1]

        server.stop()
        server = serve(server_factory, workflows_dir, tmp_path / "data")
        assert started(deliver(server.url, "push", push, "d-push")) == []  # still a replay
        assert started(deliver(server.url, "push", push, "d-push-2")) == [("build", 3)]


def test_a_signed_dispatch_from_another_system(
    workflows_dir: Path, tmp_path: Path, server_factory
) -> None:
    write_workflow(
        workflows_dir,
        "deploy",
        "name: Deploy\non:\n  workflow_dispatch:\n    inputs: {env: {default: staging}}\n"
        "jobs: {go: {run: 'deploy ${{ inputs.env }} ${{ github.event.reason }}'}}\n",
    )
    server = serve(server_factory, workflows_dir, tmp_path / "data")
    raw = json.dumps({"inputs": {"env": "prod"}, "reason": "hotfix"}).encode()
    response = httpx.post(
        f"{server.url}/api/workflows/deploy/dispatch",
        content=raw,
        headers={
            "Content-Type": "application/json",
            "X-Hub-Signature-256": sign(DISPATCH_SECRET, raw),
        },
    )
    assert response.status_code == 202, response.text
    assert response.json() == {"workflow_id": "deploy", "number": 1, "status": "running"}
    record = run_record(server.url, "deploy", 1)
    assert (record["trigger"], record["inputs"]) == ("webhook", {"env": "prod"})
    assert record["jobs"][0]["command"].endswith("deploy prod hotfix")


def test_a_notification_pending_when_the_server_is_killed_is_sent_after_it_restarts(
    workflows_dir: Path, tmp_path: Path, server_factory, workers
) -> None:
    port = free_port()  # nothing listens there yet: every attempt is refused
    write_workflow(workflows_dir, "build", BUILD.format(url=f"http://127.0.0.1:{port}/hook"))
    server = serve(server_factory, workflows_dir, tmp_path / "data")
    worker = workers(server.url, "--id", "w")
    assert httpx.post(f"{server.url}/api/workflows/build/run").status_code == 202
    wait_run(server.url, "build", 1)
    wait_for(
        lambda: run_record(server.url, "build", 1)["notifications"][0]["attempts"] >= 1,
        30,
        "a refused attempt",
    )
    worker.shutdown()
    server.process.send_signal(signal.SIGKILL)
    server.process.wait()
    with receiving(Receiver(port=port)) as receiver:
        server = serve(server_factory, workflows_dir, tmp_path / "data")
        record = wait_for(
            lambda: (
                (r := run_record(server.url, "build", 1))["notifications"][0]["state"]
                == "delivered"
                and r
            ),
            30,
            "the notification to be delivered after the restart",
        )
        [status] = record["notifications"]
        assert status["attempts"] >= 2 and status["last_status"] == 200
        assert len(receiver.requests) == 1
        assert json.loads(receiver.requests[0][1])["number"] == 1
