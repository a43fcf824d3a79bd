"""The HTTP baseline: the smallest ASGI app, served by the same hypercorn + trio as `wfg serve`.

It reads every request body and answers any request with one fixed JSON body
(shaped like a claim answer, so the same wrk script alternates claim and
complete against it). `python -m benchmarks.bare_asgi` serves it on a free port
of 127.0.0.1 and prints `listening on http://127.0.0.1:PORT`.
"""

from __future__ import annotations

import signal

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

BODY = b'{"job":{"job_id":"j","workflow_id":"w"},"lease":{"lease_id":"baseline-lease"}}'
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]


async def app(scope, receive, send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            break
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})


def _config() -> Config:
    # The same settings as web/server.py's, so only the app differs.
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.errorlog = "-"
    config.keep_alive_timeout = 75
    config.graceful_timeout = 5
    config.h11_max_incomplete_size = 64 * 1024
    return config


async def _main() -> None:
    stop = trio.Event()

    async def stop_on_signal() -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                stop.set()
                return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(stop_on_signal)
        binds = await nursery.start(_serve, stop)
        print(f"bare ASGI baseline listening on {binds[0]}", flush=True)
        await stop.wait()
        nursery.cancel_scope.cancel()


async def _serve(stop: trio.Event, task_status=trio.TASK_STATUS_IGNORED) -> None:
    await serve(app, _config(), shutdown_trigger=stop.wait, task_status=task_status)


if __name__ == "__main__":
    trio.run(_main)
