"""The workflow-graph runtime: actors on trio that own every piece of mutable state."""

from .errors import (
    Conflict,
    Invalid,
    LeaseNotActive,
    LimitExceeded,
    NotFound,
    WorkflowGraphError,
)
from .runtime import Limits, Runtime, open_runtime
from .spec import DefinitionError, JobSpec, WorkflowSpec

__all__ = [
    "Conflict",
    "DefinitionError",
    "Invalid",
    "JobSpec",
    "LeaseNotActive",
    "Limits",
    "LimitExceeded",
    "NotFound",
    "Runtime",
    "WorkflowGraphError",
    "WorkflowSpec",
    "open_runtime",
]
