"""workflow-graph's user tools: the REST client, the `wfg` command, the worker agent.

from wfg import Client, AsyncClient, WorkflowApiError
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._errors import ClientError, ServerUnreachable, WorkflowApiError
from .client import AsyncClient, Client

if TYPE_CHECKING:
    from .worker import JobContext, Worker

__all__ = [
    "AsyncClient",
    "Client",
    "ClientError",
    "JobContext",
    "ServerUnreachable",
    "Worker",
    "WorkflowApiError",
]

# The worker module is imported on first use, so `import wfg` (and the
# client) costs nothing extra and works even where the worker is absent.
_LAZY = {"Worker", "JobContext"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from . import worker

        return getattr(worker, name)
    raise AttributeError(f"module 'wfg' has no attribute {name!r}")
