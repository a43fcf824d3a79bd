"""Security: bearer tokens, limits, hostile input, timeouts.

In-process (Quart-Trio test client over a real `Runtime`), like
`test_http_api.py`. Every refusal is checked twice: the answer (a 4xx JSON
error naming the token or the limit) and the state afterwards (nothing
changed). Time-based tests take `autojump_clock`. The schemathesis run
against a real server process is in `test_fuzz.py`.
"""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import trio
import trio.testing
from test_http_api import Api, assert_error, assert_object, chunk, job
from test_http_lifecycle import SSEReader, stream_path

from actors.runtime import Limits, open_runtime
from web.app import create_app
from web.server import ServerSettings, SettingsError, _hypercorn_config

API_TOKEN = "api-secret-1234"
WORKER_TOKEN = "worker-secret-5678"
WRONG_TOKEN = "guess-9999"


@pytest.fixture
def autojump_clock():
    return trio.testing.MockClock(autojump_threshold=0)


def is_worker_path(path: str) -> bool:
    """The test's own table of the worker protocol's routes (see the contract)."""
    path = path.split("?", 1)[0]
    return (
        path.startswith("/api/jobs/")
        or path == "/api/workers/register"
        or (path.startswith("/api/workers/") and path.endswith("/heartbeat"))
    )


class GuardedApi(Api):
    """`Api` plus a client that sends no token of its own."""

    raw: Any


class TokenClient:
    """The test client, sending the right token for each route unless told otherwise."""

    def __init__(self, client, api_token: str | None, worker_token: str | None) -> None:
        self.client = client
        self.api_token = api_token
        self.worker_token = worker_token

    def _headers(self, path: str, kw: dict) -> dict:
        token = self.worker_token if is_worker_path(path) else self.api_token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        headers.update(kw.pop("headers", None) or {})
        return headers

    async def get(self, path: str, **kw):
        return await self.client.get(path, headers=self._headers(path, kw), **kw)

    async def post(self, path: str, **kw):
        return await self.client.post(path, headers=self._headers(path, kw), **kw)

    def request(self, path: str, **kw):
        return self.client.request(path, headers=self._headers(path, kw), **kw)


@asynccontextmanager
async def serve(
    limits: Limits | None = None,
    *,
    send_tokens: bool = True,
    **app_kwargs: Any,
) -> AsyncIterator[GuardedApi]:
    """A runtime with `limits` and the app over it; the client sends the app's tokens."""
    async with open_runtime(limits=limits) as runtime:
        app = create_app(runtime, **app_kwargs)
        async with app.test_app() as test_app:
            client: Any = test_app.test_client()
            if send_tokens:
                api_token = app_kwargs.get("api_token")
                worker_token = app_kwargs.get("worker_token") or api_token
                client = TokenClient(client, api_token, worker_token)
            api = GuardedApi(client, runtime)
            api.raw = test_app.test_client()  # sends nothing of its own
            yield api


async def snapshot(api: Api) -> tuple:
    """Everything a request could change, read from the runtime (no HTTP, no tokens)."""
    rt = api.runtime
    workflows = [w.model_dump() for w in await rt.list_workflows(limit=1000)]
    workers = [w.model_dump() for w in await rt.list_workers()]
    logs = {}
    for w in workflows:
        for j in w["jobs"]:
            logs[(w["id"], j["id"])] = [c.model_dump() for c in await rt.get_logs(w["id"], j["id"])]
    leases = {k: v.lease.model_dump() for k, v in rt._system.leases.items()}
    queue = await rt.queue_stats()
    return workflows, workers, logs, leases, queue


# --- tokens ---------------------------------------------------------------------

# (method, path, group, body); {wf} is a running workflow, {done} a finished one,
# {lease} the lease on the running workflow's job `a`.
ENDPOINTS: list[tuple[str, str, str, dict | None]] = [
    ("GET", "/api/workflows", "api", None),
    ("POST", "/api/workflows", "api", {"name": "x", "jobs": [job("a")]}),
    ("GET", "/api/workflows/{wf}/status", "api", None),
    ("POST", "/api/workflows/{done}/run", "api", None),
    ("POST", "/api/workflows/{wf}/cancel", "api", None),
    ("GET", "/api/workers", "api", None),
    ("GET", "/api/workflows/{wf}/jobs/a/logs", "api", None),
    ("GET", "/api/workflows/{done}/jobs/a/logs/stream", "api", None),
    ("POST", "/api/workers/register", "worker", {"worker_id": "w9", "labels": []}),
    ("POST", "/api/workers/w1/heartbeat", "worker", None),
    ("POST", "/api/jobs/claim", "worker", {"worker_id": "w9"}),
    ("POST", "/api/jobs/{lease}/heartbeat", "worker", None),
    ("POST", "/api/jobs/{lease}/complete", "worker", {"outputs": {}}),
    ("POST", "/api/jobs/{lease}/fail", "worker", {"error": "x"}),
    ("POST", "/api/jobs/{lease}/logs", "worker", {"chunks": [chunk(5, "x\n")]}),
    ("GET", "/api/jobs/{wf}/a/cancelled", "worker", None),
]
ENDPOINT_IDS = [f"{m} {p}" for m, p, _, _ in ENDPOINTS]


async def seed(api: Api) -> dict[str, str]:
    """A finished workflow (`done`) and a running one (`wf`) with a lease on its job `a`."""
    done = await api.create_and_run([job("a")], name="done")
    first = await api.claim_job("w1")
    await assert_object(await api.push(first["lease"]["lease_id"], [chunk(0, "old\n")]))
    await api.finish(first)
    wf = await api.create_and_run([job("a"), job("b")], name="live")
    claim = await api.claim_job("w1")
    assert claim["job"]["workflow_id"] == wf and claim["job"]["job_id"] == "a"
    await assert_object(await api.push(claim["lease"]["lease_id"], [chunk(0, "live\n")]))
    return {"wf": wf, "done": done, "lease": claim["lease"]["lease_id"]}


async def send(api: GuardedApi, method: str, path: str, body: Any, headers: dict | None = None):
    client = api.raw
    kw: dict[str, Any] = {"headers": headers or {}}
    if body is not None:
        kw["json"] = body
    if method == "GET":
        return await client.get(path, **kw)
    return await client.post(path, **kw)


async def assert_unauthorized(resp) -> str:
    message = await assert_error(resp, 401)
    assert resp.headers["WWW-Authenticate"].startswith("Bearer"), resp.headers
    seen = message + str(dict(resp.headers))
    for secret in (API_TOKEN, WORKER_TOKEN, WRONG_TOKEN):
        assert secret not in seen  # never echoed
    return message


@asynccontextmanager
async def guarded() -> AsyncIterator[tuple[Api, dict[str, str]]]:
    async with serve(api_token=API_TOKEN, worker_token=WORKER_TOKEN) as api:
        yield api, await seed(api)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize("method,path,group,body", ENDPOINTS, ids=ENDPOINT_IDS)
@pytest.mark.parametrize(
    "presented",
    ["missing", "wrong", "other-group", "not-bearer", "empty", "query-param"],
)
async def test_guarded_route_refuses_without_its_token(method, path, group, body, presented):
    async with guarded() as (api, ids):
        path = path.format(**ids)
        right = API_TOKEN if group == "api" else WORKER_TOKEN
        other = WORKER_TOKEN if group == "api" else API_TOKEN
        headers = {
            "missing": {},
            "wrong": bearer(WRONG_TOKEN),
            "other-group": bearer(other),
            "not-bearer": {"Authorization": f"Basic {right}"},
            "empty": {"Authorization": "Bearer "},
            "query-param": {},
        }[presented]
        if presented == "query-param":
            if path.endswith("/logs/stream"):
                path += f"?access_token={WRONG_TOKEN}"
            else:
                path += f"?access_token={right}"  # only the stream takes it from the query
        before = await snapshot(api)
        await assert_unauthorized(await send(api, method, path, body, headers))
        assert await snapshot(api) == before


@pytest.mark.parametrize("method,path,group,body", ENDPOINTS, ids=ENDPOINT_IDS)
async def test_guarded_route_answers_with_its_token(method, path, group, body):
    async with guarded() as (api, ids):
        path = path.format(**ids)
        token = API_TOKEN if group == "api" else WORKER_TOKEN
        resp = await send(api, method, path, body, bearer(token))
        text = await resp.get_data(as_text=True)
        assert resp.status_code in (200, 201, 202), (resp.status_code, text)


async def test_scheme_is_case_insensitive_and_whitespace_tolerated():
    async with guarded() as (api, _):
        for value in (f"bearer {API_TOKEN}", f"BEARER {API_TOKEN}", f"  Bearer   {API_TOKEN} "):
            resp = await api.raw.get("/api/workflows", headers={"Authorization": value})
            assert resp.status_code == 200, value


async def test_missing_and_wrong_tokens_are_told_apart():
    async with guarded() as (api, _):
        missing = await api.raw.get("/api/workflows")
        assert "error=" not in missing.headers["WWW-Authenticate"]
        await assert_unauthorized(missing)
        wrong = await api.raw.get("/api/workflows", headers=bearer(WRONG_TOKEN))
        assert 'error="invalid_token"' in wrong.headers["WWW-Authenticate"]
        await assert_unauthorized(wrong)


async def test_sse_takes_the_token_from_header_or_access_token_query(autojump_clock):
    async with guarded() as (api, ids):
        done = stream_path(ids["done"], "a")
        for path, headers in (
            (done, bearer(API_TOKEN)),
            (f"{done}?access_token={API_TOKEN}", {}),
        ):
            with trio.fail_after(60):
                async with api.raw.request(path, headers=headers) as conn:
                    await conn.send_complete()
                    events = await SSEReader(conn).rest()
                    assert conn.status_code == 200
            assert [e["data"]["data"] for e in events] == ["old\n"]
        # the worker token is not a read token, in either form
        await assert_unauthorized(await api.raw.get(f"{done}?access_token={WORKER_TOKEN}"))
        await assert_unauthorized(await api.raw.get(done, headers=bearer(WORKER_TOKEN)))


async def test_unauthorized_comes_before_body_checks():
    async with serve(
        api_token=API_TOKEN, worker_token=WORKER_TOKEN, max_body_bytes=2048, send_tokens=False
    ) as api:
        big = b'{"name": "' + b"x" * 4096 + b'", "jobs": []}'
        for path in ("/api/workflows", "/api/jobs/claim"):
            headers = {"Content-Type": "application/json"}
            await assert_unauthorized(await api.raw.post(path, data=big, headers=headers))
            await assert_unauthorized(await api.raw.post(path, data=b"{nope", headers=headers))
            await assert_unauthorized(await api.raw.post(path, json={"wrong": "shape"}))
        await assert_unauthorized(await api.raw.get("/api/workflows?limit=-1"))
        await assert_unauthorized(await api.raw.get("/api/workflows/nope/status"))
        await assert_unauthorized(await api.raw.post("/api/jobs/nope/heartbeat"))
        # an unknown /api route is guarded too, not a way to probe what exists
        await assert_unauthorized(await api.raw.get("/api/nothing-here"))
        assert await api.runtime.list_workflows() == []


async def test_public_routes_need_no_token():
    async with guarded() as (api, _):
        assert (await api.raw.get("/openapi.json")).status_code == 200
        assert (await api.raw.get("/docs")).status_code == 200
        # The dashboard's pages and static files are public (their data is not).
        for path in ("/", "/workflows/some-id", "/static/app.js"):
            assert (await api.raw.get(path)).status_code != 401, path


async def test_openapi_documents_the_bearer_scheme_when_guarded():
    async with guarded() as (api, _):
        doc = await (await api.raw.get("/openapi.json")).get_json()
        assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
        assert "401" in doc["paths"]["/api/workflows"]["get"]["responses"]


@pytest.mark.parametrize(
    "path,method",
    [
        ("/api/workflows", "POST"),
        ("/api/jobs/claim", "POST"),
        ("/api/workflows/x/jobs/a/logs/stream", "GET"),
    ],
)
async def test_cors_preflight_needs_no_token(path, method):
    async with serve(
        api_token=API_TOKEN,
        worker_token=WORKER_TOKEN,
        cors_origins=["http://dash.example"],
        send_tokens=False,
    ) as api:
        resp = await api.raw.options(
            path,
            headers={
                "Origin": "http://dash.example",
                "Access-Control-Request-Method": method,
                "Access-Control-Request-Headers": "authorization, content-type",
            },
        )
        assert resp.status_code == 200
        assert resp.headers["Access-Control-Allow-Origin"] == "http://dash.example"
        assert "authorization" in resp.headers["Access-Control-Allow-Headers"].lower()
        # and a refused request still carries CORS headers, so a browser can read the 401
        refused = await api.raw.get("/api/workflows", headers={"Origin": "http://dash.example"})
        await assert_unauthorized(refused)
        assert refused.headers["Access-Control-Allow-Origin"] == "http://dash.example"


@pytest.mark.parametrize("method,path,group,body", ENDPOINTS, ids=ENDPOINT_IDS)
async def test_tokens_unset_leave_every_route_open(method, path, group, body):
    async with serve() as api:
        ids = await seed(api)
        resp = await send(api, method, path.format(**ids), body)
        assert resp.status_code in (200, 201, 202), (method, path, resp.status_code)


async def test_only_worker_token_guards_only_the_worker_protocol():
    async with serve(worker_token=WORKER_TOKEN, send_tokens=False) as api:
        assert (await api.raw.get("/api/workflows")).status_code == 200
        assert (await api.raw.get("/api/workers")).status_code == 200
        await assert_unauthorized(await api.raw.post("/api/jobs/claim", json={"worker_id": "w"}))
        resp = await api.raw.post(
            "/api/jobs/claim", json={"worker_id": "w"}, headers=bearer(WORKER_TOKEN)
        )
        assert resp.status_code == 200


async def test_only_api_token_guards_the_worker_protocol_with_it():
    """A single token guards everything; the `wfg` tools send it on worker calls then."""
    async with serve(api_token=API_TOKEN, send_tokens=False) as api:
        claim = {"worker_id": "w"}
        await assert_unauthorized(await api.raw.post("/api/jobs/claim", json=claim))
        ok = await api.raw.post("/api/jobs/claim", json=claim, headers=bearer(API_TOKEN))
        assert ok.status_code == 200
        assert (await api.raw.get("/api/workers", headers=bearer(API_TOKEN))).status_code == 200


async def test_wfg_clients_send_the_tokens_from_the_environment(monkeypatch):
    from wfg.client import AsyncClient, Client

    monkeypatch.setenv("API_TOKEN", API_TOKEN)
    monkeypatch.setenv("WORKER_TOKEN", WORKER_TOKEN)
    seen: list[tuple[str, str | None]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append((request.url.path, request.headers.get("Authorization")))
        if request.url.path == "/api/jobs/claim":
            return httpx.Response(200, content=b"null")
        return httpx.Response(200, json=[])

    with Client("http://server", transport=httpx.MockTransport(answer)) as client:
        client.list_workflows()
    async with AsyncClient("http://server", transport=httpx.MockTransport(answer)) as client:
        await client.claim("w1", [])
    assert seen == [
        ("/api/workflows", f"Bearer {API_TOKEN}"),
        ("/api/jobs/claim", f"Bearer {WORKER_TOKEN}"),
    ]


# --- settings and server config ------------------------------------------------


def test_settings_read_tokens_and_limits_from_the_environment():
    env = {
        "API_TOKEN": f" {API_TOKEN} ",
        "WORKER_TOKEN": WORKER_TOKEN,
        "MAX_WORKFLOWS": "10",
        "MAX_JOBS_PER_WORKFLOW": "20",
        "MAX_LABELS": "3",
        "MAX_LOG_BYTES_PER_JOB": "4096",
        "MAX_LOG_CHUNKS_PER_PUSH": "50",
        "MAX_WAIT_SECS": "30",
        "MAX_SSE_STREAMS": "7",
        "SSE_MAX_SECS": "600",
        "MAX_BODY_BYTES": "65536",
    }
    s = ServerSettings.from_env(env)
    assert (s.api_token, s.worker_token) == (API_TOKEN, WORKER_TOKEN)
    assert s.limits() == Limits(
        max_workflows=10,
        max_jobs_per_workflow=20,
        max_labels=3,
        max_log_bytes_per_job=4096,
        max_wait_secs=30.0,
        max_log_chunks_per_push=50,
    )
    assert (s.max_sse_streams, s.sse_max_secs, s.max_body_bytes) == (7, 600.0, 65536)
    assert API_TOKEN not in repr(s) and WORKER_TOKEN not in repr(s)


def test_settings_defaults_are_open_and_bounded():
    s = ServerSettings.from_env({"API_TOKEN": "  ", "WORKER_TOKEN": ""})
    assert s.api_token is None and s.worker_token is None
    assert s.host == "127.0.0.1"
    assert s.limits() == Limits()
    assert Limits().max_wait_secs == 60
    assert (s.max_sse_streams, s.sse_max_secs) == (256, 3600.0)


@pytest.mark.parametrize(
    "name,value",
    [
        ("MAX_WAIT_SECS", "61"),
        ("MAX_WAIT_SECS", "0"),
        ("MAX_SSE_STREAMS", "0"),
        ("MAX_JOBS_PER_WORKFLOW", "lots"),
        ("MAX_WORKFLOWS", "0"),
        ("SSE_MAX_SECS", "-5"),
        ("MAX_LOG_BYTES_PER_JOB", "10"),
    ],
)
def test_bad_limit_settings_are_refused_by_name(name, value):
    with pytest.raises(SettingsError, match=name):
        ServerSettings.from_env({name: value})


def test_hypercorn_config_bounds_idle_and_slow_connections():
    settings = ServerSettings(sse_max_secs=600)
    sock = socket.socket()
    config = _hypercorn_config(sock, settings)
    try:
        assert 0 < config.keep_alive_timeout <= 120
        assert config.h11_max_incomplete_size <= 64 * 1024
        # above the longest answer (a log stream's lifetime), so only dead connections end
        assert 600 < config.read_timeout <= 700
    finally:
        socket.socket(fileno=int(config.bind[0].removeprefix("fd://"))).close()


# --- limits -------------------------------------------------------------------


async def assert_limit(resp, name: str, value: int, status: int = 422) -> None:
    message = await assert_error(resp, status)
    assert f"limit {name} ({value})" in message, message


async def test_max_jobs_per_workflow():
    async with serve(Limits(max_jobs_per_workflow=3)) as api:
        await api.create([job(f"j{i}") for i in range(3)])
        before = await snapshot(api)
        resp = await api.post(
            "/api/workflows", {"name": "x", "jobs": [job(f"j{i}") for i in range(4)]}
        )
        await assert_limit(resp, "max_jobs_per_workflow", 3)
        assert await snapshot(api) == before


async def test_max_workflows():
    async with serve(Limits(max_workflows=2)) as api:
        await api.create([job("a")])
        await api.create([job("a")])
        before = await snapshot(api)
        await assert_limit(
            await api.post("/api/workflows", {"name": "x", "jobs": [job("a")]}), "max_workflows", 2
        )
        assert await snapshot(api) == before
        assert len(await api.workflows()) == 2


async def test_max_labels_per_worker_and_per_job():
    async with serve(Limits(max_labels=2)) as api:
        await api.register("ok", ["a", "b"])
        await api.create([job("a", required_labels=["x", "y"])])
        before = await snapshot(api)
        three = ["a", "b", "c"]
        resp = await api.post("/api/workers/register", {"worker_id": "w", "labels": three})
        await assert_limit(resp, "max_labels", 2)
        resp = await api.post("/api/jobs/claim", {"worker_id": "w", "labels": three})
        await assert_limit(resp, "max_labels", 2)
        resp = await api.post(
            "/api/workflows", {"name": "x", "jobs": [job("a", required_labels=three)]}
        )
        await assert_limit(resp, "max_labels", 2)
        assert await snapshot(api) == before
        assert set(await api.workers()) == {"ok"}


async def test_max_log_chunks_per_push():
    async with serve(Limits(max_log_chunks_per_push=5)) as api:
        wf = await api.create_and_run([job("a")])
        claim = await api.claim_job()
        lease = claim["lease"]["lease_id"]
        await assert_object(await api.push(lease, [chunk(i, f"{i}\n") for i in range(5)]))
        before = await snapshot(api)
        resp = await api.push(lease, [chunk(i, "x") for i in range(5, 11)])
        await assert_limit(resp, "max_log_chunks_per_push", 5)
        assert await snapshot(api) == before
        assert len(await api.logs(wf, "a")) == 5


async def test_max_body_bytes_at_and_past_the_bound():
    limit = 4096
    async with serve(max_body_bytes=limit) as api:

        def body_of(size: int) -> bytes:
            # The filler is a job's command: names are bounded far below (max_name_chars).
            head = b'{"name": "n", "jobs": [{"id": "a", "command": "'
            tail = b'"}]}'
            return head + b"t" * (size - len(head) - len(tail)) + tail

        ok = await api.post("/api/workflows", raw=body_of(limit))
        assert ok.status_code == 201, await ok.get_data(as_text=True)
        before = await snapshot(api)
        resp = await api.post("/api/workflows", raw=body_of(limit + 1))
        await assert_limit(resp, "max_body_bytes", limit, status=413)
        assert await snapshot(api) == before


async def test_log_bytes_per_job_at_the_bound_keeps_everything():
    async with serve(Limits(max_log_bytes_per_job=1024)) as api:
        wf = await api.create_and_run([job("a")])
        lease = (await api.claim_job())["lease"]["lease_id"]
        await assert_object(await api.push(lease, [chunk(i, "x" * 256) for i in range(4)]))
        logs = await api.logs(wf, "a")
        assert [c["sequence"] for c in logs] == [0, 1, 2, 3]


async def test_log_bytes_per_job_past_the_bound_keeps_the_tail_with_a_notice():
    async with serve(Limits(max_log_bytes_per_job=1024)) as api:
        wf = await api.create_and_run([job("a")])
        lease = (await api.claim_job())["lease"]["lease_id"]
        await assert_object(await api.push(lease, [chunk(i, "x" * 256) for i in range(5)]))
        logs = await api.logs(wf, "a")
        assert "256 earlier bytes of this log dropped" in logs[0]["data"]
        assert [c["data"] for c in logs[1:]] == ["x" * 256] * 4
        assert logs[-1]["sequence"] == 4


async def test_log_bytes_per_job_stays_bounded_over_many_pushes():
    limit = 1024
    async with serve(Limits(max_log_bytes_per_job=limit)) as api:
        wf = await api.create_and_run([job("a")])
        lease = (await api.claim_job())["lease"]["lease_id"]
        for i in range(200):
            await assert_object(await api.push(lease, [chunk(i, "y" * 100)]))
        logs = await api.logs(wf, "a")
        kept = sum(len(c["data"]) for c in logs[1:])
        assert kept <= limit, kept
        assert logs[-1]["sequence"] == 199


async def test_max_sse_streams_at_and_past_the_bound(autojump_clock):
    async with serve(max_sse_streams=2, sse_keepalive_secs=1) as api:
        wf = await api.create_and_run([job("a"), job("b"), job("c")])
        claims = {}
        for _ in range(3):
            claim = await api.claim_job(lease_ttl_secs=600)
            claims[claim["job"]["job_id"]] = claim
        with trio.fail_after(60):
            async with api.client.request(stream_path(wf, "a")) as one:
                await one.send_complete()
                first = SSEReader(one)
                async with api.client.request(stream_path(wf, "b")) as two:
                    await two.send_complete()
                    second = SSEReader(two)
                    assert await second.block() == ": keep-alive"
                    assert await first.block() == ": keep-alive"  # two open: at the bound
                    before = await snapshot(api)
                    resp = await api.get(stream_path(wf, "c"))
                    await assert_limit(resp, "max_sse_streams", 2, status=429)
                    assert resp.headers["Retry-After"]
                    assert await snapshot(api) == before
                    # a stream that ends (its job finished) gives its slot back
                    await api.finish(claims["b"])
                    assert await second.rest() == []
                async with api.client.request(stream_path(wf, "c")) as three:
                    await three.send_complete()
                    third = SSEReader(three)
                    assert await third.block() == ": keep-alive"
                    assert (await api.get(stream_path(wf, "b"))).status_code == 429
                    await api.finish(claims["c"])
                    assert await third.rest() == []
                await api.finish(claims["a"])
                assert await first.rest() == []
        # every slot is back: finished jobs replay and end
        for job_id in "abc":
            assert (await api.get(stream_path(wf, job_id))).status_code == 200


def test_sse_slot_is_released_when_the_client_goes_away(workflows_dir, server_factory):
    """Over a real connection: a client that drops its stream frees the slot."""
    import time

    server = server_factory(workflows_dir, env={"MAX_SSE_STREAMS": "1"})
    with httpx.Client(base_url=server.url, timeout=10) as http:
        wf = http.post("/api/workflows", json={"name": "x", "jobs": [job("a")]}).json()["id"]
        assert http.post(f"/api/workflows/{wf}/run").status_code == 202
        assert http.post("/api/jobs/claim", json={"worker_id": "w"}).json() is not None
        path = stream_path(wf, "a")
        with http.stream("GET", path) as stream:
            assert stream.status_code == 200
            refused = http.get(path)
            assert refused.status_code == 429
            assert "max_sse_streams (1)" in refused.json()["error"]
        deadline = time.monotonic() + 10
        while True:
            with http.stream("GET", path) as stream:
                if stream.status_code == 200:
                    break
            assert time.monotonic() < deadline, "the dropped stream kept its slot"
            time.sleep(0.05)


async def test_sse_stream_ends_cleanly_at_its_max_lifetime(autojump_clock):
    async with serve(sse_max_secs=30, sse_keepalive_secs=10) as api:
        wf = await api.create_and_run([job("a")])
        claim = await api.claim_job(lease_ttl_secs=3600)
        await assert_object(await api.push(claim["lease"]["lease_id"], [chunk(0, "x\n")]))
        with trio.fail_after(600):
            async with api.client.request(stream_path(wf, "a")) as conn:
                await conn.send_complete()
                reader = SSEReader(conn)
                start = trio.current_time()
                assert (await reader.event())["data"]["data"] == "x\n"
                blocks = []
                while (block := await reader.block()) is not None:
                    blocks.append(block)
                elapsed = trio.current_time() - start
                assert conn.status_code == 200
        assert 29 <= elapsed <= 31, elapsed
        assert blocks[:2] == [": keep-alive", ": keep-alive"]
        assert blocks[-1].startswith(": stream lifetime reached")
        assert reader.raw.endswith(b"\n\n")
        # the job itself is untouched and a new stream can open
        assert (await api.statuses(wf)) == {"a": "running"}


async def test_parked_claim_ends_at_max_wait_secs(autojump_clock):
    async with serve(Limits(max_wait_secs=5)) as api:
        start = trio.current_time()
        assert await api.claim("w1", wait_secs=30) is None
        assert 5 <= trio.current_time() - start < 6


async def test_wait_secs_at_and_past_the_protocol_bound(autojump_clock):
    async with serve() as api:
        start = trio.current_time()
        assert await api.claim("w1", wait_secs=60) is None
        assert 60 <= trio.current_time() - start < 61
        before = await snapshot(api)
        resp = await api.post("/api/jobs/claim", {"worker_id": "w2", "wait_secs": 60.5})
        assert "wait_secs" in await assert_error(resp, 422)
        assert await snapshot(api) == before


# --- hostile input ----------------------------------------------------------------

# Every route with a body, with a valid body to mutate; {lease} is an active lease.
BODY_ROUTES = {
    "create": ("/api/workflows", {"name": "x", "trigger": "t", "jobs": [job("z")]}),
    "register": ("/api/workers/register", {"worker_id": "w", "labels": ["l"]}),
    "claim": (
        "/api/jobs/claim",
        {"worker_id": "w", "labels": ["l"], "lease_ttl_secs": 30, "wait_secs": 0},
    ),
    "complete": ("/api/jobs/{lease}/complete", {"outputs": {"k": "v"}}),
    "fail": ("/api/jobs/{lease}/fail", {"error": "e", "retryable": True}),
    "logs": (
        "/api/jobs/{lease}/logs",
        {"chunks": [{**chunk(1, "d"), "workflow_id": "w", "job_id": "j"}]},
    ),
}


@asynccontextmanager
async def hostile() -> AsyncIterator[tuple[Api, dict[str, str]]]:
    """A running job under a lease, and an idle queued job a claim could take."""
    async with serve() as api:
        await api.create_and_run([job("a"), job("b", depends_on=["a"])])
        lease = (await api.claim_job("w1"))["lease"]["lease_id"]
        await api.create_and_run([job("c")])
        yield api, {"lease": lease}


async def assert_refused(api: Api, path: str, raw: bytes, status: int | None = None) -> str:
    before = await snapshot(api)
    resp = await api.post(path, raw=raw)
    text = await resp.get_data(as_text=True)
    assert 400 <= resp.status_code < 500, (resp.status_code, text)
    if status is not None:
        assert resp.status_code == status, (resp.status_code, text)
    message = await assert_error(resp, resp.status_code)
    assert await snapshot(api) == before
    return message


@pytest.mark.parametrize("route", list(BODY_ROUTES))
@pytest.mark.parametrize(
    "raw,status",
    [
        pytest.param(b'{"name": "\xff\xfe"}', 400, id="bad-utf8"),
        pytest.param(b'{"a": "\xed\xa0\x80"}', 400, id="utf8-surrogate"),
        pytest.param(b"[" * 100_000, 400, id="100k-open-brackets"),
        pytest.param(b"[" * 50_000 + b"]" * 50_000, 400, id="50k-nested-arrays"),
        pytest.param(b'{"x": ' + b'{"y": ' * 200 + b"1" + b"}" * 201, 422, id="200-nested-objects"),
        pytest.param(b'{"x": 1e400}', 422, id="1e400"),
        pytest.param(b'{"x": -1e400}', 422, id="-1e400"),
        pytest.param(b'{"x": "\\ud800"}', 422, id="escaped-lone-surrogate"),
        pytest.param(b'{"\\udfff": 1}', 422, id="escaped-lone-surrogate-key"),
        pytest.param(b'{"x": NaN}', 400, id="NaN"),
        pytest.param(b'{"x": Infinity}', 400, id="Infinity"),
        pytest.param(b'{"x": ' + b"9" * 5000 + b"}", 400, id="5000-digit-int"),
        pytest.param(b"\x00\x01", 400, id="binary"),
        pytest.param(b'"just a string"', 422, id="not-an-object"),
        pytest.param(b"[]", 422, id="array"),
    ],
)
async def test_malformed_bodies_are_refused_and_change_nothing(route, raw, status):
    path, _ = BODY_ROUTES[route]
    async with hostile() as (api, ids):
        await assert_refused(api, path.format(**ids), raw, status)


def _int_fields() -> list[tuple[str, list]]:
    """(route, path into the body) of every integer or number field."""
    return [
        ("claim", ["lease_ttl_secs"]),
        ("claim", ["wait_secs"]),
        ("create", ["jobs", 0, "max_retries"]),
        ("create", ["jobs", 0, "timeout_secs"]),
        ("create", ["jobs", 0, "backoff", "Fixed", "delay_secs"]),
        ("create", ["jobs", 0, "metadata", "n"]),
        ("logs", ["chunks", 0, "sequence"]),
        ("logs", ["chunks", 0, "timestamp_ms"]),
    ]


def _set(body: dict, where: list, value: Any) -> dict:
    body = json.loads(json.dumps(body))
    target = body
    for key in where[:-1]:
        if isinstance(target, dict) and key not in target:
            target[key] = {}
        target = target[key]
    target[where[-1]] = value
    return body


HUGE_NUMBERS = [b"1e400", b"-1e400", str(10**40).encode(), str(-(10**40)).encode()]


def _huge_number_cases() -> list:
    cases = []
    for route, where in _int_fields():
        # 1e300 is a fine float in free-form metadata; in a typed field it is out of range.
        for number in HUGE_NUMBERS + ([b"1e300"] if where[-1] != "n" else []):
            label = f"{route}:{'.'.join(map(str, where))}={number.decode()[:8]}"
            cases.append(pytest.param(route, where, number, id=label))
    return cases


@pytest.mark.parametrize("route,where,number", _huge_number_cases())
async def test_huge_numbers_are_refused_and_change_nothing(route, where, number):
    path, valid = BODY_ROUTES[route]
    body = json.dumps(_set(valid, where, "NUMBER")).encode().replace(b'"NUMBER"', number)
    async with hostile() as (api, ids):
        await assert_refused(api, path.format(**ids), body, 422)


def _fields(value: Any, prefix: list) -> list[list]:
    """Every path into a body, containers included."""
    paths = []
    if isinstance(value, dict):
        for key, item in value.items():
            paths.append([*prefix, key])
            paths.extend(_fields(item, [*prefix, key]))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            paths.append([*prefix, i])
            paths.extend(_fields(item, [*prefix, i]))
    return paths


def _wrong_types() -> list:
    cases = []
    for route, (_, body) in BODY_ROUTES.items():
        for where in _fields(body, []):
            cases.append(pytest.param(route, where, id=f"{route}:{'.'.join(map(str, where))}"))
    return cases


WRONG_VALUES = [None, True, 7, 2.5, "text", [], {}, ["x"], {"k": 1}]


def _acceptable(where: list, value: Any, original: Any) -> bool:
    """Values of another JSON type that the contract still accepts at this spot."""
    last = where[-1]
    if last in ("name", "timeout_secs", "workflow_id", "job_id", "timestamp_ms") and value is None:
        return True  # optional, null allowed
    if last == "wait_secs" and type(value) in (int, float) and 0 <= value <= 60:
        return True  # a number
    if last == "metadata" and isinstance(value, dict):
        return True
    if last == "status":
        return True
    return type(value) is type(original)


@pytest.mark.parametrize("route,where", _wrong_types())
async def test_wrong_types_in_every_field_are_refused_and_change_nothing(route, where):
    path, valid = BODY_ROUTES[route]
    async with hostile() as (api, ids):
        original = valid
        for key in where:
            original = original[key]
        tried = 0
        for value in WRONG_VALUES:
            if _acceptable(where, value, original):
                continue
            body = json.dumps(_set(valid, where, value)).encode()
            message = await assert_refused(api, path.format(**ids), body)
            assert message
            tried += 1
        assert tried >= 5


async def test_path_ids_outside_the_id_alphabet_just_404():
    async with serve() as api:
        await api.create_and_run([job("a")])
        for weird in ("..", "%2e%2e", "a%00b", "x" * 5000, "%F0%9F%92%A5", "a b", "<script>"):
            for path in (
                f"/api/workflows/{weird}/status",
                f"/api/workflows/{weird}/jobs/{weird}/logs",
                f"/api/jobs/{weird}/{weird}/cancelled",
            ):
                resp = await api.get(path)
                assert resp.status_code == 404, (path, resp.status_code)
                await assert_error(resp, 404)
            resp = await api.post(f"/api/jobs/{weird}/heartbeat")
            assert resp.status_code in (404, 409)
            await assert_error(resp, resp.status_code)
