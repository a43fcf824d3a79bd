"""The limits a server enforces and the checks both homes of the engine make with them.

A check runs before anything changes, so a refused request leaves no trace.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .errors import LimitExceeded
from .models import LogChunk, LogChunkIn, WorkflowCreate
from .plan import static_job_count
from .spec import WorkflowSpec


@dataclass(frozen=True)
class Limits:
    """Bounds on what one request or the whole server may hold; each names itself."""

    max_workflows: int = 100_000
    max_jobs_per_workflow: int = 5_000
    max_labels: int = 64
    max_log_bytes_per_job: int = 16 * 1024 * 1024
    # A longer `wait_secs` is shortened to this; the protocol's own bound is 60.
    max_wait_secs: float = 60.0
    max_log_chunks_per_push: int = 10_000

    def check_labels(self, labels: list[str], where: str = "") -> None:
        if len(labels) > self.max_labels:
            raise LimitExceeded(f"{where}limit max_labels ({self.max_labels}) exceeded")

    def check_create(self, body: WorkflowCreate) -> None:
        """Refused before anything is built (the definition is checked once built)."""
        if body.jobs and len(body.jobs) > self.max_jobs_per_workflow:
            raise LimitExceeded(
                f"limit max_jobs_per_workflow ({self.max_jobs_per_workflow}) exceeded"
            )

    def check_definition(self, spec: WorkflowSpec) -> None:
        """The limits a definition must keep: jobs (a static matrix counts each
        combination) and labels per job."""
        if sum(static_job_count(job) for job in spec.jobs) > self.max_jobs_per_workflow:
            raise LimitExceeded(
                f"limit max_jobs_per_workflow ({self.max_jobs_per_workflow}) exceeded"
            )
        for job in spec.jobs:
            self.check_labels(list(job.required_labels), where=f"job '{job.id}': ")

    def check_room(self, workflows: int) -> None:
        """Refuse one more workflow when `workflows` already exist."""
        if workflows >= self.max_workflows:
            raise LimitExceeded(f"limit max_workflows ({self.max_workflows}) reached")

    def check_push(self, chunks: list[LogChunkIn]) -> None:
        if len(chunks) > self.max_log_chunks_per_push:
            limit = self.max_log_chunks_per_push
            raise LimitExceeded(f"limit max_log_chunks_per_push ({limit}) exceeded")


def stamp_chunks(
    workflow_id: str, job_id: str, chunks: Iterable[LogChunkIn], now: int, attempt: int
) -> list[LogChunk]:
    """Pushed chunks as stored: the lease's job's and attempt's, whatever ids they carry;
    a chunk without a timestamp gets the time it arrived."""
    return [
        LogChunk(
            workflow_id=workflow_id,
            job_id=job_id,
            sequence=c.sequence,
            data=c.data,
            timestamp_ms=c.timestamp_ms if c.timestamp_ms is not None else now,
            stream=c.stream,
            attempt=attempt,
        )
        for c in chunks
    ]
