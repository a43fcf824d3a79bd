"""HTTP-level tests of the contract's lifecycle rules: runs, cancel, leases, retries, SSE.

Same harness as `test_http_api.py` (in-process Quart-Trio test client over a
real `Runtime`); time-dependent tests use `autojump_clock` and never sleep for
real.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing
from homes import HOMES, Home, make_home
from test_http_api import (
    LOG_CHUNK_KEYS,
    Api,
    assert_error,
    assert_object,
    chunk,
    job,
    serve,
)


@pytest.fixture(params=HOMES)
def home(request):
    yield from make_home(request, request.param)


@pytest.fixture
async def api(home: Home) -> AsyncIterator[Api]:
    async with serve(home=home) as a:
        yield a


# --- helpers ------------------------------------------------------------------


class SSEReader:
    """Reads an event stream from a streaming test connection, block by block."""

    def __init__(self, conn) -> None:
        self.conn = conn
        self.buf = b""
        self.raw = b""
        self.ended = False

    async def block(self) -> str | None:
        """The next block (lines up to a blank line), or None when the stream ended."""
        while b"\n\n" not in self.buf:
            if self.ended:
                return None
            try:
                data = await self.conn.receive()
            except trio.EndOfChannel:
                self.ended = True
                continue
            self.buf += data
            self.raw += data
        block, self.buf = self.buf.split(b"\n\n", 1)
        return block.decode()

    async def event(self) -> dict:
        """The next event, skipping comment blocks (the stream must not have ended)."""
        event = await self.next_event()
        assert event is not None, "the stream ended"
        return event

    async def next_event(self) -> dict | None:
        """The next event, skipping comment blocks; None when the stream ended."""
        while True:
            block = await self.block()
            if block is None:
                return None
            if all(line.startswith(":") for line in block.split("\n")):
                continue
            return parse_event(block)

    async def rest(self) -> list[dict]:
        """Every remaining event until the stream ends."""
        events = []
        while (e := await self.next_event()) is not None:
            events.append(e)
        return events


def parse_event(block: str) -> dict:
    lines = block.split("\n")
    fields = {}
    for line in lines:
        assert not line.startswith(":"), block
        name, sep, value = line.partition(": ")
        assert sep, f"not a field line: {line!r}"
        assert name not in fields, f"repeated field {name!r} (data must be one line): {block!r}"
        fields[name] = value
    assert list(fields) == ["event", "id", "data"], block
    return {"event": fields["event"], "id": fields["id"], "data": json.loads(fields["data"])}


def stream_path(wf: str, job_id: str) -> str:
    return f"/api/workflows/{wf}/jobs/{job_id}/logs/stream"


# --- run resets ---------------------------------------------------------------


async def test_rerun_after_finish_resets_attempts_outputs_and_logs(api: Api):
    wf = await api.create_and_run([job("a", max_retries=2), job("b", depends_on=["a"])])
    first = await api.claim_job()
    await assert_object(await api.push(first["lease"]["lease_id"], [chunk(0, "try 0\n")]))
    await assert_object(await api.fail(first["lease"]["lease_id"], "flaky", retryable=True))
    second = await api.claim_job()
    assert second["job"]["attempt"] == 1
    await assert_object(await api.push(second["lease"]["lease_id"], [chunk(0, "try 1\n")]))
    await api.finish(second, {"x": "1"})
    b = await api.claim_job()
    assert b["job"]["upstream_outputs"] == {"a": {"x": "1"}}
    await assert_object(await api.push(b["lease"]["lease_id"], [chunk(0, "b\n")]))
    await assert_object(await api.fail(b["lease"]["lease_id"], "b broke"))
    jobs = await api.jobs(wf)
    assert (jobs["a"]["status"], jobs["a"]["attempt"]) == ("success", 1)
    assert (jobs["b"]["status"], jobs["b"]["output"]) == ("failure", "b broke")
    assert len(await api.logs(wf, "a")) == 2

    await api.run(wf)
    for j in (await api.status(wf))["jobs"]:
        assert j["status"] == "queued"
        assert j["attempt"] == 0
        assert j["output"] is None
        assert j["started_at"] is None
        assert j["duration_secs"] is None
    assert await api.logs(wf, "a") == []
    assert await api.logs(wf, "b") == []
    again = await api.claim_job()
    assert (again["job"]["job_id"], again["job"]["attempt"]) == ("a", 0)
    assert again["job"]["upstream_outputs"] == {}
    assert await api.claim() is None  # b waits again
    await api.finish(again)  # no outputs this time
    b2 = await api.claim_job()
    assert b2["job"]["upstream_outputs"] == {"a": {}}  # the old outputs were cleared


async def test_rerun_after_cancel_enqueues_each_root_once(api: Api):
    wf = await api.create_and_run([job("a"), job("b"), job("c", depends_on=["a"])])
    await api.cancel(wf)
    await api.run(wf)
    got = {(await api.claim_job())["job"]["job_id"], (await api.claim_job())["job"]["job_id"]}
    assert got == {"a", "b"}
    assert await api.claim() is None


# --- cancel and leases --------------------------------------------------------


async def test_cancel_revokes_active_leases(api: Api):
    wf = await api.create_and_run([job("a"), job("b", depends_on=["a"])])
    claim = await api.claim_job()
    lease_id = claim["lease"]["lease_id"]
    await api.cancel(wf)
    assert await api.statuses(wf) == {"a": "cancelled", "b": "cancelled"}
    assert await api.is_cancelled(wf, "a") is True
    await assert_error(await api.heartbeat(lease_id), 409)
    await assert_error(await api.complete(lease_id, {"k": "v"}), 409)
    await assert_error(await api.fail(lease_id, "x", retryable=True), 409)
    await assert_error(await api.push(lease_id, [chunk(0, "late\n")]), 409)
    # A cancelled job never cascades.
    assert await api.statuses(wf) == {"a": "cancelled", "b": "cancelled"}
    assert await api.claim() is None
    assert await api.logs(wf, "a") == []


async def test_lease_from_earlier_run_is_409_and_changes_nothing(api: Api):
    wf = await api.create_and_run([job("a", max_retries=3), job("b", depends_on=["a"])])
    old = await api.claim_job()
    old_lease = old["lease"]["lease_id"]
    await api.cancel(wf)
    await api.run(wf)
    # Before the new run's job is claimed...
    await assert_error(await api.heartbeat(old_lease), 409)
    await assert_error(await api.complete(old_lease, {"k": "old"}), 409)
    await assert_error(await api.fail(old_lease, "old", retryable=True), 409)
    await assert_error(await api.push(old_lease, [chunk(0, "old\n")]), 409)
    jobs = await api.jobs(wf)
    assert (jobs["a"]["status"], jobs["a"]["attempt"]) == ("queued", 0)
    assert await api.logs(wf, "a") == []
    # ...and after.
    new = await api.claim_job()
    assert (new["job"]["job_id"], new["job"]["attempt"]) == ("a", 0)
    assert new["lease"]["lease_id"] != old_lease
    await assert_error(await api.complete(old_lease, {"k": "old"}), 409)
    await assert_error(await api.fail(old_lease, "old"), 409)
    await assert_error(await api.push(old_lease, [chunk(0, "old\n")]), 409)
    assert await api.statuses(wf) == {"a": "running", "b": "queued"}
    assert await api.logs(wf, "a") == []
    await assert_object(await api.push(new["lease"]["lease_id"], [chunk(0, "new\n")]))
    await api.finish(new, {"k": "new"})
    b = await api.claim_job()
    assert b["job"]["upstream_outputs"] == {"a": {"k": "new"}}
    assert [c["data"] for c in await api.logs(wf, "a")] == ["new\n"]


async def test_worker_is_idle_after_its_lease_is_revoked(api: Api):
    wf = await api.create_and_run([job("a")])
    await api.claim_job("w1")
    assert (await api.workers())["w1"]["status"] == "busy"
    await api.cancel(wf)
    w = (await api.workers())["w1"]
    assert w["status"] == "idle"
    assert w["current_job"] is None


# --- lease expiry -------------------------------------------------------------


async def test_lease_expiry_is_a_retryable_failure(api: Api, autojump_clock):
    wf = await api.create_and_run([job("a", max_retries=1), job("b", depends_on=["a"])])
    first = await api.claim_job("w1", lease_ttl_secs=10)
    await trio.sleep(9)
    assert (await api.statuses(wf))["a"] == "running"
    await trio.sleep(2)
    jobs = await api.jobs(wf)
    assert (jobs["a"]["status"], jobs["a"]["attempt"]) == ("queued", 1)
    await assert_error(await api.heartbeat(first["lease"]["lease_id"]), 409)
    await assert_error(await api.complete(first["lease"]["lease_id"]), 409)
    second = await api.claim_job("w1", lease_ttl_secs=10)
    assert second["job"]["attempt"] == 1
    await trio.sleep(11)  # budget exhausted: the expiry is final
    jobs = await api.jobs(wf)
    assert jobs["a"]["status"] == "failure"
    assert jobs["a"]["output"] == "lease expired"
    assert jobs["b"]["status"] == "skipped"
    assert await api.claim() is None


async def test_heartbeat_renews_the_lease_by_its_own_ttl(api: Api, autojump_clock):
    wf = await api.create_and_run([job("a")])
    claim = await api.claim_job("w1", lease_ttl_secs=10)
    lease_id = claim["lease"]["lease_id"]
    for _ in range(5):  # 5 x 8 s = 40 s, well past the first 10 s
        await trio.sleep(8)
        await assert_object(await api.heartbeat(lease_id))
    assert (await api.statuses(wf))["a"] == "running"
    await trio.sleep(9)
    await assert_object(await api.heartbeat(lease_id))
    await trio.sleep(10.5)
    await assert_error(await api.heartbeat(lease_id), 409)
    a = (await api.jobs(wf))["a"]
    assert (a["status"], a["output"]) == ("failure", "lease expired")


async def test_duration_is_whole_seconds(api: Api, autojump_clock):
    wf = await api.create_and_run([job("a")])
    claim = await api.claim_job()
    await trio.sleep(3)
    await api.finish(claim)
    assert (await api.jobs(wf))["a"]["duration_secs"] == 3


# --- retry backoff ------------------------------------------------------------


async def test_fixed_backoff_delays_the_retry(api: Api, autojump_clock):
    wf = await api.create_and_run([job("a", max_retries=2, backoff={"Fixed": {"delay_secs": 5}})])
    first = await api.claim_job()
    assert first["job"]["retry_policy"] == {
        "max_retries": 2,
        "backoff": {"Fixed": {"delay_secs": 5}},
    }
    await assert_object(await api.fail(first["lease"]["lease_id"], "x", retryable=True))
    jobs = await api.jobs(wf)
    assert (jobs["a"]["status"], jobs["a"]["attempt"]) == ("queued", 1)
    assert await api.claim() is None
    await trio.sleep(4.5)
    assert await api.claim() is None
    await trio.sleep(1)
    retry = await api.claim_job()
    q = retry["job"]
    assert q["attempt"] == 1
    assert q["delayed_until_ms"] == q["enqueued_at_ms"] + 5000


async def test_exponential_backoff_delays(api: Api, autojump_clock):
    backoff = {"Exponential": {"base_secs": 1, "max_secs": 3}}
    await api.create_and_run([job("a", max_retries=3, backoff=backoff)])
    claim = await api.claim_job()
    # min(base * 2**a, max) for the retry carrying attempt a.
    for attempt, delay in ((1, 2), (2, 3), (3, 3)):
        await assert_object(await api.fail(claim["lease"]["lease_id"], "x", retryable=True))
        await trio.sleep(delay - 0.5)
        assert await api.claim() is None, attempt
        await trio.sleep(1)
        claim = await api.claim_job()
        q = claim["job"]
        assert q["attempt"] == attempt
        assert q["delayed_until_ms"] - q["enqueued_at_ms"] == delay * 1000


async def test_cancel_during_backoff(api: Api, autojump_clock):
    wf = await api.create_and_run([job("a", max_retries=2, backoff={"Fixed": {"delay_secs": 5}})])
    claim = await api.claim_job()
    await assert_object(await api.fail(claim["lease"]["lease_id"], "x", retryable=True))
    await api.cancel(wf)
    assert await api.statuses(wf) == {"a": "cancelled"}
    await trio.sleep(10)
    assert await api.claim() is None


async def test_rerun_after_cancel_during_backoff_starts_fresh(api: Api, autojump_clock):
    wf = await api.create_and_run([job("a", max_retries=2, backoff={"Fixed": {"delay_secs": 5}})])
    claim = await api.claim_job()
    await assert_object(await api.fail(claim["lease"]["lease_id"], "x", retryable=True))
    await api.cancel(wf)
    await api.run(wf)
    fresh = await api.claim_job()
    assert (fresh["job"]["attempt"], fresh["job"]["delayed_until_ms"]) == (0, 0)
    await trio.sleep(10)
    assert await api.claim() is None  # the old delayed retry is gone
    assert await api.statuses(wf) == {"a": "running"}


# --- SSE ----------------------------------------------------------------------


async def test_sse_replays_stored_chunks_and_ends_for_a_finished_job(api: Api):
    wf = await api.create_and_run([job("a")])
    claim = await api.claim_job()
    lease_id = claim["lease"]["lease_id"]
    await assert_object(await api.push(lease_id, [chunk(0, "one\n"), chunk(1, "two\n")]))
    await assert_object(await api.push(lease_id, [chunk(2, 'q"uote\\\n')]))
    await api.finish(claim)
    stored = await api.logs(wf, "a")

    with trio.fail_after(10):
        resp = await api.get(stream_path(wf, "a"))
    assert resp.status_code == 200
    assert resp.mimetype == "text/event-stream"
    text = await resp.get_data(as_text=True)
    blocks = [b for b in text.split("\n\n") if b and not b.startswith(":")]
    events = [parse_event(b) for b in blocks]
    assert [e["event"] for e in events] == ["log", "log", "log"]
    assert [e["id"] for e in events] == ["0", "1", "2"]
    assert [e["data"] for e in events] == stored
    assert set(events[0]["data"]) == LOG_CHUNK_KEYS
    # Exact framing: three lines, then a blank line; nothing after the last event.
    for b in blocks:
        assert re.fullmatch(r"event: log\nid: \d+\ndata: \{[^\n]*\}", b), b
    assert text.endswith("\n\n")


async def test_sse_replay_then_live_then_end(api: Api, autojump_clock):
    wf = await api.create_and_run([job("a")])
    claim = await api.claim_job()
    lease_id = claim["lease"]["lease_id"]
    await assert_object(await api.push(lease_id, [chunk(0, "stored\n")]))
    with trio.fail_after(120):
        async with api.client.request(stream_path(wf, "a")) as conn:
            await conn.send_complete()
            reader = SSEReader(conn)
            replayed = await reader.event()
            assert conn.status_code == 200
            assert conn.headers["content-type"].startswith("text/event-stream")
            assert replayed["event"] == "log" and replayed["id"] == "0"
            assert replayed["data"]["data"] == "stored\n"
            assert replayed["data"]["workflow_id"] == wf and replayed["data"]["job_id"] == "a"

            await assert_object(await api.push(lease_id, [chunk(1, "live\n")]))
            live = await reader.event()
            assert live["id"] == "1"
            assert live["data"]["data"] == "live\n"
            assert live["data"]["job_id"] == "a"

            await assert_object(await api.push(lease_id, [chunk(2, "last\n")]))
            await api.finish(claim)
            rest = await reader.rest()
            assert [e["data"]["data"] for e in rest] == ["last\n"]
            assert reader.ended
    assert [c["data"] for c in await api.logs(wf, "a")] == ["stored\n", "live\n", "last\n"]


async def test_sse_continues_across_a_retry_and_ends_when_terminal(api: Api, autojump_clock):
    wf = await api.create_and_run([job("a", max_retries=1)])
    first = await api.claim_job()
    with trio.fail_after(120):
        async with api.client.request(stream_path(wf, "a")) as conn:
            await conn.send_complete()
            reader = SSEReader(conn)
            await assert_object(await api.push(first["lease"]["lease_id"], [chunk(0, "try0\n")]))
            assert (await reader.event())["data"]["data"] == "try0\n"
            await assert_object(await api.fail(first["lease"]["lease_id"], "x", retryable=True))
            second = await api.claim_job()
            await assert_object(await api.push(second["lease"]["lease_id"], [chunk(0, "try1\n")]))
            assert (await reader.event())["data"]["data"] == "try1\n"
            await assert_object(await api.fail(second["lease"]["lease_id"], "final"))
            assert await reader.rest() == []
            assert reader.ended
    assert (await api.statuses(wf)) == {"a": "failure"}


async def test_sse_ends_when_a_queued_job_is_cancelled(api: Api, autojump_clock):
    wf = await api.create_and_run([job("a"), job("b", depends_on=["a"])])
    with trio.fail_after(120):
        async with api.client.request(stream_path(wf, "b")) as conn:
            await conn.send_complete()
            reader = SSEReader(conn)
            await api.cancel(wf)
            assert await reader.rest() == []
            assert reader.ended
            assert conn.status_code == 200


async def test_sse_keepalive_comments_while_idle(home: Home, autojump_clock):
    async with serve(home=home, sse_keepalive_secs=2) as api:
        wf = await api.create_and_run([job("a")])
        claim = await api.claim_job(lease_ttl_secs=600)
        with trio.fail_after(300):
            async with api.client.request(stream_path(wf, "a")) as conn:
                await conn.send_complete()
                reader = SSEReader(conn)
                start = trio.current_time()
                for _ in range(3):
                    assert await reader.block() == ": keep-alive"
                elapsed = trio.current_time() - start
                assert 5 <= elapsed <= 7  # one comment every 2 s while idle
                await assert_object(await api.push(claim["lease"]["lease_id"], [chunk(0, "x\n")]))
                event = await reader.event()
                assert event["data"]["data"] == "x\n"
                await api.finish(claim)
                assert await reader.rest() == []


async def test_sse_default_keepalive_at_most_15s(api: Api, autojump_clock):
    wf = await api.create_and_run([job("a")])
    claim = await api.claim_job(lease_ttl_secs=600)
    with trio.fail_after(300):
        async with api.client.request(stream_path(wf, "a")) as conn:
            await conn.send_complete()
            reader = SSEReader(conn)
            start = trio.current_time()
            block = await reader.block()
            assert block is not None and block.startswith(":")
            assert trio.current_time() - start <= 15
            block = await reader.block()
            assert block is not None and block.startswith(":")
            assert trio.current_time() - start <= 30
            await api.finish(claim)
            assert await reader.rest() == []


async def test_sse_after_rerun_starts_empty(api: Api, autojump_clock):
    wf = await api.create_and_run([job("a")])
    claim = await api.claim_job()
    await assert_object(await api.push(claim["lease"]["lease_id"], [chunk(0, "run1\n")]))
    await api.finish(claim)
    await api.run(wf)
    with trio.fail_after(120):
        async with api.client.request(stream_path(wf, "a")) as conn:
            await conn.send_complete()
            reader = SSEReader(conn)
            claim2 = await api.claim_job()
            await assert_object(await api.push(claim2["lease"]["lease_id"], [chunk(0, "run2\n")]))
            await api.finish(claim2)
            events = await reader.rest()
    assert [e["data"]["data"] for e in events] == ["run2\n"]


# --- API_ONLY -----------------------------------------------------------------


async def test_api_only_complete_does_not_enqueue_dependents():
    async with serve(api_only=True) as api:
        wf = await api.create_and_run([job("a"), job("b", depends_on=["a"])])
        claim = await api.claim_job()
        assert claim["job"]["job_id"] == "a"
        await api.finish(claim, {"k": "v"})
        assert await api.statuses(wf) == {"a": "success", "b": "queued"}
        assert await api.claim() is None


@pytest.mark.embedded_only
async def test_api_only_leases_do_not_expire(autojump_clock):
    async with serve(api_only=True) as api:
        wf = await api.create_and_run([job("a", max_retries=3)])
        claim = await api.claim_job(lease_ttl_secs=1)
        lease_id = claim["lease"]["lease_id"]
        await trio.sleep(1000)
        jobs = await api.jobs(wf)
        assert (jobs["a"]["status"], jobs["a"]["attempt"]) == ("running", 0)
        await assert_object(await api.heartbeat(lease_id))
        await trio.sleep(1000)
        await assert_object(await api.complete(lease_id))
        assert await api.statuses(wf) == {"a": "success"}


async def test_api_only_still_serves_the_protocol():
    async with serve(api_only=True) as api:
        wf = await api.create_and_run([job("a", required_labels=["x"])])
        assert await api.claim("w", []) is None
        claim = await api.claim_job("w", ["x"])
        await assert_object(await api.push(claim["lease"]["lease_id"], [chunk(0, "hi\n")]))
        await assert_object(await api.fail(claim["lease"]["lease_id"], "bad"))
        assert (await api.jobs(wf))["a"]["output"] == "bad"
        assert [c["data"] for c in await api.logs(wf, "a")] == ["hi\n"]


@pytest.mark.parametrize("api_only", [False, True])
async def test_cancel_revokes_leases_in_both_modes(api_only: bool):
    async with serve(api_only=api_only) as api:
        wf = await api.create_and_run([job("a")])
        claim = await api.claim_job()
        await api.cancel(wf)
        await assert_error(await api.heartbeat(claim["lease"]["lease_id"]), 409)
        assert await api.is_cancelled(wf, "a") is True
