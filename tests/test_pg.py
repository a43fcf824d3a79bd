"""What only the PostgreSQL home has: its schema, its migrations and its row design."""

from __future__ import annotations

import os
import subprocess
import sys

import psycopg
import pytest
import trio
from homes import make_home

from actors import LeaseNotActive
from actors.pg.db import Stale, Tx
from actors.pg.engine import Engine
from actors.pg.schema import SCHEMA_VERSION, SchemaError, migrate
from actors.spec import spec_from_create


@pytest.fixture
def home(request: pytest.FixtureRequest):
    yield from make_home(request, "postgres")


def flat(wf_id: str, count: int):
    from actors.models import WorkflowCreate

    body = {"name": "w", "jobs": [{"id": f"j{i}", "command": "true"} for i in range(count)]}
    return spec_from_create(wf_id, WorkflowCreate.model_validate(body))


async def test_a_heartbeat_is_a_hot_update_of_the_lease_row(home):
    async with home.open() as rt:
        rt.add_workflow(flat("w", 1))
        await rt.run_workflow("w")
        claim = await rt.claim("w1", [])

    def heartbeats() -> tuple[int, int]:
        with psycopg.connect(home.database_url) as conn, conn.transaction():
            engine = Engine("unused", 1)
            for _ in range(5):
                engine.heartbeat(Tx(conn), claim.lease.lease_id)
            row = conn.execute(
                "SELECT pg_stat_get_xact_tuples_updated('leases'::regclass), "
                "pg_stat_get_xact_tuples_hot_updated('leases'::regclass)"
            ).fetchone()
            assert row is not None
            return row[0], row[1]

    updated, hot = await trio.to_thread.run_sync(heartbeats)
    assert (updated, hot) == (5, 5)


def test_migrating_again_changes_nothing_and_a_newer_schema_is_refused(home):
    with psycopg.connect(home.database_url, autocommit=True) as conn:
        assert migrate(conn) == SCHEMA_VERSION
        assert migrate(conn) == SCHEMA_VERSION
        conn.execute("UPDATE meta SET value = %s WHERE key = 'schema_version'", (str(99),))
        try:
            with pytest.raises(SchemaError, match="schema version 99"):
                migrate(conn)
        finally:
            conn.execute(
                "UPDATE meta SET value = %s WHERE key = 'schema_version'", (str(SCHEMA_VERSION),)
            )


def test_wfg_migrate_then_serve_refuses_an_unreachable_database_in_one_line(home):
    env = {**os.environ, "DATABASE_URL": home.database_url}
    done = subprocess.run(
        [sys.executable, "-m", "wfg", "migrate"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert f"schema version {SCHEMA_VERSION} ready" in done.stdout
    env["DATABASE_URL"] = "postgresql://nobody@127.0.0.1:1/none"
    done = subprocess.run(
        [sys.executable, "-m", "wfg", "serve", "--port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("workflow-graph: cannot use the database")


async def test_a_claim_takes_a_ready_job_while_its_run_is_being_changed(home):
    """A run transaction holds its run's lock but not its jobs' rows: claims go on."""
    async with home.open() as rt:
        rt.add_workflow(flat("w", 3))
        await rt.run_workflow("w")
        await rt.claim("w1", [])

        def hold_the_run() -> psycopg.Connection:
            conn = psycopg.connect(home.database_url)
            Engine("unused", 1).locked(Tx(conn), "w", 1)  # as a run transaction does
            return conn

        conn = await trio.to_thread.run_sync(hold_the_run)
        try:
            second = await rt.claim("w2", [])
            assert second is not None and second.job.job_id == "j1"
        finally:
            conn.rollback()
            conn.close()


async def test_a_run_transaction_that_read_a_job_since_claimed_is_done_again(home):
    async with home.open() as rt:
        rt.add_workflow(flat("w", 2))
        await rt.run_workflow("w")

        def cancel_around_a_claim() -> str:
            engine = Engine("unused", 1)
            with psycopg.connect(home.database_url) as conn:
                tx = Tx(conn)
                loaded = engine.locked(tx, "w", 1)
                assert loaded is not None
                fx = engine.transition(tx, loaded).cancel()  # j0 and j1 read as queued
                with psycopg.connect(home.database_url) as other, other.transaction():
                    got = engine.claim(Tx(other), "w2", [], 30, True)
                    assert got is not None
                with pytest.raises(Stale):
                    engine.write(tx, loaded, fx)
                conn.rollback()
                return got[0].lease.lease_id

        lease_id = await trio.to_thread.run_sync(cancel_around_a_claim)
        await rt.cancel_workflow("w")  # done again, it sees the claim: the lease is revoked
        with pytest.raises(LeaseNotActive):
            await rt.heartbeat(lease_id)
        status = await rt.get_status("w")
        assert {j.id: j.status.value for j in status.jobs} == {"j0": "cancelled", "j1": "cancelled"}


async def test_a_job_no_live_worker_of_any_node_can_take_is_marked_waiting(home):
    from actors.models import WorkflowCreate

    body = {"name": "w", "jobs": [{"id": "a", "command": "true", "required_labels": ["gpu"]}]}
    async with home.open() as rt:
        rt.add_workflow(spec_from_create("w", WorkflowCreate.model_validate(body)))
        await rt.run_workflow("w")
        await rt.register_worker("cpu-only", ["linux"])
        job = (await rt.get_status("w")).jobs[0]
        assert job.waiting is not None and job.waiting.reason == "no_worker"
        assert job.waiting.labels == ["gpu"]
        await rt.register_worker("gpu-box", ["gpu"])
        assert (await rt.get_run("w", 1)).jobs[0].waiting is None


async def test_metrics_read_the_database_gauges_at_most_once_a_second(home):
    def ready(text: bytes) -> list[str]:
        return [line for line in text.decode().splitlines() if line.startswith("wfg_jobs_ready{")]

    async with home.open() as rt:
        rt.add_workflow(flat("w", 2))
        assert ready(await rt.scrape()) == []
        await rt.run_workflow("w")
        assert ready(await rt.scrape()) == []  # the reading of a moment ago
        await trio.sleep(1.0)
        assert ready(await rt.scrape()) == ['wfg_jobs_ready{labels="(none)"} 2.0']


async def test_a_ready_row_that_does_not_say_since_when_stops_no_reader(home):
    # A row written by hand (as the benchmark's `postgres` scenario fills a queue): the
    # waiting watch and /metrics read it as claimable since now, and the node goes on.
    async with home.open() as rt:
        with psycopg.connect(home.database_url, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO label_sets VALUES ('[\"elsewhere\"]', '{elsewhere}');"
                "INSERT INTO jobs (workflow_id, number, job_id, state, ready, label_key, "
                "enqueue_seq, payload) VALUES ('x', 1, 'j', '{}', true, '[\"elsewhere\"]', "
                "nextval('enqueue_seq'), '{}')"
            )
        await trio.sleep(12)  # the watch looks every few seconds
        scraped = (await rt.scrape()).decode()
        assert 'wfg_jobs_ready{labels="elsewhere"} 1.0' in scraped
        assert frozenset({"elsewhere"}) in rt._watch.since  # the watch looked, and lives
