"""Operations of a real `wfg serve`: secrets from SECRETS_DIR and the environment,
masked logs through the CLI and the stream, why a job waits in `wfg status`,
health, metrics, and a JSON log a collector can read."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
from conftest import start_server
from test_server_process import sse_events

TOKEN = "tok-4f9a1c-VALUE"

DEPLOY_YML = """\
name: Deploy
on: push
jobs:
  deploy:
    env:
      DEPLOY_TOKEN: ${{ secrets.DEPLOY_TOKEN }}
    run: echo "$DEPLOY_TOKEN"
"""

GPU_YML = """\
name: Train
jobs:
  train:
    labels: [gpu]
    run: ./train.sh
"""


def wfg(*args: str, url: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "wfg", "--server", url, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={"NO_COLOR": "1", "PATH": "/usr/bin:/bin"},
    )


def test_a_real_server_serves_operations(tmp_path: Path):
    workflows = tmp_path / "workflows"
    workflows.mkdir()
    (workflows / "deploy.yml").write_text(DEPLOY_YML)
    (workflows / "train.yml").write_text(GPU_YML)
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "DEPLOY_TOKEN").write_text(TOKEN + "\n")
    server = start_server(
        workflows,
        env={
            "SECRETS_DIR": str(secrets),
            "WFG_SECRET_UNUSED": "never-shown-1234",
            "LOG_FORMAT": "json",
            "DATA_DIR": str(tmp_path / "data"),
        },
    )
    try:
        with httpx.Client(base_url=server.url, timeout=10) as api:
            assert api.get("/healthz").json() == {"status": "ok"}
            assert api.get("/readyz").json() == {"status": "ready"}
            assert api.post("/api/workflows/train/run").status_code == 202
            assert api.post("/api/workflows/deploy/run").status_code == 202

            # A bare-protocol worker: the value comes in the claim's `env` alone.
            claim = api.post("/api/jobs/claim", json={"worker_id": "w1", "labels": ["linux"]})
            job, lease_id = claim.json()["job"], claim.json()["lease"]["lease_id"]
            assert job["job_id"] == "deploy" and job["env"]["DEPLOY_TOKEN"] == TOKEN
            assert TOKEN not in job["command"]
            half = len(TOKEN) // 2
            chunks = [
                {"sequence": 0, "data": f"{TOKEN}\n"},
                {"sequence": 1, "data": f"cut: {TOKEN[:half]}"},
            ]
            assert api.post(f"/api/jobs/{lease_id}/logs", json={"chunks": chunks}).is_success
            more = [{"sequence": 2, "data": f"{TOKEN[half:]} end\n"}]
            assert api.post(f"/api/jobs/{lease_id}/logs", json={"chunks": more}).is_success
            assert api.post(f"/api/jobs/{lease_id}/complete", json={}).is_success

            with api.stream("GET", "/api/workflows/deploy/jobs/deploy/logs/stream") as stream:
                streamed = "".join(json.loads(data)["data"] for _, _, data in sse_events(stream))
            assert streamed == "***\ncut: *** end\n"
            assert TOKEN not in api.get("/api/workflows/deploy/status").text
            assert TOKEN not in api.get("/api/workflows/deploy/runs").text

            logs = wfg("logs", "deploy", "deploy", url=server.url)
            assert logs.returncode == 0, logs.stderr
            assert "***" in logs.stdout and TOKEN not in logs.stdout + logs.stderr
            status = wfg("status", "train", url=server.url)
            assert "no live worker has labels gpu" in status.stdout, status.stdout

            # The worker agent runs it for real: the job echoes its secret.
            assert api.post("/api/workflows/deploy/run").status_code == 202
            agent = subprocess.Popen(
                [sys.executable, "-m", "wfg", "worker", "--server", server.url, "--id", "agent"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                deadline = time.monotonic() + 30
                while api.get("/api/workflows/deploy/status").json()["jobs"][0]["status"] in (
                    "queued",
                    "running",
                ):
                    assert time.monotonic() < deadline, "the agent did not run the job"
                    time.sleep(0.1)
            finally:
                agent.terminate()
                agent.wait(10)
            run = api.get("/api/workflows/deploy/runs/2").json()
            assert run["status"] == "success", run
            logs = wfg("logs", "deploy", "deploy", url=server.url)
            assert "***" in logs.stdout and TOKEN not in logs.stdout + logs.stderr

            metrics = api.get("/metrics").text
            assert 'wfg_jobs_completed_total{workflow="deploy"} 2.0' in metrics
            assert 'wfg_jobs_waiting_for_worker{labels="gpu"} 1.0' in metrics

            # The watch looks every 5 s: one warning for the gpu jobs.
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and "no live worker" not in server.output():
                time.sleep(0.2)
    finally:
        server.stop()
    records = [json.loads(line) for line in server.lines]  # every line is a JSON object
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
    (warning,) = [r for r in records if "no live worker" in r["message"]]
    assert (warning["level"], warning["labels"]) == ("WARNING", ["gpu"])
    assert any("listening on" in r["message"] for r in records)
    assert TOKEN not in server.output() and "never-shown-1234" not in server.output()
