"""Reason phrases on HTTP/1.1 status lines (`HTTP/1.1 404 Not Found`).

ASGI carries a status code only, and hypercorn hands h11 a response without
a reason, so h11 writes `HTTP/1.1 404 ` (valid, but a browser's `statusText`
is then empty, and clients that print it, like the seed's TypeScript
`WorkflowApiError`, show nothing). Hypercorn has no setting for it; this
adapter is the smallest hook there is: the protocol class hypercorn picks
for HTTP/1.1 connections, with the standard phrase (`http.HTTPStatus`) put
on each status line that has none. HTTP/2 has no reason phrases.

`install()` is idempotent and affects only servers started after it, in
this process; `wfg serve` calls it.
"""

from __future__ import annotations

from http import HTTPStatus

import h11
import hypercorn.protocol
from hypercorn.protocol.h11 import H11Protocol

PHRASES = {status.value: status.phrase.encode("ascii") for status in HTTPStatus}


class ReasonPhraseH11Protocol(H11Protocol):
    """Hypercorn's HTTP/1.1 protocol, sending the standard reason phrase."""

    async def _send_h11_event(self, event) -> None:
        if isinstance(event, h11.Response | h11.InformationalResponse) and not event.reason:
            # Passing h11's own Headers object back skips validating them again.
            event = type(event)(
                status_code=event.status_code,
                headers=event.headers,
                reason=PHRASES.get(event.status_code, b""),
            )
        await super()._send_h11_event(event)


def install() -> None:
    """Make hypercorn's connections in this process use `ReasonPhraseH11Protocol`."""
    # `ProtocolWrapper` looks the class up in its module's namespace per connection.
    hypercorn.protocol.H11Protocol = ReasonPhraseH11Protocol  # type: ignore[misc]


__all__ = ["PHRASES", "ReasonPhraseH11Protocol", "install"]
