"""Every API call as data: method, path, body and how to read the answer.

`Client` and `AsyncClient` only differ in how they send a `Call`, so the
endpoints, bodies and answer shapes are written once, here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, TypeAdapter, ValidationError

from actors.models import (
    Claim,
    ClaimRequest,
    CompleteRequest,
    ErrorBody,
    FailRequest,
    LogChunk,
    LogChunkIn,
    LogsRequest,
    NotificationStatus,
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

from ._errors import ClientError, WorkflowApiError

T = TypeVar("T")

# What `create_workflow` accepts: a ready model, its JSON-like dict, or a definition file.
WorkflowSource = WorkflowCreate | Mapping[str, Any] | str | os.PathLike[str]
# What `push_logs` accepts per chunk.
ChunkSource = LogChunkIn | LogChunk | Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One request and the function that turns its (successful) answer into `T`."""

    method: str
    path: str
    read: Callable[[httpx.Response], T]
    body: BaseModel | None = None
    params: dict[str, Any] = field(default_factory=dict)
    # Worker-protocol calls carry the worker token instead of the API token.
    worker: bool = False
    # Extra seconds to wait for the answer, for a claim that parks on the server.
    extra_wait_secs: float = 0.0

    def json(self) -> Any:
        if self.body is None:
            return None
        # exclude_none: an absent optional field is left to the server's default.
        return self.body.model_dump(mode="json", exclude_none=True)


def segment(value: str) -> str:
    """An id as one URL path segment, whatever it contains."""
    return quote(value, safe="")


# --- reading answers --------------------------------------------------------


def raise_for_status(response: httpx.Response) -> None:
    """Raise `WorkflowApiError` for any non-2xx answer, with the server's reason."""
    if response.is_success:
        return
    raise WorkflowApiError(response.status_code, status_text(response), error_message(response))


def status_text(response: httpx.Response) -> str:
    """The reason phrase, or the standard one when the server sent none (HTTP/1.1 allows that)."""
    return response.reason_phrase or httpx.codes.get_reason_phrase(response.status_code)


def error_message(response: httpx.Response) -> str:
    """The `{"error": ...}` text of an error answer, else its body or status text."""
    try:
        return ErrorBody.model_validate_json(response.content).error
    except ValidationError:
        text = response.text.strip()
        return text[:500] if text else status_text(response)


def _parse(adapter: TypeAdapter[T], response: httpx.Response) -> T:
    try:
        return adapter.validate_json(response.content)
    except ValidationError as exc:
        raise ClientError(
            f"unexpected answer from {response.request.method} {response.request.url.path}: "
            f"{exc.error_count()} problem(s), first: {exc.errors()[0]['msg']}"
        ) from exc


def reader(tp: type[T] | Any) -> Callable[[httpx.Response], T]:
    """A reader that validates the answer body as `tp` (a model, `list[...]`, `bool`...)."""
    adapter: TypeAdapter[T] = TypeAdapter(tp)
    return lambda response: _parse(adapter, response)


def ignore(response: httpx.Response) -> None:
    """For answers with no shape of their own: the contract says clients ignore them."""
    return None


def read_worker_info(response: httpx.Response) -> WorkerInfo | None:
    """`register` may answer the `WorkerInfo`, or just `{}`."""
    try:
        return WorkerInfo.model_validate_json(response.content)
    except ValidationError:
        return None


# --- building bodies --------------------------------------------------------


def workflow_create(source: WorkflowSource) -> WorkflowCreate:
    """The create body for a model, a JSON-like dict or a definition file path."""
    if isinstance(source, WorkflowCreate):
        return source
    if isinstance(source, Mapping):
        # Validate as the server will: JSON semantics, so "stdout" is an enum value.
        return WorkflowCreate.model_validate_json(json.dumps(source))
    return workflow_create_from_file(Path(source))


def workflow_create_from_file(path: Path) -> WorkflowCreate:
    """The create body for a definition file: its text as written, after checking it
    offline with the server's own reader (so a bad file fails here, with every problem).

    Raises `actors.spec.DefinitionError` for a file that cannot load.
    """
    from actors.definitions import load_definition

    path = Path(path)
    load_definition(path)
    # load_definition read it as UTF-8 already; a file changed since is the server's to judge.
    return WorkflowCreate(definition=path.read_text(encoding="utf-8"))


def log_chunk_in(chunk: ChunkSource) -> LogChunkIn:
    if isinstance(chunk, LogChunkIn):
        return chunk
    if isinstance(chunk, LogChunk):
        return LogChunkIn.model_validate(chunk.model_dump())
    return LogChunkIn.model_validate_json(json.dumps(chunk))


# --- the calls --------------------------------------------------------------


def list_workflows(
    limit: int | None, offset: int | None, status: str | None
) -> Call[list[Workflow]]:
    params = {
        k: v for k, v in (("limit", limit), ("offset", offset), ("status", status)) if v is not None
    }
    return Call("GET", "/api/workflows", reader(list[Workflow]), params=params)


def get_status(workflow_id: str) -> Call[Workflow]:
    return Call("GET", f"/api/workflows/{segment(workflow_id)}/status", reader(Workflow))


def create_workflow(body: WorkflowCreate) -> Call[Workflow]:
    return Call("POST", "/api/workflows", reader(Workflow), body=body)


def run_workflow(workflow_id: str, inputs: Mapping[str, Any] | None) -> Call[RunAccepted]:
    # No inputs, no body: the contract's run takes none.
    body = None if inputs is None else RunRequest(inputs=dict(inputs))
    return Call(
        "POST", f"/api/workflows/{segment(workflow_id)}/run", reader(RunAccepted), body=body
    )


def cancel_workflow(workflow_id: str) -> Call[None]:
    return Call("POST", f"/api/workflows/{segment(workflow_id)}/cancel", ignore)


def run_path(workflow_id: str, number: int) -> str:
    return f"/api/workflows/{segment(workflow_id)}/runs/{number}"


def list_runs(workflow_id: str, limit: int | None, offset: int | None) -> Call[list[Run]]:
    params = {k: v for k, v in (("limit", limit), ("offset", offset)) if v is not None}
    path = f"/api/workflows/{segment(workflow_id)}/runs"
    return Call("GET", path, reader(list[Run]), params=params)


def get_run(workflow_id: str, number: int) -> Call[Run]:
    return Call("GET", run_path(workflow_id, number), reader(Run))


def run_notifications(workflow_id: str, number: int) -> Call[list[NotificationStatus]]:
    read_detail: Callable[[httpx.Response], RunDetail] = reader(RunDetail)
    return Call(
        "GET", run_path(workflow_id, number), lambda response: read_detail(response).notifications
    )


def schedules(workflow_id: str) -> Call[list[ScheduleInfo]]:
    path = f"/api/workflows/{segment(workflow_id)}/schedules"
    return Call("GET", path, reader(list[ScheduleInfo]))


def rerun(workflow_id: str, number: int, failed_only: bool) -> Call[RunAccepted]:
    body = RerunRequest(failed_only=failed_only)
    return Call("POST", run_path(workflow_id, number) + "/rerun", reader(RunAccepted), body=body)


def cancel_run(workflow_id: str, number: int) -> Call[RunAccepted]:
    return Call("POST", run_path(workflow_id, number) + "/cancel", reader(RunAccepted))


def logs_path(workflow_id: str, job_id: str, run: int | None = None) -> str:
    """The job's log in run `run`, or in the latest run (the contract's path) when None."""
    if run is None:
        return f"/api/workflows/{segment(workflow_id)}/jobs/{segment(job_id)}/logs"
    return f"{run_path(workflow_id, run)}/jobs/{segment(job_id)}/logs"


def get_logs(workflow_id: str, job_id: str, run: int | None) -> Call[list[LogChunk]]:
    return Call("GET", logs_path(workflow_id, job_id, run), reader(list[LogChunk]))


def list_workers() -> Call[list[WorkerInfo]]:
    return Call("GET", "/api/workers", reader(list[WorkerInfo]))


def register_worker(worker_id: str, labels: Iterable[str]) -> Call[WorkerInfo | None]:
    body = RegisterRequest(worker_id=worker_id, labels=list(labels))
    return Call("POST", "/api/workers/register", read_worker_info, body=body, worker=True)


def worker_heartbeat(worker_id: str) -> Call[None]:
    return Call("POST", f"/api/workers/{segment(worker_id)}/heartbeat", ignore, worker=True)


def claim(
    worker_id: str, labels: Iterable[str], lease_ttl_secs: int, wait_secs: float
) -> Call[Claim | None]:
    body = ClaimRequest(
        worker_id=worker_id, labels=list(labels), lease_ttl_secs=lease_ttl_secs, wait_secs=wait_secs
    )
    return Call(
        "POST",
        "/api/jobs/claim",
        reader(Claim | None),
        body=body,
        worker=True,
        extra_wait_secs=wait_secs,
    )


def heartbeat_lease(lease_id: str) -> Call[None]:
    return Call("POST", f"/api/jobs/{segment(lease_id)}/heartbeat", ignore, worker=True)


def complete(lease_id: str, outputs: Mapping[str, str] | None) -> Call[None]:
    body = CompleteRequest(outputs=dict(outputs or {}))
    return Call("POST", f"/api/jobs/{segment(lease_id)}/complete", ignore, body=body, worker=True)


def fail(lease_id: str, error: str, retryable: bool) -> Call[None]:
    body = FailRequest(error=error, retryable=retryable)
    return Call("POST", f"/api/jobs/{segment(lease_id)}/fail", ignore, body=body, worker=True)


def push_logs(lease_id: str, chunks: Iterable[ChunkSource]) -> Call[None]:
    body = LogsRequest(chunks=[log_chunk_in(c) for c in chunks])
    return Call("POST", f"/api/jobs/{segment(lease_id)}/logs", ignore, body=body, worker=True)


def is_cancelled(workflow_id: str, job_id: str, run: int | None) -> Call[bool]:
    path = f"/api/jobs/{segment(workflow_id)}/{segment(job_id)}/cancelled"
    params = {} if run is None else {"run": run}
    return Call("GET", path, reader(bool), params=params, worker=True)
