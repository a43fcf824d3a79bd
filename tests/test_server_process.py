"""`wfg serve` as a real process, driven over real HTTP with the worker protocol."""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx
import pytest
from conftest import start_server

WORKFLOW = {
    "name": "Real HTTP",
    "trigger": "on: push",
    "jobs": [
        {"id": "build", "command": "make", "max_retries": 1},
        {"id": "test", "command": "make test", "depends_on": ["build"]},
    ],
}


def sse_events(response: httpx.Response):
    """Yield (event, id, data) for each event of an SSE response; comments skipped."""
    event: dict[str, str] = {}
    for line in response.iter_lines():
        if line == "":
            if event:
                yield event.get("event"), event.get("id"), event.get("data")
            event = {}
        elif line.startswith(":"):
            continue
        else:
            key, _, value = line.partition(":")
            event[key] = value.removeprefix(" ")


@pytest.fixture
def api(live_server):
    with httpx.Client(base_url=live_server.url, timeout=10) as client:
        yield client


def test_a_whole_workflow_over_real_http(api, live_server):
    created = api.post("/api/workflows", json=WORKFLOW)
    assert created.status_code == 201
    wf = created.json()["id"]
    assert (
        api.post("/api/workers/register", json={"worker_id": "w1", "labels": []}).status_code == 200
    )
    assert api.post(f"/api/workflows/{wf}/run").status_code == 202

    claim = api.post("/api/jobs/claim", json={"worker_id": "w1", "labels": [], "lease_ttl_secs": 5})
    job, lease = claim.json()["job"], claim.json()["lease"]
    assert (job["job_id"], job["attempt"], lease["ttl_secs"]) == ("build", 0, 5)
    lease_id = lease["lease_id"]
    assert api.post(f"/api/jobs/{lease_id}/heartbeat").status_code == 200

    # The first attempt fails retryably; the retry succeeds.
    chunk = {
        "workflow_id": wf,
        "job_id": "build",
        "sequence": 0,
        "data": "try 1\n",
        "timestamp_ms": 1,
        "stream": "stderr",
    }
    assert api.post(f"/api/jobs/{lease_id}/logs", json={"chunks": [chunk]}).status_code == 200
    failed = api.post(f"/api/jobs/{lease_id}/fail", json={"error": "flaky", "retryable": True})
    assert failed.status_code == 200
    assert api.post(f"/api/jobs/{lease_id}/complete", json={"outputs": {}}).status_code == 409

    retry = api.post("/api/jobs/claim", json={"worker_id": "w1", "labels": []}).json()
    assert (retry["job"]["job_id"], retry["job"]["attempt"]) == ("build", 1)
    lease_id = retry["lease"]["lease_id"]

    # A live SSE reader sees the replay, a live chunk, and the end of the stream.
    events: list[tuple] = []
    opened = threading.Event()

    def follow():
        with httpx.Client(base_url=live_server.url, timeout=10) as reader:
            url = f"/api/workflows/{wf}/jobs/build/logs/stream"
            with reader.stream("GET", url) as response:
                assert response.headers["content-type"].startswith("text/event-stream")
                opened.set()
                events.extend(sse_events(response))

    reader = threading.Thread(target=follow)
    reader.start()
    assert opened.wait(5)
    time.sleep(0.2)  # let the stream subscribe before the live chunk goes out
    live = {"sequence": 0, "data": "try 2\n", "stream": "stdout"}
    api.post(f"/api/jobs/{lease_id}/logs", json={"chunks": [live]})
    done = api.post(f"/api/jobs/{lease_id}/complete", json={"outputs": {"artifact": "a.tgz"}})
    assert done.status_code == 200
    reader.join(10)
    assert not reader.is_alive(), "the stream did not end after the job finished"
    datas = [json.loads(e[2])["data"] for e in events]
    assert datas == ["try 1\n", "try 2\n"]
    assert all(e[0] == "log" for e in events)
    # Event ids count the run's chunks, across attempts (each attempt's sequence is 0).
    assert [e[1] for e in events] == ["0", "1"]
    assert [json.loads(e[2])["sequence"] for e in events] == [0, 0]
    assert json.loads(events[0][2])["stream"] == "stderr"

    nxt = api.post("/api/jobs/claim", json={"worker_id": "w2", "labels": ["any"]}).json()
    assert nxt["job"]["job_id"] == "test"
    assert nxt["job"]["upstream_outputs"] == {"build": {"artifact": "a.tgz"}}
    api.post(f"/api/jobs/{nxt['lease']['lease_id']}/complete", json={"outputs": {}})

    status = api.get(f"/api/workflows/{wf}/status").json()
    assert [(j["id"], j["status"], j["attempt"]) for j in status["jobs"]] == [
        ("build", "success", 1),
        ("test", "success", 0),
    ]
    workers = {w["worker_id"]: w for w in api.get("/api/workers").json()}
    assert set(workers) == {"w1", "w2"}
    assert workers["w1"]["status"] == "idle"


def test_a_parked_claim_whose_client_left_does_not_swallow_the_job(api, live_server):
    wf = api.post("/api/workflows", json=WORKFLOW).json()["id"]
    host, port = live_server.url.removeprefix("http://").split(":")
    body = json.dumps({"worker_id": "gone", "labels": [], "wait_secs": 30}).encode()
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(
            b"POST /api/jobs/claim HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        time.sleep(0.3)  # parked now
    time.sleep(0.3)  # the server has seen the disconnect
    assert api.post(f"/api/workflows/{wf}/run").status_code == 202
    claim = api.post("/api/jobs/claim", json={"worker_id": "w2", "labels": []}).json()
    assert claim is not None and claim["job"]["job_id"] == "build"


def test_a_parked_claim_over_http_wakes_on_run(api, live_server):
    wf = api.post("/api/workflows", json=WORKFLOW).json()["id"]
    result = {}

    def park():
        with httpx.Client(base_url=live_server.url, timeout=40) as c:
            started = time.monotonic()
            result["claim"] = c.post(
                "/api/jobs/claim", json={"worker_id": "p", "labels": [], "wait_secs": 30}
            ).json()
            result["waited"] = time.monotonic() - started

    t = threading.Thread(target=park)
    t.start()
    time.sleep(0.5)
    api.post(f"/api/workflows/{wf}/run")
    t.join(10)
    assert result["claim"]["job"]["job_id"] == "build"
    assert result["waited"] < 5


def test_port_taken_moves_to_the_next_free_one(workflows_dir, server_factory):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        server = server_factory(workflows_dir, env={"PORT": str(taken)})
        bound = int(server.url.rsplit(":", 1)[1])
        assert bound != taken
        assert taken < bound <= taken + 100 or bound > 0
        assert httpx.get(server.url + "/api/workflows").json() == []


def test_bad_settings_are_one_plain_line(workflows_dir):
    with pytest.raises(RuntimeError) as failure:
        start_server(workflows_dir, env={"PORT": "not-a-port"}, timeout=10)
    output = str(failure.value)
    assert "PORT must be a number" in output
    assert "Traceback" not in output


def test_api_only_says_so_and_bad_files_are_named(workflows_dir, server_factory):
    (workflows_dir / "good.yml").write_text("name: Good\njobs:\n  a:\n    run: echo hi\n")
    (workflows_dir / "bad.yml").write_text(
        "name: Bad\njobs:\n  a:\n    needs: [nope]\n    run: x\n"
    )
    server = server_factory(workflows_dir, env={"API_ONLY": "1"})
    time.sleep(0.2)
    out = server.output()
    assert "API_ONLY" in out
    assert [line for line in out.splitlines() if "bad.yml" in line] == [
        next(line for line in out.splitlines() if "bad.yml" in line)
    ]
    assert "nope" in out
    ids = [w["id"] for w in httpx.get(server.url + "/api/workflows").json()]
    assert ids == ["good"]


def test_the_end_of_a_stream_comes_apart_from_its_last_chunk(api, live_server):
    """A client that stops reading at end-of-stream without draining what it holds
    (as the seed's TypeScript client does) still gets every chunk: after the job's
    last chunk the server sends a comment, then keeps the connection open briefly."""
    wf = api.post("/api/workflows", json={"name": "end", "jobs": [{"id": "a", "command": "x"}]})
    wf = wf.json()["id"]
    api.post(f"/api/workflows/{wf}/run")
    lease = api.post("/api/jobs/claim", json={"worker_id": "w", "labels": []}).json()["lease"]
    host, port = live_server.url.removeprefix("http://").split(":")
    reads: list[tuple[float, bytes]] = []
    sock = socket.create_connection((host, int(port)))
    path = f"/api/workflows/{wf}/jobs/a/logs/stream"
    request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n"
    sock.sendall(request.encode())

    def read() -> None:
        # Until the chunked body's terminator (or the connection closes).
        while data := sock.recv(65536):
            reads.append((time.monotonic(), data))
            if b"".join(d for _, d in reads[-2:]).endswith(b"\r\n0\r\n\r\n"):
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    time.sleep(0.3)  # subscribed
    chunks = [{"sequence": n, "data": f"line {n}\n", "stream": "stdout"} for n in range(50)]
    # No pause between the last push and the complete.
    assert api.post(f"/api/jobs/{lease['lease_id']}/logs", json={"chunks": chunks}).is_success
    assert api.post(f"/api/jobs/{lease['lease_id']}/complete", json={}).is_success
    reader.join(10)
    assert not reader.is_alive(), "the stream did not end"
    sock.close()
    body = b"".join(data for _, data in reads)
    assert body.count(b"event: log") == 50
    last_chunk = body.rindex(b"line 49")
    assert body.index(b": end", last_chunk) > last_chunk
    # The read that carried the last chunk was not the last read before the close:
    # the end arrived apart, after a grace.
    carrying = next(t for t, data in reads if b"line 49" in data)
    assert reads[-1][0] - carrying >= 0.5
