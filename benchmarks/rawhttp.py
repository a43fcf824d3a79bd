"""A lean HTTP/1.1 client on a plain socket, for latency figures that measure the server.

httpx costs about a millisecond per request on this kind of machine, on each
side of a round trip; a dispatch measured through it is mostly the client.
This client pre-encodes each request and parses only Content-Length framing.
It reconnects when the server closes a keep-alive connection (hypercorn does
after 1000 requests).
"""

from __future__ import annotations

import json
import re
import socket
from typing import Any

_LENGTH = re.compile(rb"content-length:\s*(\d+)", re.IGNORECASE)


class RawHttp:
    def __init__(self, url: str, timeout: float = 40) -> None:
        authority = url.removeprefix("http://")
        host, port = authority.rsplit(":", 1)
        self._address = (host, int(port))
        self._host = authority  # the server answers only to a Host that names it
        self._timeout = timeout
        self._sock: socket.socket | None = None
        self._buffer = b""

    def _connect(self) -> socket.socket:
        if self._sock is None:
            sock = socket.create_connection(self._address, timeout=self._timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._sock, self._buffer = sock, b""
        return self._sock

    def send(self, method: str, path: str, body: Any = None) -> None:
        data = b"" if body is None else json.dumps(body).encode()
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {self._host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n"
        )
        self._connect().sendall(head.encode() + data)

    def receive(self) -> tuple[int, Any]:
        """The next answer's status and JSON body."""
        sock = self._connect()
        while b"\r\n\r\n" not in self._buffer:
            self._buffer += self._read(sock)
        head, _, rest = self._buffer.partition(b"\r\n\r\n")
        found = _LENGTH.search(head)
        assert found is not None, head  # every answer here has a Content-Length
        length = int(found.group(1))
        while len(rest) < length:
            rest += self._read(sock)
        self._buffer = rest[length:]
        if b"connection: close" in head.lower():
            self.close()
        return int(head.split(b" ", 2)[1]), json.loads(rest[:length])

    def call(self, method: str, path: str, body: Any = None) -> Any:
        self.send(method, path, body)
        status, answer = self.receive()
        if status >= 300:
            raise RuntimeError(f"{method} {path}: {status} {answer}")
        return answer

    def _read(self, sock: socket.socket) -> bytes:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection mid-answer")
        return chunk

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
