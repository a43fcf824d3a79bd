"""`wfg serve`: settings from the environment, port selection, hypercorn on trio."""

from __future__ import annotations

import dataclasses
import errno
import functools
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import trio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve

from actors import Limits, open_runtime
from actors.pg.runtime import describe_url, open_database
from actors.pg.schema import SCHEMA_VERSION
from actors.runtime import DEFAULT_RETAIN_RUNS
from actors.secrets import ENV_PREFIX as SECRET_ENV_PREFIX
from actors.secrets import SecretsError, SecretStore
from actors.spec import DEFAULT_MAX_NAME_CHARS, MAX_NAME_CHARS
from actors.store import StoreError

from . import reasons
from .app import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_SSE_STREAMS,
    DEFAULT_SSE_MAX_SECS,
    SSE_KEEPALIVE_SECS,
    create_app,
)
from .gate import HostPolicy

log = logging.getLogger("workflow_graph")

PORT_SEARCH_SPAN = 100
LOCAL_WORKER_GRACE_SECS = 10
# An idle keep-alive connection, or one still sending its request head, is closed
# after this long: above common proxies' idle timeout, below forever.
KEEP_ALIVE_TIMEOUT_SECS = 75
# A request head (line and headers) bigger than this is refused. A body must arrive
# within Quart's BODY_TIMEOUT (60 s), else 408.
MAX_INCOMPLETE_HEAD_BYTES = 64 * 1024


LOG_FORMATS = ("text", "json")


class SettingsError(ValueError):
    """A setting with a value the server cannot use; the message names it."""


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def _number(env: Mapping[str, str], name: str, default, kind=int, minimum=0):
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name} must be at least {minimum}, got {raw!r}")
    return value


def _list(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in env.get(name, "").split(",") if item.strip())


@functools.cache
def _machine_names() -> tuple[str, ...]:
    """This machine's host name and fully qualified name (one DNS lookup, at start)."""
    names = [socket.gethostname()]
    try:
        names.append(socket.getfqdn())
    except OSError:
        pass
    return tuple(n.lower() for n in names if n and n != "localhost")


def _max_wait_secs(env: Mapping[str, str]) -> float:
    value = _number(env, "MAX_WAIT_SECS", Limits.max_wait_secs, float, 1)
    if value > 60:
        raise SettingsError(f"MAX_WAIT_SECS must be at most 60 (the protocol's bound), got {value}")
    return value


@dataclass(frozen=True)
class ServerSettings:
    """Everything `wfg serve` needs; `from_env` reads the documented variables."""

    host: str = "127.0.0.1"
    port: int = 3000
    workflows_dir: Path = Path("workflows")
    data_dir: str = ".wfg"
    retain_runs: int = DEFAULT_RETAIN_RUNS
    api_only: bool = False
    cors_origins: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = ()
    reap_interval_secs: float = 5.0
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    local_workers: int = 0
    # Tokens stay out of repr, so they never reach a log line.
    api_token: str | None = field(default=None, repr=False)
    worker_token: str | None = field(default=None, repr=False)
    # Secrets of the webhook routes and of notification signatures; also out of repr.
    github_webhook_secret: str | None = field(default=None, repr=False)
    webhook_secret: str | None = field(default=None, repr=False)
    max_workflows: int = Limits.max_workflows
    max_jobs_per_workflow: int = Limits.max_jobs_per_workflow
    max_labels: int = Limits.max_labels
    max_log_bytes_per_job: int = Limits.max_log_bytes_per_job
    max_log_chunks_per_push: int = Limits.max_log_chunks_per_push
    max_wait_secs: float = Limits.max_wait_secs
    max_sse_streams: int = DEFAULT_MAX_SSE_STREAMS
    sse_max_secs: float = DEFAULT_SSE_MAX_SECS
    max_name_chars: int = DEFAULT_MAX_NAME_CHARS
    metrics_public: bool = False
    secrets_dir: Path | None = None
    log_format: str = "text"
    # PostgreSQL shared by every node; None: the embedded engine (SQLite in DATA_DIR).
    database_url: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ServerSettings:
        origins = _list(env, "CORS_ORIGINS")
        port = _number(env, "PORT", 3000)
        if port > 65535:
            raise SettingsError(f"PORT must be at most 65535, got {port}")
        log_format = env.get("LOG_FORMAT", "").strip().lower() or "text"
        if log_format not in LOG_FORMATS:
            raise SettingsError(f"LOG_FORMAT must be text or json, got {log_format!r}")
        secrets_dir = env.get("SECRETS_DIR", "").strip()
        return cls(
            host=env.get("HOST", "").strip() or "127.0.0.1",
            port=port,
            workflows_dir=Path(env.get("WORKFLOWS_DIR", "").strip() or "workflows"),
            data_dir=env.get("DATA_DIR", "").strip() or ".wfg",
            retain_runs=_number(env, "RETAIN_RUNS", DEFAULT_RETAIN_RUNS, int, 1),
            api_only=_flag(env.get("API_ONLY")),
            cors_origins=origins,
            allowed_hosts=_list(env, "ALLOWED_HOSTS"),
            reap_interval_secs=_number(env, "REAP_INTERVAL_SECS", 5.0, float, 0.01),
            max_body_bytes=_number(env, "MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES, int, 1024),
            local_workers=_number(env, "LOCAL_WORKERS", 0),
            api_token=env.get("API_TOKEN", "").strip() or None,
            worker_token=env.get("WORKER_TOKEN", "").strip() or None,
            github_webhook_secret=env.get("GITHUB_WEBHOOK_SECRET", "").strip() or None,
            webhook_secret=env.get("WEBHOOK_SECRET", "").strip() or None,
            max_workflows=_number(env, "MAX_WORKFLOWS", Limits.max_workflows, int, 1),
            max_jobs_per_workflow=_number(
                env, "MAX_JOBS_PER_WORKFLOW", Limits.max_jobs_per_workflow, int, 1
            ),
            max_labels=_number(env, "MAX_LABELS", Limits.max_labels, int, 0),
            max_log_bytes_per_job=_number(
                env, "MAX_LOG_BYTES_PER_JOB", Limits.max_log_bytes_per_job, int, 1024
            ),
            max_log_chunks_per_push=_number(
                env, "MAX_LOG_CHUNKS_PER_PUSH", Limits.max_log_chunks_per_push, int, 1
            ),
            max_wait_secs=_max_wait_secs(env),
            max_sse_streams=_number(env, "MAX_SSE_STREAMS", DEFAULT_MAX_SSE_STREAMS, int, 1),
            sse_max_secs=_number(env, "SSE_MAX_SECS", DEFAULT_SSE_MAX_SECS, float, 1),
            max_name_chars=_number(env, "MAX_NAME_CHARS", DEFAULT_MAX_NAME_CHARS, int, 1),
            metrics_public=_flag(env.get("METRICS_PUBLIC")),
            secrets_dir=Path(secrets_dir) if secrets_dir else None,
            log_format=log_format,
            database_url=env.get("DATABASE_URL", "").strip() or None,
        )

    def host_names(self) -> list[str]:
        """The `Host` names the server answers to besides loopback and the address
        a client connects to: `ALLOWED_HOSTS`, `HOST`, and this machine's names,
        which workers elsewhere use (`http://build-host:3000`)."""
        host = f"[{self.host}]" if ":" in self.host else self.host  # IPv6, as in a URL
        names = [*self.allowed_hosts, host, *_machine_names()]
        return list(dict.fromkeys(n for n in names if n))

    def limits(self) -> Limits:
        """The runtime's share of the limits."""
        return Limits(
            max_workflows=self.max_workflows,
            max_jobs_per_workflow=self.max_jobs_per_workflow,
            max_labels=self.max_labels,
            max_log_bytes_per_job=self.max_log_bytes_per_job,
            max_wait_secs=self.max_wait_secs,
            max_log_chunks_per_push=self.max_log_chunks_per_push,
        )

    def with_overrides(self, *, in_memory: bool | None = None, **changes) -> ServerSettings:
        """A copy with the given (non-None) values; `in_memory` means DATA_DIR=:memory:."""
        changes = {k: v for k, v in changes.items() if v is not None}
        if "workflows_dir" in changes:
            changes["workflows_dir"] = Path(changes["workflows_dir"])
        if in_memory:
            changes["data_dir"] = ":memory:"
        return dataclasses.replace(self, **changes)


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind `port`, else the next free one up to +100, else any free port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    candidates = [port] if port == 0 else list(range(port, min(port + PORT_SEARCH_SPAN, 65535) + 1))
    candidates.append(0)
    last_error: OSError | None = None
    for candidate in candidates:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, candidate))
        except OSError as exc:
            sock.close()
            if exc.errno not in (errno.EADDRINUSE, errno.EACCES):
                raise SettingsError(f"cannot bind {host}:{candidate}: {exc.strerror}") from None
            last_error = exc
            continue
        sock.listen(1024)
        sock.setblocking(False)
        return sock
    raise SettingsError(f"no free port near {port}: {last_error}")


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def _stop_on_signal(stop: trio.Event) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for received in signals:
            # Said, so that a log shows why the server stopped answering.
            log.info("stopping on %s", signal.Signals(received).name)
            stop.set()
            return


async def _run_local_workers(count: int, url: str, stop: trio.Event) -> None:
    """N `wfg worker` processes beside the server; they stop with it, even if it is killed.

    Each worker's stdin is a pipe whose only write end this process holds: the kernel
    closes it however we end, and `--watch-stdin` makes the workers stop then.
    """
    procs = []
    # The server's secrets reach a job through its claim alone, never by inheritance.
    env = {k: v for k, v in os.environ.items() if not k.startswith(SECRET_ENV_PREFIX)}
    env["SERVER_URL"] = url
    lifeline, held = os.pipe()
    try:
        for i in range(count):
            procs.append(
                await trio.lowlevel.open_process(
                    [sys.executable, "-m", "wfg", "worker", "--server", url]
                    + ["--id", f"local-{i + 1}", "--watch-stdin"],
                    stdin=lifeline,
                    env=env,
                    start_new_session=True,  # our Ctrl-C goes to us; we stop them in order
                )
            )
    finally:
        os.close(lifeline)
    try:
        await stop.wait()
    finally:
        with trio.CancelScope(shield=True):
            for proc in procs:
                if proc.returncode is None:
                    proc.send_signal(signal.SIGTERM)
            with trio.move_on_after(LOCAL_WORKER_GRACE_SECS):
                for proc in procs:
                    await proc.wait()
            for proc in procs:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
            os.close(held)


def _hypercorn_config(sock: socket.socket, settings: ServerSettings | None = None) -> Config:
    settings = settings or ServerSettings()
    config = Config()
    # Hypercorn takes the bound socket over and closes it when it stops.
    config.bind = [f"fd://{sock.detach()}"]
    config.accesslog = None
    # A logger, not "-": hypercorn would add its own handler and every line would print twice.
    config.errorlog = logging.getLogger("hypercorn.error")
    config.keep_alive_timeout = KEEP_ALIVE_TIMEOUT_SECS
    config.graceful_timeout = 5
    config.h11_max_incomplete_size = MAX_INCOMPLETE_HEAD_BYTES
    # Hypercorn's read timeout counts from the last bytes the client sent, even while
    # an answer streams out; a log stream's client sends nothing, so the timeout sits
    # just above the longest answer (a stream's lifetime) and only ends dead connections.
    longest = max(settings.sse_max_secs, settings.max_wait_secs, KEEP_ALIVE_TIMEOUT_SECS)
    config.read_timeout = int(longest + 2 * SSE_KEEPALIVE_SECS)
    return config


def _printer(stream: TextIO) -> Callable[[str], None]:
    def say(line: str) -> None:
        print(line, file=stream, flush=True)

    return say


async def _main(settings: ServerSettings) -> None:
    say: Callable[[str], None]
    warn: Callable[[str], None]
    if settings.log_format == "json":
        say, warn = log.info, log.warning  # every line a JSON object, for collectors
    else:
        say, warn = _printer(sys.stdout), _printer(sys.stderr)
    # Bind before anything starts, so a bad HOST or PORT fails fast and plainly.
    sock = bind_socket(settings.host, settings.port)
    # Read by every definition check in this run: files loaded below and API creates.
    MAX_NAME_CHARS.set(settings.max_name_chars)
    host_names = settings.host_names()
    secrets = SecretStore.load(settings.secrets_dir, os.environ)
    async with open_runtime(
        settings.workflows_dir,
        api_only=settings.api_only,
        data_dir=settings.data_dir,
        retain_runs=settings.retain_runs,
        limits=settings.limits(),
        webhook_secret=settings.webhook_secret,
        warn=warn,
        secrets=secrets,
        database_url=settings.database_url,
        reap_interval_secs=settings.reap_interval_secs,
        say=say,
    ) as runtime:
        app = create_app(
            runtime,
            cors_origins=list(settings.cors_origins) or None,
            allowed_hosts=host_names,
            max_body_bytes=settings.max_body_bytes,
            api_token=settings.api_token,
            worker_token=settings.worker_token,
            max_sse_streams=settings.max_sse_streams,
            sse_max_secs=settings.sse_max_secs,
            github_webhook_secret=settings.github_webhook_secret,
            webhook_secret=settings.webhook_secret,
            metrics_public=settings.metrics_public,
        )
        url = _url(sock)
        say(f"workflow-graph: {runtime.workflow_count} workflow(s) loaded")
        if secrets.names:
            say(f"workflow-graph: {len(secrets.names)} secret(s) available to definitions")
        if settings.database_url:
            where = describe_url(settings.database_url)
            say(f"workflow-graph: state is kept in PostgreSQL, {where}")
            if settings.api_only:
                say("workflow-graph: API_ONLY: this node takes none of the time-driven duties")
        else:
            if settings.api_only:
                say("workflow-graph: API_ONLY mode: no DAG cascade and no lease expiry")
            if settings.data_dir == ":memory:":
                say("workflow-graph: state is kept in memory only (DATA_DIR=:memory:)")
            else:
                say(f"workflow-graph: state is kept in {Path(settings.data_dir) / 'state.db'}")
        say(f"workflow-graph: answers to Host {HostPolicy(host_names).describe()}")
        for secret, route in (
            (settings.github_webhook_secret, "POST /api/webhooks/github (GITHUB_WEBHOOK_SECRET)"),
            (settings.webhook_secret, "POST /api/workflows/{id}/dispatch (WEBHOOK_SECRET)"),
        ):
            if secret:
                say(f"workflow-graph: webhook route on: {route}")
        if "*" in settings.cors_origins and not settings.api_token:
            say("workflow-graph: CORS_ORIGINS=* without API_TOKEN: any web page can run jobs here")
        say(f"workflow-graph listening on {url}")
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_stop_on_signal, stop)
            if settings.local_workers:
                nursery.start_soon(_run_local_workers, settings.local_workers, url, stop)
            config = _hypercorn_config(sock, settings)

            async def shutdown_trigger() -> None:
                await stop.wait()
                # Parked claims answer null now, so the graceful stop does not wait them out.
                await runtime.stop_parking()

            await hypercorn_serve(app, config, shutdown_trigger=shutdown_trigger)
            stop.set()


async def _schedule(settings: ServerSettings) -> None:
    """The standalone scheduler: no HTTP; the time-driven duties while it leads."""
    assert settings.database_url is not None
    say = lambda line: print(line, flush=True)  # noqa: E731
    stop = trio.Event()
    async with open_runtime(
        database_url=settings.database_url,
        retain_runs=settings.retain_runs,
        reap_interval_secs=settings.reap_interval_secs,
        limits=settings.limits(),
        webhook_secret=settings.webhook_secret,  # the leader signs run notifications
        say=say,
    ):
        say(
            f"workflow-graph scheduler on {describe_url(settings.database_url)}: "
            "standing by until it holds leadership"
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_stop_on_signal, stop)
            await stop.wait()
            nursery.cancel_scope.cancel()


def _needs_database(settings: ServerSettings, command: str) -> int | None:
    if settings.database_url:
        return None
    print(
        f"workflow-graph: wfg {command} needs DATABASE_URL (the PostgreSQL the nodes share)",
        file=sys.stderr,
    )
    return 2


def scheduler(settings: ServerSettings) -> int:
    """Run the standalone scheduler until SIGINT/SIGTERM; the process exit code."""
    if (code := _needs_database(settings, "scheduler")) is not None:
        return code
    configure_logging(settings.log_format)
    try:
        trio.run(_schedule, settings)
    except StoreError as exc:
        print(f"workflow-graph: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


def migrate(settings: ServerSettings) -> int:
    """Create or upgrade the PostgreSQL schema, then exit."""
    if (code := _needs_database(settings, "migrate")) is not None:
        return code
    assert settings.database_url is not None

    async def run() -> str:
        db = await open_database(settings.database_url or "")
        await trio.to_thread.run_sync(db.close)
        return db.schema

    try:
        schema = trio.run(run)
    except StoreError as exc:
        print(f"workflow-graph: {exc}", file=sys.stderr)
        return 2
    print(
        f"workflow-graph: schema version {SCHEMA_VERSION} ready in "
        f"{describe_url(settings.database_url)} (schema {schema})"
    )
    return 0


def log_formatter(log_format: str) -> logging.Formatter:
    """Plain `logger: LEVEL: message` lines, or (`json`) one JSON object per line with
    `time`, `level`, `logger`, `message` and the ids a line carries (`extra=`)."""
    if log_format == "json":
        from pythonjsonlogger.json import JsonFormatter

        return JsonFormatter(
            "{levelname}{name}{message}",
            style="{",
            rename_fields={"levelname": "level", "name": "logger"},
            timestamp="time",
        )
    return logging.Formatter("%(name)s: %(levelname)s: %(message)s")


def configure_logging(log_format: str) -> None:
    """The server's own log, on stderr, in `log_format`."""
    handler = logging.StreamHandler()
    handler.setFormatter(log_formatter(log_format))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)


def serve(settings: ServerSettings) -> int:
    """Run the server until SIGINT/SIGTERM; returns the process exit code."""
    configure_logging(settings.log_format)
    reasons.install()
    try:
        trio.run(_main, settings)
    except (SettingsError, StoreError, SecretsError) as exc:
        if settings.log_format == "json":
            log.error("workflow-graph: %s", exc)
        else:
            print(f"workflow-graph: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


def main(command=serve, **overrides) -> int:
    """Run `command` (serve, scheduler, migrate) with settings from the environment,
    then `overrides` (the CLI's flags)."""
    try:
        settings = ServerSettings.from_env(os.environ).with_overrides(**overrides)
    except SettingsError as exc:
        print(f"workflow-graph: {exc}", file=sys.stderr)
        return 2
    return command(settings)


__all__ = [
    "ServerSettings",
    "SettingsError",
    "bind_socket",
    "main",
    "migrate",
    "scheduler",
    "serve",
]
