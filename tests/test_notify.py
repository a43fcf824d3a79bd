"""Notifications: the payload and the retry rule as tables, the sender under MockClock, and a
runtime telling a local HTTP receiver that fails its first attempts."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import trio
import trio.testing

from actors.automation import Notifier
from actors.clock import now_ms, set_now_ms
from actors.definitions import parse_definition_text
from actors.metrics import Metrics
from actors.models import JobStatus, RunStatus
from actors.notify import (
    GIVE_UP_SECS,
    Notification,
    after_attempt,
    backoff_secs,
    headers,
    notifications_for,
    payload,
)
from actors.rules import JobRun, Run
from actors.runtime import Runtime, open_runtime
from actors.spec import NotifySpec
from actors.trigger_store import MemoryTriggerStore
from actors.webhooks import sign
from web.app import create_app

T0 = 1_704_110_400_000  # 2024-01-01T12:00:00Z


def ended(status: RunStatus) -> Run:
    jobs = {
        "lint": JobRun(status=JobStatus.success),
        "test": JobRun(status=JobStatus.failure),
        "deploy": JobRun(status=JobStatus.skipped),
    }
    return Run(
        workflow_id="ci",
        number=7,
        trigger="push",
        status=status,
        started_at_ms=T0,
        finished_at_ms=T0 + 5000,
        jobs=jobs,
    )


def note(**changes) -> Notification:
    fields = {
        "id": "n1",
        "workflow_id": "ci",
        "number": 7,
        "url": "http://127.0.0.1:9/hook",
        "body": "{}",
        "created_ms": T0,
        "next_ms": T0,
        **changes,
    }
    return Notification(**fields)


# --- the rule ---------------------------------------------------------------------------------


def test_the_payload_says_how_the_run_ended():
    assert payload(ended(RunStatus.failure)) == {
        "workflow_id": "ci",
        "number": 7,
        "status": "failure",
        "trigger": "push",
        "started_at_ms": T0,
        "finished_at_ms": T0 + 5000,
        "failed_jobs": ["test"],
    }


@pytest.mark.parametrize(
    ("on", "status", "sent"),
    [
        (("failure",), RunStatus.failure, True),
        (("failure",), RunStatus.success, False),
        (("failure",), RunStatus.cancelled, False),
        (("success", "cancelled"), RunStatus.cancelled, True),
        (("success", "cancelled"), RunStatus.failure, False),
    ],
)
def test_notify_on(on: tuple[str, ...], status: RunStatus, sent: bool):
    ids = iter(["a", "b"])
    found = notifications_for(
        (NotifySpec("http://x/1", on), NotifySpec("http://x/2", ("failure",))),
        ended(status),
        T0,
        lambda: next(ids),
    )
    urls = [n.url for n in found]
    assert ("http://x/1" in urls) is sent
    assert all(n.state == "pending" and n.next_ms == T0 and n.attempts == 0 for n in found)
    for n in found:
        assert json.loads(n.body) == payload(ended(status))


@pytest.mark.parametrize(
    ("attempts", "secs"),
    [(1, 1), (2, 2), (3, 4), (8, 128), (12, 2048), (13, 3600), (40, 3600), (10_000, 3600)],
)
def test_backoff_doubles_up_to_an_hour(attempts: int, secs: int):
    assert backoff_secs(attempts) == secs


def test_an_attempt_moves_the_notification_on():
    first = after_attempt(note(), T0, 503)
    assert (first.state, first.attempts, first.last_status, first.next_ms) == (
        "pending",
        1,
        503,
        T0 + 1000,
    )
    assert first.last_error == "the receiver answered HTTP 503"
    second = after_attempt(first, T0 + 1000, None, "ConnectError: connection refused")
    assert (second.attempts, second.last_status, second.next_ms) == (2, None, T0 + 3000)
    assert second.last_error == "ConnectError: connection refused"
    done = after_attempt(second, T0 + 3000, 204)
    assert (done.state, done.attempts, done.last_status, done.last_error) == (
        "delivered",
        3,
        204,
        None,
    )
    assert done.last_attempt_ms == T0 + 3000


def test_it_gives_up_after_24_hours():
    n, at = note(), T0
    while n.state == "pending":
        at = n.next_ms
        n = after_attempt(n, at, 500)
    assert n.state == "failed"
    assert at <= T0 + GIVE_UP_SECS * 1000 < at + backoff_secs(n.attempts) * 1000
    assert 30 <= n.attempts <= 40


def test_headers_sign_the_body_when_a_secret_is_set():
    n = note(body='{"a":1}')
    assert "X-Hub-Signature-256" not in headers(n, None)
    signed = headers(n, "s3cret")
    assert signed["X-Hub-Signature-256"] == sign("s3cret", b'{"a":1}')
    assert (signed["Content-Type"], signed["X-Wfg-Delivery"]) == ("application/json", "n1")


# --- the sender --------------------------------------------------------------------------------


@pytest.fixture
def autojump_clock():
    return trio.testing.MockClock(autojump_threshold=0)


@pytest.fixture
def io_clock():
    """Jumps after 0.25 s of real idleness: a real socket's answer is not idle."""
    return trio.testing.MockClock(autojump_threshold=0.25)


async def test_the_notifier_retries_until_the_receiver_answers_2xx(autojump_clock):
    set_now_ms(T0)
    seen: list[tuple[int, httpx.Request]] = []

    def receiver(request: httpx.Request) -> httpx.Response:
        seen.append((now_ms(), request))
        if len(seen) == 1:
            raise httpx.ConnectError("connection refused")
        return httpx.Response(500 if len(seen) < 4 else 200)

    store = MemoryTriggerStore()
    metrics = Metrics()
    notifier = Notifier(store, "s3cret", metrics=metrics, transport=httpx.MockTransport(receiver))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(notifier.run)
        notifier.enqueue(note(body='{"number":7}'))
        await trio.sleep(60)
        nursery.cancel_scope.cancel()
    # 1 s, 2 s and 4 s after each failure (a millisecond late each, never early)
    gaps = [later - earlier for (earlier, _), (later, _) in zip(seen, seen[1:], strict=False)]
    assert seen[0][0] == T0
    assert [round(gap, -2) for gap in gaps] == [1000, 2000, 4000]
    assert all(gap >= expected for gap, expected in zip(gaps, [1000, 2000, 4000], strict=True))
    request = seen[-1][1]
    assert request.content == b'{"number":7}'
    assert request.headers["X-Hub-Signature-256"] == sign("s3cret", b'{"number":7}')
    [stored] = await store.run_notifications("ci", 7)
    assert (stored.state, stored.attempts, stored.last_status) == ("delivered", 4, 200)
    exposition = metrics.exposition().decode()
    assert 'wfg_notification_attempts_total{outcome="retry"} 3.0' in exposition
    assert 'wfg_notification_attempts_total{outcome="delivered"} 1.0' in exposition


async def test_pending_notifications_are_sent_when_the_notifier_starts(autojump_clock):
    set_now_ms(T0)
    store = MemoryTriggerStore()
    await store.put_notification(note(id="old", attempts=3, next_ms=T0 + 5000))
    await store.put_notification(note(id="done", state="delivered", attempts=1))
    sent: list[tuple[int, str]] = []

    def receiver(request: httpx.Request) -> httpx.Response:
        sent.append((now_ms(), request.headers["X-Wfg-Delivery"]))
        return httpx.Response(200)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(Notifier(store, transport=httpx.MockTransport(receiver)).run)
        await trio.sleep(10)
        nursery.cancel_scope.cancel()
    assert [(at // 100 * 100, delivery) for at, delivery in sent] == [(T0 + 5000, "old")]
    assert [(n.id, n.attempts) for n in await store.run_notifications("ci", 7)] == [
        ("old", 4),
        ("done", 1),
    ]


# --- a local receiver ------------------------------------------------------------------------


@dataclass
class Receiver:
    """An HTTP server on loopback that answers `failures` times 503, then 200."""

    failures: int = 0
    hang: bool = False
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"


@contextmanager
def receiving(receiver: Receiver) -> Iterator[Receiver]:
    release = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers["Content-Length"]))
            receiver.requests.append((dict(self.headers), body))
            if receiver.hang:
                release.wait(30)
                return
            failing = len(receiver.requests) <= receiver.failures
            self.send_response(503 if failing else 200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", receiver.port), Handler)
    receiver.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        release.set()
        server.shutdown()
        server.server_close()


def notifying(url: str, on: str = "[failure, success]") -> str:
    return f"""\
name: Notified
notify:
  - url: {url}
    on: {on}
jobs:
  build: {{run: make}}
  test: {{run: make test, needs: build}}
"""


async def finish(runtime: Runtime, *, fail: str | None = None) -> None:
    while (claim := await runtime.claim("w1", [])) is not None:
        if claim.job.job_id == fail:
            await runtime.fail(claim.lease.lease_id, "exit code 2")
        else:
            await runtime.complete(claim.lease.lease_id, {})


async def wait_for(condition, secs: float = 60) -> None:
    # Each poll lets the clock jump after 0.25 s of real idleness: a second apart, a
    # minute of the server's time passes in fifteen real seconds at most.
    with trio.fail_after(secs):
        while not await condition():
            await trio.sleep(1)


async def test_a_run_end_reaches_a_receiver_that_fails_at_first(io_clock):
    with receiving(Receiver(failures=2)) as receiver:
        spec = parse_definition_text("nightly", notifying(receiver.url))
        async with open_runtime(specs=[spec], webhook_secret="hook-secret") as runtime:
            await runtime.run_workflow("nightly")
            await finish(runtime, fail="build")
            run = await runtime.get_run("nightly", 1)
            app = create_app(runtime).test_app()
            async with app as test_app:
                client = test_app.test_client()

                async def delivered() -> bool:
                    resp = await client.get("/api/workflows/nightly/runs/1")
                    notes = (await resp.get_json())["notifications"]
                    return notes[0]["state"] == "delivered"

                await wait_for(delivered)
                resp = await client.get("/api/workflows/nightly/runs/1")
                record = await resp.get_json()
        assert len(receiver.requests) == 3
        [status] = record["notifications"]
        assert status == {
            "url": receiver.url,
            "state": "delivered",
            "attempts": 3,
            "last_status": 200,
            "last_error": None,
            "last_attempt_at_ms": status["last_attempt_at_ms"],
            "next_attempt_at_ms": None,
        }
        assert status["last_attempt_at_ms"] >= run.finished_at_ms + 3000  # after 1 s and 2 s
        headers_seen, body = receiver.requests[-1]
        assert json.loads(body) == {
            "workflow_id": "nightly",
            "number": 1,
            "status": "failure",
            "trigger": "manual",
            "started_at_ms": run.started_at_ms,
            "finished_at_ms": run.finished_at_ms,
            "failed_jobs": ["build"],
        }
        assert headers_seen["X-Hub-Signature-256"] == sign("hook-secret", body)
        assert headers_seen["Content-Type"] == "application/json"
        # every attempt carries the same delivery id, so a receiver can drop a repeat
        assert len({h["X-Wfg-Delivery"] for h, _ in receiver.requests}) == 1


async def test_no_notification_for_an_end_it_does_not_ask_for(io_clock):
    with receiving(Receiver()) as receiver:
        spec = parse_definition_text("nightly", notifying(receiver.url, on="[failure]"))
        async with open_runtime(specs=[spec]) as runtime:
            await runtime.run_workflow("nightly")
            await finish(runtime)
            await trio.sleep(5)
            assert await runtime.run_notifications("nightly", 1) == []
        assert receiver.requests == []


async def test_a_receiver_that_never_answers_times_out(io_clock):
    with receiving(Receiver(hang=True)) as receiver:
        spec = parse_definition_text("nightly", notifying(receiver.url))
        async with open_runtime(specs=[spec]) as runtime:
            await runtime.run_workflow("nightly")
            await finish(runtime)

            async def attempted() -> bool:
                notes = await runtime.run_notifications("nightly", 1)
                return bool(notes) and notes[0].attempts >= 1

            await wait_for(attempted)
            [status] = await runtime.run_notifications("nightly", 1)
            assert status.state == "pending"
            assert status.last_status is None and "Timeout" in (status.last_error or "")
            # the run is not held up by it
            assert (await runtime.get_run("nightly", 1)).status is RunStatus.success


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_a_notification_due_when_the_server_stops_is_sent_after_it_restarts(
    tmp_path: Path, io_clock
):
    with receiving(Receiver(hang=True)) as receiver:
        spec = parse_definition_text("nightly", notifying(receiver.url))
        async with open_runtime(specs=[spec], data_dir=tmp_path) as runtime:
            await runtime.run_workflow("nightly")
            await finish(runtime)
            # The first attempt is under way (the receiver holds it) when the server stops.
            deadline = time.monotonic() + 10
            while not receiver.requests and time.monotonic() < deadline:
                await trio.sleep(0)
            assert len(receiver.requests) == 1
        # Stored with the run's end, not after an attempt: none has ended.
        async with open_runtime(specs=[spec], data_dir=tmp_path) as runtime:
            receiver.hang = False
            notes = await runtime.run_notifications("nightly", 1)
            assert [(n.state, n.attempts) for n in notes] == [("pending", 0)]

            async def delivered() -> bool:
                notes = await runtime.run_notifications("nightly", 1)
                return notes[0].state == "delivered"

            await wait_for(delivered)
            [status] = await runtime.run_notifications("nightly", 1)
            assert (status.attempts, status.last_status) == (1, 200)
        assert len(receiver.requests) == 2
