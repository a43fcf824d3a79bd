"""Schemathesis against `/openapi.json` of a real `wfg serve` process.

Every documented operation gets a bounded number of generated requests, valid
(positive) and invalid (negative), with Hypothesis derandomized so a run is
repeatable. Each answer must: not be a 5xx, have a documented status code and
content type, match the documented schema, be a JSON `{"error": str}` when it
is an error, and (for invalid requests) be a 4xx.

The server has a workflow with many root jobs already running, so claims find
work at once and some requests hit existing ids; `MAX_WAIT_SECS` and
`SSE_MAX_SECS` are 1, so parked claims and log streams cannot hold a case long.
"""

from __future__ import annotations

import json
import time

import httpx
import pytest

schemathesis = pytest.importorskip("schemathesis")
hypothesis = pytest.importorskip("hypothesis")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

EXAMPLES_PER_OPERATION = 12
BUDGET_SECS = 60
STREAM_PATH = "/api/workflows/{workflow_id}/jobs/{job_id}/logs/stream"


class ErrorBodyIsNotJSON(AssertionError):
    pass


def error_bodies_are_json(ctx, response, case) -> bool | None:
    """Every 4xx/5xx answer is `{"error": "<text>"}` as application/json (a refused
    definition's also lists its problems in `errors`)."""
    if response.status_code < 400:
        return None
    content_type = response.headers.get("content-type", [""])
    content_type = content_type[0] if isinstance(content_type, list) else content_type
    if not content_type.startswith("application/json"):
        raise ErrorBodyIsNotJSON(f"{response.status_code} with content type {content_type!r}")
    try:
        body = json.loads(response.content)
    except ValueError as exc:
        raise ErrorBodyIsNotJSON(f"{response.status_code} body is not JSON: {exc}") from None
    # `errors` is the extension listing every problem of a refused definition.
    if not (
        isinstance(body, dict)
        and set(body) - {"errors"} == {"error"}
        and isinstance(body["error"], str)
        and isinstance(body.get("errors", []), list)
    ):
        raise ErrorBodyIsNotJSON(f"{response.status_code} body is not an ErrorBody: {body!r}")
    return True


POSITIVE_CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    error_bodies_are_json,
]
NEGATIVE_CHECKS = [*POSITIVE_CHECKS, negative_data_rejection]


def _seed(url: str) -> dict[str, str]:
    """A workflow with many root jobs, running, and one lease on it: ids worth hitting."""
    with httpx.Client(base_url=url, timeout=10) as http:
        jobs = [{"id": f"j{i}", "command": "true"} for i in range(300)]
        created = http.post("/api/workflows", json={"name": "fuzz", "jobs": jobs})
        assert created.status_code == 201, created.text
        workflow_id = created.json()["id"]
        assert http.post(f"/api/workflows/{workflow_id}/run").status_code == 202
        claim = http.post("/api/jobs/claim", json={"worker_id": "fuzzer"}).json()
        return {
            "workflow_id": workflow_id,
            "job_id": "j299",
            "lease_id": claim["lease"]["lease_id"],
            "worker_id": "fuzzer",
        }


def _run(operation, mode: GenerationMode, url: str, path_parameters=None) -> None:
    checks = POSITIVE_CHECKS if mode is GenerationMode.POSITIVE else NEGATIVE_CHECKS
    strategy = operation.as_strategy(generation_mode=mode, path_parameters=path_parameters)

    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
    )
    @given(case=strategy)
    def check(case) -> None:
        response = case.call(base_url=url, timeout=10)
        case.validate_response(response, checks=checks)

    try:
        check()
    except hypothesis.errors.Unsatisfiable:
        # No parameters and no body: there is nothing invalid to send.
        if mode is GenerationMode.POSITIVE:
            raise


def test_schemathesis_finds_no_server_errors_and_no_schema_drift(workflows_dir, server_factory):
    server = server_factory(
        workflows_dir,
        env={"MAX_WAIT_SECS": "1", "SSE_MAX_SECS": "1", "MAX_JOBS_PER_WORKFLOW": "300"},
    )
    known = _seed(server.url)
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 16, [op.label for op in operations]

    started = time.monotonic()
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            _run(operation, mode, server.url)
        names = {p.name for p in operation.path_parameters}
        if names and operation.path != STREAM_PATH:
            # Known ids reach past the 404s into the handlers themselves.
            fixed = {name: known[name] for name in names if name in known}
            _run(operation, GenerationMode.POSITIVE, server.url, fixed)
    elapsed = time.monotonic() - started
    assert elapsed < BUDGET_SECS, f"fuzzing took {elapsed:.0f}s"
    assert "Traceback" not in server.output(), server.output()
