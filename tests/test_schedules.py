"""Schedules: what is due when (a table), and a real runtime firing them under MockClock.

The wall clock is pinned with `set_now_ms` and driven by trio's `MockClock`, so
minutes, days and daylight-saving changes pass in milliseconds. Restarts use a
real store in a temporary directory.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import trio
import trio.testing

from actors.automation import ScheduleClock
from actors.clock import now_ms, set_now_ms
from actors.definitions import parse_definition_text
from actors.journal import StoreFailed
from actors.metrics import Metrics
from actors.models import RunAccepted, RunStatus, WorkflowCreate
from actors.runtime import Runtime, open_runtime
from actors.schedules import ScheduleMark, due_at, next_at
from actors.spec import WorkflowSpec
from actors.trigger_store import AlreadyHandled, MemoryTriggerStore
from actors.triggers import Schedule
from web.app import create_app

UTC = "UTC"
BERLIN = "Europe/Berlin"


def at(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0,
       zone: str = UTC) -> int:  # fmt: skip
    """Epoch ms of a wall-clock time in `zone` (the first of a repeated time)."""
    moment = datetime(year, month, day, hour, minute, second, tzinfo=ZoneInfo(zone))
    return int(moment.timestamp() * 1000)


def jan1(hour: int, minute: int = 0, second: int = 0) -> int:
    return at(2024, 1, 1, hour, minute, second)


def berlin(month: int, day: int, hour: int, minute: int = 0) -> int:
    return at(2024, month, day, hour, minute, zone=BERLIN)


# --- the rule, as a table ----------------------------------------------------------------

EVERY_MINUTE = Schedule("* * * * *")
MONDAYS_9 = Schedule("0 9 * * MON")
WEEKDAYS_3_BERLIN = Schedule("0 3 * * 1-5", BERLIN)
BERLIN_0230 = Schedule("30 2 * * *", BERLIN)
BERLIN_HALF_HOURS = Schedule("*/30 * * * *", BERLIN)


@pytest.mark.parametrize(
    ("schedule", "mark", "now", "due"),
    [
        # nothing before the schedule was first seen fires
        (EVERY_MINUTE, ScheduleMark(jan1(12, 0, 30)), jan1(12, 0, 59), None),
        (EVERY_MINUTE, ScheduleMark(jan1(12, 0, 30)), jan1(12, 1), jan1(12, 1)),
        # a due time handled never fires again
        (EVERY_MINUTE, ScheduleMark(0, jan1(12, 1)), jan1(12, 1, 59), None),
        # after downtime only the latest missed time fires
        (EVERY_MINUTE, ScheduleMark(0, jan1(12, 1)), jan1(17, 1, 10), jan1(17, 1)),
        (MONDAYS_9, ScheduleMark(0, jan1(9)), at(2024, 1, 5, 10), None),
        (MONDAYS_9, ScheduleMark(0, jan1(9)), at(2024, 1, 22, 8), at(2024, 1, 15, 9)),
        # 2024-03-31 02:30 does not exist in Berlin: due at 03:00 (CEST)
        (BERLIN_0230, ScheduleMark(0, berlin(3, 30, 2, 30)), at(2024, 3, 31, 0, 59), None),
        (BERLIN_0230, ScheduleMark(0, berlin(3, 30, 2, 30)), berlin(3, 31, 3), berlin(3, 31, 3)),
        # 2024-10-27 02:30 happens twice (00:30 and 01:30 UTC): the second is not due
        (BERLIN_0230, ScheduleMark(0, at(2024, 10, 27, 0, 30)), at(2024, 10, 27, 1, 45), None),
        (BERLIN_HALF_HOURS, ScheduleMark(0, berlin(10, 27, 2, 30)), at(2024, 10, 27, 1, 45), None),
    ],
)  # fmt: skip
def test_what_is_due(schedule: Schedule, mark: ScheduleMark, now: int, due: int | None) -> None:
    assert due_at(schedule, mark, now) == due


@pytest.mark.parametrize(
    ("schedule", "mark", "now", "expected"),
    [
        (EVERY_MINUTE, ScheduleMark(0), at(2024, 1, 1, 12, 0, 30), at(2024, 1, 1, 12, 1)),
        (EVERY_MINUTE, ScheduleMark(0), at(2024, 1, 1, 12, 1), at(2024, 1, 1, 12, 2)),
        (Schedule("*/15 * * * *"), ScheduleMark(0), at(2024, 1, 1, 12, 7), at(2024, 1, 1, 12, 15)),
        # Sunday 2023-12-31: the next Monday 09:00
        (MONDAYS_9, ScheduleMark(0), at(2023, 12, 31), at(2024, 1, 1, 9)),
        (MONDAYS_9, ScheduleMark(0), at(2024, 1, 1, 9), at(2024, 1, 8, 9)),
        # Friday 03:00 Berlin, then Monday (in winter Berlin is UTC+1)
        (WEEKDAYS_3_BERLIN, ScheduleMark(0), at(2024, 1, 5, 1), at(2024, 1, 5, 2)),
        (WEEKDAYS_3_BERLIN, ScheduleMark(0), at(2024, 1, 5, 2), at(2024, 1, 8, 2)),
        (Schedule("0 0 1 JAN,JUL *"), ScheduleMark(0), at(2024, 2, 1), at(2024, 7, 1)),
        # the cursor wins over a `now` before it
        (EVERY_MINUTE, ScheduleMark(0, jan1(12, 5)), jan1(12), jan1(12, 6)),
        (BERLIN_0230, ScheduleMark(0), at(2024, 3, 30, 12), at(2024, 3, 31, 1)),
        (BERLIN_0230, ScheduleMark(0), at(2024, 10, 27, 0, 30), at(2024, 10, 28, 1, 30)),
        (BERLIN_HALF_HOURS, ScheduleMark(0), at(2024, 10, 27, 0, 30), at(2024, 10, 27, 2)),
        # 02:00 and 02:30 do not exist on 2024-03-31: both fire once, at 03:00 CEST
        (BERLIN_HALF_HOURS, ScheduleMark(0), at(2024, 3, 31, 0, 30), at(2024, 3, 31, 1)),
        (BERLIN_HALF_HOURS, ScheduleMark(0), at(2024, 3, 31, 1), at(2024, 3, 31, 1, 30)),
    ],
)  # fmt: skip
def test_when_it_fires_next(
    schedule: Schedule, mark: ScheduleMark, now: int, expected: int
) -> None:
    assert next_at(schedule, mark, now) == expected


# --- a runtime firing them ---------------------------------------------------------------------


@pytest.fixture
def autojump_clock():
    return trio.testing.MockClock(autojump_threshold=0)


@pytest.fixture(autouse=True)
def quiet_waiting_watch(monkeypatch):
    """The waiting watch wakes every 5 s; days of MockClock time would pass in 5 s steps."""

    async def sleep_forever(self, interval_secs: float = 0) -> None:
        await trio.sleep_forever()

    monkeypatch.setattr(Runtime, "watch_waiting", sleep_forever)


@pytest.fixture
def store_clock():
    """Jumps after 0.25 s of real idleness: a commit in the journal's thread is not idle."""
    return trio.testing.MockClock(autojump_threshold=0.25)


def scheduled(
    workflow_id: str, *lines: str, zone: str | None = None, queue: bool = True
) -> WorkflowSpec:
    entries = "".join(
        f"    - {{cron: '{line}'{', timezone: ' + zone if zone else ''}}}\n" for line in lines
    )
    # A concurrency group queues a run behind a busy one, so each due time makes a run.
    group = f"concurrency: {workflow_id}\n" if queue else ""
    text = f"name: {workflow_id}\non:\n  schedule:\n{entries}{group}jobs:\n  a: {{run: 'true'}}\n"
    return parse_definition_text(workflow_id, text)


async def created(runtime: Runtime, workflow_id: str) -> list[tuple[str, int]]:
    """(trigger, created_at_ms) of every run, oldest first."""
    runs = await runtime.list_runs(workflow_id, limit=1000)
    return [(r.trigger, r.created_at_ms) for r in reversed(runs)]


async def sleep_until(epoch_ms: int) -> None:
    await trio.sleep(max(0, epoch_ms - now_ms()) / 1000)


def assert_fired_at(runs: list[tuple[str, int]], due_times: list[int]) -> None:
    assert [trigger for trigger, _ in runs] == ["schedule"] * len(due_times), runs
    for (_, when), due in zip(runs, due_times, strict=True):
        assert 0 <= when - due < 2000, (when, due)


async def test_every_minute_fires_on_time(autojump_clock):
    set_now_ms(at(2024, 1, 1, 12, 0, 30))
    async with open_runtime(specs=[scheduled("tick", "* * * * *")]) as runtime:
        await sleep_until(at(2024, 1, 1, 12, 3, 30))
        assert_fired_at(
            await created(runtime, "tick"),
            [at(2024, 1, 1, 12, 1), at(2024, 1, 1, 12, 2), at(2024, 1, 1, 12, 3)],
        )
        [info] = await runtime.schedules("tick")
        assert (info.last_at_ms, info.next_at_ms) == (at(2024, 1, 1, 12, 3), at(2024, 1, 1, 12, 4))
        run = await runtime.get_run("tick", 1)
        assert run.inputs == {} and run.trigger == "schedule"


async def test_day_of_week_fires_on_that_day_only(autojump_clock):
    set_now_ms(at(2023, 12, 30))  # a Saturday
    async with open_runtime(specs=[scheduled("weekly", "0 9 * * MON")]) as runtime:
        await sleep_until(at(2024, 1, 14))
        assert_fired_at(await created(runtime, "weekly"), [at(2024, 1, 1, 9), at(2024, 1, 8, 9)])


async def test_a_time_zone_across_both_daylight_saving_changes(autojump_clock):
    spec = scheduled("nightly", "30 2 * * *", "*/30 2 * * *", zone=BERLIN)
    set_now_ms(at(2024, 3, 30, 12))
    async with open_runtime(specs=[spec]) as runtime:
        # Spring: 02:00-02:59 does not exist on 03-31; both lines fire at 03:00 CEST.
        await sleep_until(at(2024, 4, 1, 12))
        spring = [
            at(2024, 3, 31, 3, zone=BERLIN),
            at(2024, 3, 31, 3, zone=BERLIN),
            at(2024, 4, 1, 2, zone=BERLIN),
            at(2024, 4, 1, 2, 30, zone=BERLIN),
            at(2024, 4, 1, 2, 30, zone=BERLIN),
        ]
        assert_fired_at(await created(runtime, "nightly"), spring)
    set_now_ms(at(2024, 10, 26, 12))
    async with open_runtime(specs=[spec]) as runtime:
        # Autumn: 02:00-02:59 happens twice on 10-27; each time fires once, the first.
        await sleep_until(at(2024, 10, 27, 12))
        autumn = [
            at(2024, 10, 27, 0),  # 02:00 CEST
            at(2024, 10, 27, 0, 30),  # 02:30 CEST, both lines
            at(2024, 10, 27, 0, 30),
        ]
        assert_fired_at(await created(runtime, "nightly"), autumn)


async def test_a_due_time_that_meets_a_busy_workflow_is_skipped_and_counted(autojump_clock, caplog):
    set_now_ms(at(2024, 1, 1, 12, 0, 30))
    async with open_runtime(specs=[scheduled("busy", "* * * * *", queue=False)]) as runtime:
        await sleep_until(at(2024, 1, 1, 12, 2, 30))
        # The first run never finishes (no worker): 12:02 meets it and is skipped.
        assert_fired_at(await created(runtime, "busy"), [at(2024, 1, 1, 12, 1)])
        [info] = await runtime.schedules("busy")
        assert (info.skipped, info.last_at_ms) == (1, at(2024, 1, 1, 12, 2))
        assert (
            "due time 2024-01-01T12:02:00Z skipped: workflow 'busy' already has an active run"
            in caplog.text
        )
        await runtime.cancel_workflow("busy")
        await sleep_until(at(2024, 1, 1, 12, 3, 30))
        assert len(await created(runtime, "busy")) == 2  # free again: 12:03 fired
        metrics = runtime._system.metrics.exposition().decode()
        assert 'wfg_trigger_skipped_total{trigger="schedule",workflow="busy"} 1.0' in metrics
        assert 'wfg_triggered_runs_total{trigger="schedule",workflow="busy"} 2.0' in metrics


async def test_a_required_input_without_default_skips_the_due_time(autojump_clock, caplog):
    text = (
        "name: N\non:\n  schedule: [{cron: '* * * * *'}]\n  workflow_dispatch:\n"
        "    inputs: {target: {required: true}}\njobs:\n  a: {run: 'true'}\n"
    )
    set_now_ms(at(2024, 1, 1, 12, 0, 30))
    async with open_runtime(specs=[parse_definition_text("n", text)]) as runtime:
        await sleep_until(at(2024, 1, 1, 12, 1, 30))
        assert await created(runtime, "n") == []
        assert "input 'target' is required" in caplog.text
        assert (await runtime.schedules("n"))[0].skipped == 1


async def test_inputs_get_their_defaults(autojump_clock):
    text = (
        "name: N\non:\n  schedule: [{cron: '* * * * *'}]\n  workflow_dispatch:\n"
        "    inputs: {target: {default: prod}, dry: {type: boolean}}\n"
        "jobs:\n  a: {run: 'deploy ${{ inputs.target }}'}\n"
    )
    set_now_ms(at(2024, 1, 1, 12, 0, 30))
    async with open_runtime(specs=[parse_definition_text("n", text)]) as runtime:
        await sleep_until(at(2024, 1, 1, 12, 1, 30))
        run = await runtime.get_run("n", 1)
        assert run.inputs == {"target": "prod", "dry": False}
        claim = await runtime.claim("w1", [])
        assert claim is not None
        assert "export GITHUB_EVENT_NAME=schedule\n" in claim.job.command
        assert claim.job.command.endswith("deploy prod")
        assert claim.job.event == {"schedule": "* * * * *"}


async def test_a_workflow_created_while_serving_fires(autojump_clock):
    set_now_ms(at(2024, 1, 1, 12, 0, 30))
    async with open_runtime() as runtime:
        body = WorkflowCreate(
            definition="name: API\non: {schedule: [{cron: '*/5 * * * *'}]}\njobs: {a: {run: x}}\n"
        )
        workflow = await runtime.create_workflow(body)
        await sleep_until(at(2024, 1, 1, 12, 5, 30))
        assert_fired_at(await created(runtime, workflow.id), [at(2024, 1, 1, 12, 5)])


@asynccontextmanager
async def stored(tmp_path: Path, *specs: WorkflowSpec) -> AsyncIterator[Runtime]:
    async with open_runtime(specs=specs, data_dir=tmp_path / "data") as runtime:
        yield runtime


async def test_a_restart_never_fires_a_due_time_twice(tmp_path, store_clock):
    spec = scheduled("tick", "* * * * *")
    set_now_ms(at(2024, 1, 1, 12, 0, 30))
    async with stored(tmp_path, spec) as runtime:
        await sleep_until(at(2024, 1, 1, 12, 1, 10))
        assert_fired_at(await created(runtime, "tick"), [at(2024, 1, 1, 12, 1)])
    async with stored(tmp_path, spec) as runtime:  # at once: 12:01 is still the latest
        await sleep_until(at(2024, 1, 1, 12, 1, 50))
        assert len(await created(runtime, "tick")) == 1
        await sleep_until(at(2024, 1, 1, 12, 2, 10))
        assert_fired_at(
            await created(runtime, "tick"), [at(2024, 1, 1, 12, 1), at(2024, 1, 1, 12, 2)]
        )


async def test_after_downtime_only_the_latest_missed_time_fires(tmp_path, store_clock):
    spec = scheduled("tick", "* * * * *")
    set_now_ms(at(2024, 1, 1, 12, 0, 30))
    async with stored(tmp_path, spec) as runtime:
        await sleep_until(at(2024, 1, 1, 12, 1, 10))
    await sleep_until(at(2024, 1, 1, 17, 0, 30))  # down for five hours
    async with stored(tmp_path, spec) as runtime:
        restarted = now_ms()
        await sleep_until(at(2024, 1, 1, 17, 0, 50))
        runs = await created(runtime, "tick")
        assert [trigger for trigger, _ in runs] == ["schedule", "schedule"]
        assert 0 <= runs[1][1] - restarted < 2000  # 17:00 fired at the restart
        [info] = await runtime.schedules("tick")
        assert (info.last_at_ms, info.skipped) == (at(2024, 1, 1, 17), 0)


async def test_a_changed_schedule_applies_at_the_next_start(tmp_path, store_clock):
    set_now_ms(at(2024, 1, 1, 12, 0, 30))
    async with stored(tmp_path, scheduled("job", "0 * * * *")) as runtime:
        await sleep_until(at(2024, 1, 1, 12, 30))
    async with stored(tmp_path, scheduled("job", "*/20 * * * *")) as runtime:
        # The new line counts from now: its 12:20 is not missed, 12:40 fires.
        await sleep_until(at(2024, 1, 1, 12, 41))
        assert_fired_at(await created(runtime, "job"), [at(2024, 1, 1, 12, 40)])
        [info] = await runtime.schedules("job")
        assert info.cron == "*/20 * * * *"
        marks = await runtime._system.trigger_store.schedule_marks()
        assert [key.cron for key in marks] == ["*/20 * * * *"]  # the old line is forgotten


async def test_the_schedules_route(autojump_clock):
    set_now_ms(at(2024, 1, 1, 12, 0, 30))
    spec = scheduled("tick", "*/15 * * * *", "0 3 * * 1-5", zone=BERLIN)
    async with open_runtime(specs=[spec, scheduled("plain", "0 0 1 1 *")]) as runtime:
        async with create_app(runtime).test_app() as app:
            client = app.test_client()
            resp = await client.get("/api/workflows/tick/schedules")
            assert resp.status_code == 200
            assert await resp.get_json() == [
                {
                    "cron": "*/15 * * * *",
                    "timezone": BERLIN,
                    "next_at_ms": at(2024, 1, 1, 12, 15),
                    "last_at_ms": None,
                    "skipped": 0,
                },
                {
                    "cron": "0 3 * * 1-5",
                    "timezone": BERLIN,
                    "next_at_ms": at(2024, 1, 2, 2),
                    "last_at_ms": None,
                    "skipped": 0,
                },
            ]
            resp = await client.get("/api/workflows/nope/schedules")
            assert resp.status_code == 404
            assert "workflow 'nope' not found" in (await resp.get_json())["error"]


class ElsewhereRuntime:
    """A home where another node always stored the mark first."""

    def __init__(self, specs: list[WorkflowSpec]) -> None:
        self.specs = specs
        self.asked = 0

    async def definitions(self) -> list[WorkflowSpec]:
        return self.specs

    async def run_workflow(self, workflow_id, inputs=None, *, trigger, event=None, mark=None):
        self.asked += 1
        raise AlreadyHandled("stored by another node")


async def test_a_due_time_fired_elsewhere_is_neither_fired_nor_skipped_here(autojump_clock):
    set_now_ms(at(2024, 1, 1, 12, 0, 30))
    runtime = ElsewhereRuntime([scheduled("tick", "* * * * *")])
    store, metrics = MemoryTriggerStore(), Metrics()
    clock = ScheduleClock(runtime, store, metrics)
    await clock.load(await runtime.definitions())
    async with trio.open_nursery() as nursery:
        nursery.start_soon(clock.run)
        await sleep_until(at(2024, 1, 1, 12, 2, 30))
        nursery.cancel_scope.cancel()
    assert runtime.asked == 2  # once per due time, never again for the same one
    [info] = clock.view(runtime.specs[0])
    assert (info.last_at_ms, info.skipped) == (at(2024, 1, 1, 12, 2), 0)
    assert "wfg_trigger_skipped_total{" not in metrics.exposition().decode()


class FlakyRuntime(ElsewhereRuntime):
    """A home whose store fails the first time a run is asked for."""

    async def run_workflow(self, workflow_id, inputs=None, *, trigger, event=None, mark=None):
        self.asked += 1
        if self.asked == 1:
            raise StoreFailed("the change could not be stored: disk I/O error")
        self.fired = (now_ms(), mark)
        return RunAccepted(workflow_id=workflow_id, number=1, status=RunStatus.running)


async def test_a_due_time_the_store_failed_is_tried_again_soon(autojump_clock, caplog):
    set_now_ms(at(2024, 1, 1, 12, 0, 30))
    runtime = FlakyRuntime([scheduled("hourly", "0 * * * *")])
    clock = ScheduleClock(runtime, MemoryTriggerStore(), Metrics())
    await clock.load(await runtime.definitions())
    async with trio.open_nursery() as nursery:
        nursery.start_soon(clock.run)
        await sleep_until(at(2024, 1, 1, 13, 0, 30))
        nursery.cancel_scope.cancel()
    assert "could not start a run" in caplog.text
    when, mark = runtime.fired
    assert mark.due_ms == at(2024, 1, 1, 13) and 0 < when - at(2024, 1, 1, 13) <= 5_100
