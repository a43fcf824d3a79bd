"""The hot worker-protocol calls, as plain functions of the runtime and the raw body.

Both ways in use them: the Quart routes (which document them in OpenAPI) and
the fast path that serves them on a real server. Each returns the value to
send as JSON; request errors are raised for `wire.error_answer` to map.
"""

from __future__ import annotations

from typing import Any

from actors import Runtime
from actors.models import ClaimRequest, CompleteRequest, FailRequest, LogsRequest

from .wire import parse_body


async def claim(runtime: Runtime, raw: bytes) -> Any:
    body = parse_body(raw, ClaimRequest)
    return await runtime.claim(body.worker_id, body.labels, body.lease_ttl_secs, body.wait_secs)


def wants_to_park(raw: bytes) -> bool:
    """Whether a claim body may park (so the client's going away must be watched)."""
    return b"wait_secs" in raw


async def heartbeat(runtime: Runtime, lease_id: str, raw: bytes) -> Any:
    return await runtime.heartbeat(lease_id)


async def complete(runtime: Runtime, lease_id: str, raw: bytes) -> Any:
    body = parse_body(raw, CompleteRequest, optional=True)
    await runtime.complete(lease_id, body.outputs)
    return {}


async def fail(runtime: Runtime, lease_id: str, raw: bytes) -> Any:
    body = parse_body(raw, FailRequest)
    await runtime.fail(lease_id, body.error, body.retryable)
    return {}


async def push_logs(runtime: Runtime, lease_id: str, raw: bytes) -> Any:
    body = parse_body(raw, LogsRequest)
    await runtime.push_logs(lease_id, body.chunks)
    return {}


# The calls on a lease: POST /api/jobs/{lease_id}/{action}.
LEASE_ACTIONS = {"heartbeat": heartbeat, "complete": complete, "fail": fail, "logs": push_logs}
