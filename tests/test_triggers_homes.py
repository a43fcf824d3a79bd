"""Triggers on both homes: schedules, webhook deliveries and run notifications.

The rules are tested in `test_schedules.py`, `test_webhooks.py` and `test_notify.py`
on the embedded home; here the same behaviour runs on PostgreSQL too, and what only
several nodes can show: a due time or a delivery taken by two nodes at once starts
one run, a run that ends on one node is notified by the leader, a new leader goes on
with the schedules where the old one stopped.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import trio
from homes import HOMES, Home, make_home
from test_schedules import scheduled
from test_webhooks import DEFINITIONS, payload

from actors.clock import now_ms
from actors.definitions import parse_definition_text
from actors.models import WorkflowCreate
from actors.runtime import open_runtime
from actors.schedules import ScheduleKey
from actors.trigger_store import AlreadyHandled, DeliveryHandled, ScheduleFired
from actors.webhooks import read_delivery

MINUTE = 60_000
# What needs several nodes on one database, or its time in the database's clock.
postgres_only = pytest.mark.parametrize("home", ["postgres"], indirect=True)


@pytest.fixture(params=HOMES)
def home(request):
    yield from make_home(request, request.param)


async def schedule_runs(runtime: Any, workflow_id: str) -> list[int]:
    """created_at_ms of the workflow's scheduled runs, oldest first."""
    runs = await runtime.list_runs(workflow_id, limit=1000)
    return [r.created_at_ms for r in reversed(runs) if r.trigger == "schedule"]


async def at_a_minute_start() -> None:
    """Sleep until half a second past the next minute, so that a test's sleeps of a
    minute or so see the number of due times it counts on, wherever the clock began."""
    await trio.sleep((MINUTE - now_ms() % MINUTE + 500) / 1000)


def on_the_minute(created: list[int]) -> None:
    """Each run started within 2 s of a distinct minute."""
    assert all(at % MINUTE < 2_000 for at in created), created
    minutes = [at // MINUTE for at in created]
    assert len(set(minutes)) == len(minutes), created


@postgres_only  # its embedded twins: test_schedules.py's restart and downtime tests
async def test_a_schedule_fires_each_due_time_once_across_restarts_and_downtime(
    home: Home, tmp_path, autojump_clock
):
    await at_a_minute_start()
    spec = scheduled("tick", "* * * * *")
    async with home.open(specs=[spec], data_dir=tmp_path) as runtime:
        await trio.sleep(150)  # two minute boundaries
        first = await schedule_runs(runtime, "tick")
        assert len(first) == 2
        on_the_minute(first)
        (info,) = await runtime.schedules("tick")
        due = first[-1] - first[-1] % MINUTE
        assert (info.last_at_ms, info.next_at_ms) == (due, due + MINUTE)
    # Restarted within the same minute: the due time it fired is not fired again.
    async with home.open(specs=[spec], data_dir=tmp_path) as runtime:
        await trio.sleep(1)
        assert await schedule_runs(runtime, "tick") == first
    home.clock.jump(10 * 60)  # type: ignore[union-attr]  # ten minutes down
    async with home.open(specs=[spec], data_dir=tmp_path) as runtime:
        await trio.sleep(5)
        after = await schedule_runs(runtime, "tick")
        # Only the latest missed time fires (at once), never a burst.
        assert after[: len(first)] == first and len(after) == len(first) + 1
        (info,) = await runtime.schedules("tick")
        assert info.last_at_ms is not None and info.last_at_ms % MINUTE == 0
        assert after[-1] - MINUTE < info.last_at_ms <= after[-1]
        assert info.last_at_ms - first[-1] >= 9 * MINUTE


async def test_a_busy_workflow_skips_the_due_time_and_counts_it(home: Home, autojump_clock):
    await at_a_minute_start()
    spec = scheduled("busy", "* * * * *", queue=False)
    async with home.open(specs=[spec]) as runtime:
        await trio.sleep(61)
        assert len(await schedule_runs(runtime, "busy")) == 1  # its job never runs
        await trio.sleep(60)
        assert len(await schedule_runs(runtime, "busy")) == 1
        (info,) = await runtime.schedules("busy")
        assert info.skipped == 1
        assert 'wfg_trigger_skipped_total{trigger="schedule",workflow="busy"} 1.0' in (
            (await runtime.scrape()).decode()
        )


async def test_a_push_delivery_starts_its_runs_once(home: Home, tmp_path, autojump_clock):
    specs = [parse_definition_text(name, text) for name, text in DEFINITIONS.items()]
    async with home.open(specs=specs, data_dir=tmp_path) as runtime:
        delivery = read_delivery("push", payload("push"))
        assert delivery is not None
        started = await runtime.deliver("d-1", delivery)
        assert [(r.workflow_id, r.number) for r in started] == [("on-main", 1)]
        assert await runtime.deliver("d-1", delivery) == []
        run = await runtime.get_run("on-main", 1)
        assert run.trigger == "push"
    async with home.open(specs=specs, data_dir=tmp_path) as runtime:
        assert await runtime.deliver("d-1", delivery) == []  # remembered across a restart
        assert len(await runtime.list_runs("on-main")) == 1


# --- several nodes on one database ------------------------------------------------------


@asynccontextmanager
async def node(home: Home, *, duties: bool = True, **kwargs: Any) -> AsyncIterator[Any]:
    assert home.database_url is not None
    async with open_runtime(
        database_url=home.database_url, api_only=not duties, reap_interval_secs=5.0, **kwargs
    ) as runtime:
        yield runtime


@postgres_only
async def test_a_due_time_two_nodes_fire_at_once_starts_one_run(home: Home, autojump_clock):
    spec = scheduled("tick", "* * * * *")
    async with node(home, duties=False, specs=[spec]) as a, node(home, duties=False) as b:
        key = ScheduleKey("tick", "* * * * *", "UTC")
        due = (a.db_now_ms() // MINUTE + 1) * MINUTE
        outcomes: list[object] = []

        async def fire(runtime: Any) -> None:
            try:
                outcomes.append(
                    await runtime.run_workflow(
                        "tick", {}, trigger="schedule", mark=ScheduleFired(key, due)
                    )
                )
            except AlreadyHandled as exc:
                outcomes.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(fire, a)
            nursery.start_soon(fire, b)
        assert sorted(type(o).__name__ for o in outcomes) == ["AlreadyHandled", "RunAccepted"]
        assert len(await a.list_runs("tick")) == 1
        # An earlier due time is refused too: a mark only moves forward.
        with pytest.raises(AlreadyHandled):
            await b.run_workflow(
                "tick", {}, trigger="schedule", mark=ScheduleFired(key, due - MINUTE)
            )
        (info,) = await b.schedules("tick")
        assert info.last_at_ms == due


@postgres_only
async def test_a_delivery_taken_by_two_nodes_at_once_starts_each_run_once(
    home: Home, autojump_clock
):
    specs = [parse_definition_text(name, text) for name, text in DEFINITIONS.items()]
    async with node(home, duties=False, specs=specs) as a, node(home, duties=False) as b:
        push = read_delivery("push", payload("push"))
        assert push is not None
        started: list[list[Any]] = []

        async def deliver(runtime: Any) -> None:
            started.append(await runtime.deliver("d-7", push))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(deliver, a)
            nursery.start_soon(deliver, b)
        assert sorted(len(s) for s in started) == [0, 1]
        assert [r.number for r in await b.list_runs("on-main")] == [1]
        assert await a.deliver("d-7", push) == []
        # The mark is stored with the run: one already stored is not stored twice.
        with pytest.raises(AlreadyHandled):
            await a.run_workflow(
                "on-main", {}, trigger="push", mark=DeliveryHandled("d-7", "on-main", 0)
            )


NOTIFIED = """\
name: notified
notify:
  - url: http://receiver.test/hook
    on: [success, failure]
jobs:
  a: {run: 'true'}
"""


@postgres_only
async def test_a_run_that_ends_on_one_node_is_notified_by_the_leader(home: Home, autojump_clock):
    received: list[tuple[dict[str, str], bytes]] = []

    def receiver(request: httpx.Request) -> httpx.Response:
        received.append((dict(request.headers), request.content))
        return httpx.Response(500 if len(received) == 1 else 204)

    spec = parse_definition_text("notified", NOTIFIED)
    async with node(home, specs=[spec], webhook_secret="s3cret") as leader:
        # The leader's notifier (started once it leads, a few awaits from now) posts
        # through this transport instead of the network.
        leader._automation.notifier._transport = httpx.MockTransport(receiver)
        async with node(home, duties=False) as other:
            await notified_through(leader, other, received)


async def notified_through(leader: Any, other: Any, received: list) -> None:
    await trio.sleep(2)  # leadership taken, the notifier started
    assert leader.leading and not other.leading
    await other.run_workflow("notified")
    claim = await other.claim("w1", [])
    assert claim is not None
    await other.complete(claim.lease.lease_id, {})
    await trio.sleep(5)  # the first attempt fails; the second, a second later, not
    assert len(received) == 2
    headers, body = received[-1]
    assert headers["x-wfg-event"] == "run"
    assert headers["x-hub-signature-256"].startswith("sha256=")
    assert b'"status":"success"' in body
    (status,) = await other.run_notifications("notified", 1)
    assert (status.state, status.attempts, status.last_status) == ("delivered", 2, 204)


@postgres_only
async def test_a_new_leader_goes_on_with_the_schedules(home: Home, autojump_clock):
    await at_a_minute_start()
    spec = scheduled("tick", "* * * * *")
    async with node(home, specs=[spec]) as first:
        await trio.sleep(61)
        assert first.leading
        fired = await schedule_runs(first, "tick")
        assert len(fired) == 1
    async with node(home) as second:
        await trio.sleep(1)
        assert await schedule_runs(second, "tick") == fired  # not again
        await trio.sleep(60)
        after = await schedule_runs(second, "tick")
        assert after[:1] == fired and len(after) == 2
        on_the_minute(after)


@postgres_only
async def test_a_schedule_of_a_workflow_created_on_another_node_fires(home: Home, autojump_clock):
    await at_a_minute_start()
    text = "name: n\non:\n  schedule:\n    - cron: '* * * * *'\njobs:\n  a: {run: 'true'}\n"
    async with node(home) as leader, node(home, duties=False) as other:
        await trio.sleep(1)
        assert leader.leading
        created = await other.create_workflow(WorkflowCreate(definition=text))
        await trio.sleep(61)
        assert len(await schedule_runs(other, created.id)) == 1
