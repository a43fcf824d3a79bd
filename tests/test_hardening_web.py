"""The HTTP layer against hostile and odd input: ids, names, NUL bytes, paging.

In-process through the app's ASGI entry (the fast path, Quart), like
`test_http_api.py`. Every refusal is checked twice: the answer, and that
nothing changed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from test_http_api import Api, assert_error, job, serve

from actors import open_runtime
from actors.definitions import load_workflows_dir
from actors.models import WorkflowCreate
from actors.spec import MAX_NAME_CHARS
from web.server import ServerSettings

WORKFLOW = {"name": "wf", "jobs": [job("a", "echo hi")]}


@pytest.fixture
async def api() -> AsyncIterator[Api]:
    async with serve() as a:
        yield a


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
    assert "NUL" in message
    assert await api.list() == []


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
    assert await api.list() == [] and await api.workers() == {}
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
    assert len(await api.list()) == 1


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
    assert [w["id"] for w in await api.list(f"?limit={huge}")] == ids
    assert [w["id"] for w in await api.list("?limit=0000000000000000000000002")] == ids[:2]
    assert await api.list(f"?offset={huge}") == []
    assert await api.list(f"?limit={huge}&offset={'1' * 5000}") == []
    # Digits outside ASCII ("²", "١") pass str.isdigit but are no count here.
    for bad in ("-" + huge, "1e3", "%C2%B2", "%D9%A1", "%201", "0x10"):
        await assert_error(await api.get(f"/api/workflows?limit={bad}"), 400)
