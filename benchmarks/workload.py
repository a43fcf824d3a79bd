"""Workflows the benchmarks create over HTTP, and counting their jobs' states."""

from __future__ import annotations

from collections import Counter

import httpx

MAX_JOBS_PER_WORKFLOW = 4000  # under the server's 5 000 limit and its 1 MiB body limit
PAGE = 1000  # the server's cap on `limit`


def flat_workflow(name: str, jobs: int) -> dict:
    """A create body: `jobs` independent root jobs running `true`."""
    return {"name": name, "jobs": [{"id": f"j{i}", "command": "true"} for i in range(jobs)]}


def chain_workflow(name: str, length: int = 2) -> dict:
    """A create body: j0 <- j1 <- ... each job needing the one before."""
    jobs: list[dict] = [{"id": "j0", "command": "true"}]
    jobs += [
        {"id": f"j{i}", "command": "true", "depends_on": [f"j{i - 1}"]} for i in range(1, length)
    ]
    return {"name": name, "jobs": jobs}


def create(client: httpx.Client, body: dict) -> str:
    answer = client.post("/api/workflows", json=body)
    answer.raise_for_status()
    return answer.json()["id"]


def run(client: httpx.Client, workflow_id: str) -> None:
    client.post(f"/api/workflows/{workflow_id}/run").raise_for_status()


def queue_flat_jobs(client: httpx.Client, total: int, name: str = "bench") -> list[str]:
    """Create and run workflows of root jobs until `total` jobs are queued."""
    ids: list[str] = []
    while total > 0:
        size = min(total, MAX_JOBS_PER_WORKFLOW)
        workflow_id = create(client, flat_workflow(f"{name}-{len(ids)}", size))
        run(client, workflow_id)
        ids.append(workflow_id)
        total -= size
    return ids


def job_counts(client: httpx.Client) -> Counter:
    """How many jobs of all workflows are in each status, paging through the list."""
    counts: Counter = Counter()
    offset = 0
    while True:
        answer = client.get("/api/workflows", params={"limit": PAGE, "offset": offset})
        answer.raise_for_status()
        page = answer.json()
        for workflow in page:
            counts.update(job["status"] for job in workflow["jobs"])
        if len(page) < PAGE:
            return counts
        offset += PAGE
