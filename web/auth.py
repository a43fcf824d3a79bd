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
- the rest (`/openapi.json`, `/docs`, the dashboard's pages and static files)
  is public, and so is every `OPTIONS` request, so CORS preflights work.

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
WORKER_PREFIX = "/api/jobs/"
API_PREFIX = "/api/"
# Rules whose token may also come as `?access_token=`: EventSource sends no headers.
QUERY_TOKEN_SUFFIX = "/logs/stream"


def _secret(token: str | None) -> bytes | None:
    return token.encode() if token else None


def route_scope(rule: str | None, path: str) -> str:
    """`worker`, `api` or `public`: which token the route (or unmatched path) needs."""
    where = rule if rule is not None else path
    if where in WORKER_RULES or where.startswith(WORKER_PREFIX):
        return "worker"
    if rule is None and path.startswith("/api/workers/") and path.endswith("/heartbeat"):
        return "worker"
    if where.startswith(API_PREFIX) or where == API_PREFIX.rstrip("/"):
        return "api"
    return "public"


def _presented_token(allow_query: bool) -> bytes | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        # Headers arrive as latin-1 text; these are the bytes the client sent.
        return value.strip().encode("latin-1", "replace")
    if allow_query:
        query = request.args.get("access_token")
        if query:
            return query.encode()
    return None


def _unauthorized(message: str, error_code: str | None) -> Response:
    challenge = 'Bearer realm="workflow-graph"'
    if error_code:
        challenge += f', error="{error_code}"'
    return Response(
        json.dumps({"error": message}),
        status=401,
        content_type="application/json",
        headers={"WWW-Authenticate": challenge},
    )


def install_auth(app: Quart, api_token: str | None, worker_token: str | None) -> None:
    """Guard `app`'s routes with the tokens; a None or empty token leaves its routes open.

    Call it before any other `before_request` hook that reads the request, so
    a request without its token gets 401 before anything else is checked.
    """
    secrets = {
        "api": _secret(api_token),
        "worker": _secret(worker_token) or _secret(api_token),
    }
    if not any(secrets.values()):
        return

    @app.before_request
    async def _require_token():
        if request.method == "OPTIONS":
            return None
        rule = request.url_rule.rule if request.url_rule is not None else None
        scope = route_scope(rule, request.path)
        secret = secrets.get(scope)
        if secret is None:
            return None
        allow_query = (rule or request.path).endswith(QUERY_TOKEN_SUFFIX)
        presented = _presented_token(allow_query)
        if presented is None:
            return _unauthorized(f"this route needs the {scope} token (Bearer)", None)
        if not hmac.compare_digest(presented, secret):
            return _unauthorized(f"the {scope} token is not valid", "invalid_token")
        return None


__all__ = ["install_auth", "route_scope"]
