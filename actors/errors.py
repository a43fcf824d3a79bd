"""Domain errors the runtime raises; `web/` maps each to one HTTP status."""


class WorkflowGraphError(Exception):
    """Base of every error the runtime reports to a caller."""


class Invalid(WorkflowGraphError):
    """A request that parses but breaks a rule (422)."""


class LimitExceeded(WorkflowGraphError):
    """A request past a configured limit (413 for sizes, else 422); names the limit."""

    def __init__(self, message: str, *, size: bool = False) -> None:
        super().__init__(message)
        self.size = size


class NotFound(WorkflowGraphError):
    """An unknown workflow, job or worker id (404)."""


class Conflict(WorkflowGraphError):
    """The request conflicts with current state, such as a run already active (409)."""


class LeaseNotActive(Conflict):
    """The lease is unknown, expired, already reported, or revoked (409)."""

    def __init__(self, lease_id: str = "") -> None:
        super().__init__(f"lease '{lease_id}' is not active")


class Unavailable(WorkflowGraphError):
    """The state the answer needs cannot be reached now, such as a database that is down
    (503); nothing was changed, or the change was not acknowledged."""
