"""Logs end to end under load and restarts, and processes that must not outlive their parent.

Server side: chunks carry their attempt, log streams number events by the chunk's
index in the run and resume after `Last-Event-ID`. Worker side: a chatty job's
log arrives whole and in order, stdout and stderr keep their order in the log
and in the failure reason, jobs die with their worker and local workers with
their server. CLI side: followers reconnect and mark attempts.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import trio
import trio.testing
from test_client import claim_one
from test_http_api import Api, assert_error, assert_object, chunk, job
from worker_helpers import (
    TcpProxy,
    async_wait_finished,
    job_logs,
    kill_group_quietly,
    log_text,
    process_alive,
    run_workflow,
    start_worker,
    wait_for,
    wait_until_finished,
    write_workflow,
)

import wfg.worker as worker_module
from actors import Limits, open_runtime
from actors.models import JobCreate, LogChunk, LogChunkIn, LogStream, WorkflowCreate
from web.app import create_app
from wfg import AsyncClient, Client
from wfg.agent import run_shell_job
from wfg.worker import LOG_BATCH_DELAY_SECS, LOG_STALL_SECS, Worker, _LogBuffer

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


# --- the worker's log buffer ---------------------------------------------------


def lines(count: int, width: int = 100) -> list[str]:
    return [f"{i:04d}".ljust(width - 1, "x") + "\n" for i in range(count)]


async def collect(logs: _LogBuffer, pushed: list[LogChunk], slow_secs: float = 0) -> None:
    while batch := await logs.next_batch():
        pushed.extend(batch)
        await trio.sleep(slow_secs)  # a slow server
        logs.push_succeeded()


@pytest.fixture
def small_log_buffer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker_module, "LOG_HIGH_WATER_CHARS", 1000)
    monkeypatch.setattr(worker_module, "MAX_PENDING_LOG_CHARS", 2000)
    monkeypatch.setattr(worker_module, "_CHUNK_MAX_CHARS", 200)


async def test_a_writer_that_drains_is_held_back_and_loses_nothing(
    autojump_clock, small_log_buffer
) -> None:
    logs = _LogBuffer("wf", "job")
    pushed: list[LogChunk] = []
    written = lines(100)
    most_pending = 0
    async with trio.open_nursery() as nursery:
        nursery.start_soon(collect, logs, pushed, 1.0)
        for line in written:
            await logs.wait_room()
            logs.write(line, LogStream.stdout)
            most_pending = max(most_pending, logs._pending_chars)
        logs.close()
    assert "".join(c.data for c in pushed) == "".join(written)
    assert most_pending <= 1000 + 100
    assert [c.sequence for c in pushed] == list(range(len(pushed)))


async def test_a_stalled_server_drops_the_oldest_output_and_says_how_much(
    autojump_clock, small_log_buffer
) -> None:
    logs = _LogBuffer("wf", "job")
    pushed: list[LogChunk] = []
    written = lines(100)

    async def server_away_then_back() -> None:
        pushed.extend(await logs.next_batch())
        logs.push_failed()
        await trio.sleep(LOG_STALL_SECS * 3)
        logs.push_succeeded()
        await collect(logs, pushed)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(server_away_then_back)
        start = trio.current_time()
        for line in written:
            await logs.wait_room()
            logs.write(line, LogStream.stdout)
        # Held back only until the server counted as stalled, not for the whole outage.
        assert trio.current_time() - start == pytest.approx(LOG_STALL_SECS, abs=1)
        logs.close()

    notices = [c for c in pushed if c.stream == LogStream.stderr]
    assert len(notices) == 1
    # What went before the outage, the notice where the gap is, then the tail.
    gap = pushed.index(notices[0])
    before = "".join(c.data for c in pushed[:gap]).splitlines(keepends=True)
    after = "".join(c.data for c in pushed[gap + 1 :]).splitlines(keepends=True)
    assert before == written[: len(before)]
    assert after == written[-len(after) :]
    dropped = written[len(before) : -len(after)]
    assert dropped
    assert notices[0].data == (
        f"[wfg worker: {len(''.join(dropped))} bytes ({len(dropped)} lines) of output"
        " dropped here: the server was not taking logs]\n"
    )
    assert [c.sequence for c in pushed] == list(range(len(pushed)))


async def test_a_writer_that_never_waits_keeps_the_tail(autojump_clock, small_log_buffer) -> None:
    logs = _LogBuffer("wf", "job")
    written = lines(100)
    for line in written:
        logs.write(line, LogStream.stdout)
    logs.close()
    pushed: list[LogChunk] = []
    await collect(logs, pushed)
    assert pushed[0].stream == LogStream.stderr
    assert "output dropped here: the job wrote faster than its log could be sent" in pushed[0].data
    kept = "".join(c.data for c in pushed[1:])
    assert kept == "".join(written)[-len(kept) :]
    assert 1000 <= len(kept) <= 2000


async def test_a_partial_line_waits_briefly_for_its_end(autojump_clock) -> None:
    logs = _LogBuffer("wf", "job")
    logs.write("one\ntw", LogStream.stdout)
    assert [c.data for c in await logs.next_batch()] == ["one\n"]
    logs.write("o\n", LogStream.stdout)
    assert [c.data for c in await logs.next_batch()] == ["two\n"]
    # A line that never ends goes out after the delay anyway.
    logs.write("prompt: ", LogStream.stdout)
    start = trio.current_time()
    assert [c.data for c in await logs.next_batch()] == ["prompt: "]
    assert trio.current_time() - start == pytest.approx(LOG_BATCH_DELAY_SECS)


# --- the shell agent, with real processes --------------------------------------


@pytest.fixture
def workers():
    """Start `wfg worker` processes with `workers(url, *args)`; all are stopped at the end."""
    started = []

    def start(url: str, *args: str, **kwargs):
        worker = start_worker(url, *args, **kwargs)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.shutdown()


CHATTY = """
name: chatty
on: push
jobs:
  chatty:
    run: "seq 1 200000; echo FINAL ERROR LINE >&2; exit 1"
  outputs:
    run: |
      echo "greeting=hello" >> "$GITHUB_OUTPUT"
      echo "other=1" >> "$WFG_OUTPUT"
  consume:
    needs: outputs
    run: cat "$WFG_UPSTREAM_OUTPUTS"
"""


def test_a_chatty_job_keeps_every_line_and_fails_with_its_last_words(
    workflows_dir: Path, server_factory, workers
) -> None:
    write_workflow(workflows_dir, "chatty", CHATTY)
    server = server_factory(workflows_dir)
    workers(server.url, "--concurrency", "2")
    run_workflow(server.url, "chatty")
    jobs = wait_until_finished(server.url, "chatty", timeout=60)

    chunks = job_logs(server.url, "chatty", "chatty")
    assert log_text(chunks).split("\n") == [str(i) for i in range(1, 200001)] + [
        "FINAL ERROR LINE",
        "",
    ]
    assert chunks[-1]["stream"] == "stderr"
    assert not any("dropped" in c["data"] for c in chunks)
    # Written in pieces, not one chunk per line.
    assert len(chunks) < 1000
    # The failure ends with what the job said last, whichever stream it said it on.
    output = jobs["chatty"]["output"]
    assert output.startswith("exit code 1: ")
    assert output.endswith("\n199999\n200000\nFINAL ERROR LINE")

    # GITHUB_OUTPUT is the same file as WFG_OUTPUT.
    assert jobs["consume"]["status"] == "success"
    upstream = json.loads(log_text(job_logs(server.url, "chatty", "consume")))
    assert upstream == {"outputs": {"greeting": "hello", "other": "1"}}


def test_past_the_servers_limit_a_log_keeps_its_tail(
    workflows_dir: Path, server_factory, workers
) -> None:
    # 100 000 lines of 54 bytes (5.4 MB) against a 1 MiB limit.
    text = 'name: big\non: push\njobs:\n  big:\n    run: "seq -f %053g 1 100000; echo END >&2"\n'
    write_workflow(workflows_dir, "big", text)
    server = server_factory(workflows_dir, env={"MAX_LOG_BYTES_PER_JOB": str(1024 * 1024)})
    workers(server.url)
    run_workflow(server.url, "big")
    assert wait_until_finished(server.url, "big", timeout=60)["big"]["status"] == "success"

    chunks = job_logs(server.url, "big", "big")
    notice, *kept = chunks
    assert notice["data"].startswith("[workflow-graph: ")
    assert "earlier bytes of this log dropped (limit max_log_bytes_per_job)" in notice["data"]
    body = log_text(kept).split("\n")
    assert body[-2:] == ["END", ""]
    numbers = [int(line) for line in body[:-2]]
    # A contiguous tail, from a whole line to the last one.
    assert numbers == list(range(numbers[0], 100001))
    assert 1024 * 1024 - 54 * 400 <= len(log_text(kept)) <= 1024 * 1024


GATED = """
name: gated
on: push
jobs:
  gated:
    run: |
      touch {dir}/started
      while [ ! -e {dir}/go ]; do sleep 0.02; done
      seq 1 100000
      touch {dir}/printed
      echo END >&2
"""


async def run_gated(tmp_path: Path, server_url: str, outage_secs: float) -> tuple[bool, list]:
    """Run GATED through a proxy that is down while the job prints; was it held back?"""
    async with trio.open_nursery() as nursery:
        proxy = TcpProxy(server_url)
        await nursery.start(proxy.run)
        worker = Worker(proxy.url, handler=run_shell_job, worker_id="gated", claim_wait_secs=2)
        nursery.start_soon(worker.run)
        async with httpx.AsyncClient(base_url=server_url) as http:
            await http.post("/api/workflows/gated/run")
            with trio.fail_after(10):
                while not (tmp_path / "started").exists():
                    await trio.sleep(0.02)
            proxy.down()
            (tmp_path / "go").touch()
            await trio.sleep(outage_secs)
            held_back = not (tmp_path / "printed").exists()
            proxy.up()
            jobs = await async_wait_finished(http, "gated", timeout=30)
            assert jobs["gated"]["status"] == "success"
            chunks = (await http.get("/api/workflows/gated/jobs/gated/logs")).json()
        nursery.cancel_scope.cancel()
    return held_back, chunks


async def test_a_job_is_held_back_while_its_log_cannot_go_out(
    workflows_dir: Path, tmp_path: Path, server_factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker_module, "LOG_HIGH_WATER_CHARS", 64 * 1024)
    write_workflow(workflows_dir, "gated", GATED.format(dir=tmp_path))
    server = server_factory(workflows_dir)
    held_back, chunks = await run_gated(tmp_path, server.url, outage_secs=1.5)
    assert held_back, "the job printed 589 kB while at most 64 KiB could be kept"
    assert log_text(chunks).split("\n") == [str(i) for i in range(1, 100001)] + ["END", ""]


async def test_a_long_outage_lets_the_job_go_on_and_keeps_the_logs_tail(
    workflows_dir: Path, tmp_path: Path, server_factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker_module, "LOG_HIGH_WATER_CHARS", 64 * 1024)
    monkeypatch.setattr(worker_module, "MAX_PENDING_LOG_CHARS", 128 * 1024)
    monkeypatch.setattr(worker_module, "LOG_STALL_SECS", 1.0)
    write_workflow(workflows_dir, "gated", GATED.format(dir=tmp_path))
    server = server_factory(workflows_dir)
    held_back, chunks = await run_gated(tmp_path, server.url, outage_secs=2.5)
    assert not held_back, "past LOG_STALL_SECS the job must not wait for the server"
    (notice,) = [c for c in chunks if "dropped" in c["data"]]
    assert notice["stream"] == "stderr"
    assert "of output dropped here: the server was not taking logs]" in notice["data"]
    tail = log_text(chunks[chunks.index(notice) + 1 :]).split("\n")
    assert tail[-3:] == ["100000", "END", ""]
    assert [int(n) for n in tail[:-2]] == list(range(int(tail[0]), 100001))


ORPHAN = """
name: orphan
on: push
jobs:
  long:
    run: |
      echo $$ > "$PID_DIR/sh.pid"
      sh -c 'sleep 1000' &
      echo $! > "$PID_DIR/child.pid"
      wait
"""


def job_pids(pid_dir: Path) -> list[int]:
    wait_for(lambda: (pid_dir / "child.pid").exists(), 15, "the job to start")
    pids = [int((pid_dir / name).read_text()) for name in ("sh.pid", "child.pid")]
    # The grandchild too: `sleep 1000` under the inner sh.
    wait_for(lambda: children_of(pids[1]), 5, "the job's grandchild")
    pids += children_of(pids[1])
    assert all(process_alive(pid) for pid in pids)
    return pids


def children_of(parent: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[1]) == parent and fields[0] not in ("Z", "X"):
            found.append(int(stat.parent.name))
    return found


def test_a_job_dies_with_its_killed_worker(
    workflows_dir: Path, tmp_path: Path, server_factory, workers
) -> None:
    write_workflow(workflows_dir, "orphan", ORPHAN)
    server = server_factory(workflows_dir)
    worker = workers(server.url, env={"PID_DIR": str(tmp_path)})
    run_workflow(server.url, "orphan")
    try:
        pids = job_pids(tmp_path)
        worker.signal(signal.SIGKILL)
        worker.wait(5)
        # SIGTERM first, as on a cancel: a `sleep` goes at once.
        wait_for(lambda: not any(process_alive(p) for p in pids), 3, "the job's group to die")
    finally:
        kill_group_quietly(tmp_path / "sh.pid")


def test_local_workers_and_their_jobs_die_with_a_killed_server(
    workflows_dir: Path, tmp_path: Path, server_factory
) -> None:
    write_workflow(workflows_dir, "orphan", ORPHAN)
    server = server_factory(
        workflows_dir, env={"PID_DIR": str(tmp_path)}, args=("--local-workers", "2")
    )
    local: list[int] = []
    try:
        local += wait_for(
            lambda: (found := children_of(server.process.pid)) and len(found) == 2 and found,
            15,
            "two local workers",
        )
        run_workflow(server.url, "orphan")
        pids = job_pids(tmp_path)
        server.process.kill()
        server.process.wait(5)
        everything = local + pids
        wait_for(
            lambda: not any(process_alive(p) for p in everything),
            15,
            "the local workers and their job to end",
        )
    finally:
        kill_group_quietly(tmp_path / "sh.pid")
        for pid in local:
            if process_alive(pid):
                os.kill(pid, signal.SIGKILL)


# --- the CLI: followers ride out restarts, log views mark attempts ------------------


@dataclass
class Follower:
    """A `wfg` command left running; its stdout and stderr collected as they come."""

    process: subprocess.Popen
    out: list[str] = field(default_factory=list)
    err: list[str] = field(default_factory=list)

    @classmethod
    def start(cls, url: str, *args: str) -> Follower:
        env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "SERVER_URL")}
        process = subprocess.Popen(
            [sys.executable, "-m", "wfg", "--server", url, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        follower = cls(process)
        for stream, lines in ((process.stdout, follower.out), (process.stderr, follower.err)):
            threading.Thread(target=lambda s=stream, ls=lines: ls.extend(s), daemon=True).start()
        return follower

    def wait(self, timeout: float = 30) -> int:
        code = self.process.wait(timeout)
        time.sleep(0.1)  # the readers catch up with the last lines
        return code

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


RIDE = """
name: ride
on: push
jobs:
  only:
    run: "true"
    labels: [ride-out]
"""


def test_followers_ride_out_a_server_restart(
    workflows_dir: Path, tmp_path: Path, server_factory
) -> None:
    write_workflow(workflows_dir, "ride", RIDE)
    env = {"DATA_DIR": str(tmp_path / "state")}
    first = server_factory(workflows_dir, env=env)
    run = Follower.start(first.url, "run", "ride", "--follow")
    followers = [run]
    try:
        with Client(first.url) as client:
            lease = claim_one(client, "w1", "ride-out").lease.lease_id
            before = [LogChunkIn(sequence=i, data=f"before {i}\n") for i in range(2)]
            client.push_logs(lease, before)
        logs = Follower.start(first.url, "logs", "ride", "only", "--follow")
        quitter = Follower.start(first.url, "logs", "ride", "only", "-f", "--reconnect", "0")
        followers += [logs, quitter]
        wait_for(lambda: len(logs.out) == 2 and len(quitter.out) == 2, 15, "the replay")

        first.process.kill()  # a crash: every stream breaks with no goodbye
        first.process.wait(5)
        # --reconnect 0: the broken stream is an error at once, as before.
        assert quitter.wait() == 1
        assert len(quitter.err) == 1 and "peer closed connection" in quitter.err[0]
        wait_for(lambda: logs.err and run.err, 15, "both followers to say they reconnect")
        assert "reconnecting (for up to 60 s)" in logs.err[0]

        port = first.url.rsplit(":", 1)[1]
        second = server_factory(workflows_dir, env={**env, "PORT": port})
        assert second.url == first.url
        with Client(second.url) as client:
            client.push_logs(lease, [LogChunkIn(sequence=2, data="after\n")])
            client.complete(lease)
        assert logs.wait() == 0, logs.err
        assert run.wait() == 0, run.err
    finally:
        for follower in followers:
            follower.stop()
    # Nothing twice, nothing lost; one line about the outage, on stderr.
    assert logs.out == ["before 0\n", "before 1\n", "after\n"]
    assert len(logs.err) == 1
    assert len(run.err) == 1 and "reconnecting" in run.err[0]
    assert run.out[-1].startswith("run 1 of ride: success")


def test_log_views_mark_where_each_attempt_starts(workflows_dir: Path, server_factory) -> None:
    server = server_factory(workflows_dir)
    body = WorkflowCreate(
        name="marks",
        jobs=[JobCreate(id="flaky", command="x", required_labels=["marks"], max_retries=1)],
    )
    with Client(server.url) as client:
        workflow = client.create_workflow(body)
        run = Follower.start(server.url, "run", workflow.id, "--follow")
        try:
            first = claim_one(client, "w1", "marks")
            client.push_logs(
                first.lease.lease_id,
                [LogChunkIn(sequence=0, data="try one\n"), LogChunkIn(sequence=1, data="cut")],
            )
            client.fail(first.lease.lease_id, "flaky", retryable=True)
            second = claim_one(client, "w1", "marks")
            assert second.job.attempt == 1
            again = LogChunkIn(sequence=0, data="try two\n", stream=LogStream.stderr)
            client.push_logs(second.lease.lease_id, [again])
            client.fail(second.lease.lease_id, "exit code 1: try two")
            assert run.wait() == 1
        finally:
            run.stop()
    logs = Follower.start(server.url, "logs", workflow.id, "flaky")
    assert logs.wait() == 0
    # Piped, so plain: the mark on a line of its own, even after a partial line.
    assert "".join(logs.out) == "try one\ncut\n-- attempt 2 --\n"
    assert logs.err == ["try two\n"]
    report = [line.rstrip("\n") for line in run.out if line.startswith("  | ")]
    assert report == ["  | try one", "  | cut", "  | -- attempt 2 --", "  | try two"]


async def test_both_clients_resume_a_stream_with_last_event_id() -> None:
    chunk = LogChunk(
        workflow_id="w", job_id="j", sequence=0, data="x\n", timestamp_ms=1, stream="stdout"
    )
    seen: list[str | None] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("Last-Event-ID"))
        body = f"event: log\nid: 8\ndata: {chunk.model_dump_json()}\n\n"
        return httpx.Response(200, text=body, headers={"content-type": "text/event-stream"})

    with Client("http://server", transport=httpx.MockTransport(answer)) as client:
        assert list(client.stream_log_events("w", "j", last_event_id="7")) == [("8", chunk)]
        assert list(client.stream_logs("w", "j")) == [chunk]
    async with AsyncClient("http://server", transport=httpx.MockTransport(answer)) as aclient:
        events = [e async for e in aclient.stream_log_events("w", "j", last_event_id="7")]
        assert events == [("8", chunk)]
        assert [c async for c in aclient.stream_logs("w", "j", last_event_id="8")] == [chunk]
    assert seen == ["7", None, "7", "8"]


WIDE = """
name: wide
on: push
jobs:
  wide:
    run: |
      head -c 3000 /dev/zero | tr '\\0' x
      echo
"""


def test_output_the_server_refuses_leaves_a_notice_in_the_log(
    workflows_dir: Path, server_factory, workers
) -> None:
    # One 3000-byte line: a push of it exceeds the smallest body limit a server takes.
    write_workflow(workflows_dir, "wide", WIDE)
    server = server_factory(workflows_dir, env={"MAX_BODY_BYTES": "1024"})
    workers(server.url)
    run_workflow(server.url, "wide")
    assert wait_until_finished(server.url, "wide")["wide"]["status"] == "success"
    (notice,) = job_logs(server.url, "wide", "wide")
    assert notice["stream"] == "stderr"
    assert notice["data"].startswith(
        "[wfg worker: 3001 bytes of output refused by the server and dropped here: 413"
    )
