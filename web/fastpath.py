"""The worker-protocol fast path: claims and lease calls without Quart's per-request cost.

On a busy server, claim, heartbeat, complete, fail and log pushes are nearly
every request, and Quart's request context, hooks and extensions cost about
half of each one (see benchmarks/RESULTS.md). This ASGI layer serves those
five calls with the same handlers (`protocol`), the same token check, body
limit, CORS headers and error answers as the Quart routes, in the same order:
401, 413, 400, 422, 404, 409. The Host, Origin and content-type checks come
before both, in `gate.RequestGate`. Every other request goes on to Quart,
which also keeps documenting these routes in OpenAPI.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import trio

from actors import Runtime

from . import protocol
from .auth import TokenGuard, challenge, presented_token
from .gate import SimpleCors, UnreadBody, has_body
from .http_metrics import ROUTE_KEY
from .wire import BadRequest, body_too_large, dump, error_answer, error_body, send_json

log = logging.getLogger("workflow_graph.web")

CLAIM_PATH = "/api/jobs/claim"
LEASE_PATH = re.compile(r"/api/jobs/([^/]+)/(heartbeat|complete|fail|logs)")
# The Quart rules of the same routes: what their metrics are counted under.
LEASE_ROUTES = {
    action: f"/api/jobs/<lease_id>/{action}" for action in ("heartbeat", "complete", "fail", "logs")
}


class _BodyTooLarge(Exception):
    pass


class ProtocolFastPath:
    """ASGI middleware in front of the Quart app (`app.asgi_app = ProtocolFastPath(...)`)."""

    def __init__(
        self,
        app,
        runtime: Runtime,
        guard: TokenGuard,
        *,
        max_body_bytes: int,
        cors: SimpleCors,
    ) -> None:
        self._app = app
        self._runtime = runtime
        self._guard = guard
        self._max_body_bytes = max_body_bytes
        self._cors = cors

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            path = scope["path"]
            if path == CLAIM_PATH:
                scope[ROUTE_KEY] = CLAIM_PATH
                return await self._serve(scope, receive, send, None, None)
            if (match := LEASE_PATH.fullmatch(path)) is not None:
                scope[ROUTE_KEY] = LEASE_ROUTES[match[2]]
                return await self._serve(scope, receive, send, match[1], match[2])
        await self._app(scope, receive, send)

    async def _serve(self, scope, receive, send, lease_id: str | None, action: str | None):
        headers = dict(scope["headers"])
        cors = self._cors.headers(headers.get(b"origin"))
        presented = presented_token(headers.get(b"authorization", b"").decode("latin-1"), None)
        refused = self._guard.refusal("worker", presented) if self._guard.active else None
        if refused is not None:
            message, code = refused
            auth = [(b"www-authenticate", challenge(code).encode())]
            early = _before_body(headers, receive, send)
            return await send_json(early, 401, error_body(message), cors + auth)
        try:
            raw = await self._read_body(headers, receive)
            if lease_id is None:
                value = await self._claim(raw, receive)
                if value is _GONE:
                    return None  # the client went away; its job went back to the queue
            else:
                assert action is not None  # a lease path always names its action
                value = await protocol.LEASE_ACTIONS[action](self._runtime, lease_id, raw)
        except _ClientLeft:
            return None
        except _BodyTooLarge:
            message = body_too_large(self._max_body_bytes)
            early = _before_body(headers, receive, send)
            return await send_json(early, 413, error_body(message), cors)
        except Exception as exc:  # noqa: BLE001 - every error is answered as JSON
            answer = error_answer(exc)
            if answer is None:
                log.exception("unexpected error serving POST %s", scope["path"])
                answer = (500, "internal server error")
            return await send_json(send, answer[0], error_body(answer[1]), cors)
        await send_json(send, 200, dump(value), cors)

    async def _read_body(self, headers: dict[bytes, bytes], receive) -> bytes:
        length = headers.get(b"content-length")
        if length is not None:
            if not length.isdigit():
                raise BadRequest("malformed Content-Length")
            if int(length) > self._max_body_bytes:
                raise _BodyTooLarge
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":
                raise _ClientLeft  # http.disconnect before the body was complete
            body += message.get("body", b"")
            if len(body) > self._max_body_bytes:
                raise _BodyTooLarge
            if not message.get("more_body", False):
                return bytes(body)

    async def _claim(self, raw: bytes, receive) -> Any:
        if not protocol.wants_to_park(raw):
            return await protocol.claim(self._runtime, raw)
        # A parked claim watches for its client leaving, as Quart does: cancelled,
        # the claim hands back any job it was about to be given.
        outcome: dict[str, Any] = {}
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                outcome["gone"] = True
                nursery.cancel_scope.cancel()

            nursery.start_soon(watch)
            try:
                outcome["value"] = await protocol.claim(self._runtime, raw)
            except Exception as exc:  # noqa: BLE001 - re-raised below, outside the nursery
                outcome["error"] = exc
            nursery.cancel_scope.cancel()
        if outcome.get("gone"):
            return _GONE
        if "error" in outcome:
            raise outcome["error"]
        return outcome["value"]


def _before_body(headers: dict[bytes, bytes], receive, send):
    """The `send` for an answer given before the request's body was read (see UnreadBody)."""
    return UnreadBody(receive, send).send if has_body(headers) else send


class _ClientLeft(Exception):
    pass


_GONE = object()
