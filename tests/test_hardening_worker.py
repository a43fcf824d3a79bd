"""Logs end to end under load and restarts, and processes that must not outlive their parent.

Server side: chunks carry their attempt, log streams number events by the chunk's
index in the run and resume after `Last-Event-ID`. Worker side: a chatty job's
log arrives whole and in order, stdout and stderr keep their order in the log
and in the failure reason, jobs die with their worker and local workers with
their server. CLI side: followers reconnect and mark attempts.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing
from test_http_api import Api, assert_error, assert_object, chunk, job

from actors import Limits, open_runtime
from actors.models import LogChunkIn, WorkflowCreate
from web.app import create_app

# --- the server: attempts and resumable streams --------------------------------


@asynccontextmanager
async def serve(**limits: int) -> AsyncIterator[Api]:
    async with open_runtime(limits=Limits(**limits)) as runtime:
        app = create_app(runtime)
        async with app.test_app() as test_app:
            yield Api(test_app.test_client(), runtime)


def stream_path(wf: str, job_id: str) -> str:
    return f"/api/workflows/{wf}/jobs/{job_id}/logs/stream"


def events_of(text: str) -> list[tuple[str, dict]]:
    """(id, LogChunk) of each `log` event of a finished stream."""
    events = []
    for block in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.split("\n") if line and line[0] != ":")
        if fields:
            assert fields["event"] == "log"
            events.append((fields["id"], json.loads(fields["data"])))
    return events


async def finished_stream(api: Api, wf: str, job_id: str, **kwargs) -> list[tuple[str, dict]]:
    with trio.fail_after(10):
        resp = await api.get(stream_path(wf, job_id), **kwargs)
    assert resp.status_code == 200, await resp.get_data(as_text=True)
    return events_of(await resp.get_data(as_text=True))


async def two_attempts(api: Api) -> str:
    """A job that logged two chunks in attempt 0, failed, then one in attempt 1 and ended."""
    wf = await api.create_and_run([job("a", max_retries=1)])
    first = await api.claim_job()
    await assert_object(
        await api.push(first["lease"]["lease_id"], [chunk(0, "a\n"), chunk(1, "b\n")])
    )
    await assert_object(await api.fail(first["lease"]["lease_id"], "flaky", retryable=True))
    second = await api.claim_job()
    assert second["job"]["attempt"] == 1
    await assert_object(await api.push(second["lease"]["lease_id"], [chunk(0, "c\n")]))
    await api.finish(second)
    return wf


async def test_chunks_carry_their_attempt_and_stream_ids_are_unique_in_the_run() -> None:
    async with serve() as api:
        wf = await two_attempts(api)
        stored = await api.logs(wf, "a")
        assert [(c["attempt"], c["sequence"], c["data"]) for c in stored] == [
            (0, 0, "a\n"),
            (0, 1, "b\n"),
            (1, 0, "c\n"),
        ]
        # The worker's sequence restarts with each attempt; the event id does not.
        events = await finished_stream(api, wf, "a")
        assert [(i, c["data"]) for i, c in events] == [("0", "a\n"), ("1", "b\n"), ("2", "c\n")]


async def test_a_stream_resumes_after_last_event_id() -> None:
    async with serve() as api:
        wf = await two_attempts(api)
        header = await finished_stream(api, wf, "a", headers={"Last-Event-ID": "1"})
        assert [(i, c["data"]) for i, c in header] == [("2", "c\n")]
        query = await finished_stream(api, wf, "a", query_string={"last_event_id": "0"})
        assert [i for i, _ in query] == ["1", "2"]
        assert await finished_stream(api, wf, "a", headers={"Last-Event-ID": "2"}) == []
        # The header wins over the query parameter, as an EventSource sends it on reconnect.
        both = await finished_stream(
            api, wf, "a", headers={"Last-Event-ID": "1"}, query_string={"last_event_id": "0"}
        )
        assert [i for i, _ in both] == ["2"]


async def test_a_resumed_stream_gets_live_chunks_once(autojump_clock) -> None:
    async with serve() as api:
        wf = await api.create_and_run([job("a")])
        claim = await api.claim_job()
        lease = claim["lease"]["lease_id"]
        await assert_object(await api.push(lease, [chunk(0, "one\n"), chunk(1, "two\n")]))
        with trio.fail_after(60):
            async with api.client.request(
                stream_path(wf, "a"), headers={"Last-Event-ID": "0"}
            ) as conn:
                await conn.send_complete()
                await assert_object(await api.push(lease, [chunk(2, "three\n")]))
                await api.finish(claim)
                body = b""
                while True:
                    try:
                        body += await conn.receive()
                    except trio.EndOfChannel:
                        break
        events = events_of(body.decode())
        assert [(i, c["data"]) for i, c in events] == [("1", "two\n"), ("2", "three\n")]


@pytest.mark.parametrize("value", ["-1", "x", "1.5", "9" * 19])
async def test_a_bad_last_event_id_is_a_400(value: str, autojump_clock) -> None:
    async with serve() as api:
        wf = await api.create_and_run([job("a")])
        with trio.fail_after(10):  # an accepted stream would never end: the job runs
            by_header = await api.get(stream_path(wf, "a"), headers={"Last-Event-ID": value})
            by_query = await api.get(stream_path(wf, "a"), query_string={"last_event_id": value})
        assert "Last-Event-ID" in await assert_error(by_header, 400)
        assert "last_event_id" in await assert_error(by_query, 400)


async def test_ids_stay_absolute_when_the_head_is_trimmed() -> None:
    async with serve(max_log_bytes_per_job=1024) as api:
        wf = await api.create_and_run([job("a")])
        claim = await api.claim_job()
        lines = [chunk(i, f"{i:03d}" + "x" * 196 + "\n") for i in range(10)]  # 200 bytes each
        await assert_object(await api.push(claim["lease"]["lease_id"], lines))
        await api.finish(claim)

        events = await finished_stream(api, wf, "a")
        # Five chunks fit the limit; the notice stands for the trimmed ones, with the id
        # of the last of them.
        assert [i for i, _ in events] == ["4", "5", "6", "7", "8", "9"]
        assert "1000 earlier bytes of this log dropped" in events[0][1]["data"]
        assert [c["data"][:3] for _, c in events[1:]] == ["005", "006", "007", "008", "009"]
        # A reader that saw the notice (or any trimmed chunk) resumes without it ...
        resumed = await finished_stream(api, wf, "a", headers={"Last-Event-ID": "4"})
        assert [i for i, _ in resumed] == ["5", "6", "7", "8", "9"]
        # ... one that missed trimmed chunks is told.
        behind = await finished_stream(api, wf, "a", headers={"Last-Event-ID": "1"})
        assert [i for i, _ in behind] == ["4", "5", "6", "7", "8", "9"]


@pytest.fixture
def store_clock():
    """Jumps only after real idleness: the journal commits on a thread."""
    return trio.testing.MockClock(autojump_threshold=0.25)


async def test_attempts_and_indexes_survive_a_restart(tmp_path, store_clock) -> None:
    create = WorkflowCreate.model_validate(
        {"name": "r", "jobs": [{"id": "a", "command": "true", "max_retries": 2}]}
    )
    async with open_runtime(data_dir=tmp_path) as rt:
        wf = (await rt.create_workflow(create)).id
        await rt.run_workflow(wf)
        first = await rt.claim("w1", [], lease_ttl_secs=600)
        await rt.push_logs(first.lease.lease_id, [LogChunkIn(sequence=0, data="try 0\n")])
        await rt.fail(first.lease.lease_id, "flaky", retryable=True)
        second = await rt.claim("w1", [], lease_ttl_secs=600)
        await rt.push_logs(second.lease.lease_id, [LogChunkIn(sequence=0, data="try 1\n")])

    async with open_runtime(data_dir=tmp_path) as rt:
        # The restored lease still knows its attempt.
        await rt.push_logs(second.lease.lease_id, [LogChunkIn(sequence=1, data="more\n")])
        subscription = await rt.subscribe_logs(wf, "a", after=0)
        subscription.live.close()
        assert [(i, c.attempt, c.data) for i, c in subscription.replay] == [
            (1, 1, "try 1\n"),
            (2, 1, "more\n"),
        ]
