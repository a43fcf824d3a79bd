"""The HTTP layer: Quart-Trio routes that turn requests into runtime calls.

Nothing here keeps state. A request body is read and checked in the
contract's order (too large 413, malformed 400, invalid 422) before any id is
looked up (404) or any lease touched (409), so a bad request changes nothing.
"""

from __future__ import annotations

import json
import logging
from typing import Any, TypeVar

import trio
from pydantic import BaseModel, RootModel, TypeAdapter, ValidationError
from quart import Response, request
from quart_cors import cors
from quart_schema import (
    QuartSchema,
    document_querystring,
    document_request,
    document_response,
)
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from actors import Runtime
from actors.errors import (
    Conflict,
    Invalid,
    LimitExceeded,
    NotFound,
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
    WorkerInfo,
    Workflow,
    WorkflowCreate,
)
from actors.spec import DefinitionError

log = logging.getLogger("workflow_graph.web")

M = TypeVar("M", bound=BaseModel)

DEFAULT_MAX_BODY_BYTES = 1024 * 1024
SSE_KEEPALIVE_SECS = 15.0
MAX_LIST_LIMIT = 1000


class ListQuery(BaseModel):
    limit: int = 100
    offset: int = 0
    status: JobStatus | None = None


# Root models give the OpenAPI document a schema for the bare JSON answers.
ClaimAnswer = RootModel[Claim | None]
CancelledAnswer = RootModel[bool]
WorkflowList = RootModel[list[Workflow]]
WorkerList = RootModel[list[WorkerInfo]]
LogChunkList = RootModel[list[LogChunk]]


class BadRequest(Exception):
    """Malformed JSON or query parameters (400)."""


def _error(status: int, message: str) -> Response:
    return Response(json.dumps({"error": message}), status=status, content_type="application/json")


_ADAPTERS: dict[Any, TypeAdapter] = {}


def _json(value: Any, status: int = 200) -> Response:
    """Serialize a model, a list of models, None, or a plain dict as JSON."""
    if isinstance(value, BaseModel):
        body = value.model_dump_json()
    elif isinstance(value, list) and value and isinstance(value[0], BaseModel):
        kind = type(value[0])
        adapter = _ADAPTERS.get(kind) or _ADAPTERS.setdefault(kind, TypeAdapter(list[kind]))
        body = adapter.dump_json(value).decode()
    else:
        body = json.dumps(value)
    return Response(body, status=status, content_type="application/json")


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "body"
        parts.append(f"{where}: {err['msg']}")
    return "invalid request: " + "; ".join(parts)


async def _body(model: type[M], *, optional: bool = False) -> M:
    """Parse and validate the JSON body; 400 when malformed, 422 when invalid."""
    raw = await request.get_data(as_text=False)
    if not raw.strip():
        if optional:
            return model()
        raise BadRequest("request body must be a JSON object")
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRequest(f"malformed JSON: {exc}") from None
    except RecursionError:
        raise BadRequest("malformed JSON: nested too deeply") from None
    if not isinstance(data, dict):
        raise Invalid("request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise Invalid(_describe(exc)) from None
    except RecursionError:
        raise Invalid("request body nested too deeply") from None


def _list_query() -> ListQuery:
    args = request.args

    def number(name: str, default: int) -> int:
        raw = args.get(name)
        if raw is None or raw == "":
            return default
        if not raw.isdigit() or len(raw) > 18:
            raise BadRequest(f"query parameter '{name}' must be a non-negative integer")
        return int(raw)

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
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    sse_keepalive_secs: float = SSE_KEEPALIVE_SECS,
) -> QuartTrio:
    """The QuartTrio app serving the REST API over `runtime`."""
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
    )
    app = cors(app, allow_origin=cors_origins if cors_origins else "*")

    @app.before_request
    async def _refuse_large_bodies():
        length = request.content_length
        if length is not None and length > max_body_bytes:
            return _error(413, f"request body exceeds the limit max_body_bytes ({max_body_bytes})")
        return None

    # --- errors ---

    @app.errorhandler(BadRequest)
    async def _bad_request(exc: BadRequest):
        return _error(400, str(exc))

    @app.errorhandler(WorkflowGraphError)
    async def _domain_error(exc: WorkflowGraphError):
        if isinstance(exc, NotFound):
            return _error(404, str(exc))
        if isinstance(exc, Conflict):
            return _error(409, str(exc))
        if isinstance(exc, LimitExceeded):
            return _error(413 if exc.size else 422, str(exc))
        return _error(422, str(exc))

    @app.errorhandler(DefinitionError)
    async def _definition_error(exc: DefinitionError):
        return _error(422, f"invalid workflow: {exc}")

    @app.errorhandler(HTTPException)
    async def _http_error(exc: HTTPException):
        if exc.code == 413:
            return _error(413, f"request body exceeds the limit max_body_bytes ({max_body_bytes})")
        return _error(exc.code or 500, exc.description or exc.name)

    @app.errorhandler(Exception)
    async def _unexpected(exc: Exception):
        log.exception("unexpected error serving %s %s", request.method, request.path)
        return _error(500, "internal server error")

    # --- workflows ---

    @app.get("/api/workflows")
    @document_querystring(ListQuery)
    @document_response(WorkflowList, 200)
    @document_response(ErrorBody, 400)
    async def list_workflows():
        """List workflows in creation order, paginated, optionally by job status."""
        q = _list_query()
        return _json(await runtime.list_workflows(q.limit, q.offset, q.status))

    @app.post("/api/workflows")
    @document_request(WorkflowCreate)
    @document_response(Workflow, 201)
    @document_response(ErrorBody, 422)
    async def create_workflow():
        """Create a workflow; every job starts `queued`."""
        body = await _body(WorkflowCreate)
        return _json(await runtime.create_workflow(body), 201)

    @app.get("/api/workflows/<workflow_id>/status")
    @document_response(Workflow, 200)
    @document_response(ErrorBody, 404)
    async def workflow_status(workflow_id: str):
        """The workflow with every job's state."""
        return _json(await runtime.get_status(workflow_id))

    @app.post("/api/workflows/<workflow_id>/run")
    @document_response(Accepted, 202)
    @document_response(ErrorBody, 409)
    async def run_workflow(workflow_id: str):
        """Start a run: every job back to queued, root jobs enqueued."""
        run_id = await runtime.run_workflow(workflow_id)
        return _json({"workflow_id": workflow_id, "run_id": run_id}, 202)

    @app.post("/api/workflows/<workflow_id>/cancel")
    @document_response(Accepted, 202)
    @document_response(ErrorBody, 404)
    async def cancel_workflow(workflow_id: str):
        """Cancel every queued or running job; revokes their leases."""
        await runtime.cancel_workflow(workflow_id)
        return _json({"workflow_id": workflow_id}, 202)

    # --- workers ---

    @app.post("/api/workers/register")
    @document_request(RegisterRequest)
    @document_response(WorkerInfo, 200)
    async def register_worker():
        """Register a worker (or refresh it) with its labels."""
        body = await _body(RegisterRequest)
        return _json(await runtime.register_worker(body.worker_id, body.labels))

    @app.get("/api/workers")
    @document_response(WorkerList, 200)
    async def list_workers():
        """Every registered worker with its status and current job."""
        return _json(await runtime.list_workers())

    @app.post("/api/workers/<worker_id>/heartbeat")
    @document_response(WorkerInfo, 200)
    @document_response(ErrorBody, 404)
    async def worker_heartbeat(worker_id: str):
        """Tell the server the worker is alive."""
        return _json(await runtime.worker_heartbeat(worker_id))

    # --- the worker protocol ---

    @app.post("/api/jobs/claim")
    @document_request(ClaimRequest)
    @document_response(ClaimAnswer, 200)
    async def claim_job():
        """Claim the oldest job the worker's labels allow, or null."""
        body = await _body(ClaimRequest)
        claim = await runtime.claim(
            body.worker_id, body.labels, body.lease_ttl_secs, body.wait_secs
        )
        return _json(claim)

    @app.post("/api/jobs/<lease_id>/heartbeat")
    @document_response(Lease, 200)
    @document_response(ErrorBody, 409)
    async def lease_heartbeat(lease_id: str):
        """Renew the lease by its own TTL."""
        return _json(await runtime.heartbeat(lease_id))

    @app.post("/api/jobs/<lease_id>/complete")
    @document_request(CompleteRequest)
    @document_response(Accepted, 200)
    @document_response(ErrorBody, 409)
    async def complete_job(lease_id: str):
        """Report success with string outputs."""
        body = await _body(CompleteRequest, optional=True)
        await runtime.complete(lease_id, body.outputs)
        return _json({})

    @app.post("/api/jobs/<lease_id>/fail")
    @document_request(FailRequest)
    @document_response(Accepted, 200)
    @document_response(ErrorBody, 409)
    async def fail_job(lease_id: str):
        """Report failure; `retryable` asks for a retry within the job's budget."""
        body = await _body(FailRequest)
        await runtime.fail(lease_id, body.error, body.retryable)
        return _json({})

    @app.post("/api/jobs/<lease_id>/logs")
    @document_request(LogsRequest)
    @document_response(Accepted, 200)
    @document_response(ErrorBody, 409)
    async def push_logs(lease_id: str):
        """Append log chunks to the lease's job."""
        body = await _body(LogsRequest)
        await runtime.push_logs(lease_id, body.chunks)
        return _json({})

    @app.get("/api/jobs/<workflow_id>/<job_id>/cancelled")
    @document_response(CancelledAnswer, 200)
    @document_response(ErrorBody, 404)
    async def job_cancelled(workflow_id: str, job_id: str):
        """True exactly when the job's status is cancelled."""
        return _json(await runtime.is_cancelled(workflow_id, job_id))

    # --- logs ---

    @app.get("/api/workflows/<workflow_id>/jobs/<job_id>/logs")
    @document_response(LogChunkList, 200)
    @document_response(ErrorBody, 404)
    async def job_logs(workflow_id: str, job_id: str):
        """Every stored chunk of the job's latest run."""
        return _json(await runtime.get_logs(workflow_id, job_id))

    @app.get("/api/workflows/<workflow_id>/jobs/<job_id>/logs/stream")
    @document_response(ErrorBody, 404)
    async def job_log_stream(workflow_id: str, job_id: str):
        """Server-Sent Events: replay, then live chunks, ending after the job ends."""
        subscription = await runtime.subscribe_logs(workflow_id, job_id)
        return Response(
            _sse(subscription, sse_keepalive_secs),
            content_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    return app


def _sse_event(chunk: LogChunk) -> bytes:
    return f"event: log\nid: {chunk.sequence}\ndata: {chunk.model_dump_json()}\n\n".encode()


async def _sse(subscription, keepalive_secs: float):
    for chunk in subscription.replay:
        yield _sse_event(chunk)
    live = subscription.live
    async with live:
        while True:
            with trio.move_on_after(keepalive_secs) as idle:
                try:
                    chunk = await live.receive()
                except trio.EndOfChannel:
                    return
            if idle.cancelled_caught:
                yield b": keep-alive\n\n"
            else:
                yield _sse_event(chunk)
