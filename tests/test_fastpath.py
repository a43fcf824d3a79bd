"""The worker-protocol fast path answers exactly as the Quart routes would.

The in-process test client goes through the fast path too (it calls the app's
ASGI entry), so the whole HTTP suite checks its behaviour; these tests pin
what is specific to it: headers identical to Quart's, bodies streamed past the
limit, and that nothing else is taken away from Quart.
"""

from __future__ import annotations

import pytest

from actors import open_runtime
from web import create_app


def cors_headers(response) -> dict[str, str]:
    return {
        k.lower(): v
        for k, v in response.headers.items()
        if k.lower().startswith("access-control-allow") or k.lower() == "vary"
    }


@pytest.mark.parametrize("origins", [None, ["https://a.example"], ["*"]])
@pytest.mark.parametrize(
    "origin", ["https://a.example", "https://b.example", "http://localhost:5173", None]
)
async def test_cors_headers_match_the_quart_routes(origins, origin):
    """Answered or refused by the gate (an Origin may not change anything), same headers."""
    headers = {"Origin": origin} if origin else {}
    allowed = origins == ["*"] or origin in [None, *(origins or ["http://localhost:5173"])]
    async with open_runtime() as rt:
        app = create_app(rt, cors_origins=origins)
        async with app.test_app() as test_app:
            client = test_app.test_client()
            quart = await client.get("/api/workers", headers=headers)  # a Quart route
            fast = await client.post("/api/jobs/claim", json={"worker_id": "w"}, headers=headers)
            assert fast.status_code == (200 if allowed else 403)
            assert cors_headers(fast) == cors_headers(quart)
            assert fast.headers["content-type"] == "application/json"


async def test_a_streamed_body_past_the_limit_is_413_without_content_length():
    async with open_runtime() as rt:
        app = create_app(rt, max_body_bytes=2048)
        async with app.test_app() as test_app:
            client = test_app.test_client()
            async with client.request("/api/jobs/claim", method="POST") as connection:
                await connection.send(b'{"worker_id": "w", "labels": [' + b'"x",' * 1000)
                await connection.send_complete()
            response = await connection.as_response()
            assert response.status_code == 413
            assert "max_body_bytes (2048)" in (await response.get_json())["error"]


async def test_other_methods_and_paths_are_left_to_quart():
    async with open_runtime() as rt:
        app = create_app(rt)
        async with app.test_app() as test_app:
            client = test_app.test_client()
            # GET on a protocol path: Quart's 405, as JSON.
            response = await client.get("/api/jobs/claim")
            assert response.status_code == 405
            assert "error" in await response.get_json()
            response = await client.post("/api/jobs/some-lease/unknown")
            assert response.status_code == 404
            assert "error" in await response.get_json()
