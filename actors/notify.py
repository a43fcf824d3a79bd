"""Notifications: what a run's end tells each `notify` URL, and how a delivery is retried.

Pure: no I/O, no clock. A `Notification` is made when a run ends (in the
same commit as the run's end, so one due when the server dies is sent after
it restarts); each attempt's outcome gives the next state: delivered on a
2xx answer, else retried with exponential backoff until `GIVE_UP_SECS` after
the run ended, then failed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any, Literal

from .models import JobStatus
from .rules import Run
from .spec import NotifySpec
from .webhooks import SIGNATURE_HEADER, sign

__all__ = [
    "ATTEMPT_TIMEOUT_SECS",
    "GIVE_UP_SECS",
    "Notification",
    "after_attempt",
    "backoff_secs",
    "headers",
    "notifications_for",
    "payload",
]

ATTEMPT_TIMEOUT_SECS = 10.0
GIVE_UP_SECS = 24 * 3600
FIRST_BACKOFF_SECS = 1
MAX_BACKOFF_SECS = 3600
MAX_ERROR_CHARS = 300

State = Literal["pending", "delivered", "failed"]


@dataclass(frozen=True, slots=True)
class Notification:
    """One POST of one run's end to one URL, and how its delivery went."""

    id: str  # also sent as `X-Wfg-Delivery`, so a receiver can drop a repeat
    workflow_id: str
    number: int
    url: str
    body: str  # the JSON sent, fixed when the run ended
    created_ms: int
    next_ms: int  # when the next attempt is due (pending only)
    state: State = "pending"
    attempts: int = 0
    last_status: int | None = None  # the HTTP status of the last answer
    last_error: str | None = None  # why the last attempt failed
    last_attempt_ms: int | None = None

    def to_row(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "workflow_id": self.workflow_id,
            "number": self.number,
            "url": self.url,
            "body": self.body,
            "created_ms": self.created_ms,
            "next_ms": self.next_ms,
            "state": self.state,
            "attempts": self.attempts,
            "last_status": self.last_status,
            "last_error": self.last_error,
            "last_attempt_ms": self.last_attempt_ms,
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Notification:
        return cls(**row)


def payload(run: Run) -> dict[str, Any]:
    """What a notification says of the finished run."""
    return {
        "workflow_id": run.workflow_id,
        "number": run.number,
        "status": run.status.value,
        "trigger": run.trigger,
        "started_at_ms": run.started_at_ms,
        "finished_at_ms": run.finished_at_ms,
        "failed_jobs": [
            job_id for job_id, job in run.jobs.items() if job.status is JobStatus.failure
        ],
    }


def notifications_for(
    notify: tuple[NotifySpec, ...], run: Run, now_ms: int, new_id
) -> list[Notification]:
    """The notifications due for a run that just ended; `new_id()` makes each id."""
    wanted = [n for n in notify if run.status.value in n.on]
    if not wanted:
        return []
    body = json.dumps(payload(run), separators=(",", ":"))
    return [
        Notification(
            id=new_id(),
            workflow_id=run.workflow_id,
            number=run.number,
            url=n.url,
            body=body,
            created_ms=now_ms,
            next_ms=now_ms,
        )
        for n in wanted
    ]


def backoff_secs(attempts: int) -> int:
    """The wait after failed attempt number `attempts` (1 for the first): 1 s, doubling,
    at most an hour."""
    return min(FIRST_BACKOFF_SECS * 2 ** min(attempts - 1, 32), MAX_BACKOFF_SECS)


def after_attempt(
    n: Notification, now_ms: int, status: int | None, error: str | None = None
) -> Notification:
    """The notification once an attempt at `now_ms` got HTTP `status` (None: no answer,
    `error` says why)."""
    attempts = n.attempts + 1
    if status is not None and 200 <= status < 300:
        return replace(
            n,
            state="delivered",
            attempts=attempts,
            last_status=status,
            last_error=None,
            last_attempt_ms=now_ms,
        )
    if error is None:
        error = f"the receiver answered HTTP {status}"
    next_ms = now_ms + backoff_secs(attempts) * 1000
    given_up = next_ms > n.created_ms + GIVE_UP_SECS * 1000
    return replace(
        n,
        state="failed" if given_up else "pending",
        attempts=attempts,
        last_status=status,
        last_error=error[:MAX_ERROR_CHARS],
        last_attempt_ms=now_ms,
        next_ms=n.next_ms if given_up else next_ms,
    )


def headers(n: Notification, secret: str | None) -> dict[str, str]:
    """The request's headers: JSON, the delivery's id, and its signature when a secret is set."""
    found = {
        "Content-Type": "application/json",
        "User-Agent": "workflow-graph",
        "X-Wfg-Event": "run",
        "X-Wfg-Delivery": n.id,
    }
    if secret:
        found[SIGNATURE_HEADER] = sign(secret, n.body.encode())
    return found
