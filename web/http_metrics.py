"""HTTP request metrics by route template: what each request cost and how it ended.

`HttpMetrics` is the outermost ASGI layer, so every answer is counted, the
request gate's refusals included. The route is a URL template written into
the ASGI scope: by the worker-protocol fast path for its five routes, and for
Quart's routes by `note_route`, before any other hook can answer. A request
no route claimed counts as `(unmatched)`. A raw path is never a label value,
so neither are ids.
"""

from __future__ import annotations

import time

from quart import Quart, request

from actors.metrics import UNMATCHED_ROUTE, Metrics

ROUTE_KEY = "wfg.route"


def note_route(app: Quart) -> None:
    """Record each request's URL rule in its scope. Install it before any other
    `before_request` hook: one of those may answer (a 401) and stop the rest."""

    @app.before_request
    async def _note_route():
        rule = request.url_rule
        if rule is not None:
            request.scope[ROUTE_KEY] = rule.rule


class HttpMetrics:
    """ASGI middleware: counts and times every HTTP request until its answer's headers."""

    def __init__(self, app, metrics: Metrics) -> None:
        self._app = app
        self._metrics = metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self._app(scope, receive, send)
        started = time.perf_counter()
        metrics = self._metrics

        async def timed_send(message) -> None:
            if message["type"] == "http.response.start":
                metrics.http_request(
                    scope.get(ROUTE_KEY, UNMATCHED_ROUTE),
                    scope["method"],
                    message["status"],
                    time.perf_counter() - started,
                )
            await send(message)

        await self._app(scope, receive, timed_send)


__all__ = ["HttpMetrics", "ROUTE_KEY", "note_route"]
