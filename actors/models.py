"""The wire contract: one pydantic model per JSON shape of `spec/contract.md`.

The server and the `wfg` tools both use these models, so a shape is defined
exactly once. Field names and enum spellings are the contract's, exactly.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
    model_validator,
)

# Ids travel in URLs and shell environments; keep them to a safe alphabet, 1 to 128
# characters, and not `.` or `..`, which a URL path cannot carry as a segment. Written
# without look-ahead, which pydantic's default (Rust) regex engine does not support.
ID_PATTERN = (
    r"^(?:[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}"  # not starting with a dot
    r"|\.[A-Za-z0-9_-][A-Za-z0-9._-]{0,126}"  # one dot, then not a dot
    r"|\.\.[A-Za-z0-9._-]{1,126})$"  # two dots, then anything
)
Id = Annotated[str, Field(pattern=ID_PATTERN)]
# Input names as GitHub allows them; a job sees `INPUT_<NAME>` with `-` as `_`.
INPUT_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_-]{0,99}$"


class JobStatus(StrEnum):
    queued = "queued"
    running = "running"
    success = "success"
    failure = "failure"
    skipped = "skipped"
    cancelled = "cancelled"


TERMINAL_STATUSES = frozenset(
    {JobStatus.success, JobStatus.failure, JobStatus.skipped, JobStatus.cancelled}
)


class WorkerStatus(StrEnum):
    idle = "idle"
    busy = "busy"
    offline = "offline"


class _Strict(BaseModel):
    """Request bodies: no silent coercion ("5" is not 5), unknown keys ignored."""

    model_config = ConfigDict(strict=True, extra="ignore")


# --- retry policy -----------------------------------------------------------


class FixedDelay(_Strict):
    delay_secs: Annotated[int, Field(ge=0, le=86_400)]


class ExponentialDelay(_Strict):
    base_secs: Annotated[int, Field(ge=0, le=86_400)]
    max_secs: Annotated[int, Field(ge=0, le=86_400)]


class FixedBackoff(_Strict):
    model_config = ConfigDict(strict=True, extra="forbid")
    Fixed: FixedDelay


class ExponentialBackoff(_Strict):
    model_config = ConfigDict(strict=True, extra="forbid")
    Exponential: ExponentialDelay


Backoff = Literal["None"] | FixedBackoff | ExponentialBackoff


def backoff_delay_secs(backoff: Backoff, attempt: int) -> int:
    """Delay before the retry that will carry `attempt` (1 for the first retry)."""
    if isinstance(backoff, FixedBackoff):
        return backoff.Fixed.delay_secs
    if isinstance(backoff, ExponentialBackoff):
        e = backoff.Exponential
        # Bound the exponent so a large attempt count cannot build a huge int.
        return min(e.base_secs * 2 ** min(attempt, 64), e.max_secs)
    return 0


class RetryPolicy(BaseModel):
    max_retries: int = 0
    backoff: Backoff = "None"


# --- workflows --------------------------------------------------------------


class _Visualized(BaseModel):
    """Visualizer fields are echoed only when a client sent them."""

    ports: Any = None
    children: Any = None
    collapsed: Any = None

    @model_serializer(mode="wrap")
    def _drop_absent_visualizer_fields(self, handler: SerializerFunctionWrapHandler):
        data = handler(self)
        for key in ("ports", "children", "collapsed"):
            if data.get(key) is None:
                data.pop(key, None)
        return data


class Waiting(BaseModel):
    """Why a queued job is not running yet (extension `waiting` of a `Job`).

    `no_worker`: it is claimable but no live worker has all its `labels`, since
    `since_ms`; `delayed`: a retry waiting out its backoff until `until_ms`;
    `concurrency`: its run waits for its concurrency `group`, since `since_ms`.
    """

    reason: Literal["no_worker", "delayed", "concurrency"]
    labels: list[str] | None = None
    since_ms: int | None = None
    until_ms: int | None = None
    group: str | None = None

    @model_serializer(mode="wrap")
    def _only_what_applies(self, handler: SerializerFunctionWrapHandler):
        return {k: v for k, v in handler(self).items() if v is not None}


class Job(_Visualized):
    id: str
    name: str
    status: JobStatus = JobStatus.queued
    command: str
    duration_secs: int | None = None
    started_at: int | None = None
    depends_on: list[str] = []
    output: str | None = None
    required_labels: list[str] = []
    max_retries: int = 0
    attempt: int = 0
    metadata: dict[str, Any] = {}
    # Extension: why a queued job waits (no worker, backoff, concurrency), else null.
    waiting: Waiting | None = None


class RunStatus(StrEnum):
    queued = "queued"  # waiting for its concurrency group
    running = "running"
    success = "success"
    failure = "failure"
    cancelled = "cancelled"


RUN_ENDED = frozenset({RunStatus.success, RunStatus.failure, RunStatus.cancelled})


class RunRef(BaseModel):
    """The latest run of a workflow, as its status and list entries show it (extension)."""

    number: int
    status: RunStatus


class Workflow(BaseModel):
    id: str
    name: str
    trigger: str
    jobs: list[Job]
    # Extension: the run the jobs belong to; null before the first run.
    run: RunRef | None = None


class Run(BaseModel):
    """One run of a workflow: what started it, with which inputs, and its jobs."""

    workflow_id: str
    number: int
    status: RunStatus
    trigger: str
    inputs: dict[str, Any]
    created_at_ms: int
    started_at_ms: int | None = None
    finished_at_ms: int | None = None
    rerun_of: int | None = None
    jobs: list[Job]
    # Extension: why the run ended as it did when no job says it (a run timeout).
    reason: str | None = None


class NotificationStatus(BaseModel):
    """How the notification of a run's end to one `notify` URL went (extension)."""

    url: str
    state: Literal["pending", "delivered", "failed"]  # failed: given up after 24 hours
    attempts: int
    last_status: int | None = None  # the HTTP status of the last answer
    last_error: str | None = None  # why the last attempt failed
    last_attempt_at_ms: int | None = None
    next_attempt_at_ms: int | None = None  # while pending


class RunDetail(Run):
    """One run as `GET .../runs/{number}` answers: the run, and its notifications."""

    notifications: list[NotificationStatus] = []


class ScheduleInfo(BaseModel):
    """One `on.schedule` entry of a workflow and when it fires (extension)."""

    cron: str
    timezone: str
    next_at_ms: int
    last_at_ms: int | None = None  # the last due time handled, fired or skipped
    skipped: int = 0  # due times skipped because the workflow could not start a run


class RunAccepted(BaseModel):
    """The answer to starting a run: its number, and `running` or `queued`."""

    workflow_id: str
    number: int
    status: RunStatus


class RunRequest(_Strict):
    inputs: dict[str, Any] = {}


class RerunRequest(_Strict):
    failed_only: bool = False


class StrategyDecl(_Strict):
    """A job's matrix strategy, as a definition file's `strategy` declares it."""

    model_config = ConfigDict(strict=True, extra="forbid")

    # Dimensions with `include`/`exclude`, or one `${{ }}` expression.
    matrix: dict[str, Any] | str
    fail_fast: bool = Field(True, validation_alias=AliasChoices("fail_fast", "fail-fast"))
    max_parallel: Annotated[int, Field(gt=0)] | None = Field(
        None, validation_alias=AliasChoices("max_parallel", "max-parallel")
    )


class JobCreate(_Visualized):
    """A job in a create request. `status` is accepted and ignored."""

    model_config = ConfigDict(
        strict=True, extra="ignore", populate_by_name=True, serialize_by_alias=True
    )

    id: Id
    name: str | None = None
    command: Annotated[str, Field(min_length=1)]
    depends_on: list[Id] = []
    required_labels: list[Id] = []
    max_retries: Annotated[int, Field(ge=0, le=100)] = 0
    metadata: dict[str, Any] = {}
    status: Any = None
    # Extensions: the same knobs a definition file has. `command`, `name`, `env`
    # values and `if` may hold `${{ }}` expressions.
    backoff: Backoff = "None"
    timeout_secs: Annotated[int, Field(gt=0)] | None = None
    queue_timeout_secs: Annotated[int, Field(gt=0)] | None = None
    env: dict[str, str] = {}
    condition: bool | str | None = Field(None, alias="if")
    continue_on_error: bool | str = False
    strategy: StrategyDecl | None = None


class InputDecl(_Strict):
    """A run input, declared as GitHub's `workflow_dispatch.inputs` does."""

    type: Literal["string", "boolean", "number", "choice"] = "string"
    required: bool = False
    default: str | bool | int | float | None = None
    options: list[str] = []
    description: str = ""


class ConcurrencyDecl(_Strict):
    group: Annotated[str, Field(min_length=1, max_length=256)]
    cancel_in_progress: bool = Field(False, alias="cancel-in-progress")

    model_config = ConfigDict(strict=True, extra="forbid", populate_by_name=True)


class WorkflowCreate(_Strict):
    """A create request: `name` and `jobs`, or (extension) `definition`, the text of a
    definition file (YAML or JSON) read exactly as `WORKFLOWS_DIR` reads one."""

    name: Annotated[str, Field(min_length=1)] | None = None
    trigger: str = ""
    jobs: list[JobCreate] = []
    # Extensions: run inputs, the concurrency group, the run's timeout and the env
    # every job sees, as a definition file declares them.
    inputs: dict[Annotated[str, Field(pattern=INPUT_NAME_PATTERN)], InputDecl] | None = None
    concurrency: Annotated[str, Field(min_length=1, max_length=256)] | ConcurrencyDecl | None = None
    timeout_secs: Annotated[int, Field(gt=0)] | None = None
    env: dict[str, str] = {}
    definition: Annotated[str, Field(min_length=1)] | None = None

    @model_validator(mode="after")
    def _one_form(self) -> WorkflowCreate:
        given = self.model_fields_set
        if self.definition is not None:
            # A field sent with its default value (as clients dumping a model do) is not
            # a second form.
            fields = type(self).model_fields
            others = sorted(
                k for k in given - {"definition"} if getattr(self, k) != fields[k].default
            )
            if others:
                raise ValueError(
                    "give either 'definition' or the workflow's fields, not both "
                    f"(also given: {', '.join(others)})"
                )
        elif self.name is None or "jobs" not in given:
            missing = [k for k in ("name", "jobs") if k not in given or getattr(self, k) is None]
            raise ValueError(f"missing {' and '.join(missing)} (or give 'definition')")
        return self


# --- worker protocol --------------------------------------------------------


class QueuedJob(BaseModel):
    job_id: str
    workflow_id: str
    command: str
    required_labels: list[str]
    retry_policy: RetryPolicy
    attempt: int
    upstream_outputs: dict[str, dict[str, str]]
    enqueued_at_ms: int
    delayed_until_ms: int = 0
    # Extensions; clients ignore unknown keys.
    run_id: int
    timeout_secs: int | None = None
    # The variables the worker exports before the command (secrets' values only here).
    env: dict[str, str] = Field(default={}, examples=[{"DEPLOY_TOKEN": "***"}])
    # The payload of the event that started the run (a webhook's), else null; the agent
    # writes it to the file `GITHUB_EVENT_PATH` names. `Any`: shared, never copied.
    event: Any = None


class Lease(BaseModel):
    lease_id: str
    job_id: str
    workflow_id: str
    worker_id: str
    ttl_secs: int
    granted_at_ms: int


class Claim(BaseModel):
    job: QueuedJob
    lease: Lease


class LogStream(StrEnum):
    stdout = "stdout"
    stderr = "stderr"


class LogChunk(BaseModel):
    workflow_id: str
    job_id: str
    sequence: int
    data: str
    timestamp_ms: int
    stream: LogStream
    # Extension; clients ignore unknown keys. The attempt (0 first) whose lease pushed
    # the chunk: `sequence` counts from 0 again in each attempt.
    attempt: int = 0


class WorkerInfo(BaseModel):
    worker_id: str
    labels: list[str]
    registered_at_ms: int
    last_heartbeat_ms: int
    current_job: str | None = None
    status: WorkerStatus


# --- request bodies ---------------------------------------------------------


class RegisterRequest(_Strict):
    worker_id: Id
    labels: list[Id] = []


class ClaimRequest(_Strict):
    worker_id: Id
    labels: list[Id] = []
    lease_ttl_secs: Annotated[int, Field(ge=1, le=86_400)] = 30
    # Extension: park up to this long for a matching job instead of answering null.
    wait_secs: Annotated[float, Field(ge=0, le=60)] = 0


class CompleteRequest(_Strict):
    outputs: dict[str, str] = {}


class FailRequest(_Strict):
    error: str
    retryable: bool = False


class LogChunkIn(_Strict):
    """A pushed chunk: the ids it carries are ignored, the lease decides the job."""

    workflow_id: str | None = None
    job_id: str | None = None
    sequence: Annotated[int, Field(ge=0)]
    data: str
    timestamp_ms: Annotated[int, Field(ge=0)] | None = None
    # Strict mode takes only enum instances from Python data; JSON sends strings.
    stream: Annotated[LogStream, Field(strict=False)] = LogStream.stdout


class LogsRequest(_Strict):
    chunks: list[LogChunkIn]


class ErrorBody(BaseModel):
    error: str


class Accepted(BaseModel):
    """The `{}`-like body of a 200/202 answer that has no shape of its own."""

    ok: bool = True
