"""`/healthz` and `/readyz`: open without a token, cheap, and honest about the store."""

from __future__ import annotations

from pathlib import Path

from actors import open_runtime
from web import create_app


async def get(app, path: str):
    async with app.test_app() as test_app:
        response = await test_app.test_client().get(path)
        return response.status_code, await response.get_json()


async def test_health_and_readiness_need_no_token(tmp_path: Path):
    async with open_runtime(data_dir=tmp_path) as rt:
        app = create_app(rt, api_token="api-secret", worker_token="worker-secret")
        assert await get(app, "/healthz") == (200, {"status": "ok"})
        assert await get(app, "/readyz") == (200, {"status": "ready"})
        assert (await get(app, "/api/workers"))[0] == 401  # the API stays guarded


async def test_not_ready_while_shutting_down():
    async with open_runtime() as rt:
        app = create_app(rt)
        assert await get(app, "/readyz") == (200, {"status": "ready"})
        await rt.stop_parking()  # what the server does when it is told to stop
        assert await get(app, "/readyz") == (503, {"error": "the server is shutting down"})
        assert await get(app, "/healthz") == (200, {"status": "ok"})


async def test_not_ready_when_the_store_takes_no_writes(tmp_path: Path):
    async with open_runtime(data_dir=tmp_path) as rt:
        app = create_app(rt)
        assert (await get(app, "/readyz"))[0] == 200
        # The database file turns read-only under the running server.
        rt._system.journal.store._db.execute("PRAGMA query_only = ON")
        status, body = await get(app, "/readyz")
        assert status == 503
        assert body["error"].startswith("the change could not be stored")
        rt._system.journal.store._db.execute("PRAGMA query_only = OFF")
        assert (await get(app, "/readyz"))[0] == 200
