"""The `wfg` command: manage and watch workflows on a server, serve, run a worker."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import click

from actors.models import JobStatus, LogChunk, Run, RunAccepted, RunStatus

from . import _render as render
from ._errors import ClientError, ServerUnreachable, WorkflowApiError
from .client import DEFAULT_SERVER_URL, Client

# Exit codes, also listed in `wfg --help`.
EXIT_OK = 0
EXIT_FAILED = 1  # an API error, a failed or cancelled run, an invalid definition
EXIT_UNREACHABLE = 2  # no server at --server
EXIT_USAGE = 2  # the command line is wrong (click's code for it too)
EXIT_INTERRUPTED = 130  # Ctrl-C while following

EPILOG = """\b
Exit status:
  0  success (for `run --follow` and `rerun --follow`: the run succeeded)
  1  the server answered with an error, a followed run failed or was
     cancelled, or a definition file is invalid
  2  the server cannot be reached, or the command line is wrong
  130  interrupted (Ctrl-C) while following; the run continues on the server

\b
Environment: SERVER_URL (default http://localhost:3000), API_TOKEN,
WORKER_TOKEN, NO_COLOR (plain output, as when piped).
"""


def fail(message: str, code: int) -> NoReturn:
    """One clear line on stderr, then exit: never a traceback for a known failure."""
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _usage_error(exc: click.UsageError) -> NoReturn:
    """A wrong command line as one line too, pointing at the command's help."""
    lines = [line.strip() for line in exc.format_message().splitlines() if line.strip()]
    message = "; ".join(lines).rstrip(".")
    where = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
    fail(f"{message}{where}", EXIT_USAGE)


class _Commands(click.Group):
    """The command group, turning usage and client errors into one line and an exit code."""

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as exc:
            _usage_error(exc)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as exc:
            _usage_error(exc)
        except ServerUnreachable as exc:
            fail(str(exc), EXIT_UNREACHABLE)
        except WorkflowApiError as exc:
            fail(str(exc), EXIT_FAILED)
        except ClientError as exc:
            fail(str(exc), EXIT_FAILED)


@dataclass
class _State:
    """What the group's options give every command: the server and a lazy client."""

    server: str
    _client: Client | None = field(default=None, repr=False)

    def client(self) -> Client:
        if self._client is None:
            self._client = Client(self.server)
            click.get_current_context().call_on_close(self._client.close)
        return self._client


pass_state = click.make_pass_decorator(_State)
json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print the API's JSON instead of a table."
)
run_option = click.option(
    "--run",
    "number",
    type=click.IntRange(min=1),
    metavar="N",
    help="Run N instead of the latest run (see `wfg runs`).",
)
follow_run_option = click.option(
    "--follow",
    "-f",
    is_flag=True,
    help="Watch the run until it ends; exit 1 unless it succeeds.",
)
reconnect_option = click.option(
    "--reconnect",
    "reconnect_secs",
    type=click.FloatRange(min=0),
    default=60,
    show_default=True,
    metavar="SECS",
    help="With --follow: when the server goes away, keep trying this long (0: give up at once).",
)


@click.group(cls=_Commands, epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--server",
    envvar="SERVER_URL",
    default=DEFAULT_SERVER_URL,
    show_default=True,
    metavar="URL",
    help="The server's base URL (env SERVER_URL); several, comma-separated: the first "
    "that answers.",
)
@click.version_option(package_name="workflow-graph", prog_name="wfg")
@click.pass_context
def cli(ctx: click.Context, server: str) -> None:
    """Run and watch DAG workflows of shell jobs on a workflow-graph server."""
    ctx.obj = _State(server=server.rstrip("/"))


def _print_json(value: Any) -> None:
    click.echo(render.dump_json(value))


# --- reads --------------------------------------------------------------------


@cli.command("list")
@click.option(
    "--status",
    type=click.Choice([s.value for s in JobStatus]),
    help="Only workflows with at least one job in this status.",
)
@click.option("--limit", type=click.IntRange(min=0), help="At most this many (server default 100).")
@click.option("--offset", type=click.IntRange(min=0), help="Skip this many.")
@json_option
@pass_state
def list_command(
    state: _State, status: str | None, limit: int | None, offset: int | None, as_json: bool
) -> None:
    """List workflows with their latest run's number and status."""
    workflows = state.client().list_workflows(limit=limit, offset=offset, status=status)
    if as_json:
        _print_json(workflows)
        return
    out = render.make_output()
    if not workflows:
        out.console.print("no workflows", markup=False)
        return
    render.print_rows(out, render.workflows_rows(workflows))


@cli.command("status")
@click.argument("workflow_id", metavar="ID")
@run_option
@json_option
@pass_state
def status_command(state: _State, workflow_id: str, number: int | None, as_json: bool) -> None:
    """Show a run's jobs: the latest run, or run N.

    The header names the run, its status, what started it and its inputs; a
    scheduled workflow's next due times follow the table.
    With --json: the workflow's status, or with --run that run.
    """
    client = state.client()
    run: Run | None
    if number is not None:
        run = client.get_run(workflow_id, number)
        if as_json:
            _print_json(run)
            return
        workflow = client.get_status(workflow_id)
    else:
        workflow = client.get_status(workflow_id)
        if as_json:
            _print_json(workflow)
            return
        run = client.get_run(workflow_id, workflow.run.number) if workflow.run else None
    out = render.make_output()
    rows = render.jobs_rows(run.jobs if run else workflow.jobs, ran=run is not None)
    render.print_rows(out, rows, title=render.status_title(workflow, run))
    if "schedule" in workflow.trigger:
        for line in render.schedule_lines(client.schedules(workflow_id)):
            out.console.print(line, markup=False)


@cli.command("runs")
@click.argument("workflow_id", metavar="ID")
@click.option(
    "--limit", "-L", type=click.IntRange(min=1), help="At most this many (server default 20)."
)
@click.option("--offset", type=click.IntRange(min=0), help="Skip this many of the newest.")
@json_option
@pass_state
def runs_command(
    state: _State, workflow_id: str, limit: int | None, offset: int | None, as_json: bool
) -> None:
    """List a workflow's runs, newest first."""
    runs = state.client().list_runs(workflow_id, limit=limit, offset=offset)
    if as_json:
        _print_json(runs)
        return
    out = render.make_output()
    if not runs:
        out.console.print(f"no runs of {workflow_id}", markup=False)
        return
    render.print_rows(out, render.runs_rows(runs))


@cli.command("workers")
@json_option
@pass_state
def workers_command(state: _State, as_json: bool) -> None:
    """List registered workers."""
    workers = state.client().list_workers()
    if as_json:
        _print_json(workers)
        return
    out = render.make_output()
    if not workers:
        out.console.print("no workers registered", markup=False)
        return
    render.print_rows(out, render.workers_rows(workers))


@cli.command("logs")
@click.argument("workflow_id", metavar="ID")
@click.argument("job_id", metavar="JOB")
@run_option
@click.option("--follow", "-f", is_flag=True, help="Stream the log live until the job ends.")
@reconnect_option
@json_option
@pass_state
def logs_command(
    state: _State,
    workflow_id: str,
    job_id: str,
    number: int | None,
    follow: bool,
    reconnect_secs: float,
    as_json: bool,
) -> None:
    """Print a job's log in the latest run, or in run N.

    What the job wrote to stderr goes to stderr. A line such as `── attempt 2 ──`
    marks where a retry's output starts. With --json, the log chunks: a JSON
    array, or with --follow one chunk per line.
    """
    from ._follow import LogWriter, Reconnector, follow_log

    client = state.client()
    write: Callable[[LogChunk], None]
    if as_json:
        write = lambda chunk: click.echo(chunk.model_dump_json())  # noqa: E731
    else:
        write = LogWriter(render.is_plain())
    if not follow:
        chunks = client.get_logs(workflow_id, job_id, run=number)
        if as_json:
            _print_json(chunks)
            return
        for chunk in chunks:
            write(chunk)
        return
    try:
        follow_log(client, workflow_id, job_id, write, Reconnector(reconnect_secs), run=number)
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)


# --- changes ------------------------------------------------------------------


def _parse_inputs(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> dict[str, str]:
    """`-i KEY=VALUE` options as the run's inputs; the server reads each value as the
    input's declared type."""
    inputs: dict[str, str] = {}
    for raw in values:
        key, sep, value = raw.partition("=")
        if not sep:
            raise click.BadParameter(f"{raw!r} is not KEY=VALUE", ctx, param)
        if not key:
            raise click.BadParameter(f"{raw!r} has no KEY before '='", ctx, param)
        if key in inputs:
            raise click.BadParameter(f"input {key!r} is given twice", ctx, param)
        inputs[key] = value
    return inputs


@cli.command("run")
@click.argument("workflow_id", metavar="ID")
@click.option(
    "--input",
    "-i",
    "inputs",
    multiple=True,
    metavar="KEY=VALUE",
    callback=_parse_inputs,
    help="An input of the run (repeatable), checked against the workflow's declared inputs.",
)
@follow_run_option
@reconnect_option
@json_option
@pass_state
def run_command(
    state: _State,
    workflow_id: str,
    inputs: dict[str, str],
    follow: bool,
    reconnect_secs: float,
    as_json: bool,
) -> None:
    """Start a run of a workflow, with inputs.

    Prints the run's number and whether it started or waits (queued) behind
    its concurrency group. With --json: the API's answer, or with --follow
    the run once it has ended.
    """
    accepted = state.client().run_workflow(workflow_id, inputs or None)
    _started(state, accepted, None, follow, reconnect_secs, as_json)


@cli.command("rerun")
@click.argument("workflow_id", metavar="ID")
@click.argument("number", metavar="[NUMBER]", type=click.IntRange(min=1), required=False)
@click.option(
    "--failed", is_flag=True, help="Keep the jobs that succeeded; run the failed and the rest."
)
@follow_run_option
@reconnect_option
@json_option
@pass_state
def rerun_command(
    state: _State,
    workflow_id: str,
    number: int | None,
    failed: bool,
    follow: bool,
    reconnect_secs: float,
    as_json: bool,
) -> None:
    """Re-run a finished run (the latest by default).

    The new run gets the next number and the same inputs. With --json: the
    API's answer, or with --follow the new run once it has ended.
    """
    client = state.client()
    if number is None:
        latest = client.get_status(workflow_id).run
        if latest is None:
            fail(f"workflow '{workflow_id}' has never run: nothing to re-run", EXIT_FAILED)
        number = latest.number
    accepted = client.rerun(workflow_id, number, failed_only=failed)
    _started(state, accepted, number, follow, reconnect_secs, as_json)


def _started(
    state: _State,
    accepted: RunAccepted,
    rerun_of: int | None,
    follow: bool,
    reconnect_secs: float,
    as_json: bool,
) -> None:
    """Report a run just accepted; with `follow`, watch it and exit 0 iff it succeeds."""
    from ._follow import Reconnector, follow_run, snapshots

    if not follow:
        if as_json:
            _print_json(accepted)
        else:
            click.echo(render.accepted_line(accepted, rerun_of))
        return
    client = state.client()
    workflow_id, number = accepted.workflow_id, accepted.number
    reconnect = Reconnector(reconnect_secs)
    try:
        if as_json:
            *_, final = snapshots(client, workflow_id, number, reconnect=reconnect)
            _print_json(final)
        else:
            out = render.make_output()
            out.console.print(render.accepted_line(accepted, rerun_of), markup=False)
            final = follow_run(client, workflow_id, number, out, reconnect)
    except KeyboardInterrupt:
        click.echo(f"\nstopped watching; run {number} of {workflow_id} continues", err=True)
        click.echo(f"(wfg cancel {workflow_id} --run {number} stops it)", err=True)
        sys.exit(EXIT_INTERRUPTED)
    sys.exit(EXIT_OK if final.status == RunStatus.success else EXIT_FAILED)


@cli.command("cancel")
@click.argument("workflow_id", metavar="ID")
@click.option(
    "--run",
    "number",
    type=click.IntRange(min=1),
    metavar="N",
    help="Cancel run N only (queued or running).",
)
@pass_state
def cancel_command(state: _State, workflow_id: str, number: int | None) -> None:
    """Cancel a workflow's unfinished runs, or run N only.

    Their queued or running jobs become cancelled and workers are told to stop.
    """
    client = state.client()
    if number is None:
        client.cancel_workflow(workflow_id)
        click.echo(f"cancelled {workflow_id}")
        return
    answer = client.cancel_run(workflow_id, number)
    if answer.status == RunStatus.cancelled:
        click.echo(f"cancelled run {number} of {workflow_id}")
    else:
        click.echo(f"run {number} of {workflow_id} had already ended: {answer.status.value}")


@cli.command("create")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@json_option
@pass_state
def create_command(state: _State, file: Path, as_json: bool) -> None:
    """Create a workflow from a definition file; prints its new id.

    The file is checked here first (each problem printed as with `validate`),
    then sent as it is written: the server reads it exactly as it reads
    `WORKFLOWS_DIR`, and checks the secrets it names.
    """
    from actors.spec import DefinitionError

    from ._calls import workflow_create_from_file

    try:
        body = workflow_create_from_file(file)
    except DefinitionError as exc:
        for line in _problem_lines(file, exc):
            click.echo(f"error: {line}", err=True)
        sys.exit(EXIT_FAILED)
    workflow = state.client().create_workflow(body)
    if as_json:
        _print_json(workflow)
    else:
        click.echo(workflow.id)


@cli.command("validate")
@click.argument(
    "files", nargs=-1, required=True, type=click.Path(path_type=Path), metavar="FILE..."
)
def validate_command(files: tuple[Path, ...]) -> None:
    """Check definition files offline, as the server would load them.

    Prints `FILE: ok` for each good file and, on stderr, one line per problem
    of each bad one, `FILE:LINE:COLUMN: reason`; exits 1 if any is bad. With
    SECRETS_DIR or WFG_SECRET_<NAME> variables set, the secrets a definition
    names must be among them; otherwise secret names are not checked.
    """
    from actors.definitions import load_definition
    from actors.spec import DefinitionError

    secrets = _known_secrets()
    bad = 0
    for file in files:
        try:
            load_definition(file, secrets=secrets)
        except DefinitionError as exc:
            bad += 1
            for line in _problem_lines(file, exc):
                click.echo(line, err=True)
        else:
            click.echo(f"{file}: ok")
    sys.exit(EXIT_FAILED if bad else EXIT_OK)


def _problem_lines(file: Path, exc: Exception) -> list[str]:
    """`FILE:LINE:COLUMN: reason` per problem (`FILE: reason` when it has no place)."""
    lines = []
    for problem in getattr(exc, "problems", ()):
        where = f"{file}:{problem.line}:{problem.column}" if problem.line else str(file)
        lines.append(f"{where}: {' '.join(problem.message.split())}")
    return lines or [f"{file}: {exc}"]


def _known_secrets() -> frozenset[str] | None:
    """The secret names this machine defines, read as the server reads them (files in
    SECRETS_DIR, WFG_SECRET_<NAME> variables); None when neither is set (names are
    then not checked)."""
    import os

    from actors.secrets import ENV_PREFIX, SecretsError, SecretStore

    directory = os.environ.get("SECRETS_DIR") or None
    if directory is None and not any(key.startswith(ENV_PREFIX) for key in os.environ):
        return None
    try:
        return SecretStore.load(directory).names
    except SecretsError as exc:
        fail(str(exc), EXIT_FAILED)


# --- the server and the worker, implemented in web/ and wfg/agent.py ------------


@cli.command("serve")
@click.option(
    "--port",
    type=int,
    default=None,
    help="Port to listen on (env PORT, default 3000; 0 picks one).",
)
@click.option("--host", default=None, help="Address to bind (env HOST).")
@click.option(
    "--workflows-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Definitions to load (env WORKFLOWS_DIR).",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Where state is kept (env DATA_DIR).",
)
@click.option("--in-memory", is_flag=True, default=None, help="Keep no state on disk.")
@click.option(
    "--api-only",
    is_flag=True,
    default=None,
    help="API without the DAG cascade or lease expiry (env API_ONLY).",
)
@click.option(
    "--local-workers",
    type=click.IntRange(min=0),
    default=None,
    help="Run N workers in the server process (default 0).",
)
def serve_command(**options: Any) -> None:
    """Run the server (settings from the environment, overridden by options)."""
    from web.server import main as serve_main

    sys.exit(serve_main(**options))


@cli.command("scheduler")
def scheduler_command() -> None:
    """Run the standalone scheduler of a PostgreSQL deployment (env DATABASE_URL):
    no HTTP; lease expiry, backoff, timeouts and pruning while it holds leadership."""
    from web.server import main as server_main
    from web.server import scheduler

    sys.exit(server_main(scheduler))


@cli.command("migrate")
def migrate_command() -> None:
    """Create or upgrade the PostgreSQL schema (env DATABASE_URL), then exit."""
    from web.server import main as server_main
    from web.server import migrate

    sys.exit(server_main(migrate))


def main(argv: list[str] | None = None) -> None:
    """The console-script entry point."""
    cli.main(args=argv, prog_name="wfg")


def _add_worker_command(add: Callable[[click.Command, str], None]) -> None:
    # The agent is written separately; `wfg` works without it until it lands.
    try:
        from wfg.agent import worker_command
    except ModuleNotFoundError as exc:
        if exc.name == "wfg.agent":
            return
        add(_broken_worker_command(exc), "worker")
    except ImportError as exc:
        # A broken agent must not take `wfg serve` and the rest down with it.
        add(_broken_worker_command(exc), "worker")
    else:
        add(worker_command, "worker")


def _broken_worker_command(exc: ImportError) -> click.Command:
    @click.command(context_settings={"ignore_unknown_options": True})
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def worker(args: tuple[str, ...]) -> None:
        """Run a worker (unavailable: the agent failed to import)."""
        fail(f"the worker agent cannot be loaded: {exc}", EXIT_FAILED)

    return worker


_add_worker_command(cli.add_command)
