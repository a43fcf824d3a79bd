"""Secrets: where they come from, that a job alone receives them, and masking.

A secret's value may reach a worker in its claim (`job.env`) and nowhere
else: not a status, a run, the dashboard, the store, nor a log chunk stored
or streamed, even when the worker's chunks cut the value in two.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
from homes import HOMES, Home, make_home
from test_http_lifecycle import SSEReader

from actors import Invalid, open_runtime
from actors.models import LogChunkIn, LogStream
from actors.secrets import (
    MASK,
    Masker,
    SecretsError,
    SecretStore,
    context_placeholders,
    job_references,
    placeholder,
    referenced,
)
from actors.spec import InputSpec, JobSpec, WorkflowSpec
from web import create_app

TOKEN = "s3cr3t-T0KEN-value"
OTHER = "another-secret-value"


@pytest.fixture(params=HOMES)
def home(request):
    """Secrets are revealed, masked and held back alike on both homes."""
    yield from make_home(request, request.param)


def store() -> SecretStore:
    return SecretStore({"TOKEN": TOKEN, "OTHER": OTHER})


def deploy(**job) -> WorkflowSpec:
    """`deploy` reads TOKEN through its env; `after` reads no secret."""
    return WorkflowSpec(
        id="deploy",
        name="Deploy",
        trigger="manual",
        jobs=(
            JobSpec(
                id="deploy",
                name="deploy",
                command='echo "$TOKEN"',
                env={"TOKEN": "${{ secrets.TOKEN }}", "URL": "https://x/?k=${{secrets.token}}"},
                **job,
            ),
            JobSpec(id="after", name="after", command="true", depends_on=("deploy",)),
        ),
    )


def chunk(sequence: int, data: str, stream: LogStream = LogStream.stdout) -> LogChunkIn:
    return LogChunkIn(sequence=sequence, data=data, stream=stream)


# --- where secrets come from ------------------------------------------------------


def test_secrets_come_from_files_and_the_environment(tmp_path: Path, caplog):
    (tmp_path / "TOKEN").write_text("from-file\n")
    (tmp_path / "db_pass").write_text("p@ss\r\n")
    (tmp_path / "multi").write_text("line one\nline two\n\n")
    (tmp_path / ".hidden").write_text("no")
    (tmp_path / "..data").mkdir()
    (tmp_path / "not-a-name").write_text("no")
    environ = {"WFG_SECRET_TOKEN": "from-env", "WFG_SECRET_api_key": "k", "PATH": "/bin"}
    with caplog.at_level(logging.WARNING, logger="workflow_graph"):
        loaded = SecretStore.load(tmp_path, environ)
    assert dict(loaded.values) == {
        "TOKEN": "from-env",  # the environment wins
        "DB_PASS": "p@ss",  # one trailing newline is not part of the value
        "MULTI": "line one\nline two\n",
        "API_KEY": "k",
    }
    assert loaded.names == {"TOKEN", "DB_PASS", "MULTI", "API_KEY"}
    assert "'not-a-name' is not a valid secret name" in caplog.text


def test_an_unreadable_secrets_dir_is_a_clear_error(tmp_path: Path):
    with pytest.raises(SecretsError, match="SECRETS_DIR .*missing"):
        SecretStore.load(tmp_path / "missing", {})


def test_references_and_placeholders():
    assert referenced(["a ${{ secrets.TOKEN }} b", "${{ secrets['db_pass'] }}", "plain"]) == {
        "TOKEN",
        "DB_PASS",
    }
    spec = deploy()
    assert job_references(spec.jobs[0]) == {"TOKEN"}
    assert job_references(spec.jobs[1]) == frozenset()
    assert context_placeholders(spec) == {"TOKEN": placeholder("TOKEN")}
    assert placeholder("token") == "${{ secrets.TOKEN }}"


def test_reveal_gives_only_the_names_the_job_reads(caplog):
    env = {
        "A": "${{ secrets.TOKEN }}",
        "B": "x-${{secrets.token}}-${{ secrets.OTHER }}",
        "C": "no secret here",
        "D": "${{ secrets.GONE }}",
    }
    with caplog.at_level(logging.WARNING, logger="workflow_graph"):
        revealed, given = store().reveal(env, {"TOKEN", "GONE"})
    assert revealed == {
        "A": TOKEN,
        "B": f"x-{TOKEN}-${{{{ secrets.OTHER }}}}",  # OTHER is not the job's to have
        "C": "no secret here",
        "D": "",  # no longer set on the server: empty, as GitHub gives it
    }
    assert given == [TOKEN]
    assert "secret GONE is no longer set" in caplog.text


# --- masking ------------------------------------------------------------------------


def test_masking_whole_values():
    masker = Masker([TOKEN, "short", ""])
    assert masker.mask(f"a {TOKEN} b {TOKEN}short") == f"a {MASK} b {MASK}{MASK}"
    assert Masker([]).mask(TOKEN) == TOKEN and not Masker([""])


def test_each_line_of_a_multi_line_value_is_masked_too():
    key = "-----BEGIN KEY-----\nAAAABBBB\n-----END KEY-----"
    masker = Masker([key])
    assert masker.mask(f"x{key}y") == f"x{MASK}y"
    assert masker.mask("got AAAABBBB here") == f"got {MASK} here"


@pytest.mark.parametrize("text", [f"before {TOKEN} after\n", f"{TOKEN}{TOKEN}", f"x{TOKEN}"])
def test_a_value_cut_anywhere_by_chunks_is_never_let_out(text):
    """Every way of cutting the text in three: what is let out, joined, is the text
    masked whole, and no piece let out ends with the start of the value."""
    masker = Masker([TOKEN, OTHER])
    whole = masker.mask(text)
    for i in range(len(text) + 1):
        for j in range(i, len(text) + 1):
            held, out = "", []
            for piece in (text[:i], text[i:j], text[j:]):
                emitted, held = masker.mask_text(held, piece)
                out.append(emitted)
            assert "".join(out) + held == whole
            let_out = "".join(out)
            assert TOKEN not in let_out
            assert not any(let_out.endswith(TOKEN[:k]) for k in range(2, len(TOKEN)))


def test_only_what_may_start_a_value_is_held_back():
    masker = Masker([TOKEN])
    assert masker.mask_text("", "plain text s3c") == ("plain text ", "s3c")
    assert masker.mask_text("s3c", "r3t-T0KEN-value and more") == (f"{MASK} and more", "")
    assert masker.mask_text("", "s3cx") == ("s3cx", "")


# --- a job receives its secrets, and nothing shows them ----------------------------


async def test_the_claim_alone_carries_the_value_and_logs_are_masked(home: Home, autojump_clock):
    async with home.open(specs=[deploy()], secrets=store()) as rt:
        app = create_app(rt)
        await rt.run_workflow("deploy")
        claim = await rt.claim("w", [])
        assert claim.job.env["TOKEN"] == TOKEN
        assert claim.job.env["URL"] == f"https://x/?k={TOKEN}"
        assert TOKEN not in claim.job.command
        lease_id = claim.lease.lease_id

        async with app.test_app() as test_app:
            client = test_app.test_client()
            async with client.request("/api/workflows/deploy/jobs/deploy/logs/stream") as conn:
                await conn.send_complete()
                reader = SSEReader(conn)
                half = len(TOKEN) // 2
                await rt.push_logs(lease_id, [chunk(0, f"token is {TOKEN}\n")])
                # Cut in two across pushes, with a stderr chunk between the halves.
                await rt.push_logs(lease_id, [chunk(1, f"again {TOKEN[:half]}")])
                await rt.push_logs(lease_id, [chunk(2, "oops\n", LogStream.stderr)])
                await rt.push_logs(lease_id, [chunk(3, f"{TOKEN[half:]} done\n")])
                await rt.push_logs(lease_id, [chunk(4, "trailing s3c")])  # held until the end
                await rt.fail(lease_id, f"exit code 1: {TOKEN}", retryable=False)
                streamed = [e["data"] for e in [await reader.event(), *await reader.rest()]]

            stored = await rt.get_logs("deploy", "deploy")
            expected = [
                (0, "stdout", f"token is {MASK}\n"),
                (1, "stdout", "again "),  # the first half is held back, not stored
                (2, "stderr", "oops\n"),
                (3, "stdout", f"{MASK} done\n"),
                (4, "stdout", "trailing "),
                (5, "stdout", "s3c"),  # held until the attempt ended: no secret after all
            ]
            assert [(c.sequence, c.stream.value, c.data) for c in stored] == expected
            assert [(c["sequence"], c["stream"], c["data"]) for c in streamed] == expected

            job = (await rt.get_status("deploy")).jobs[0]
            assert job.output == f"exit code 1: {MASK}"
            answers = [
                await client.get(path)
                for path in (
                    "/api/workflows/deploy/status",
                    "/api/workflows",
                    "/api/workflows/deploy/runs",
                    "/api/workflows/deploy/runs/1",
                    "/api/workflows/deploy/jobs/deploy/logs",
                    "/api/workflows/deploy/runs/1/jobs/deploy/logs",
                    "/api/workflows/deploy/layout",
                    "/",
                    "/workflows/deploy",
                    "/openapi.json",
                )
            ]
            assert [a.status_code for a in answers] == [200] * len(answers)
            views = [await a.get_data(as_text=True) for a in answers]
            for text in views:
                assert TOKEN not in text
            assert '"DEPLOY_TOKEN":"***"' in views[-1].replace(" ", "")


async def test_outputs_that_hold_a_secret_are_masked(home: Home, autojump_clock):
    async with home.open(specs=[deploy()], secrets=store()) as rt:
        await rt.run_workflow("deploy")
        claim = await rt.claim("w", [])
        await rt.complete(claim.lease.lease_id, {"url": f"https://x/?k={TOKEN}", "n": "1"})
        after = await rt.claim("w", [])
        assert after.job.upstream_outputs == {"deploy": {"url": f"https://x/?k={MASK}", "n": "1"}}
        assert after.job.env == {}


async def test_an_input_cannot_smuggle_in_a_secret_the_job_does_not_read(
    home: Home, autojump_clock
):
    job = JobSpec(
        id="deploy",
        name="deploy",
        command="true",
        env={"TARGET": "${{ inputs.note }}@${{ secrets.TOKEN }}"},
    )
    spec = WorkflowSpec("deploy", "Deploy", "manual", (job,), inputs=(InputSpec(name="note"),))
    async with home.open(specs=[spec], secrets=store()) as rt:
        await rt.run_workflow("deploy", {"note": "${{ secrets.OTHER }}"})
        claim = await rt.claim("w", [])
        assert OTHER not in claim.job.model_dump_json()
        assert claim.job.env["TARGET"] == f"${{{{ secrets.OTHER }}}}@{TOKEN}"


DEFINITION = """\
name: Deploy
jobs:
  deploy:
    env:
      TOKEN: ${{ secrets.TOKEN }}
    run: echo "$TOKEN"
"""


async def test_a_definition_reads_secrets_in_env_values_alone(home: Home, autojump_clock):
    async with home.open(secrets=store()) as rt:
        app = create_app(rt)
        async with app.test_app() as test_app:
            client = test_app.test_client()
            created = await client.post("/api/workflows", json={"definition": DEFINITION})
            assert created.status_code == 201, await created.get_json()
            in_run = DEFINITION.replace('echo "$TOKEN"', "echo ${{ secrets.TOKEN }}")
            refused = await client.post("/api/workflows", json={"definition": in_run})
            assert refused.status_code == 422
            error = (await refused.get_json())["error"]
            assert "line 6" in error and "secrets may only be read in env values" in error
            unknown = DEFINITION.replace("secrets.TOKEN", "secrets.NOPE")
            refused = await client.post("/api/workflows", json={"definition": unknown})
            assert refused.status_code == 422
            assert "unknown secret 'NOPE'" in (await refused.get_json())["error"]

            wf_id = (await created.get_json())["id"]
            await rt.run_workflow(wf_id)
            claim = await rt.claim("w", [])
            assert claim.job.env["TOKEN"] == TOKEN
            assert TOKEN not in claim.job.command and "export TOKEN" not in claim.job.command
            status = await (await client.get(f"/api/workflows/{wf_id}/status")).get_data()
            assert TOKEN.encode() not in status


async def test_a_run_reading_a_secret_the_server_lacks_is_refused(home: Home, autojump_clock):
    async with home.open(specs=[deploy()], secrets=SecretStore({"OTHER": OTHER})) as rt:
        with pytest.raises(Invalid, match="secret.* not set on this server: TOKEN"):
            await rt.run_workflow("deploy")
        app = create_app(rt)
        async with app.test_app() as test_app:
            response = await test_app.test_client().post("/api/workflows/deploy/run")
            assert response.status_code == 422
            assert "TOKEN" in (await response.get_json())["error"]
        assert (await rt.get_status("deploy")).run is None  # nothing was created


async def test_the_store_never_holds_a_value_and_masking_survives_a_restart(tmp_path: Path):
    # The real clock: the store commits in a thread, which an autojump clock would
    # take for idleness and jump past the lease's deadline.
    async with open_runtime(specs=[deploy()], secrets=store(), data_dir=tmp_path) as rt:
        await rt.run_workflow("deploy")
        claim = await rt.claim("w", [])
        assert claim.job.env["TOKEN"] == TOKEN
        await rt.push_logs(claim.lease.lease_id, [chunk(0, f"{TOKEN}\n")])
    async with open_runtime(specs=[deploy()], secrets=store(), data_dir=tmp_path) as rt:
        await rt.push_logs(claim.lease.lease_id, [chunk(1, f"still {TOKEN}\n")])
        await rt.complete(claim.lease.lease_id, {})
        data = [c.data for c in await rt.get_logs("deploy", "deploy")]
        assert data == [f"{MASK}\n", f"still {MASK}\n"]
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
    assert TOKEN.encode() not in raw
    assert re.search(rb"secrets\.TOKEN", raw)  # the placeholder is what a run keeps
