"""workflow-graph's user tools: the REST client, the `wfg` command, the worker SDK.

from wfg import Client, AsyncClient, WorkflowApiError, Worker
"""

from ._errors import ClientError, ServerUnreachable, WorkflowApiError
from .client import AsyncClient, Client
from .worker import JobContext, JobFailed, Worker

__all__ = [
    "AsyncClient",
    "Client",
    "ClientError",
    "JobContext",
    "JobFailed",
    "ServerUnreachable",
    "Worker",
    "WorkflowApiError",
]
