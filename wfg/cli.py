"""The `wfg` command: manage and watch workflows on a server, serve, run a worker."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import click

from actors.models import JobStatus, LogChunk

from . import _render as render
from ._errors import ClientError, ServerUnreachable, WorkflowApiError
from .client import DEFAULT_SERVER_URL, Client

# Exit codes, also listed in `wfg --help`.
EXIT_OK = 0
EXIT_FAILED = 1  # an API error, a failed or cancelled run, an invalid definition
EXIT_UNREACHABLE = 2  # no server at --server; click uses 2 for usage errors too
EXIT_INTERRUPTED = 130  # Ctrl-C while following

EPILOG = """\b
Exit status:
  0  success (for `run --follow`: every job succeeded)
  1  the server answered with an error, a run failed or was cancelled,
     or a definition file is invalid
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


class _Commands(click.Group):
    """The command group, turning client errors into one line and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
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
    help="The server's base URL (env SERVER_URL).",
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
    """List workflows."""
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
@json_option
@pass_state
def status_command(state: _State, workflow_id: str, as_json: bool) -> None:
    """Show a workflow and every job's state."""
    workflow = state.client().get_status(workflow_id)
    if as_json:
        _print_json(workflow)
        return
    out = render.make_output()
    render.print_rows(out, render.jobs_rows(workflow), title=render.workflow_title(workflow))


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
@click.option("--follow", "-f", is_flag=True, help="Stream the log live until the job ends.")
@reconnect_option
@json_option
@pass_state
def logs_command(
    state: _State,
    workflow_id: str,
    job_id: str,
    follow: bool,
    reconnect_secs: float,
    as_json: bool,
) -> None:
    """Print a job's log (its latest run); stderr output goes to stderr.

    A line such as `── attempt 2 ──` marks where a retry's output starts.
    With --json, the log chunks: a JSON array, or with --follow one chunk per line.
    """
    from ._follow import LogWriter, Reconnector, follow_log

    client = state.client()
    write: Callable[[LogChunk], None]
    if as_json:
        write = lambda chunk: click.echo(chunk.model_dump_json())  # noqa: E731
    else:
        write = LogWriter(render.is_plain())
    if not follow:
        chunks = client.get_job_logs(workflow_id, job_id)
        if as_json:
            _print_json(chunks)
            return
        for chunk in chunks:
            write(chunk)
        return
    try:
        follow_log(client, workflow_id, job_id, write, Reconnector(reconnect_secs))
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)


# --- changes ------------------------------------------------------------------


@cli.command("run")
@click.argument("workflow_id", metavar="ID")
@click.option(
    "--follow",
    "-f",
    is_flag=True,
    help="Watch the run until it ends; exit 1 unless every job succeeds.",
)
@reconnect_option
@json_option
@pass_state
def run_command(
    state: _State, workflow_id: str, follow: bool, reconnect_secs: float, as_json: bool
) -> None:
    """Start a run of a workflow.

    With --json, print the workflow's status after starting it (with --follow,
    its final status instead of the live view).
    """
    from ._follow import Reconnector, follow_run, snapshots

    client = state.client()
    client.run_workflow(workflow_id)
    if not follow:
        if as_json:
            _print_json(client.get_status(workflow_id))
        else:
            click.echo(f"started {workflow_id}")
        return
    reconnect = Reconnector(reconnect_secs)
    try:
        if as_json:
            *_, final = snapshots(client, workflow_id, reconnect=reconnect)
            _print_json(final)
        else:
            final = follow_run(client, workflow_id, render.make_output(), reconnect)
    except KeyboardInterrupt:
        click.echo(f"\nstopped watching; {workflow_id} continues on the server", err=True)
        click.echo(f"(wfg cancel {workflow_id} stops it)", err=True)
        sys.exit(EXIT_INTERRUPTED)
    sys.exit(EXIT_OK if render.run_succeeded(final) else EXIT_FAILED)


@cli.command("cancel")
@click.argument("workflow_id", metavar="ID")
@pass_state
def cancel_command(state: _State, workflow_id: str) -> None:
    """Cancel every queued or running job of a workflow."""
    state.client().cancel_workflow(workflow_id)
    click.echo(f"cancelled {workflow_id}")


@cli.command("create")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@json_option
@pass_state
def create_command(state: _State, file: Path, as_json: bool) -> None:
    """Create a workflow from a definition file; prints its new id."""
    from actors.spec import DefinitionError

    from ._calls import workflow_create_from_file

    try:
        body = workflow_create_from_file(file)
    except DefinitionError as exc:
        fail(f"{file}: {exc}", EXIT_FAILED)
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

    Prints `FILE: ok` for each good file and `FILE: <reason>` on stderr for
    each bad one; exits 1 if any is bad.
    """
    from actors.definitions import load_definition
    from actors.spec import DefinitionError

    bad = 0
    for file in files:
        try:
            load_definition(file)
        except DefinitionError as exc:
            bad += 1
            click.echo(f"{file}: {exc}", err=True)
        else:
            click.echo(f"{file}: ok")
    sys.exit(EXIT_FAILED if bad else EXIT_OK)


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
