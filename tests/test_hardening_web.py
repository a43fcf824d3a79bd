"""The HTTP layer against a hostile browser and odd clients: Host, Origin, content
type, connections after an early answer, status lines, ids, names and paging.

In-process through the app's ASGI entry (the gate, the fast path, Quart), like
`test_http_api.py`; what is about sockets and header bytes runs against a real
`wfg serve` process with a raw socket. Every refusal is checked twice: the
answer, and that nothing changed (`snapshot`).
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
from test_http_api import Api, assert_error, job, serve
from test_security import snapshot

from actors import open_runtime
from actors.definitions import load_workflows_dir
from actors.models import WorkflowCreate
from actors.spec import MAX_NAME_CHARS
from web.app import create_app
from web.gate import HostPolicy, OriginPolicy, is_json
from web.server import ServerSettings

EVIL = "https://evil.example"
WORKFLOW = {"name": "wf", "jobs": [job("a", "echo hi")]}


@pytest.fixture
async def api() -> AsyncIterator[Api]:
    async with serve() as a:
        yield a


async def post_raw(api: Api, path: str, body: bytes, **headers: str):
    # The test client sends no Content-Length by itself; a real client does.
    headers = {"Content-Length": str(len(body)), **headers}
    return await api.client.post(path, data=body, headers=headers)


async def running_lease(api: Api) -> tuple[str, str]:
    """A workflow with job `a` claimed: (workflow id, lease id)."""
    wf = await api.create_and_run([job("a")])
    return wf, (await api.claim_job())["lease"]["lease_id"]


# --- content type -----------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "text/plain;charset=UTF-8",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/jsonx",
        "text/json",
        None,
    ],
)
async def test_a_body_that_is_not_json_is_415_on_every_route(content_type):
    """The simple cross-origin request a page can send without a preflight changes nothing."""
    async with serve() as api:
        wf, lease = await running_lease(api)
        before = await snapshot(api)
        body = json.dumps(WORKFLOW).encode()
        headers = {} if content_type is None else {"Content-Type": content_type}
        for path in (
            "/api/workflows",
            f"/api/workflows/{wf}/cancel",
            "/api/workers/register",
            "/api/jobs/claim",  # the fast path from here on
            f"/api/jobs/{lease}/complete",
            f"/api/jobs/{lease}/fail",
            f"/api/jobs/{lease}/logs",
        ):
            message = await assert_error(await post_raw(api, path, body, **headers), 415)
            assert "application/json" in message
        assert await snapshot(api) == before


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "application/json; charset=utf-8",
        "Application/JSON;charset=UTF-8",
        "application/vnd.workflow+json",
    ],
)
async def test_json_media_types_with_parameters_are_read(content_type):
    async with serve() as api:
        resp = await post_raw(
            api, "/api/workflows", json.dumps(WORKFLOW).encode(), **{"Content-Type": content_type}
        )
        assert resp.status_code == 201, await resp.get_data(as_text=True)
        resp = await post_raw(
            api, "/api/jobs/claim", b'{"worker_id": "w"}', **{"Content-Type": content_type}
        )
        assert resp.status_code == 200


async def test_a_request_without_a_body_needs_no_content_type():
    async with serve() as api:
        wf, lease = await running_lease(api)
        await api.post("/api/workers/register", {"worker_id": "w9"})
        for path, status in (
            (f"/api/jobs/{lease}/heartbeat", 200),
            ("/api/workers/w9/heartbeat", 200),
            (f"/api/jobs/{lease}/complete", 200),  # an empty body is `{"outputs": {}}`
            (f"/api/workflows/{wf}/run", 202),
        ):
            resp = await post_raw(api, path, b"", **{"Content-Type": "text/plain"})
            assert resp.status_code == status, (path, await resp.get_data(as_text=True))
            resp = await api.client.post(path)
            assert resp.status_code in (status, 409), path


def test_is_json():
    assert is_json(b"application/json")
    assert is_json(b"application/problem+json; charset=utf-8")
    for value in (None, b"", b"json", b"text/plain", b"application/json-seq", b"text/x+json"):
        assert not is_json(value), value


# --- Origin -------------------------------------------------------------------------


@pytest.mark.parametrize("cors_origins", [None, ["https://good.example"]])
async def test_a_state_change_from_a_foreign_origin_is_403_and_changes_nothing(cors_origins):
    async with serve(cors_origins=cors_origins) as api:
        wf, lease = await running_lease(api)
        before = await snapshot(api)
        for origin in (EVIL, "null", "https://good.example.evil.example"):
            headers = {"Origin": origin}
            calls = [
                ("POST", "/api/workflows", WORKFLOW),
                ("POST", f"/api/workflows/{wf}/cancel", None),
                ("POST", f"/api/workflows/{wf}/run", None),
                ("POST", "/api/workers/register", {"worker_id": "evil"}),
                ("POST", "/api/jobs/claim", {"worker_id": "evil"}),
                ("POST", f"/api/jobs/{lease}/fail", {"error": "x"}),
                ("POST", f"/api/jobs/{lease}/heartbeat", None),
                ("PUT", "/api/workflows", WORKFLOW),
                ("PATCH", f"/api/workflows/{wf}/status", {}),
                ("DELETE", f"/api/workflows/{wf}/status", None),
            ]
            for method, path, body in calls:
                resp = await api.client.open(path, method=method, json=body, headers=headers)
                message = await assert_error(resp, 403)
                assert "CORS_ORIGINS" in message, message
        assert await snapshot(api) == before
        # Reads keep the permissive default (or the allow-list's headers).
        resp = await api.get("/api/workflows", headers={"Origin": EVIL})
        assert resp.status_code == 200
        assert resp.headers.get("Access-Control-Allow-Origin") == (None if cors_origins else "*")


async def test_listed_origins_may_change_things_and_loopback_only_when_none_are_listed():
    async with serve(cors_origins=["https://good.example"]) as api:
        resp = await api.post(
            "/api/workflows", WORKFLOW, headers={"Origin": "https://good.example"}
        )
        assert resp.status_code == 201
        assert resp.headers["Access-Control-Allow-Origin"] == "https://good.example"
        resp = await api.post(
            "/api/workflows", WORKFLOW, headers={"Origin": "http://localhost:5173"}
        )
        await assert_error(resp, 403)
    async with serve() as api:
        for origin in ("http://localhost:5173", "http://127.0.0.1:8080", "http://[::1]:3000"):
            resp = await api.post("/api/workflows", WORKFLOW, headers={"Origin": origin})
            assert resp.status_code == 201, origin
        resp = await api.post(
            "/api/jobs/claim", {"worker_id": "w"}, headers={"Origin": "http://localhost"}
        )
        assert resp.status_code == 200


@pytest.mark.parametrize("cors_origins", [None, ["https://good.example"]])
async def test_the_servers_own_origin_may_change_things(cors_origins):
    """The dashboard's buttons: a same-origin POST carries Origin too."""
    async with serve(cors_origins=cors_origins, allowed_hosts=["wfg.example"]) as api:
        wf = (await api.create([job("a")]))["id"]
        for host, origin in (
            ("wfg.example:8080", "http://wfg.example:8080"),
            ("wfg.example", "https://wfg.example"),  # TLS ended by a proxy
            ("wfg.example:80", "http://wfg.example"),
        ):
            headers = {"Host": host, "Origin": origin}
            resp = await api.post(f"/api/workflows/{wf}/run", headers=headers)
            assert resp.status_code in (202, 409), (host, origin, resp.status_code)
        resp = await api.post(
            f"/api/workflows/{wf}/cancel",
            headers={"Host": "wfg.example:8080", "Origin": "http://wfg.example:9090"},
        )
        await assert_error(resp, 403)


def test_origin_policy_cases():
    default = OriginPolicy(None)
    assert default.allows(b"http://localhost:5173", b"127.0.0.1:3000")
    assert default.allows(b"HTTP://LOCALHOST:5173", b"127.0.0.1:3000")
    assert not default.allows(b"http://localhost.evil.example", b"127.0.0.1:3000")
    assert not default.allows(b"null", b"127.0.0.1:3000")
    assert not default.allows(b"file://", b"127.0.0.1:3000")
    assert default.allows(b"http://127.0.0.1:3000", b"127.0.0.1:3000")
    listed = OriginPolicy(["https://Good.example/"])
    assert listed.allows(b"https://good.example", None)
    assert not listed.allows(b"http://good.example", None)
    assert OriginPolicy(["*"]).allows(b"https://evil.example", None)


# --- Host ---------------------------------------------------------------------------


@pytest.mark.parametrize("method,path", [("GET", "/api/workflows"), ("POST", "/api/jobs/claim")])
async def test_a_host_that_is_not_this_server_is_400(method, path):
    """What a DNS-rebinding page sends: its own name, with or without its Origin."""
    async with serve() as api:
        before = await snapshot(api)
        for host in ("evil.example", "evil.example:3000", "localhost.evil.example", "127.0.0.2"):
            for extra in ({}, {"Origin": f"http://{host}"}):
                resp = await api.client.open(
                    path, method=method, json={"worker_id": "w"}, headers={"Host": host, **extra}
                )
                message = await assert_error(resp, 400)
                assert "ALLOWED_HOSTS" in message
        assert await snapshot(api) == before
        for host in ("localhost", "LOCALHOST:3000", "127.0.0.1:1", "[::1]:3000", "localhost."):
            resp = await api.client.open(
                path, method=method, json={"worker_id": "w"}, headers={"Host": host}
            )
            assert resp.status_code == 200, host


async def test_allowed_hosts_adds_names_with_or_without_a_port():
    async with serve(allowed_hosts=["build-host", "ci.example:8443"]) as api:
        for host, status in (
            ("build-host", 200),
            ("Build-Host:3000", 200),
            ("ci.example:8443", 200),
            ("ci.example:3000", 400),
            ("ci.example", 400),
            ("other.example", 400),
        ):
            resp = await api.get("/api/workers", headers={"Host": host})
            assert resp.status_code == status, host
    async with serve(allowed_hosts=["*"]) as api:
        assert (
            await api.get("/api/workers", headers={"Host": "anything.example"})
        ).status_code == 200


def test_host_policy_accepts_the_address_a_client_connected_to():
    """A server bound to 0.0.0.0 answers `http://10.0.0.5:3000` on that interface."""
    policy = HostPolicy()
    assert policy.accepts(b"10.0.0.5:3000", "10.0.0.5")
    assert policy.accepts(b"10.0.0.5", "::ffff:10.0.0.5")  # IPv4 on a dual-stack socket
    assert policy.accepts(b"[fe80::1]:3000", "fe80::1%eth0")
    assert not policy.accepts(b"10.0.0.5:3000", "10.0.0.6")
    assert not policy.accepts(b"evil.example:3000", "10.0.0.5")
    assert not policy.accepts(b"evil.example", None)
    assert "localhost" in policy.describe()


def test_allowed_hosts_setting_and_the_machines_names():
    settings = ServerSettings.from_env({"ALLOWED_HOSTS": " a.example , b.example:8080 ,"})
    assert settings.allowed_hosts == ("a.example", "b.example:8080")
    names = settings.host_names()
    assert names[:3] == ["a.example", "b.example:8080", "127.0.0.1"]
    assert socket.gethostname().lower() in names
    assert ServerSettings.from_env({}).allowed_hosts == ()
    # The bound address as a URL names it (`wfg serve` prints http://0.0.0.0:3000).
    assert ServerSettings(host="0.0.0.0").host_names()[0] == "0.0.0.0"
    assert ServerSettings(host="::").host_names()[0] == "[::]"


async def _asgi_status(app, headers: list[tuple[bytes, bytes]]) -> int:
    """One GET /api/workers straight through the app's ASGI entry."""
    sent: list[dict] = []
    messages = [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive():
        if messages:
            return messages.pop()
        await trio.sleep_forever()

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "http_version": "2",
        "method": "GET",
        "scheme": "http",
        "path": "/api/workers",
        "raw_path": b"/api/workers",
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 3000),
        "asgi": {"version": "3.0"},
    }
    await app(scope, receive, send)
    return sent[0]["status"]


async def test_an_http2_authority_is_checked_like_a_host():
    """HTTP/2 sends `:authority` instead of `Host`; the gate reads either."""
    async with open_runtime() as rt:
        app = create_app(rt)
        async with app.test_app():
            assert await _asgi_status(app, [(b":authority", b"evil.example")]) == 400
            assert await _asgi_status(app, [(b":authority", b"localhost:3000")]) == 200


async def test_openapi_documents_the_gates_answers():
    async with serve() as api:
        doc = await (await api.get("/openapi.json")).get_json()
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            assert "400" in responses, (method, path)
            unsafe = method.upper() not in {"GET", "HEAD", "OPTIONS"}
            assert ("403" in responses and "415" in responses) == unsafe, (method, path)
            assert responses["415" if unsafe else "400"]["description"]


# --- NUL bytes, ids, names -----------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {"name": "wf", "jobs": [job("a", "echo a\u0000rm -rf /")]},
        {"name": "w\u0000f", "jobs": [job("a")]},
        {"name": "wf", "jobs": [job("a", name="A\u0000")]},
        {"name": "wf", "jobs": [job("a", env={"X": "1\u00002"})]},
        {"name": "wf", "jobs": [job("a", env={"X\u0000Y": "1"})]},
    ],
    ids=["command", "workflow-name", "job-name", "env-value", "env-key"],
)
async def test_a_nul_byte_where_a_worker_would_use_it_is_422(api: Api, body):
    message = await assert_error(await api.post("/api/workflows", body), 422)
    # An env key is refused earlier still: it is no shell variable name.
    assert "NUL" in message or "not a shell variable name" in message
    assert await api.workflows() == []


@pytest.mark.parametrize("bad", [".", ".."])
async def test_dot_ids_are_refused(api: Api, bad: str):
    for body in (
        {"name": "wf", "jobs": [job(bad)]},
        {"name": "wf", "jobs": [job("a"), job("b", depends_on=[bad])]},
        {"name": "wf", "jobs": [job("a", required_labels=[bad])]},
    ):
        await assert_error(await api.post("/api/workflows", body), 422)
    await assert_error(await api.post("/api/workers/register", {"worker_id": bad}), 422)
    await assert_error(await api.post("/api/jobs/claim", {"worker_id": bad}), 422)
    assert await api.workflows() == [] and await api.workers() == {}
    # Other dotted ids stay valid.
    created = await api.create([job("..."), job(".a"), job("a.b", depends_on=["...", ".a"])])
    assert [j["id"] for j in created["jobs"]] == ["...", ".a", "a.b"]


def test_dot_job_ids_in_a_definition_file_are_refused(tmp_path: Path):
    (tmp_path / "ci.yml").write_text("name: CI\njobs:\n  '..':\n    run: 'true'\n")
    warnings: list[str] = []
    assert load_workflows_dir(tmp_path, warn=warnings.append) == []
    assert len(warnings) == 1 and "'..'" in warnings[0], warnings


async def test_names_are_bounded_by_max_name_chars(api: Api):
    await api.create([job("a", name="j" * 256)], name="w" * 256)
    for body, where in (
        ({"name": "w" * 257, "jobs": [job("a")]}, "the workflow name (257 characters)"),
        (
            {"name": "wf", "jobs": [job("a", name="j" * 900_000)]},
            "the name of job 'a' (900000 characters)",
        ),
    ):
        message = await assert_error(await api.post("/api/workflows", body), 422)
        assert f"limit max_name_chars (256) exceeded by {where}" in message, message
    assert len(await api.workflows()) == 1


async def test_max_name_chars_applies_to_files_and_the_api_alike(tmp_path: Path):
    (tmp_path / "long.yml").write_text("name: " + "n" * 11 + "\njobs:\n  a:\n    run: 'true'\n")
    (tmp_path / "short.yml").write_text("name: " + "n" * 10 + "\njobs:\n  a:\n    run: 'true'\n")
    MAX_NAME_CHARS.set(10)
    warnings: list[str] = []
    specs = load_workflows_dir(tmp_path, warn=warnings.append)
    assert [s.id for s in specs] == ["short"]
    assert warnings == [
        f"skipping {tmp_path / 'long.yml'}: "
        "limit max_name_chars (10) exceeded by the workflow name (11 characters)"
    ]
    async with serve() as api:
        message = await assert_error(
            await api.post("/api/workflows", {"name": "n" * 11, "jobs": [job("a")]}), 422
        )
        assert message == (
            "invalid workflow: limit max_name_chars (10) exceeded by the workflow name "
            "(11 characters)"
        )
    assert ServerSettings.from_env({"MAX_NAME_CHARS": "10"}).max_name_chars == 10
    assert ServerSettings.from_env({}).max_name_chars == 256


async def test_a_stored_workflow_survives_a_lower_max_name_chars(tmp_path: Path):
    async with open_runtime(data_dir=tmp_path) as rt:
        body = WorkflowCreate.model_validate({"name": "n" * 200, "jobs": [job("a")]})
        wf = (await rt.create_workflow(body)).id
    MAX_NAME_CHARS.set(100)
    async with open_runtime(data_dir=tmp_path) as rt:
        assert (await rt.get_status(wf)).name == "n" * 200


# --- paging -------------------------------------------------------------------------


async def test_huge_limit_and_offset_are_capped_not_refused(api: Api):
    ids = [(await api.create([job("a")]))["id"] for _ in range(3)]
    huge = "9" * 30
    assert [w["id"] for w in await api.workflows(f"?limit={huge}")] == ids
    assert [w["id"] for w in await api.workflows("?limit=0000000000000000000000002")] == ids[:2]
    assert [w["id"] for w in await api.workflows(f"?offset={'0' * 5000}1")] == ids[1:]
    assert await api.workflows(f"?offset={huge}") == []
    assert await api.workflows(f"?limit={huge}&offset={'1' * 5000}") == []
    # Digits outside ASCII ("²", "١") pass str.isdigit but are no count here.
    for bad in ("-" + huge, "1e3", "%C2%B2", "%D9%A1", "%201", "0x10"):
        await assert_error(await api.get(f"/api/workflows?limit={bad}"), 400)


# --- over a real socket --------------------------------------------------------------


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=5)


def _read_answer(sock: socket.socket, buffer: bytes = b"") -> tuple[bytes, bytes, bytes]:
    """(status line, head, body) of one Content-Length-framed answer."""
    while b"\r\n\r\n" not in buffer:
        data = sock.recv(65536)
        assert data, f"connection closed mid-answer: {buffer!r}"
        buffer += data
    head, _, rest = buffer.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(rest) < length:
        rest += sock.recv(65536)
    return head.split(b"\r\n", 1)[0], head.lower(), rest[:length]


def _request(method: str, path: str, host: str, body: bytes = b"", **headers: str) -> bytes:
    host = headers.pop("Host", host)
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}"]
    lines += [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _early_answer_then_next_request(url: str, path: str, body: bytes, **headers: str):
    """Send a request's head, read the answer the server gives before the body, then
    send the body and, on the same connection, a GET. Returns the first answer's
    (status line, body) and what became of the GET within a second: 'answered',
    'closed' or 'hangs'."""
    host = url.removeprefix("http://")
    with _connect(url) as sock:
        sock.sendall(_request("POST", path, host, body, **headers)[: -len(body)])
        status, _, answer = _read_answer(sock)
        rest = body + _request("GET", "/api/workers", host)
        # The server may close instead of reading the body: never block the test on it.
        sender = threading.Thread(target=_send_quietly, args=(sock, rest), daemon=True)
        sender.start()
        sender.join(5)
        sock.settimeout(1)
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            return status, answer, "closed"
        except TimeoutError:
            return status, answer, "hangs"
        if not data:
            return status, answer, "closed"
        assert data.startswith(b"HTTP/1.1 200"), data
        return status, answer, "answered"


def _send_quietly(sock: socket.socket, data: bytes) -> None:
    try:
        sock.sendall(data)
    except OSError:
        pass  # the server closed the connection after its answer


@pytest.mark.parametrize(
    "path",
    [
        "/api/workflows",
        "/api/workers/register",
        "/api/workflows/nope/run",
        "/api/jobs/claim",  # the fast path
        "/api/jobs/nope/complete",
        "/api/nope",
    ],
)
def test_after_a_413_the_connection_answers_or_closes(live_server, path):
    body = b'{"name": "' + b"x" * (2 * 1024 * 1024) + b'"}'
    status, answer, then = _early_answer_then_next_request(
        live_server.url, path, body, Content_Type="application/json"
    )
    assert status.startswith(b"HTTP/1.1 413"), (status, answer)
    assert json.loads(answer)["error"].startswith("request body exceeds")
    assert then in ("answered", "closed")


@pytest.mark.parametrize(
    "headers,expected",
    [
        ({"Content_Type": "text/plain"}, b"415"),
        ({"Content_Type": "application/json", "Origin": EVIL}, b"403"),
        ({"Content_Type": "application/json", "Host": "evil.example"}, b"400"),
    ],
)
def test_after_the_gate_refuses_a_body_the_connection_answers_or_closes(
    live_server, headers, expected
):
    body = json.dumps({"name": "x", "jobs": [job("a", "x" * 500_000)]}).encode()
    status, _, then = _early_answer_then_next_request(
        live_server.url, "/api/workflows", body, **headers
    )
    assert status.split(b" ")[1] == expected, status
    assert then in ("answered", "closed")


def test_status_lines_carry_the_standard_reason_phrase(live_server):
    host = live_server.url.removeprefix("http://")
    with _connect(live_server.url) as sock:

        def status_line(method: str, path: str, body: bytes = b"", **headers: str):
            sock.sendall(_request(method, path, host, body, **headers))
            line, _, answer = _read_answer(sock)
            return line, answer

        as_json = {"Content_Type": "application/json"}
        line, answer = status_line(
            "POST", "/api/workflows", json.dumps(WORKFLOW).encode(), **as_json
        )
        assert line == b"HTTP/1.1 201 Created"
        wf = json.loads(answer)["id"]
        assert status_line("GET", "/api/workers")[0] == b"HTTP/1.1 200 OK"
        assert status_line("POST", f"/api/workflows/{wf}/run")[0] == b"HTTP/1.1 202 Accepted"
        assert status_line("POST", f"/api/workflows/{wf}/run")[0] == b"HTTP/1.1 409 Conflict"
        assert status_line("GET", "/api/workflows/nope/status")[0] == b"HTTP/1.1 404 Not Found"
        assert status_line("POST", "/api/jobs/nope/heartbeat")[0] == b"HTTP/1.1 409 Conflict"
        assert status_line("POST", "/api/jobs/claim", b"{}", Content_Type="text/plain")[0] == (
            b"HTTP/1.1 415 Unsupported Media Type"
        )


def test_a_rebinding_page_and_a_foreign_origin_change_nothing_on_a_real_server(
    workflows_dir, server_factory
):
    """The reported attack, end to end: a text/plain create from any site, or a
    JSON one from an origin that CORS_ORIGINS does not list, or any request under
    a rebound name."""
    server = server_factory(workflows_dir, env={"CORS_ORIGINS": "https://good.example"})
    host = server.url.removeprefix("http://")
    port = host.rsplit(":", 1)[1]
    create = json.dumps({"name": "pwn", "jobs": [job("a", "touch /tmp/pwned")]}).encode()
    attacks = [
        (host, {"Origin": EVIL, "Content_Type": "text/plain"}, b"403"),
        (host, {"Origin": EVIL, "Content_Type": "application/json"}, b"403"),
        (host, {"Content_Type": "text/plain"}, b"415"),
        (f"rebound.evil.example:{port}", {"Content_Type": "text/plain"}, b"400"),
        (f"rebound.evil.example:{port}", {"Origin": f"http://rebound.evil.example:{port}"}, b"400"),
    ]
    for request_host, headers, status in attacks:
        with _connect(server.url) as sock:
            sock.sendall(_request("POST", "/api/workflows", request_host, create, **headers))
            line, _, answer = _read_answer(sock)
        assert line.split(b" ")[1] == status, (request_host, headers, line, answer)
        assert set(json.loads(answer)) == {"error"}
    with _connect(server.url) as sock:
        sock.sendall(_request("GET", "/api/workflows", host))
        assert _read_answer(sock)[2] == b"[]"
        sock.sendall(
            _request(
                "POST",
                "/api/workflows",
                host,
                create,
                Content_Type="application/json",
                Origin="https://good.example",
            )
        )
        assert _read_answer(sock)[0].split(b" ")[1] == b"201"


def test_allowed_hosts_on_a_real_server_and_the_startup_line(workflows_dir, server_factory):
    server = server_factory(workflows_dir, env={"ALLOWED_HOSTS": "build-host.example"})
    assert "answers to Host localhost, 127.0.0.1, [::1], " in server.output()
    assert "build-host.example" in server.output()
    for host, status in (("build-host.example:3000", b"200"), ("other.example", b"400")):
        with _connect(server.url) as sock:
            sock.sendall(_request("GET", "/api/workers", host))
            assert _read_answer(sock)[0].split(b" ")[1] == status, host
