"""The HTTP layer: Quart-Trio routes that turn requests into runtime calls.

Nothing here keeps state. Every request first passes `gate.RequestGate`
(Host 400, Origin 403, content type 415), then its token (401); a body is
read and checked in the contract's order (too large 413, malformed 400,
invalid 422) before any id is looked up (404) or any lease touched (409), so
a bad request changes nothing.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Annotated, Any

import trio
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, Field, RootModel
from quart import Response, request
from quart_cors import cors
from quart_schema import (
    QuartSchema,
    document_querystring,
    document_request,
    document_response,
)
from quart_schema.openapi import OpenAPIProvider
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from actors import Runtime
from actors.errors import (
    WorkflowGraphError,
)
from actors.models import (
    Accepted,
    Claim,
    ClaimRequest,
    CompleteRequest,
    ErrorBody,
    FailRequest,
    JobStatus,
    Lease,
    LogChunk,
    LogsRequest,
    RegisterRequest,
    RerunRequest,
    Run,
    RunAccepted,
    RunDetail,
    RunRequest,
    ScheduleInfo,
    WorkerInfo,
    Workflow,
    WorkflowCreate,
)
from actors.spec import DefinitionError

from . import protocol
from .auth import TokenGuard, install_auth
from .fastpath import ProtocolFastPath
from .gate import (
    SAFE_METHODS,
    DrainUnreadBodies,
    HostPolicy,
    OriginPolicy,
    RequestGate,
    SimpleCors,
)
from .http_metrics import HttpMetrics, note_route
from .wire import BadRequest, M, body_too_large, dump, error_answer, parse_body

log = logging.getLogger("workflow_graph.web")


DEFAULT_MAX_BODY_BYTES = 1024 * 1024
DEFAULT_MAX_SSE_STREAMS = 256
DEFAULT_SSE_MAX_SECS = 3600.0
SSE_KEEPALIVE_SECS = 15.0
MAX_LIST_LIMIT = 1000
DEFAULT_RUNS_LIMIT = 20
# After a stream's last chunk: a comment, then the connection stays open this long
# (or until the client closes), so a client that stops reading at the end of the
# stream has already read the last chunk in an earlier read.
SSE_END_GRACE_SECS = 1.0


# What `_list_query` passes on: digits, no sign; longer numbers are read as this bound.
MAX_QUERY_NUMBER = 10**18 - 1
QueryNumber = Annotated[int, Field(ge=0, le=MAX_QUERY_NUMBER)]


class ListQuery(BaseModel):
    limit: QueryNumber = 100
    offset: QueryNumber = 0
    status: JobStatus | None = None


class RunsQuery(BaseModel):
    limit: QueryNumber = DEFAULT_RUNS_LIMIT
    offset: QueryNumber = 0


class CancelledQuery(BaseModel):
    run: QueryNumber | None = None


class StreamQuery(BaseModel):
    access_token: str | None = None
    # For clients that cannot send the `Last-Event-ID` header; the header wins.
    last_event_id: QueryNumber | None = None


# Root models give the OpenAPI document a schema for the bare JSON answers.
ClaimAnswer = RootModel[Claim | None]
CancelledAnswer = RootModel[bool]
WorkflowList = RootModel[list[Workflow]]
RunList = RootModel[list[Run]]
WorkerList = RootModel[list[WorkerInfo]]
ScheduleList = RootModel[list[ScheduleInfo]]
LogChunkList = RootModel[list[LogChunk]]


class EventStream(RootModel[str]):
    """Server-Sent Events: `event: log` blocks, each a LogChunk as JSON, and comments."""


class MetricsText(RootModel[str]):
    """The Prometheus text exposition format."""


class Health(BaseModel):
    status: str = "ok"


# What each error status means, on every route that documents it.
ERROR_DESCRIPTIONS = {
    400: "Malformed JSON or query parameter, or a Host this server does not answer to",
    401: "Missing or wrong bearer token",
    403: "A state-changing request from an Origin that is not allowed",
    404: "Unknown workflow, job or worker",
    409: "The lease is not active, or the workflow is already running",
    413: "Request body over MAX_BODY_BYTES",
    415: "A request body that is not JSON (Content-Type: application/json)",
    422: "A body that parses but is invalid, or past a limit",
    429: "Too many open log streams (MAX_SSE_STREAMS)",
}
# The gate's answers (see web.gate): on every route, and on state-changing ones.
GATE_ERRORS = (400,)
UNSAFE_GATE_ERRORS = (403, 415)


class _Provider(OpenAPIProvider):
    """Documents `EventStream` answers as `text/event-stream`, the rest as JSON.

    Request bodies are documented as required, except `complete`'s, which may be
    empty. Every route also documents the gate's refusals (`GATE_ERRORS`), which
    no route decorator needs to repeat.
    """

    def build_paths(self, rule):
        paths, components = super().build_paths(rule)
        error_object, error_components = self.build_response_object(ErrorBody, None)
        components.update(error_components)
        for operations in paths.values():
            for method, operation in operations.items():
                responses = dict(operation["responses"])
                statuses = GATE_ERRORS
                if method.upper() not in SAFE_METHODS:
                    statuses += UNSAFE_GATE_ERRORS
                for status in statuses:
                    responses.setdefault(status, error_object)
                for status, response in list(responses.items()):
                    if status in ERROR_DESCRIPTIONS:
                        responses[status] = {**response, "description": ERROR_DESCRIPTIONS[status]}
                operation["responses"] = dict(sorted(responses.items()))
        return paths, components

    def build_request_body(self, model, source):
        body, definitions = super().build_request_body(model, source)
        if model not in (CompleteRequest, RunRequest, RerunRequest):
            body["required"] = True
        return body, definitions

    def build_response_object(self, model, headers_model):
        if model is EventStream:
            content = {"text/event-stream": {"schema": {"type": "string"}}}
            return {"content": content, "description": EventStream.__doc__}, {}
        if model is MetricsText:
            content = {"text/plain": {"schema": {"type": "string"}}}
            return {"content": content, "description": MetricsText.__doc__}, {}
        return super().build_response_object(model, headers_model)


def _json(value: Any, status: int = 200) -> Response:
    return Response(dump(value), status=status, content_type="application/json")


async def _body(model: type[M], *, optional: bool = False) -> M:
    """Parse and validate the request's JSON body; 400 when malformed, 422 when invalid."""
    return parse_body(await _raw_body(), model, optional=optional)


async def _raw_body() -> bytes:
    data = await request.get_data(as_text=False)
    assert isinstance(data, bytes)  # as_text=False
    return data


def _error(status: int, message: str) -> Response:
    return Response(json.dumps({"error": message}), status=status, content_type="application/json")


def _errors(*statuses: int):
    """Document the `{"error": ...}` answers a route gives (401: when its token is set)."""

    def decorate(func):
        for status in statuses:
            func = document_response(ErrorBody, status)(func)
        return func

    return decorate


def _security_docs(guarded) -> dict[str, Any]:
    """With a token set, /docs offers an Authorize button for the bearer token."""
    if not guarded:
        return {}
    return {
        "security_schemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "security": [{"bearer": []}],
    }


def _query_number(name: str, default: int) -> int:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    if not (raw.isascii() and raw.isdigit()):
        raise BadRequest(f"query parameter '{name}' must be a non-negative integer")
    # Any count past the bound means "as many as there are", not an error.
    digits = raw.lstrip("0")
    return MAX_QUERY_NUMBER if len(digits) > 18 else int(digits or "0")


def _runs_query() -> RunsQuery:
    return RunsQuery(
        limit=min(_query_number("limit", DEFAULT_RUNS_LIMIT), MAX_LIST_LIMIT),
        offset=_query_number("offset", 0),
    )


def _run_number(raw: str) -> int:
    """A run number from a URL: a positive integer, else 400."""
    if not raw.isdigit() or len(raw) > 15 or int(raw) < 1:
        raise BadRequest(f"run number must be a positive integer, got {raw[:40]!r}")
    return int(raw)


def _list_query() -> ListQuery:
    args = request.args
    number = _query_number

    status = args.get("status")
    if status is not None and status not in JobStatus.__members__:
        raise BadRequest(
            "query parameter 'status' must be one of " + ", ".join(JobStatus.__members__)
        )
    return ListQuery(
        limit=min(number("limit", 100), MAX_LIST_LIMIT),
        offset=number("offset", 0),
        status=JobStatus(status) if status else None,
    )


def create_app(
    runtime: Runtime,
    *,
    cors_origins: list[str] | None = None,
    allowed_hosts: list[str] | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    sse_keepalive_secs: float = SSE_KEEPALIVE_SECS,
    api_token: str | None = None,
    worker_token: str | None = None,
    max_sse_streams: int = DEFAULT_MAX_SSE_STREAMS,
    sse_max_secs: float = DEFAULT_SSE_MAX_SECS,
    github_webhook_secret: str | None = None,
    webhook_secret: str | None = None,
    metrics_public: bool = False,
) -> QuartTrio:
    """The QuartTrio app serving the REST API over `runtime`.

    `allowed_hosts` adds `Host` names to the loopback ones and the address
    a client connects to (`*`: any); `cors_origins` is the allow-list for
    browsers, for reads and, with Origin, for changes (see `web.gate`).
    Tokens left None leave their routes open (see `web.auth`); `/metrics` needs
    the API token unless `metrics_public`. At most `max_sse_streams` log
    streams are open at once (429 past it), and each ends after
    `sse_max_secs`; an EventSource client reconnects. The webhook
    routes answer only with their secret set (see `web.webhooks`).
    """
    app = QuartTrio("workflow_graph")
    app.config["MAX_CONTENT_LENGTH"] = max_body_bytes
    app.config["RESPONSE_TIMEOUT"] = None  # SSE streams end with their job, not a timer
    app.config["JSON_SORT_KEYS"] = False
    QuartSchema(
        app,
        openapi_path="/openapi.json",
        swagger_ui_path="/docs",
        redoc_ui_path=None,
        scalar_ui_path=None,
        info={"title": "workflow-graph", "version": "0.1.0"},
        openapi_provider_class=_Provider,
        **_security_docs(api_token or worker_token),
    )
    app = cors(app, allow_origin=cors_origins if cors_origins else "*")
    note_route(app)  # before the token check, which may answer first
    # First of the hooks that answer: 401 comes before any look at the body.
    guard = TokenGuard(api_token, worker_token, metrics_public)
    install_auth(app, guard)
    metrics = runtime.metrics
    streams = _StreamSlots(max_sse_streams, metrics.sse_streams)

    @app.before_request
    async def _refuse_large_bodies():
        length = request.content_length
        if length is not None and length > max_body_bytes:
            return _error(413, body_too_large(max_body_bytes))
        return None

    # --- errors ---

    @app.errorhandler(BadRequest)
    @app.errorhandler(WorkflowGraphError)
    async def _request_error(exc: Exception):
        answer = error_answer(exc)
        assert answer is not None  # every error these handlers take has an answer
        return _error(*answer)

    @app.errorhandler(DefinitionError)
    async def _definition_error(exc: DefinitionError):
        # `error` stays the one human line clients read; `errors` lists every problem.
        answer = error_answer(exc)
        assert answer is not None
        status, message = answer
        body = {"error": message, "errors": exc.errors()}
        return Response(json.dumps(body), status=status, content_type="application/json")

    @app.errorhandler(HTTPException)
    async def _http_error(exc: HTTPException):
        if exc.code == 413:
            return _error(413, body_too_large(max_body_bytes))
        return _error(exc.code or 500, exc.description or exc.name)

    @app.errorhandler(Exception)
    async def _unexpected(exc: Exception):
        log.exception("unexpected error serving %s %s", request.method, request.path)
        return _error(500, "internal server error")

    # --- operations ---

    @app.get("/healthz")
    @document_response(Health, 200)
    async def healthz():
        """The process answers (liveness)."""
        return _json({"status": "ok"})

    @app.get("/readyz")
    @document_response(Health, 200)
    @_errors(503)
    async def readyz():
        """The runtime has started and its store takes writes (readiness); 503 says why not."""
        reason = await runtime.readiness()
        if reason is not None:
            return _error(503, reason)
        return _json({"status": "ready"})

    @app.get("/metrics")
    @document_response(MetricsText, 200)
    @_errors(401)
    async def metrics_text():
        """Prometheus metrics of this server (needs the API token unless METRICS_PUBLIC=1)."""
        return Response(await runtime.scrape(), content_type=CONTENT_TYPE_LATEST)

    # --- workflows ---

    @app.get("/api/workflows")
    @document_querystring(ListQuery)
    @document_response(WorkflowList, 200)
    @_errors(400, 401)
    async def list_workflows():
        """List workflows in creation order, paginated, optionally by job status."""
        q = _list_query()
        return _json(await runtime.list_workflows(q.limit, q.offset, q.status))

    @app.post("/api/workflows")
    @document_request(WorkflowCreate)
    @document_response(Workflow, 201)
    @_errors(400, 401, 413, 422)
    async def create_workflow():
        """Create a workflow; every job starts `queued`."""
        body = await _body(WorkflowCreate)
        return _json(await runtime.create_workflow(body), 201)

    @app.get("/api/workflows/<workflow_id>/status")
    @document_response(Workflow, 200)
    @_errors(401, 404)
    async def workflow_status(workflow_id: str):
        """The workflow with every job's state."""
        return _json(await runtime.get_status(workflow_id))

    @app.post("/api/workflows/<workflow_id>/run")
    @document_request(RunRequest)
    @document_response(RunAccepted, 202)
    @_errors(400, 401, 404, 409, 413, 422)
    async def run_workflow(workflow_id: str):
        """Start a run with optional inputs; it waits as `queued` behind its concurrency
        group. 409 when the workflow is its own group and a run is active."""
        body = await _body(RunRequest, optional=True)
        accepted = await runtime.run_workflow(workflow_id, body.inputs)
        return _json(accepted, 202)

    @app.post("/api/workflows/<workflow_id>/cancel")
    @document_response(Accepted, 202)
    @_errors(401, 404)
    async def cancel_workflow(workflow_id: str):
        """Cancel every unfinished run: queued or running jobs are cancelled, leases revoked."""
        await runtime.cancel_workflow(workflow_id)
        return _json({"workflow_id": workflow_id}, 202)

    # --- runs ---

    @app.get("/api/workflows/<workflow_id>/runs")
    @document_querystring(RunsQuery)
    @document_response(RunList, 200)
    @_errors(400, 401, 404)
    async def list_runs(workflow_id: str):
        """The workflow's retained runs, newest first."""
        q = _runs_query()
        return _json(await runtime.list_runs(workflow_id, q.limit, q.offset))

    @app.get("/api/workflows/<workflow_id>/runs/<number>")
    @document_response(RunDetail, 200)
    @_errors(400, 401, 404)
    async def get_run(workflow_id: str, number: str):
        """One run with its jobs, and (extension) how each notification of its end went;
        404 for a run that never existed or was pruned."""
        run_number = _run_number(number)
        run = await runtime.get_run(workflow_id, run_number)
        notifications = await runtime.run_notifications(workflow_id, run_number)
        return _json(RunDetail.model_construct(**dict(run), notifications=notifications))

    @app.get("/api/workflows/<workflow_id>/schedules")
    @document_response(ScheduleList, 200)
    @_errors(401, 404)
    async def schedules(workflow_id: str):
        """The workflow's `on.schedule` entries with their next and last due times."""
        return _json(await runtime.schedules(workflow_id))

    @app.post("/api/workflows/<workflow_id>/runs/<number>/rerun")
    @document_request(RerunRequest)
    @document_response(RunAccepted, 202)
    @_errors(400, 401, 404, 409, 413, 422)
    async def rerun(workflow_id: str, number: str):
        """Run a finished run again with its inputs; `failed_only` keeps its successes."""
        run_number = _run_number(number)
        body = await _body(RerunRequest, optional=True)
        return _json(await runtime.rerun(workflow_id, run_number, body.failed_only), 202)

    @app.post("/api/workflows/<workflow_id>/runs/<number>/cancel")
    @document_response(RunAccepted, 202)
    @_errors(400, 401, 404)
    async def cancel_run(workflow_id: str, number: str):
        """Cancel one run, queued or running (a finished run is left as it is)."""
        run = await runtime.cancel_run(workflow_id, _run_number(number))
        return _json(
            RunAccepted(workflow_id=workflow_id, number=run.number, status=run.status), 202
        )

    @app.get("/api/workflows/<workflow_id>/runs/<number>/jobs/<job_id>/logs")
    @document_response(LogChunkList, 200)
    @_errors(400, 401, 404)
    async def run_job_logs(workflow_id: str, number: str, job_id: str):
        """Every stored chunk of the job in that run, every attempt in order."""
        return _json(await runtime.get_logs(workflow_id, job_id, _run_number(number)))

    @app.get("/api/workflows/<workflow_id>/runs/<number>/jobs/<job_id>/logs/stream")
    @document_querystring(StreamQuery)
    @document_response(EventStream, 200)
    @_errors(400, 401, 404, 429)
    async def run_job_log_stream(workflow_id: str, number: str, job_id: str):
        """Server-Sent Events of the job in that run: replay, then live chunks."""
        return await _log_stream(workflow_id, job_id, _run_number(number))

    # --- workers ---

    @app.post("/api/workers/register")
    @document_request(RegisterRequest)
    @document_response(WorkerInfo, 200)
    @_errors(400, 401, 413, 422)
    async def register_worker():
        """Register a worker (or refresh it) with its labels."""
        body = await _body(RegisterRequest)
        return _json(await runtime.register_worker(body.worker_id, body.labels))

    @app.get("/api/workers")
    @document_response(WorkerList, 200)
    @_errors(401)
    async def list_workers():
        """Every registered worker with its status and current job."""
        return _json(await runtime.list_workers())

    @app.post("/api/workers/<worker_id>/heartbeat")
    @document_response(WorkerInfo, 200)
    @_errors(401, 404)
    async def worker_heartbeat(worker_id: str):
        """Tell the server the worker is alive."""
        return _json(await runtime.worker_heartbeat(worker_id))

    # --- the worker protocol ---

    @app.post("/api/jobs/claim")
    @document_request(ClaimRequest)
    @document_response(ClaimAnswer, 200)
    @_errors(400, 401, 413, 422)
    async def claim_job():
        """Claim the oldest job the worker's labels allow, or null."""
        return _json(await protocol.claim(runtime, await _raw_body()))

    @app.post("/api/jobs/<lease_id>/heartbeat")
    @document_response(Lease, 200)
    @_errors(401, 409)
    async def lease_heartbeat(lease_id: str):
        """Renew the lease by its own TTL."""
        return _json(await protocol.heartbeat(runtime, lease_id, b""))

    @app.post("/api/jobs/<lease_id>/complete")
    @document_request(CompleteRequest)
    @document_response(Accepted, 200)
    @_errors(400, 401, 409, 413, 422)
    async def complete_job(lease_id: str):
        """Report success with string outputs."""
        return _json(await protocol.complete(runtime, lease_id, await _raw_body()))

    @app.post("/api/jobs/<lease_id>/fail")
    @document_request(FailRequest)
    @document_response(Accepted, 200)
    @_errors(400, 401, 409, 413, 422)
    async def fail_job(lease_id: str):
        """Report failure; `retryable` asks for a retry within the job's budget."""
        return _json(await protocol.fail(runtime, lease_id, await _raw_body()))

    @app.post("/api/jobs/<lease_id>/logs")
    @document_request(LogsRequest)
    @document_response(Accepted, 200)
    @_errors(400, 401, 409, 413, 422)
    async def push_logs(lease_id: str):
        """Append log chunks to the lease's job."""
        return _json(await protocol.push_logs(runtime, lease_id, await _raw_body()))

    @app.get("/api/jobs/<workflow_id>/<job_id>/cancelled")
    @document_querystring(CancelledQuery)
    @document_response(CancelledAnswer, 200)
    @_errors(400, 401, 404)
    async def job_cancelled(workflow_id: str, job_id: str):
        """True exactly when the job's status is cancelled (in the latest run, or in
        run `?run=N`, which a worker holding a job of an older run asks about)."""
        raw = request.args.get("run")
        number = _run_number(raw) if raw else None
        return _json(await runtime.is_cancelled(workflow_id, job_id, number))

    # --- logs ---

    @app.get("/api/workflows/<workflow_id>/jobs/<job_id>/logs")
    @document_response(LogChunkList, 200)
    @_errors(401, 404)
    async def job_logs(workflow_id: str, job_id: str):
        """Every stored chunk of the job's latest run."""
        return _json(await runtime.get_logs(workflow_id, job_id))

    @app.get("/api/workflows/<workflow_id>/jobs/<job_id>/logs/stream")
    @document_querystring(StreamQuery)
    @document_response(EventStream, 200)
    @_errors(400, 401, 404, 429)
    async def job_log_stream(workflow_id: str, job_id: str):
        """Server-Sent Events: replay, then live chunks, ending after the job ends.

        Each event's `id` is the chunk's index in the run. A reconnecting client sends
        the last one it saw as `Last-Event-ID` (or `?last_event_id=`), and the
        replay starts after it.
        """
        return await _log_stream(workflow_id, job_id, None)

    async def _log_stream(workflow_id: str, job_id: str, number: int | None) -> Response:
        after = _last_event_id()
        subscription = await runtime.subscribe_logs(workflow_id, job_id, number, after)
        if not streams.acquire():
            subscription.live.close()
            response = _error(429, f"limit max_sse_streams ({max_sse_streams}) reached")
            response.headers["Retry-After"] = "5"
            return response
        body = _LogStream(subscription, streams.release, sse_keepalive_secs, sse_max_secs)
        return Response(
            body,
            content_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    from .dashboard import register_dashboard
    from .webhooks import webhook_routes

    register_dashboard(app, runtime)
    app.register_blueprint(
        webhook_routes(runtime, github_secret=github_webhook_secret, webhook_secret=webhook_secret)
    )
    simple_cors = SimpleCors(cors_origins)
    fast_path = ProtocolFastPath(
        DrainUnreadBodies(app.asgi_app),
        runtime,
        guard,
        max_body_bytes=max_body_bytes,
        cors=simple_cors,
    )
    gate = RequestGate(
        fast_path,
        hosts=HostPolicy(allowed_hosts or ()),
        origins=OriginPolicy(cors_origins),
        cors=simple_cors,
    )
    # Outermost: every answer is counted, the gate's refusals included.
    app.asgi_app = HttpMetrics(gate, metrics)  # type: ignore[method-assign]
    return app


def _last_event_id() -> int:
    """Where a resumed log stream starts: after this index; -1 for a fresh stream."""
    name, raw = "Last-Event-ID header", request.headers.get("Last-Event-ID")
    if raw is None:
        name, raw = "query parameter 'last_event_id'", request.args.get("last_event_id")
    if raw is None or raw.strip() == "":
        return -1
    raw = raw.strip()
    if not raw.isdigit() or len(raw) > 18:
        raise BadRequest(f"{name} must be a non-negative integer (an event id of this stream)")
    return int(raw)


def _sse_event(index: int, chunk: LogChunk) -> bytes:
    return f"event: log\nid: {index}\ndata: {chunk.model_dump_json()}\n\n".encode()


async def _sse(subscription, keepalive_secs: float, max_secs: float = math.inf):
    """Replay, then live chunks until the job ends or the stream has lived `max_secs`."""
    deadline = trio.current_time() + max_secs
    for index, chunk in subscription.replay:
        yield _sse_event(index, chunk)
    live = subscription.live
    async with live:
        while True:
            if trio.current_time() >= deadline:
                # A clean end; an EventSource reconnects and resumes after its last event.
                yield b": stream lifetime reached, reconnect\n\n"
                return
            ended = False
            with trio.move_on_at(min(trio.current_time() + keepalive_secs, deadline)) as idle:
                try:
                    index, chunk = await live.receive()
                except trio.EndOfChannel:
                    ended = True
            if ended:
                # The job ended after its last chunk: say so, and let the client read
                # that chunk before the connection closes under it.
                yield b": end\n\n"
                await trio.sleep(SSE_END_GRACE_SECS)
                return
            if idle.cancelled_caught:
                if trio.current_time() < deadline:
                    yield b": keep-alive\n\n"
            else:
                yield _sse_event(index, chunk)


class _StreamSlots:
    """A count of open log streams, bounded by `max_sse_streams`, shown by `gauge`."""

    def __init__(self, limit: int, gauge) -> None:
        self.limit = limit
        self.open = 0
        self._gauge = gauge

    def acquire(self) -> bool:
        if self.open >= self.limit:
            return False
        self.open += 1
        self._gauge.inc()
        return True

    def release(self) -> None:
        self.open -= 1
        self._gauge.dec()


class _LogStream:
    """The body of one SSE answer: gives its slot back exactly once, however it ends.

    Quart closes the body when the answer ends or the client goes away; a body
    never started (the client left before the first byte) is let go when
    collected, so its slot is not lost either.
    """

    def __init__(self, subscription, release, keepalive_secs: float, max_secs: float) -> None:
        self._subscription = subscription
        self._events = _sse(subscription, keepalive_secs, max_secs)
        self._release = release
        self._done = False

    def __aiter__(self) -> _LogStream:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self._events.__anext__()
        except BaseException:
            self._end()
            raise

    async def aclose(self) -> None:
        try:
            await self._events.aclose()
        finally:
            self._end()

    def _end(self) -> None:
        if not self._done:
            self._done = True
            self._subscription.live.close()
            self._release()

    def __del__(self) -> None:
        self._end()
