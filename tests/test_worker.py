"""The worker SDK with Python handlers, against a real server process.

Each test runs a `Worker` in the test's own trio loop, so the handler can tell
the test what it saw; the server is a real `wfg serve` process.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import trio
from worker_helpers import (
    TcpProxy,
    async_status,
    async_wait_finished,
    jobs_by_id,
    write_workflow,
)

from actors.models import LogStream, QueuedJob
from wfg.agent import parse_output_file
from wfg.worker import (
    LOG_BATCH_DELAY_SECS,
    LOG_BATCH_MAX_BYTES,
    JobContext,
    JobFailed,
    Worker,
    _LogBuffer,
)

# --- pure pieces -------------------------------------------------------------


def test_output_file_forms() -> None:
    text = "a=1\nurl=http://x/?q=1\n\nnotes<<EOF\nline one\nkey=not an output\nEOF\nlast=z\r\n"
    assert parse_output_file(text) == {
        "a": "1",
        "url": "http://x/?q=1",
        "notes": "line one\nkey=not an output",
        "last": "z",
    }


def test_output_file_unterminated_block_fails() -> None:
    with pytest.raises(JobFailed, match="no closing 'END'") as info:
        parse_output_file("body<<END\nnever closed\n")
    assert info.value.retryable is False


async def test_log_batches_wait_at_most_the_delay_and_cap_the_size(autojump_clock) -> None:
    logs = _LogBuffer("wf", "job")
    logs.write("first\n", LogStream.stdout)
    start = trio.current_time()
    batch = await logs.next_batch()
    waited = trio.current_time() - start
    assert [c.data for c in batch] == ["first\n"]
    assert waited == pytest.approx(LOG_BATCH_DELAY_SECS)

    # 1 MiB of lines at once: coalesced into a few large chunks that end at line ends,
    # pushed in several batches, none over the limit, order kept.
    lines = [f"{i:04d}" + "x" * 1019 + "\n" for i in range(1024)]
    for line in lines:
        logs.write(line, LogStream.stderr)
    logs.close()
    batches = []
    while batch := await logs.next_batch():
        batches.append(batch)
    assert len(batches) >= 4
    for b in batches:
        assert sum(len(c.data) for c in b) <= LOG_BATCH_MAX_BYTES
    chunks = [c for b in batches for c in b]
    assert [c.sequence for c in chunks] == list(range(1, len(chunks) + 1))
    assert len(chunks) == 64  # 16 lines of 1 KiB to a chunk
    assert all(c.data.endswith("\n") for c in chunks)
    assert "".join(c.data for c in chunks) == "".join(lines)
    assert all(c.stream == LogStream.stderr for c in chunks)


# --- with a server -----------------------------------------------------------

PIPELINE = """
name: SDK pipeline
on: push
jobs:
  produce:
    run: "true"
  consume:
    needs: produce
    run: "true"
"""


def _worker(url: str, handler, **kwargs) -> Worker:
    kwargs.setdefault("claim_wait_secs", 2)
    return Worker(url, handler=handler, worker_id="sdk-test", **kwargs)


async def test_outputs_logs_and_upstream_outputs(workflows_dir: Path, server_factory) -> None:
    write_workflow(workflows_dir, "pipe", PIPELINE)
    server = server_factory(workflows_dir)
    seen: dict[str, QueuedJob] = {}

    async def handler(job: QueuedJob, ctx: JobContext) -> None:
        seen[job.job_id] = job
        if job.job_id == "produce":
            ctx.log("hello")
            ctx.log("careful\n", stream="stderr")
            ctx.set_output("artifact", "build.tar.gz")
            ctx.set_output("count", 3)  # type: ignore[arg-type]  # not a string: sent as its text

    async with httpx.AsyncClient(base_url=server.url) as http, trio.open_nursery() as nursery:
        nursery.start_soon(_worker(server.url, handler).run)
        assert (await http.post("/api/workflows/pipe/run")).status_code == 202
        jobs = await async_wait_finished(http, "pipe")
        logs = (await http.get("/api/workflows/pipe/jobs/produce/logs")).json()
        nursery.cancel_scope.cancel()

    assert jobs["produce"]["status"] == "success"
    assert jobs["consume"]["status"] == "success"
    assert seen["consume"].upstream_outputs == {
        "produce": {"artifact": "build.tar.gz", "count": "3"}
    }
    assert [(c["sequence"], c["stream"], c["data"]) for c in logs] == [
        (0, "stdout", "hello\n"),
        (1, "stderr", "careful\n"),
    ]


FLAKY = """
name: failures
on: push
jobs:
  final:
    run: "true"
    retries: 2
    backoff: {Fixed: {delay_secs: 0}}
  flaky:
    run: "true"
    retries: 2
    backoff: {Fixed: {delay_secs: 0}}
"""


async def test_job_failed_and_exceptions(workflows_dir: Path, server_factory) -> None:
    write_workflow(workflows_dir, "fails", FLAKY)
    server = server_factory(workflows_dir)
    attempts: dict[str, list[int]] = {"final": [], "flaky": []}

    async def handler(job: QueuedJob, ctx: JobContext) -> None:
        attempts[job.job_id].append(ctx.attempt)
        if job.job_id == "final":
            raise JobFailed("bad config", retryable=False)
        raise RuntimeError(f"boom {ctx.attempt}")

    async with httpx.AsyncClient(base_url=server.url) as http, trio.open_nursery() as nursery:
        nursery.start_soon(_worker(server.url, handler).run)
        await http.post("/api/workflows/fails/run")
        jobs = await async_wait_finished(http, "fails")
        flaky_logs = (await http.get("/api/workflows/fails/jobs/flaky/logs")).json()
        nursery.cancel_scope.cancel()

    # Not retryable: one attempt despite `retries: 2`.
    assert attempts["final"] == [0]
    assert jobs["final"]["status"] == "failure"
    assert jobs["final"]["output"] == "bad config"
    # Any other exception is retryable: every attempt used.
    assert attempts["flaky"] == [0, 1, 2]
    assert jobs["flaky"]["status"] == "failure"
    assert jobs["flaky"]["attempt"] == 2
    assert jobs["flaky"]["output"] == "RuntimeError: boom 2"
    # The traceback lands in the job log (of the latest attempt).
    stderr = "".join(c["data"] for c in flaky_logs if c["stream"] == "stderr")
    assert "Traceback" in stderr and "boom 2" in stderr


PARALLEL = """
name: parallel
on: push
jobs:
  a: {run: "true"}
  b: {run: "true"}
  c: {run: "true"}
"""


async def test_concurrency_runs_jobs_side_by_side(workflows_dir: Path, server_factory) -> None:
    write_workflow(workflows_dir, "par", PARALLEL)
    server = server_factory(workflows_dir)
    running = 0
    peak = 0
    two_running = trio.Event()

    async def handler(job: QueuedJob, ctx: JobContext) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        try:
            if running == 2:
                two_running.set()
            # Each job needs a partner running at the same time, so a worker that
            # ran them one by one would fail them.
            with trio.fail_after(5):
                await two_running.wait()
            await trio.sleep(0.1)
        finally:
            running -= 1

    async with httpx.AsyncClient(base_url=server.url) as http, trio.open_nursery() as nursery:
        nursery.start_soon(_worker(server.url, handler, concurrency=2).run)
        await http.post("/api/workflows/par/run")
        jobs = await async_wait_finished(http, "par")
        nursery.cancel_scope.cancel()

    assert {job["status"] for job in jobs.values()} == {"success"}
    # Never more at once than the slots allow.
    assert peak == 2


ONE = """
name: one
on: push
jobs:
  only: {run: "true"}
"""


async def test_long_poll_starts_new_work_quickly(workflows_dir: Path, server_factory) -> None:
    write_workflow(workflows_dir, "one", ONE)
    server = server_factory(workflows_dir)
    started = trio.Event()

    async def handler(job: QueuedJob, ctx: JobContext) -> None:
        started.set()

    # A poll interval this long means only the parked claim can pick the job up fast.
    worker = _worker(server.url, handler, poll_interval=30, claim_wait_secs=30)
    async with httpx.AsyncClient(base_url=server.url) as http, trio.open_nursery() as nursery:
        nursery.start_soon(worker.run)
        await trio.sleep(0.5)  # let the worker park its claim: this test is about latency
        t0 = trio.current_time()
        await http.post("/api/workflows/one/run")
        with trio.fail_after(5):
            await started.wait()
        latency = trio.current_time() - t0
        nursery.cancel_scope.cancel()
    assert latency < 1.0


SLOW = """
name: slow
on: push
jobs:
  slow: {run: "true"}
"""


async def test_cancel_cancels_the_handler(workflows_dir: Path, server_factory) -> None:
    write_workflow(workflows_dir, "slow", SLOW)
    server = server_factory(workflows_dir)
    started = trio.Event()
    ended = trio.Event()
    seen: list[tuple[bool, str | None]] = []

    async def handler(job: QueuedJob, ctx: JobContext) -> None:
        started.set()
        try:
            await trio.sleep_forever()
        finally:
            seen.append((ctx.cancelled, ctx.stop_reason))
            ended.set()

    async with httpx.AsyncClient(base_url=server.url) as http, trio.open_nursery() as nursery:
        nursery.start_soon(_worker(server.url, handler).run)
        await http.post("/api/workflows/slow/run")
        with trio.fail_after(5):
            await started.wait()
        await http.post("/api/workflows/slow/cancel")
        t0 = trio.current_time()
        with trio.fail_after(5):
            await ended.wait()
        reaction = trio.current_time() - t0
        jobs = jobs_by_id(await async_status(http, "slow"))
        nursery.cancel_scope.cancel()

    assert seen == [(True, "cancelled")]
    assert reaction < 3  # checked at least every 2 s
    assert jobs["slow"]["status"] == "cancelled"


async def test_worker_survives_a_server_restart(workflows_dir: Path, server_factory) -> None:
    write_workflow(workflows_dir, "one", ONE)
    first = server_factory(workflows_dir)
    port = first.url.rsplit(":", 1)[1]
    ran = trio.Event()

    async def handler(job: QueuedJob, ctx: JobContext) -> None:
        ctx.log("ran after the restart")
        ran.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(_worker(first.url, handler).run)
        await trio.sleep(0.3)  # the worker is now parked in a claim on the first server
        first.process.kill()  # a crash: the parked claim dies with no answer
        await trio.to_thread.run_sync(first.process.wait)
        await trio.sleep(0.5)  # its requests now fail: it must keep retrying
        second = await trio.to_thread.run_sync(
            lambda: server_factory(workflows_dir, env={"PORT": port})
        )
        assert second.url == first.url, "the restarted server must get the same port"
        async with httpx.AsyncClient(base_url=second.url) as http:
            await http.post("/api/workflows/one/run")
            jobs = await async_wait_finished(http, "one", timeout=15)
        nursery.cancel_scope.cancel()
    assert ran.is_set()
    assert jobs["only"]["status"] == "success"


async def test_result_waits_for_the_server_to_come_back(
    workflows_dir: Path, server_factory
) -> None:
    write_workflow(workflows_dir, "one", ONE)
    server = server_factory(workflows_dir)
    started = trio.Event()
    finish = trio.Event()

    async def handler(job: QueuedJob, ctx: JobContext) -> None:
        started.set()
        await finish.wait()
        ctx.log("finished while the server was away")
        ctx.set_output("answer", "42")

    async with trio.open_nursery() as nursery:
        proxy = TcpProxy(server.url)
        await nursery.start(proxy.run)
        nursery.start_soon(_worker(proxy.url, handler).run)
        async with httpx.AsyncClient(base_url=server.url) as http:
            await http.post("/api/workflows/one/run")
            with trio.fail_after(5):
                await started.wait()
            proxy.down()
            finish.set()  # the log and the result now have nowhere to go
            await trio.sleep(1.5)
            assert jobs_by_id(await async_status(http, "one"))["only"]["status"] == "running"
            proxy.up()
            jobs = await async_wait_finished(http, "one", timeout=10)
            logs = (await http.get("/api/workflows/one/jobs/only/logs")).json()
            produced = (await http.get("/api/workflows/one/status")).json()
        nursery.cancel_scope.cancel()
    assert jobs["only"]["status"] == "success"
    assert [c["data"] for c in logs] == ["finished while the server was away\n"]
    assert produced["jobs"][0]["status"] == "success"


RETRIED = """
name: retried
on: push
jobs:
  only:
    run: "true"
    retries: 1
    backoff: {Fixed: {delay_secs: 0}}
"""


async def test_lost_lease_stops_the_handler_and_reports_nothing(
    workflows_dir: Path, server_factory
) -> None:
    write_workflow(workflows_dir, "retried", RETRIED)
    server = server_factory(workflows_dir, env={"REAP_INTERVAL_SECS": "1"})
    first_attempt = trio.Event()
    stopped: list[str | None] = []

    async def handler(job: QueuedJob, ctx: JobContext) -> None:
        if ctx.attempt == 0:
            first_attempt.set()
            try:
                await trio.sleep_forever()
            finally:
                stopped.append(ctx.stop_reason)
        ctx.log(f"attempt {ctx.attempt}")

    async with trio.open_nursery() as nursery:
        proxy = TcpProxy(server.url)
        await nursery.start(proxy.run)
        nursery.start_soon(_worker(proxy.url, handler, lease_ttl_secs=1).run)
        async with httpx.AsyncClient(base_url=server.url) as http:
            await http.post("/api/workflows/retried/run")
            with trio.fail_after(5):
                await first_attempt.wait()
            proxy.down()
            # Renewals cannot get through: the server expires the lease and requeues.
            with trio.fail_after(10):
                while jobs_by_id(await async_status(http, "retried"))["only"]["attempt"] < 1:
                    await trio.sleep(0.1)
            proxy.up()
            jobs = await async_wait_finished(http, "retried", timeout=10)
            logs = (await http.get("/api/workflows/retried/jobs/only/logs")).json()
        nursery.cancel_scope.cancel()
    assert stopped == ["lease lost"]
    assert jobs["only"]["status"] == "success"
    assert jobs["only"]["attempt"] == 1
    # Attempt 0 reported nothing (it would have failed the job: no retries left).
    assert [c["data"] for c in logs] == ["attempt 1\n"]
