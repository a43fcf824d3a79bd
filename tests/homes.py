"""The engine's two homes for the contract tests: `embedded` and `postgres`.

A contract test module asks for both with a `home` fixture parametrised over
`HOMES` (see `make_home`) and opens its runtime with `home.open(...)`. The
PostgreSQL tests share one schema, emptied before each test and dropped after
the session, in the database `WFG_TEST_DATABASE_URL` names, else in a
throw-away cluster started by pytest-postgresql; with neither they are
skipped, saying so.

Time: the embedded home runs under trio's `MockClock` with autojump. The
PostgreSQL home's deadlines live in the database's clock (`wfg_now_ms()`), so it
runs under `database_clock`: a MockClock whose every jump moves the database's
(frozen) clock by as much, so a test that sleeps 30 s on trio's clock finds 30 s passed
on the database's as well, and the leader (whose loop sleeps on trio's clock
until the next database deadline) does each duty at its instant. It autojumps
only when no transaction is on its way in a thread (trio is idle then, but the
program is not) and the program has been idle for `DB_AUTOJUMP_SECS` of real
time (a notification on its way from the database).
"""

from __future__ import annotations

import os
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import trio
import trio.testing

DB_AUTOJUMP_SECS = 0.01
HOMES = ["embedded", "postgres"]


def base_url(request: pytest.FixtureRequest) -> str:
    """The PostgreSQL server the tests use, or a skip naming what is missing."""
    url = os.environ.get("WFG_TEST_DATABASE_URL")
    if url:
        return url
    try:
        proc = request.getfixturevalue("postgresql_proc")
    except Exception as exc:  # noqa: BLE001 - any reason the cluster cannot start
        pytest.skip(
            "PostgreSQL tests need WFG_TEST_DATABASE_URL or PostgreSQL's server binaries "
            f"(pg_ctl) for pytest-postgresql, run by a non-root user: {exc}"
        )
    return f"postgresql://{proc.user}@{proc.host}:{proc.port}/postgres"


def schema_url(url: str, schema: str) -> str:
    """`url` with `schema` as the search path. The tests' commits do not wait for the
    disk: they test the contract, not durability (a lost server loses their data)."""
    import psycopg

    options = f"-csearch_path={schema} -csynchronous_commit=off"
    return psycopg.conninfo.make_conninfo(url, options=options)


def database_clock(url: str) -> tuple[trio.testing.MockClock, Any]:
    """trio's MockClock whose jumps move the database's clock too (see the module doc);
    with the function that closes its connection.

    trio's run loop accepts only a MockClock for autojumping, and MockClock cannot
    be subclassed: this one's `jump` (which autojump calls too) is wrapped instead.
    """
    import psycopg

    import actors.clock
    from actors.pg.db import Database

    clock = trio.testing.MockClock(autojump_threshold=DB_AUTOJUMP_SECS)
    conn = psycopg.connect(url, autocommit=True)
    # Frozen: the database's time moves only when trio's does, as a MockClock's.
    base_ms = int(time.time() * 1000)
    conn.execute("UPDATE clock SET frozen_ms = %s WHERE id = 1", (base_ms,))
    # `now_ms()` of this trio clock reads the same instants.
    actors.clock._anchor = (clock, base_ms / 1000)
    jump = clock.jump
    jumped = [0.0]

    def jump_both(seconds: float) -> None:
        jump(seconds)
        jumped[0] += seconds
        frozen = base_ms + round(jumped[0] * 1000)
        conn.execute("UPDATE clock SET frozen_ms = %s WHERE id = 1", (frozen,))

    autojump = clock._autojump

    def autojump_when_quiet() -> None:
        # Idle while a transaction is on its way in a thread is not idle: no jump.
        if Database.busy == 0:
            autojump()

    clock.jump = jump_both  # type: ignore[method-assign]
    clock._autojump = autojump_when_quiet  # type: ignore[method-assign]
    return clock, conn.close


@dataclass
class Home:
    name: str
    database_url: str | None = None
    clock: trio.abc.Clock | None = None

    @property
    def postgres(self) -> bool:
        return self.database_url is not None

    @asynccontextmanager
    async def open(self, **kwargs: Any):
        """A runtime of this home; `open_runtime`'s arguments (PostgreSQL ignores
        `data_dir`; `api_only` there would mean a node without duties)."""
        from actors import open_runtime

        if self.postgres:
            assert not kwargs.get("api_only"), "mark the test embedded_only"
            kwargs.pop("data_dir", None)
            kwargs.setdefault("reap_interval_secs", 5.0)
            kwargs["database_url"] = self.database_url
        async with open_runtime(**kwargs) as runtime:
            yield runtime


TABLES = (
    "definitions",
    "workflows",
    "runs",
    "jobs",
    "label_sets",
    "leases",
    "logs",
    "workers",
    "prune_queue",
    "schedules",
    "deliveries",
    "notifications",
)


def session_schema(request: pytest.FixtureRequest):
    """One schema for the session's PostgreSQL tests, migrated once, dropped at the end
    (a schema made per test costs ~0.4 s of DDL; emptying one costs ~2 ms)."""
    import psycopg

    from actors.pg.schema import migrate

    url = base_url(request)
    schema = "t_" + uuid.uuid4().hex[:16]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        scoped = schema_url(url, schema)
        with psycopg.connect(scoped, autocommit=True) as conn:
            migrate(conn)
        yield scoped
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def make_home(request: pytest.FixtureRequest, name: str):
    """The Home for a test; on PostgreSQL the session's schema, emptied for it."""
    if name == "embedded":
        yield Home("embedded", clock=trio.testing.MockClock(autojump_threshold=0))
        return
    import psycopg

    scoped = request.getfixturevalue("pg_schema")
    with psycopg.connect(scoped, autocommit=True) as conn:
        conn.execute("; ".join(f"DELETE FROM {table}" for table in TABLES))
        conn.execute("UPDATE clock SET offset_ms = 0, frozen_ms = NULL")
    clock, close = database_clock(scoped)
    try:
        yield Home("postgres", database_url=scoped, clock=clock)
    finally:
        close()
