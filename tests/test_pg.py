"""What only the PostgreSQL home has: its schema, its migrations and its row design."""

from __future__ import annotations

import os
import subprocess
import sys

import psycopg
import pytest
import trio
from homes import make_home

from actors.pg.db import Tx
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
