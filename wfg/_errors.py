"""The errors every `wfg` client call may raise."""

from __future__ import annotations


class ClientError(Exception):
    """Base of every error a client call raises; catch this to catch them all."""


class ServerUnreachable(ClientError):
    """No HTTP answer at all: refused, unresolvable, or timed out while connecting."""

    def __init__(self, base_url: str, reason: str) -> None:
        self.base_url = base_url
        self.reason = reason
        super().__init__(f"cannot reach server at {base_url}: {reason}")


class WorkflowApiError(ClientError):
    """The server answered with a non-2xx status.

    `message` is the server's `{"error": ...}` text (or the raw body when the
    answer was not the contract's error shape), like the TypeScript client's
    `WorkflowApiError`.
    """

    def __init__(self, status: int, status_text: str, message: str) -> None:
        self.status = status
        self.status_text = status_text
        self.message = message
        super().__init__(f"{status} {status_text}: {message}")
