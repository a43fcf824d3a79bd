"""The checks every HTTP request passes before any route, in front of the fast path and Quart.

A browser page on any site can send a "simple" cross-origin request (a POST
with `Content-Type: text/plain`, no preflight) to a server it can reach,
loopback included, and DNS rebinding lets it do so under a name of its own.
Three header checks close that, once for every route:

1. `Host` must name this server (`HostPolicy`), else 400. A rebinding page
   sends its own domain as `Host`, so it finds nothing here.
2. An unsafe method (anything but GET, HEAD, OPTIONS, TRACE) carrying an
   `Origin` must come from an allowed origin (`OriginPolicy`), else 403.
   Requests without `Origin` (curl, workers, the `wfg` tools) pass.
3. An unsafe method with a body must send it as JSON (`application/json` or
   `application/<x>+json`, parameters allowed), else 415. A body-less
   request (`POST .../run`, heartbeats) needs no content type.

Each refusal is a JSON `{"error": ...}` with the same CORS headers as any
answer, sent before the app sees the request, so it changes nothing.

An answer that goes out before its request's body was read (the gate's
refusals, a 401 or 413, Quart's errors) goes through `UnreadBody`, so the
connection closes cleanly instead of hanging; `DrainUnreadBodies` does that
for every Quart route, and the fast path for its own early answers.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping

import trio

from .wire import error_body, send_json

Headers = list[tuple[bytes, bytes]]

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
_DEFAULT_PORTS = {b"http": b"80", b"https": b"443"}
# Accepted Host values are remembered (a worker sends the same one on every call);
# the bound keeps a client that varies the port from growing it without end.
_MEMO_SIZE = 4096
# An answer sent before its request's body was read: how long sending it may take
# while the unread body is drained (a client that reads nothing does not hold it).
_FINISH_SECS = 10.0


def split_host(host: str) -> tuple[str, str]:
    """`name[:port]` as (lower-case name, port or ""); IPv6 names keep their brackets."""
    host = host.strip().lower()
    if host.startswith("["):
        name, _, rest = host.partition("]")
        return name + "]", rest.removeprefix(":")
    name, _, port = host.partition(":")
    return name.rstrip("."), port


def _address_name(address: str) -> str:
    """A socket address as it appears in a Host header: IPv6 in brackets, IPv4 plain."""
    address = address.partition("%")[0]  # an IPv6 zone is not part of a Host
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address.lower()
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:  # an IPv4 client on a dual-stack socket
            return str(ip.ipv4_mapped)
        return f"[{ip.compressed}]"
    return str(ip)


class HostPolicy:
    """Which `Host` header values name this server.

    Always: the loopback names (`localhost`, `127.0.0.1`, `[::1]`) and the
    address the client connected to (so `http://10.0.0.5:3000` works on a
    server bound to `0.0.0.0`), on any port. Besides, each of `names`:
    `name` (any port) or `name:port`; `*` turns the check off.
    """

    def __init__(self, names: Iterable[str] = ()) -> None:
        self.any = False
        self._names: set[str] = set(LOOPBACK_NAMES)
        self._exact: set[str] = set()
        for entry in names:
            entry = entry.strip()
            if entry == "*":
                self.any = True
            elif entry:
                name, port = split_host(entry)
                if name in ("", "[]"):
                    continue
                if port:
                    self._exact.add(f"{name}:{port}")
                else:
                    self._names.add(name)
        # Host values accepted so far, as sent: the gate's check is a set lookup.
        self.accepted: set[bytes] = set()

    def describe(self) -> str:
        """The accepted names, for the startup line."""
        if self.any:
            return "any Host (ALLOWED_HOSTS=*): DNS rebinding is not refused"
        named = [*LOOPBACK_NAMES, *sorted(self._names - set(LOOPBACK_NAMES)), *sorted(self._exact)]
        return ", ".join(named) + " and the address a client connects to"

    def accepts(self, host: bytes, local_address: str | None) -> bool:
        if host in self.accepted:
            return True
        name, port = split_host(host.decode("latin-1"))
        if self.any or name in self._names or f"{name}:{port}" in self._exact:
            if len(self.accepted) < _MEMO_SIZE:
                self.accepted.add(host)
            return True
        return local_address is not None and name == _address_name(local_address)


class OriginPolicy:
    """Which `Origin` may send a state-changing request.

    With `CORS_ORIGINS` set: the listed origins (`*` allows any). Unset: the
    loopback origins (`http(s)://localhost`, `127.0.0.1`, `[::1]`, any port).
    Either way the server's own origin, the one whose host and port are the
    request's `Host` (the dashboard's pages), once `HostPolicy` accepted it.
    `Origin: null` (sandboxed frames, `file:` pages) is never allowed.
    """

    def __init__(self, cors_origins: Iterable[str] | None) -> None:
        listed = {o.strip().rstrip("/").lower() for o in cors_origins or () if o.strip()}
        self.any = "*" in listed
        self._listed = frozenset(o.encode("latin-1") for o in listed)
        self._loopback = not listed

    def allows(self, origin: bytes, host: bytes | None) -> bool:
        if self.any or origin in self._listed:
            return True
        origin = origin.lower()
        if origin in self._listed:
            return True
        scheme, sep, authority = origin.partition(b"://")
        if not sep or scheme not in _DEFAULT_PORTS:
            return False
        if host is not None:
            host = host.lower()
            default = b":" + _DEFAULT_PORTS[scheme]
            if authority.removesuffix(default) == host.removesuffix(default):
                return True
        if self._loopback:
            return split_host(authority.decode("latin-1"))[0] in LOOPBACK_NAMES
        return False


class SimpleCors:
    """The CORS headers quart-cors gives an actual (non-preflight) request.

    Answers that do not come from Quart (the gate's refusals, the fast path)
    carry the same ones, so a page that may read the API can read the error.
    """

    def __init__(self, cors_origins: Iterable[str] | None) -> None:
        origins = frozenset(cors_origins or ())
        self._origins = origins if origins and "*" not in origins else None

    def headers(self, origin: bytes | None) -> Headers:
        if self._origins is None:
            return [(b"access-control-allow-origin", b"*")] if origin else [(b"vary", b"Origin")]
        headers = [(b"vary", b"Origin")]
        if origin and origin.decode("latin-1") in self._origins:
            headers.append((b"access-control-allow-origin", origin))
        return headers


def is_json(content_type: bytes | None) -> bool:
    """`application/json` or `application/<x>+json`, with or without parameters."""
    if content_type is None:
        return False
    if content_type == b"application/json":
        return True
    media = content_type.partition(b";")[0].strip().lower()
    return media == b"application/json" or (
        media.startswith(b"application/") and media.endswith(b"+json")
    )


class RequestGate:
    """ASGI middleware: the outermost layer of the app (`create_app` installs it)."""

    def __init__(self, app, *, hosts: HostPolicy, origins: OriginPolicy, cors: SimpleCors) -> None:
        self._app = app
        self._hosts = hosts
        self._known_hosts = hosts.accepted
        self._origins = origins
        self._cors = cors

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self._app(scope, receive, send)
        headers = dict(scope["headers"])
        host = headers.get(b"host") or headers.get(b":authority")  # HTTP/2 has no Host
        origin = headers.get(b"origin")
        content_type = headers.get(b"content-type")
        body = has_body(headers)
        # A worker's call (a known Host, no Origin, JSON) skips the checks: byte compares only.
        if (
            (host is not None and host not in self._known_hosts)
            or origin is not None
            or (body and content_type != b"application/json")
        ):
            refusal = self._refusal(scope, host, origin, content_type, body)
            if refusal is not None:
                status, message = refusal
                if body:
                    send = UnreadBody(receive, send).send
                cors = self._cors.headers(origin)
                return await send_json(send, status, error_body(message), cors)
        await self._app(scope, receive, send)

    def _refusal(self, scope, host, origin, content_type, has_body) -> tuple[int, str] | None:
        # No Host at all is an HTTP/1.0 client, never a browser: nothing to rebind.
        if host is not None and not self._hosts.accepts(host, (scope.get("server") or (None,))[0]):
            shown = host.decode("latin-1")[:200]
            return 400, f"this server does not answer to Host {shown!r}; see ALLOWED_HOSTS"
        if scope["method"] in SAFE_METHODS:
            return None
        if origin is not None and not self._origins.allows(origin, host):
            shown = origin.decode("latin-1")[:200]
            return 403, f"origin {shown!r} may not change anything here; see CORS_ORIGINS"
        if has_body and not is_json(content_type):
            shown = "none" if content_type is None else repr(content_type.decode("latin-1")[:200])
            return 415, f"a request body must be JSON (Content-Type: application/json), got {shown}"
        return None


def has_body(headers: Mapping[bytes, bytes]) -> bool:
    """Whether a request's headers announce a body (HTTP/1.1 framing)."""
    if b"transfer-encoding" in headers:
        return True
    return headers.get(b"content-length", b"").lstrip(b"0") != b""


class DrainUnreadBodies:
    """ASGI middleware: every request with a body goes through `UnreadBody`.

    For an app that may answer before reading the body (Quart: its 413 and
    401 hooks, a 404 or 405 for a POST), at the cost of a wrapper per message;
    the fast path, which reads every body it answers, uses `UnreadBody` only
    for its early answers.
    """

    def __init__(self, app) -> None:
        self._app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and has_body(dict(scope["headers"])):
            body = UnreadBody(receive, send)
            receive, send = body.receive, body.send
        await self._app(scope, receive, send)


class UnreadBody:
    """One request with a body, whose answer may go out before the body was read.

    Hypercorn hands the body to the app through a small queue and, when the
    answer ends, puts `http.disconnect` on it; with the queue full of unread
    body and nobody reading, both wait forever and the connection hangs. And
    quart-trio, on that `http.disconnect`, cancels its own answer half-way
    through hypercorn's end-of-answer bookkeeping, so the next request on the
    connection is never read. So an answer to an unread body says
    `Connection: close`, and its last part is sent shielded from the app's
    cancellation while what is left of the body is drained: the connection
    then closes at once instead of hanging.
    """

    __slots__ = ("_receive", "_send", "_unread")

    def __init__(self, receive, send) -> None:
        self._receive = receive
        self._send = send
        self._unread = True

    async def receive(self):
        message = await self._receive()
        if not message.get("more_body", False):  # the body's end, or http.disconnect
            self._unread = False
        return message

    async def send(self, message) -> None:
        if self._unread:
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", ()), (b"connection", b"close")]
                message = {**message, "headers": headers}
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                return await self._finish(message)
        await self._send(message)

    async def _finish(self, message) -> None:
        with trio.CancelScope(shield=True, deadline=trio.current_time() + _FINISH_SECS):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._drain)
                await self._send(message)
                nursery.cancel_scope.cancel()

    async def _drain(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass


__all__ = [
    "DrainUnreadBodies",
    "HostPolicy",
    "OriginPolicy",
    "RequestGate",
    "SimpleCors",
    "UnreadBody",
    "has_body",
    "is_json",
    "split_host",
]
