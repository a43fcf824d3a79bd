"""Bearer tokens: `API_TOKEN` for management and reads, `WORKER_TOKEN` for workers.

Both are off by default. With a token set, a request to a route it guards
must carry `Authorization: Bearer <token>`; without it, or with another
value, the answer is 401 with a JSON error and `WWW-Authenticate: Bearer`,
before the body is looked at. The log stream also takes the token as an
`access_token` query parameter, because a browser's `EventSource` cannot set
headers.

Which token a route needs is decided by its URL rule:

- the worker protocol (`/api/jobs/...`, worker register and heartbeat) needs
  the worker token; with only `API_TOKEN` set it needs that one, so a
  deployment with a single token guards everything with it (the `wfg` tools
  send it on worker calls in that case too);
- every other `/api/...` route, matched or not, needs the API token;
- `/metrics` needs the API token too, unless `METRICS_PUBLIC=1` opens it;
- the webhook routes (`POST /api/webhooks/github`, `POST .../dispatch`) need
  no token: they check a signature of their body instead (`web.webhooks`);
- the rest (`/openapi.json`, `/docs`, `/healthz`, `/readyz`, the dashboard's
  pages and static files) is public, and so is every `OPTIONS` request, so
  CORS preflights work.

Tokens are compared with `hmac.compare_digest` and never logged or echoed.
"""

from __future__ import annotations

import hmac
import json

from quart import Quart, Response, request

WORKER_RULES = frozenset(
    {
        "/api/workers/register",
        "/api/workers/<worker_id>/heartbeat",
    }
)
# Routes that prove themselves with a signature of their body instead (GitHub's webhook
# cannot send a bearer token): see `web.webhooks`.
SIGNED_RULES = frozenset({"/api/webhooks/github", "/api/workflows/<workflow_id>/dispatch"})
WORKER_PREFIX = "/api/jobs/"
API_PREFIX = "/api/"
METRICS_PATH = "/metrics"
# Rules whose token may also come as `?access_token=`: EventSource sends no headers.
QUERY_TOKEN_SUFFIX = "/logs/stream"


def _secret(token: str | None) -> bytes | None:
    return token.encode() if token else None


def route_scope(rule: str | None, path: str) -> str:
    """`worker`, `api`, `metrics`, `signed` or `public`: which token the route (or
    unmatched path) needs; `signed` and `public` need none."""
    if rule in SIGNED_RULES:
        return "signed"
    where = rule if rule is not None else path
    if where == METRICS_PATH:
        return "metrics"
    if where in WORKER_RULES or where.startswith(WORKER_PREFIX):
        return "worker"
    if rule is None and path.startswith("/api/workers/") and path.endswith("/heartbeat"):
        return "worker"
    if where.startswith(API_PREFIX) or where == API_PREFIX.rstrip("/"):
        return "api"
    return "public"


def presented_token(authorization: str, query_token: str | None) -> bytes | None:
    """The token a request carries: its Bearer header, else the query form if allowed."""
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        # Headers arrive as latin-1 text; these are the bytes the client sent.
        return value.strip().encode("latin-1", "replace")
    if query_token:
        return query_token.encode()
    return None


def challenge(error_code: str | None) -> str:
    """The `WWW-Authenticate` value of a 401."""
    value = 'Bearer realm="workflow-graph"'
    if error_code:
        value += f', error="{error_code}"'
    return value


class TokenGuard:
    """Decides whether a request may reach a route; None or empty tokens guard nothing."""

    def __init__(
        self, api_token: str | None, worker_token: str | None, metrics_public: bool = False
    ) -> None:
        self._secrets = {
            "api": _secret(api_token),
            "worker": _secret(worker_token) or _secret(api_token),
            "metrics": None if metrics_public else _secret(api_token),
        }
        self.active = any(self._secrets.values())

    def refusal(self, scope: str, presented: bytes | None) -> tuple[str, str | None] | None:
        """None when the request may pass, else the 401's message and error code."""
        secret = self._secrets.get(scope)
        if secret is None:
            return None
        token = "api" if scope == "metrics" else scope
        if presented is None:
            return f"this route needs the {token} token (Bearer)", None
        if not hmac.compare_digest(presented, secret):
            return f"the {token} token is not valid", "invalid_token"
        return None


def _unauthorized(message: str, error_code: str | None) -> Response:
    return Response(
        json.dumps({"error": message}),
        status=401,
        content_type="application/json",
        headers={"WWW-Authenticate": challenge(error_code)},
    )


def install_auth(app: Quart, guard: TokenGuard) -> None:
    """Guard `app`'s routes with the guard's tokens.

    Call it before any other `before_request` hook that reads the request, so
    a request without its token gets 401 before anything else is checked.
    """
    if not guard.active:
        return

    @app.before_request
    async def _require_token():
        if request.method == "OPTIONS":
            return None
        rule = request.url_rule.rule if request.url_rule is not None else None
        allow_query = (rule or request.path).endswith(QUERY_TOKEN_SUFFIX)
        presented = presented_token(
            request.headers.get("Authorization", ""),
            request.args.get("access_token") if allow_query else None,
        )
        refused = guard.refusal(route_scope(rule, request.path), presented)
        return _unauthorized(*refused) if refused else None


__all__ = ["TokenGuard", "challenge", "install_auth", "presented_token", "route_scope"]
