"""The database from trio: one thread hop per transaction, and the notification listener.

psycopg has no trio support, so a transaction is a plain synchronous function
run in a worker thread (`Database.run`) on a pooled connection; nothing awaits
while a transaction is open. Every connection has `statement_timeout` and
`idle_in_transaction_session_timeout` set, so a stuck statement or a node that
dies mid-transaction cannot hold a lock for long.

Failures map to domain errors: a database that cannot be reached, or a
connection lost before the commit was sent, is retried on a fresh connection a
few times and then becomes `Unavailable` (503); a connection lost during the
commit is `Unavailable` at once, since the outcome is unknown and the change was
not acknowledged. Serialization failures and deadlocks are retried.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
import trio
from psycopg import errors as pg_errors
from psycopg_pool import ConnectionPool, PoolTimeout

from ..errors import Unavailable
from .schema import migrate

log = logging.getLogger("workflow_graph.pg")

T = TypeVar("T")

STATEMENT_TIMEOUT_MS = 15_000
IDLE_IN_TRANSACTION_TIMEOUT_MS = 15_000
CONNECT_TIMEOUT_SECS = 5
# How long a request waits for a pooled connection before it is answered 503.
POOL_TIMEOUT_SECS = 5.0
RETRIES = 8
LISTEN_POLL_SECS = 0.5

UNAVAILABLE = "the database is unavailable; try again"


class Stale(Exception):
    """A row the transaction read changed before it wrote it back: do it all again."""


class Tx:
    """One open transaction: the cursor, the transaction's instant, its notifications."""

    __slots__ = ("conn", "cur", "_now", "notes", "_last", "coverage")

    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn
        self.cur = conn.cursor()
        self._now: int | None = None
        self.notes: dict[str, None] = {}  # ordered, each sent once per transaction
        self._last: list[tuple[str, tuple[Any, ...]]] = []
        self.coverage: Any = None  # read by views once per transaction

    @property
    def now(self) -> int:
        """The database's clock in epoch ms, read once per transaction."""
        if self._now is None:
            row = self.one("SELECT wfg_now_ms()")
            assert row is not None
            self._now = row[0]
        return self._now

    def set_now(self, now: int) -> None:
        """The instant, read along with a statement's other columns (`wfg_now_ms()`)."""
        self._now = now

    def one(self, sql: str, params: Any = None) -> Any:
        return self.cur.execute(sql, params).fetchone()

    def all(self, sql: str, params: Any = None) -> list[Any]:
        return self.cur.execute(sql, params).fetchall()

    def exec(self, sql: str, params: Any = None) -> int:
        return self.cur.execute(sql, params).rowcount

    def many(self, sql: str, params: list[Any]) -> int:
        """Run `sql` once per parameter set; the rows it changed in all."""
        if not params:
            return 0
        if len(params) == 1:  # the common case, without executemany's pipeline
            return self.exec(sql, params[0])
        self.cur.executemany(sql, params)
        return self.cur.rowcount

    def last(self, sql: str, params: tuple[Any, ...]) -> None:
        """Run the data-changing `sql` at the end of the transaction, in one statement with
        the others so deferred and the notifications: for writes nothing later reads."""
        self._last.append((sql, params))

    def finish(self, channel: str) -> None:
        """The deferred writes and the notifications, as one statement."""
        if not self._last and not self.notes:
            return
        parts = [f"w{i} AS ({sql})" for i, (sql, _) in enumerate(self._last)]
        params: list[Any] = [p for _, group in self._last for p in group]
        notify = "SELECT count(pg_notify(%s, n)) FROM unnest(%s::text[]) AS n"
        params += [channel, list(self.notes)]
        self.exec(("WITH " + ", ".join(parts) + " " if parts else "") + notify, params)

    def notify(self, *payload: Any) -> None:
        """Send `payload` (JSON) on the engine's channel when the transaction commits."""
        self.notes[json.dumps(payload, separators=(",", ":"))] = None


class Database:
    """A connection pool and the engine's notification channel, in one schema."""

    # Thread hops on their way, process-wide: a test clock jumps only when none is.
    busy = 0

    def __init__(self, url: str, *, max_connections: int = 10) -> None:
        self.url = url
        self.schema = ""
        self.channel = ""
        self._pool = ConnectionPool(
            url,
            min_size=min(2, max_connections),
            max_size=max_connections,
            kwargs=self._connect_kwargs(),
            configure=self._configure,
            timeout=POOL_TIMEOUT_SECS,
            reconnect_timeout=0,  # keep trying to refill the pool while the database is away
            open=False,
            name="wfg",
        )
        self._limiter = trio.CapacityLimiter(max_connections)
        # Told each committed transaction's notifications at once, in trio: this node's
        # own waiters need not wait for the round trip through the database.
        self.on_commit: Callable[[list[Any]], None] | None = None

    @staticmethod
    def _connect_kwargs() -> dict[str, Any]:
        return {
            "autocommit": True,
            "connect_timeout": CONNECT_TIMEOUT_SECS,
            "keepalives": 1,
            "keepalives_idle": 10,
            "keepalives_interval": 5,
            "keepalives_count": 3,
        }

    @staticmethod
    def _configure(conn: psycopg.Connection) -> None:
        # The server's keepalives too: a node whose host vanishes lets go of its
        # locks (the leader's among them) within about half a minute.
        conn.execute(
            f"SET statement_timeout = {STATEMENT_TIMEOUT_MS}; "
            f"SET idle_in_transaction_session_timeout = {IDLE_IN_TRANSACTION_TIMEOUT_MS}; "
            "SET tcp_keepalives_idle = 10; SET tcp_keepalives_interval = 5; "
            "SET tcp_keepalives_count = 3"
        )

    def connect(self) -> psycopg.Connection:
        """A dedicated connection outside the pool (the listener, the leader)."""
        conn = psycopg.connect(self.url, **self._connect_kwargs())
        self._configure(conn)
        return conn

    # --- lifecycle (blocking: called in a thread) ---

    def open(self, *, migrate_schema: bool = True) -> None:
        """Migrate (under an advisory lock), learn the schema, open the pool."""
        with self.connect() as conn:
            if migrate_schema:
                migrate(conn)
            row = conn.execute("SELECT current_schema()").fetchone()
            self.schema = row[0] if row else "public"
        # A channel per schema: engines sharing a database hear only their own.
        self.channel = ("wfg_" + self.schema)[:63]
        self._pool.open(wait=True, timeout=CONNECT_TIMEOUT_SECS * 2)

    def close(self) -> None:
        self._pool.close(timeout=2)

    # --- transactions ---

    async def run(self, fn: Callable[..., T], *args: Any, single: bool = False) -> T:
        """Run `fn(tx, *args)` in one transaction in a worker thread; its result once
        committed. Not cancellable while the thread runs: a change is either committed
        and answered, or not made. `single`: `fn` runs exactly one statement, which is
        its own transaction (no BEGIN and COMMIT round trips)."""
        result, notes = await self.thread(self._run, fn, args, single, limiter=self._limiter)
        if notes and self.on_commit is not None:
            for note in notes:
                self.on_commit(json.loads(note))
        return result

    async def thread(self, fn: Callable[..., T], *args: Any, limiter=None) -> T:
        """`fn(*args)` in a worker thread (a blocking database call)."""
        Database.busy += 1
        try:
            return await trio.to_thread.run_sync(fn, *args, limiter=limiter)
        finally:
            Database.busy -= 1

    def _run(
        self, fn: Callable[..., T], args: tuple[Any, ...], single: bool
    ) -> tuple[T, list[str]]:
        for attempt in range(RETRIES):
            committing = single  # one statement: its outcome is unknown once sent
            try:
                with self._pool.connection() as conn:
                    with contextlib.nullcontext() if single else conn.transaction():
                        tx = Tx(conn)
                        result = fn(tx, *args)
                        tx.finish(self.channel)
                        committing = True
                    return result, list(tx.notes)
            except (pg_errors.SerializationFailure, pg_errors.DeadlockDetected, Stale):
                if attempt == RETRIES - 1:
                    raise Unavailable("the database kept refusing the change; try again") from None
                time.sleep(0.005 * (attempt + 1))
            except PoolTimeout:
                raise Unavailable(UNAVAILABLE) from None
            except psycopg.OperationalError as exc:
                # Lost before the commit was sent: nothing happened; try a fresh connection.
                if committing or attempt == RETRIES - 1 or not _connection_lost(exc):
                    log.warning("database error: %s", " ".join(str(exc).split()))
                    raise Unavailable(UNAVAILABLE) from None
                # The database may have restarted: drop every idle connection it broke.
                try:
                    self._pool.check()
                except psycopg.Error:
                    pass
                time.sleep(0.05 * (attempt + 1))
        raise AssertionError("unreachable")

    # --- notifications ---

    async def listen(self, on_note: Callable[[list[Any]], None], on_connect: Callable[[], None]):
        """Deliver every notification on the channel to `on_note` (in trio), forever;
        after each (re)connection call `on_connect`, since notifications sent while
        the listener was away are lost."""
        token = trio.lowlevel.current_trio_token()
        stop = threading.Event()
        quiet = False  # said once per outage, not once per retry
        try:
            while True:
                try:
                    conn = await self.thread(self._listening_connection)
                except psycopg.Error as exc:
                    if not quiet:
                        reason = " ".join(str(exc).split())
                        log.warning("cannot listen for notifications (%s); retrying", reason)
                        quiet = True
                    await trio.sleep(1.0)
                    continue
                quiet = False
                on_connect()
                try:
                    await trio.to_thread.run_sync(
                        self._pump, conn, on_note, token, stop, abandon_on_cancel=True
                    )
                except psycopg.Error as exc:
                    reason = " ".join(str(exc).split())
                    log.warning("lost the notification connection (%s); reconnecting", reason)
                    await trio.sleep(0.2)
        finally:
            stop.set()

    def _listening_connection(self) -> psycopg.Connection:
        conn = self.connect()
        conn.execute(f'LISTEN "{self.channel}"')
        return conn

    @staticmethod
    def _pump(conn: psycopg.Connection, on_note, token, stop: threading.Event) -> None:
        with conn:
            while not stop.is_set():
                for note in conn.notifies(timeout=LISTEN_POLL_SECS):
                    try:
                        payload = json.loads(note.payload)
                    except ValueError:
                        continue
                    try:
                        trio.from_thread.run_sync(on_note, payload, trio_token=token)
                    except trio.RunFinishedError:
                        return


def _connection_lost(exc: psycopg.OperationalError) -> bool:
    """Whether the error is the connection going away (rather than, say, a timeout)."""
    return not isinstance(exc, pg_errors.QueryCanceled | pg_errors.LockNotAvailable)
