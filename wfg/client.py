"""`Client` and `AsyncClient`: the REST API, typed with the wire models.

Both mirror the TypeScript `WorkflowClient`: one method per endpoint, the
answer parsed into its `actors.models` model, and every non-2xx answer raised
as `WorkflowApiError`. A server that cannot be reached raises
`ServerUnreachable`; both derive from `ClientError`.

    with Client("http://localhost:3000") as client:
        accepted = client.run_workflow("deploy", inputs={"env": "prod"})
        run = client.get_run("deploy", accepted.number)

`AsyncClient` has the same methods as coroutines and works under trio or
asyncio; the worker agent uses it for the worker protocol.
"""

from __future__ import annotations

import os
from collections.abc import (
    AsyncGenerator,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import aclosing, contextmanager
from types import TracebackType
from typing import Any, Self, TypeVar

import httpx

from actors.models import (
    Claim,
    LogChunk,
    NotificationStatus,
    Run,
    RunAccepted,
    ScheduleInfo,
    WorkerInfo,
    Workflow,
)

from . import _calls as calls
from ._calls import ChunkSource, WorkflowSource
from ._errors import ClientError, ServerUnreachable
from ._sse import Event, EventParser

__all__ = ["AsyncClient", "Client", "DEFAULT_SERVER_URL"]

T = TypeVar("T")

DEFAULT_SERVER_URL = "http://localhost:3000"
DEFAULT_TIMEOUT_SECS = 10.0


def server_urls(base_url: str | Sequence[str] | None) -> list[str]:
    """The servers to use, in order: a URL, comma-separated URLs or a list of them
    (default: `SERVER_URL`, else http://localhost:3000)."""
    given = base_url or os.environ.get("SERVER_URL") or DEFAULT_SERVER_URL
    parts = given.split(",") if isinstance(given, str) else list(given)
    urls = [part.strip().rstrip("/") for part in parts if part.strip()]
    if not urls:
        raise ValueError("no server URL given")
    return urls


class _Base:
    """What both clients share: the servers, the tokens and error translation.

    With several server URLs (nodes of one cluster behind no load balancer), a
    request whose connection cannot be made moves on to the next server at once:
    a refused connection never reached a server, so no call can be applied twice.
    """

    def __init__(
        self,
        base_url: str | Sequence[str] | None = None,
        *,
        token: str | None = None,
        worker_token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_SECS,
    ) -> None:
        self.servers = server_urls(base_url)
        self.base_url = self.servers[0]
        self._token = token if token is not None else os.environ.get("API_TOKEN") or None
        worker = worker_token if worker_token is not None else os.environ.get("WORKER_TOKEN")
        # A deployment with a single token uses it for the worker protocol too.
        self._worker_token = worker or self._token
        self._timeout = timeout

    def _headers(self, call: calls.Call[Any]) -> dict[str, str]:
        token = self._worker_token if call.worker else self._token
        return {"Authorization": f"Bearer {token}"} if token else {}

    def _request_args(self, call: calls.Call[Any]) -> dict[str, Any]:
        args: dict[str, Any] = {
            "headers": self._headers(call),
            "params": call.params,
            "timeout": self._timeout + call.extra_wait_secs,
        }
        body = call.json()
        if body is not None:
            args["json"] = body
        return args

    def _stream_args(self, last_event_id: str | None) -> dict[str, Any]:
        # The stream idles between chunks (keep-alives every 15 s), so no read timeout.
        timeout = httpx.Timeout(self._timeout, read=None)
        headers = self._headers(_READ_CALL)
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        return {"headers": headers, "timeout": timeout}

    def _next_server(self) -> bool:
        """Point at the next server, if there are several; True if it moved."""
        if len(self.servers) < 2:
            return False
        index = self.servers.index(self.base_url)
        self.base_url = self.servers[(index + 1) % len(self.servers)]
        self._http.base_url = httpx.URL(self.base_url)
        return True

    _http: Any

    def _translate(self, exc: httpx.HTTPError) -> ClientError:
        """The client error for a transport failure (an answer never arrived)."""
        if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
            return ServerUnreachable(self.base_url, _connect_reason(exc))
        if isinstance(exc, httpx.TimeoutException):
            return ClientError(f"server at {self.base_url} did not answer in time ({exc!r})")
        return ClientError(f"request to {self.base_url} failed: {exc or type(exc).__name__}")


# Streams are reads: they carry the API token.
_READ_CALL: calls.Call[None] = calls.Call("GET", "/", calls.ignore)


def _connect_reason(exc: httpx.HTTPError) -> str:
    """A short human reason, e.g. `connection refused`, from a connect failure."""
    if isinstance(exc, httpx.ConnectTimeout):
        return "connection timed out"
    text = str(exc) or type(exc).__name__
    lowered = text.lower()
    if "refused" in lowered:
        return "connection refused"
    if "name or service not known" in lowered or "nodename nor servname" in lowered:
        return "unknown host"
    # httpx messages look like "[Errno 111] Connection refused": drop the errno.
    return text.split("] ", 1)[-1].lower()


def _log_event(event: Event | None) -> tuple[str | None, LogChunk] | None:
    """A log event's id and chunk; None for other events (and for no event yet)."""
    if event is None or event.event not in ("log", "message"):
        return None
    try:
        return event.id, LogChunk.model_validate_json(event.data)
    except ValueError as exc:
        raise ClientError(f"unexpected log event: {event.data[:200]!r}") from exc


class Client(_Base):
    """The synchronous client. Use as a context manager, or call `close()`.

    `base_url` defaults to `SERVER_URL`, then `http://localhost:3000`; `token`
    to `API_TOKEN` and `worker_token` to `WORKER_TOKEN`, sent as
    `Authorization: Bearer ...` on reads/management and worker calls respectively.
    """

    def __init__(
        self,
        base_url: str | Sequence[str] | None = None,
        *,
        token: str | None = None,
        worker_token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_SECS,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(base_url, token=token, worker_token=worker_token, timeout=timeout)
        self._http = httpx.Client(base_url=self.base_url, transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _send(self, call: calls.Call[T]) -> T:
        start = self.base_url
        while True:
            try:
                response = self._http.request(call.method, call.path, **self._request_args(call))
                break
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                error = self._translate(exc)
                if not self._next_server() or self.base_url == start:
                    raise error from exc
            except httpx.HTTPError as exc:
                self._next_server()  # the next call tries another server
                raise self._translate(exc) from exc
        calls.raise_for_status(response)
        return call.read(response)

    # --- workflows ---

    def list_workflows(
        self, *, limit: int | None = None, offset: int | None = None, status: str | None = None
    ) -> list[Workflow]:
        """`GET /api/workflows`; `status` keeps workflows with a job in that status."""
        return self._send(calls.list_workflows(limit, offset, status))

    def get_status(self, workflow_id: str) -> Workflow:
        """The workflow with every job's current state."""
        return self._send(calls.get_status(workflow_id))

    def create_workflow(self, source: WorkflowSource) -> Workflow:
        """Create from a `WorkflowCreate`, its dict, or a definition file path."""
        return self._send(calls.create_workflow(calls.workflow_create(source)))

    def run_workflow(
        self, workflow_id: str, inputs: Mapping[str, Any] | None = None
    ) -> RunAccepted:
        """Start a run (202): its number, and `running`, or `queued` behind its
        concurrency group.

        `inputs` are checked against the workflow's declared inputs (422 names a
        bad one); strings such as `"true"` or `"3"` are read as the declared type.
        409 when the workflow is its own concurrency group and a run is active.
        """
        return self._send(calls.run_workflow(workflow_id, inputs))

    def cancel_workflow(self, workflow_id: str) -> None:
        """Cancel every unfinished run of the workflow: its queued or running jobs."""
        self._send(calls.cancel_workflow(workflow_id))

    # --- runs ---

    def list_runs(
        self, workflow_id: str, *, limit: int | None = None, offset: int | None = None
    ) -> list[Run]:
        """The workflow's retained runs, newest first (the server's default limit is 20)."""
        return self._send(calls.list_runs(workflow_id, limit, offset))

    def get_run(self, workflow_id: str, number: int) -> Run:
        """One run with its jobs; 404 for a run that never existed or was pruned."""
        return self._send(calls.get_run(workflow_id, number))

    def run_notifications(self, workflow_id: str, number: int) -> list[NotificationStatus]:
        """How each notification of the run's end went (the run's `notifications`)."""
        return self._send(calls.run_notifications(workflow_id, number))

    def schedules(self, workflow_id: str) -> list[ScheduleInfo]:
        """The workflow's `on.schedule` entries with their next and last due times."""
        return self._send(calls.schedules(workflow_id))

    def rerun(self, workflow_id: str, number: int, *, failed_only: bool = False) -> RunAccepted:
        """Run a finished run again with its inputs, as a new run.

        `failed_only` keeps the jobs that succeeded (with their outputs and logs)
        and runs the rest. 409 while run `number` has not finished.
        """
        return self._send(calls.rerun(workflow_id, number, failed_only))

    def cancel_run(self, workflow_id: str, number: int) -> RunAccepted:
        """Cancel one run, queued or running; a finished run is left as it is.

        The answer carries the run's status afterwards.
        """
        return self._send(calls.cancel_run(workflow_id, number))

    # --- logs ---

    def get_logs(self, workflow_id: str, job_id: str, *, run: int | None = None) -> list[LogChunk]:
        """The job's stored log chunks in run `run` (default: the latest run)."""
        return self._send(calls.get_logs(workflow_id, job_id, run))

    # The TypeScript client's name for the same call.
    get_job_logs = get_logs

    def stream_logs(
        self,
        workflow_id: str,
        job_id: str,
        *,
        run: int | None = None,
        last_event_id: str | None = None,
    ) -> Iterator[LogChunk]:
        """Stored chunks, then live ones, until the server ends the stream after the
        job's last chunk. `run` picks the run (default: the latest run).

        The request is made on the first `next()`; close the generator (or let
        the loop finish) to drop the connection.
        """
        for _, chunk in self.stream_log_events(
            workflow_id, job_id, run=run, last_event_id=last_event_id
        ):
            yield chunk

    def stream_log_events(
        self,
        workflow_id: str,
        job_id: str,
        *,
        run: int | None = None,
        last_event_id: str | None = None,
    ) -> Iterator[tuple[str | None, LogChunk]]:
        """`stream_logs` with each chunk's event id; pass the last one seen as
        `last_event_id` to resume a broken stream where it stopped."""
        path = calls.logs_path(workflow_id, job_id, run) + "/stream"
        with self._stream(path, last_event_id) as response:
            parser = EventParser()
            for line in response.iter_lines():
                if item := _log_event(parser.feed(line)):
                    yield item

    @contextmanager
    def _stream(self, path: str, last_event_id: str | None) -> Iterator[httpx.Response]:
        try:
            with self._http.stream("GET", path, **self._stream_args(last_event_id)) as response:
                if not response.is_success:
                    response.read()
                calls.raise_for_status(response)
                yield response
        except httpx.HTTPError as exc:
            raise self._translate(exc) from exc

    # --- workers ---

    def list_workers(self) -> list[WorkerInfo]:
        return self._send(calls.list_workers())

    def register_worker(self, worker_id: str, labels: Iterable[str] = ()) -> WorkerInfo | None:
        """Register (or refresh) a worker; the server may answer its `WorkerInfo`."""
        return self._send(calls.register_worker(worker_id, labels))

    def worker_heartbeat(self, worker_id: str) -> None:
        self._send(calls.worker_heartbeat(worker_id))

    def claim(
        self,
        worker_id: str,
        labels: Iterable[str] = (),
        lease_ttl_secs: int = 30,
        wait_secs: float = 0,
    ) -> Claim | None:
        """The oldest claimable job for these labels under a new lease, or None.

        `wait_secs` (extension) lets the server hold the request until a job arrives.
        """
        return self._send(calls.claim(worker_id, labels, lease_ttl_secs, wait_secs))

    def heartbeat_lease(self, lease_id: str) -> None:
        """Renew the lease by its TTL; 409 (`WorkflowApiError`) once it is not active."""
        self._send(calls.heartbeat_lease(lease_id))

    def complete(self, lease_id: str, outputs: Mapping[str, str] | None = None) -> None:
        self._send(calls.complete(lease_id, outputs))

    def fail(self, lease_id: str, error: str, retryable: bool = False) -> None:
        self._send(calls.fail(lease_id, error, retryable))

    def push_logs(self, lease_id: str, chunks: Iterable[ChunkSource]) -> None:
        self._send(calls.push_logs(lease_id, chunks))

    def is_cancelled(self, workflow_id: str, job_id: str, *, run: int | None = None) -> bool:
        """Whether the job is cancelled in run `run` (default: the latest run); a
        worker holding a job of an older run passes the claim's `run_id`."""
        return self._send(calls.is_cancelled(workflow_id, job_id, run))


class AsyncClient(_Base):
    """The asynchronous client: `Client`'s methods as coroutines (trio or asyncio).

    Use as `async with AsyncClient(...) as client:`, or call `aclose()`.
    """

    def __init__(
        self,
        base_url: str | Sequence[str] | None = None,
        *,
        token: str | None = None,
        worker_token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_SECS,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(base_url, token=token, worker_token=worker_token, timeout=timeout)
        self._http = httpx.AsyncClient(base_url=self.base_url, transport=transport)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _send(self, call: calls.Call[T]) -> T:
        start = self.base_url
        while True:
            try:
                args = self._request_args(call)
                response = await self._http.request(call.method, call.path, **args)
                break
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                error = self._translate(exc)
                if not self._next_server() or self.base_url == start:
                    raise error from exc
            except httpx.HTTPError as exc:
                self._next_server()  # the next call tries another server
                raise self._translate(exc) from exc
        calls.raise_for_status(response)
        return call.read(response)

    # --- workflows ---

    async def list_workflows(
        self, *, limit: int | None = None, offset: int | None = None, status: str | None = None
    ) -> list[Workflow]:
        return await self._send(calls.list_workflows(limit, offset, status))

    async def get_status(self, workflow_id: str) -> Workflow:
        return await self._send(calls.get_status(workflow_id))

    async def create_workflow(self, source: WorkflowSource) -> Workflow:
        return await self._send(calls.create_workflow(calls.workflow_create(source)))

    async def run_workflow(
        self, workflow_id: str, inputs: Mapping[str, Any] | None = None
    ) -> RunAccepted:
        """Start a run; see `Client.run_workflow`."""
        return await self._send(calls.run_workflow(workflow_id, inputs))

    async def cancel_workflow(self, workflow_id: str) -> None:
        """Cancel every unfinished run of the workflow."""
        await self._send(calls.cancel_workflow(workflow_id))

    # --- runs ---

    async def list_runs(
        self, workflow_id: str, *, limit: int | None = None, offset: int | None = None
    ) -> list[Run]:
        """The workflow's retained runs, newest first."""
        return await self._send(calls.list_runs(workflow_id, limit, offset))

    async def get_run(self, workflow_id: str, number: int) -> Run:
        """One run with its jobs; 404 for a run that never existed or was pruned."""
        return await self._send(calls.get_run(workflow_id, number))

    async def run_notifications(self, workflow_id: str, number: int) -> list[NotificationStatus]:
        """How each notification of the run's end went; see `Client.run_notifications`."""
        return await self._send(calls.run_notifications(workflow_id, number))

    async def schedules(self, workflow_id: str) -> list[ScheduleInfo]:
        """The workflow's schedules; see `Client.schedules`."""
        return await self._send(calls.schedules(workflow_id))

    async def rerun(
        self, workflow_id: str, number: int, *, failed_only: bool = False
    ) -> RunAccepted:
        """Run a finished run again; see `Client.rerun`."""
        return await self._send(calls.rerun(workflow_id, number, failed_only))

    async def cancel_run(self, workflow_id: str, number: int) -> RunAccepted:
        """Cancel one run, queued or running; see `Client.cancel_run`."""
        return await self._send(calls.cancel_run(workflow_id, number))

    # --- logs ---

    async def get_logs(
        self, workflow_id: str, job_id: str, *, run: int | None = None
    ) -> list[LogChunk]:
        """The job's stored log chunks in run `run` (default: the latest run)."""
        return await self._send(calls.get_logs(workflow_id, job_id, run))

    get_job_logs = get_logs

    async def stream_logs(
        self,
        workflow_id: str,
        job_id: str,
        *,
        run: int | None = None,
        last_event_id: str | None = None,
    ) -> AsyncGenerator[LogChunk, None]:
        """Stored chunks, then live ones, until the server ends the stream.

        To stop early, wrap it in `contextlib.aclosing` so the connection is
        closed at once rather than when the generator is collected.
        """
        events = self.stream_log_events(workflow_id, job_id, run=run, last_event_id=last_event_id)
        async with aclosing(events):
            async for _, chunk in events:
                yield chunk

    async def stream_log_events(
        self,
        workflow_id: str,
        job_id: str,
        *,
        run: int | None = None,
        last_event_id: str | None = None,
    ) -> AsyncGenerator[tuple[str | None, LogChunk], None]:
        """`stream_logs` with each chunk's event id; pass the last one seen as
        `last_event_id` to resume a broken stream where it stopped."""
        path = calls.logs_path(workflow_id, job_id, run) + "/stream"
        try:
            args = self._stream_args(last_event_id)
            async with self._http.stream("GET", path, **args) as response:
                if not response.is_success:
                    await response.aread()
                calls.raise_for_status(response)
                parser = EventParser()
                async for line in response.aiter_lines():
                    if item := _log_event(parser.feed(line)):
                        yield item
        except httpx.HTTPError as exc:
            raise self._translate(exc) from exc

    # --- workers ---

    async def list_workers(self) -> list[WorkerInfo]:
        return await self._send(calls.list_workers())

    async def register_worker(
        self, worker_id: str, labels: Iterable[str] = ()
    ) -> WorkerInfo | None:
        return await self._send(calls.register_worker(worker_id, labels))

    async def worker_heartbeat(self, worker_id: str) -> None:
        await self._send(calls.worker_heartbeat(worker_id))

    async def claim(
        self,
        worker_id: str,
        labels: Iterable[str] = (),
        lease_ttl_secs: int = 30,
        wait_secs: float = 0,
    ) -> Claim | None:
        return await self._send(calls.claim(worker_id, labels, lease_ttl_secs, wait_secs))

    async def heartbeat_lease(self, lease_id: str) -> None:
        await self._send(calls.heartbeat_lease(lease_id))

    async def complete(self, lease_id: str, outputs: Mapping[str, str] | None = None) -> None:
        await self._send(calls.complete(lease_id, outputs))

    async def fail(self, lease_id: str, error: str, retryable: bool = False) -> None:
        await self._send(calls.fail(lease_id, error, retryable))

    async def push_logs(self, lease_id: str, chunks: Iterable[ChunkSource]) -> None:
        await self._send(calls.push_logs(lease_id, chunks))

    async def is_cancelled(self, workflow_id: str, job_id: str, *, run: int | None = None) -> bool:
        """Whether the job is cancelled in run `run` (default: the latest run)."""
        return await self._send(calls.is_cancelled(workflow_id, job_id, run))
