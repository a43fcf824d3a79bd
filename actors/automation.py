"""What starts runs by themselves and tells the world they ended, on either home.

- `ScheduleClock` fires every schedule at its due time (a trio timer per
  wake-up, so `MockClock` drives it); the run it starts and the schedule's
  new mark are one commit, so a restart never fires a due time twice.
- `DeliveryIntake` starts the runs a webhook delivery matches, once per
  delivery id.
- `Notifier` sends the notification outbox: one task per attempt, a timeout
  on each, exponential backoff between them, re-armed from the store when
  the server starts.

They know a home only through `TriggerRuntime` (a `Runtime` or a
`PgRuntime`) and a `TriggerStore`; the rules they apply are the pure
functions of `schedules`, `webhooks` and `notify`.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import uuid
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

import httpx
import trio

from . import notify
from .clock import now_ms
from .errors import Conflict, Invalid, NotFound
from .metrics import Metrics
from .models import NotificationStatus, RunAccepted, ScheduleInfo
from .notify import Notification
from .rules import Run as RunState
from .schedules import ScheduleKey, ScheduleMark, due_at, next_at, schedule_keys
from .spec import WorkflowSpec
from .trigger_store import (
    DELIVERY_DONE,
    DELIVERY_RETENTION_MS,
    AlreadyHandled,
    DeliveryHandled,
    RunMark,
    ScheduleFired,
    TriggerStore,
)
from .webhooks import Delivery, run_event, starts

log = logging.getLogger("workflow_graph")

# After a due time could not be handled (the store failed), wait this long before trying again.
RETRY_FAILED_FIRE_MS = 5_000
# Notifications sent at once; more wait their turn (a slow receiver holds one slot).
MAX_SENDING = 8
# Ids of notifications finished here that a stale read of the store cannot send again.
FINISHED_REMEMBERED = 10_000
# The refusals that mean "no run for this due time or delivery": skipped, logged, counted.
NOT_STARTED = (Conflict, Invalid, NotFound)


class TriggerRuntime(Protocol):
    """What the triggers need of a home."""

    async def definitions(self) -> list[WorkflowSpec]:
        """Every workflow's current definition, in creation order."""
        ...

    async def run_workflow(
        self,
        workflow_id: str,
        inputs: dict[str, Any] | None = None,
        *,
        trigger: str = "manual",
        event: dict[str, Any] | None = None,
        mark: RunMark | None = None,
    ) -> RunAccepted:
        """Start a run; `mark` is stored in the same commit as the run."""
        ...


def _shown(epoch_ms: int) -> str:
    """An instant as a log line shows it: `2024-01-01T12:02:00Z`."""
    moment = datetime.fromtimestamp(epoch_ms / 1000, UTC)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def _deadline(at_ms: float, now: int) -> float:
    """The trio deadline of epoch ms `at_ms` (a millisecond late, never early)."""
    if at_ms == math.inf:
        return math.inf
    return trio.current_time() + (at_ms - now + 1) / 1000


# --- schedules ---------------------------------------------------------------------------


def schedule_infos(
    spec: WorkflowSpec, marks: dict[ScheduleKey, ScheduleMark], now: int
) -> list[ScheduleInfo]:
    """The workflow's schedules with their next and last due times, from their marks
    (a schedule with none counts from `now`)."""
    found = []
    for key in schedule_keys(spec):
        mark = marks.get(key) or ScheduleMark(seen_ms=now)
        found.append(
            ScheduleInfo(
                cron=key.cron,
                timezone=key.timezone,
                next_at_ms=next_at(key.schedule, mark, now),
                last_at_ms=mark.last_ms,
                skipped=mark.skipped,
            )
        )
    return found


class ScheduleClock:
    """Fires each schedule of each workflow at its due times.

    One task (`run`) fires; `add` tells it of a workflow created while serving.
    A due time that meets a workflow that cannot start a run (busy with no
    queueing, an input with no default) is skipped: logged, and counted in
    the schedule's mark.
    """

    def __init__(
        self,
        runtime: TriggerRuntime,
        store: TriggerStore,
        metrics: Metrics,
        now: Callable[[], int] = now_ms,
    ) -> None:
        self._runtime = runtime
        self._store = store
        self._metrics = metrics
        self._now = now
        self._marks: dict[ScheduleKey, ScheduleMark] = {}
        self._retry_at: dict[ScheduleKey, int] = {}
        self._wake = trio.Event()

    async def load(self, specs: list[WorkflowSpec]) -> None:
        """Before `run`: the stored marks of the definitions' schedules; a schedule seen
        for the first time counts from now, and one no definition has is forgotten."""
        stored = await self._store.schedule_marks()
        wanted = {key: None for spec in specs for key in schedule_keys(spec)}
        now = self._now()
        new = {key: ScheduleMark(seen_ms=now) for key in wanted if key not in stored}
        await self._store.put_schedule_marks(new)
        await self._store.forget_schedules([key for key in stored if key not in wanted])
        self._marks = {key: stored.get(key) or new[key] for key in wanted}

    async def add(self, spec: WorkflowSpec) -> None:
        """A workflow created while serving: its schedules count from now."""
        now = self._now()
        new = {k: ScheduleMark(seen_ms=now) for k in schedule_keys(spec) if k not in self._marks}
        if new:
            await self._store.put_schedule_marks(new)
            self._marks.update(new)
            self._wake.set()

    async def reload(self, specs: list[WorkflowSpec]) -> None:
        """The definitions changed (elsewhere): load their schedules again, and look."""
        await self.load(specs)
        self._wake.set()

    def view(self, spec: WorkflowSpec) -> list[ScheduleInfo]:
        """The workflow's schedules with their next and last due times."""
        return schedule_infos(spec, self._marks, self._now())

    async def run(self) -> None:
        while True:
            now = self._now()
            for key in list(self._marks):
                if self._retry_at.get(key, 0) > now:
                    continue
                due = due_at(key.schedule, self._marks[key], now)
                if due is not None:
                    await self._fire(key, due)
                    now = self._now()
            wakes = [next_at(key.schedule, mark, now) for key, mark in self._marks.items()]
            wakes.extend(at for at in self._retry_at.values() if at > now)
            wake = min(wakes, default=math.inf)
            self._wake = trio.Event()
            with trio.move_on_at(_deadline(wake, now)):
                await self._wake.wait()

    async def _fire(self, key: ScheduleKey, due: int) -> None:
        mark = self._marks[key]
        where = f"schedule '{key.cron}' ({key.timezone}) of workflow {key.workflow_id}"
        # GitHub's schedule event: `github.event.schedule` is the cron line that fired.
        event = {"github": {"event_name": "schedule", "event": {"schedule": key.cron}}}
        try:
            accepted = await self._runtime.run_workflow(
                key.workflow_id, {}, trigger="schedule", event=event, mark=ScheduleFired(key, due)
            )
        except AlreadyHandled:
            log.info("%s: due time %s was fired elsewhere", where, _shown(due))
            self._marks[key] = mark.fired(due)
        except NOT_STARTED as exc:
            log.warning("%s: due time %s skipped: %s", where, _shown(due), exc)
            skipped = mark.skip(due)
            try:
                await self._store.put_schedule_marks({key: skipped})
            except Exception:  # noqa: BLE001 - the due time is tried again, not lost
                log.exception("%s: could not store the skipped due time", where)
                self._retry_at[key] = self._now() + RETRY_FAILED_FIRE_MS
                return
            self._marks[key] = skipped
            self._metrics.trigger_skipped(key.workflow_id, "schedule")
        except Exception:  # noqa: BLE001 - the store failed: the due time is tried again
            log.exception("%s: could not start a run", where)
            self._retry_at[key] = self._now() + RETRY_FAILED_FIRE_MS
            return
        else:
            log.info(
                "%s: due time %s: run %d %s",
                where,
                _shown(due),
                accepted.number,
                "started" if accepted.status.value == "running" else "queued",
            )
            self._marks[key] = mark.fired(due)
            self._metrics.run_triggered(key.workflow_id, "schedule")
        self._retry_at.pop(key, None)


# --- webhook deliveries --------------------------------------------------------------------


class DeliveryIntake:
    """Starts the runs a delivery matches, once per delivery id.

    A delivery is remembered per workflow in the commit of the run it started
    (or, when the workflow could not start one, right after), and as handled
    in full before the answer goes out. A replay of a handled delivery starts
    nothing; one of a delivery cut short by a crash starts only what was not
    started. Deliveries are handled one at a time, so a replay that arrives
    while the first is being handled waits and then starts nothing.
    """

    def __init__(
        self,
        runtime: TriggerRuntime,
        store: TriggerStore,
        metrics: Metrics,
        now: Callable[[], int] = now_ms,
    ) -> None:
        self._runtime = runtime
        self._store = store
        self._metrics = metrics
        self._now = now
        self._lock = trio.Lock()

    async def deliver(self, delivery_id: str, delivery: Delivery) -> list[RunAccepted]:
        async with self._lock:
            handled = await self._store.delivery(delivery_id)
            if handled is not None and DELIVERY_DONE in handled:
                log.info("delivery %s was handled before: nothing started", delivery_id)
                return []
            now = self._now()
            started: list[RunAccepted] = []
            unstarted: list[DeliveryHandled] = []
            for spec in await self._runtime.definitions():
                if spec.id in (handled or ()) or not starts(spec.triggers, delivery):
                    continue
                try:
                    started.append(
                        await self._runtime.run_workflow(
                            spec.id,
                            {},
                            trigger=delivery.trigger,
                            event=run_event(delivery),
                            mark=DeliveryHandled(delivery_id, spec.id, now),
                        )
                    )
                    self._metrics.run_triggered(spec.id, delivery.trigger)
                except AlreadyHandled:
                    pass  # another node handled this delivery for this workflow
                except NOT_STARTED as exc:
                    log.warning(
                        "delivery %s (%s %s): workflow %s not started: %s",
                        delivery_id,
                        delivery.trigger,
                        delivery.ref,
                        spec.id,
                        exc,
                    )
                    unstarted.append(DeliveryHandled(delivery_id, spec.id, now))
                    self._metrics.trigger_skipped(spec.id, delivery.trigger)
            unstarted.append(DeliveryHandled(delivery_id, DELIVERY_DONE, now))
            await self._store.put_deliveries(unstarted, now - DELIVERY_RETENTION_MS)
            return started


# --- notifications -----------------------------------------------------------------------


def notification_status(n: Notification) -> NotificationStatus:
    return NotificationStatus(
        url=n.url,
        state=n.state,
        attempts=n.attempts,
        last_status=n.last_status,
        last_error=n.last_error,
        last_attempt_at_ms=n.last_attempt_ms,
        next_attempt_at_ms=n.next_ms if n.state == "pending" else None,
    )


class Notifier:
    """Sends each pending notification when due, each attempt in a task of its own.

    An attempt's outcome is stored before the next is planned; one cut short
    by a shutdown is made again after the restart (a receiver may see a
    notification twice, never zero times; `X-Wfg-Delivery` names it).
    """

    def __init__(
        self,
        store: TriggerStore,
        secret: str | None = None,
        *,
        metrics: Metrics | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        now: Callable[[], int] = now_ms,
    ) -> None:
        self._store = store
        self._secret = secret
        self._metrics = metrics or Metrics()
        self._transport = transport
        self._now = now
        self._due: list[tuple[int, int, Notification]] = []
        self._seq = itertools.count()
        self._wake = trio.Event()
        self._held: set[str] = set()  # ids waiting in `_due` or being attempted
        self._finished: OrderedDict[str, None] = OrderedDict()  # recently delivered/given up

    def enqueue(self, notification: Notification) -> None:
        """Send `notification` when it is due (its run's end is being committed). One
        already held, or finished here lately (a stale read of the store), is not sent
        twice."""
        if notification.id in self._held or notification.id in self._finished:
            return
        self._held.add(notification.id)
        heapq.heappush(self._due, (notification.next_ms, next(self._seq), notification))
        self._wake.set()

    async def run(self) -> None:
        # Attempts an earlier run of this task had under way (cut short: leadership
        # lost) are read from the store again; what waits in the queue stays.
        self._held = {n.id for _, _, n in self._due}
        for pending in await self._store.pending_notifications():
            self.enqueue(pending)
        limiter = trio.CapacityLimiter(MAX_SENDING)
        timeout = httpx.Timeout(notify.ATTEMPT_TIMEOUT_SECS)
        async with (
            httpx.AsyncClient(timeout=timeout, transport=self._transport) as client,
            trio.open_nursery() as nursery,
        ):
            while True:
                now = self._now()
                while self._due and self._due[0][0] <= now:
                    _, _, due = heapq.heappop(self._due)
                    nursery.start_soon(self._attempt, client, limiter, due)
                wake = self._due[0][0] if self._due else math.inf
                self._wake = trio.Event()
                with trio.move_on_at(_deadline(wake, now)):
                    await self._wake.wait()

    async def _attempt(
        self, client: httpx.AsyncClient, limiter: trio.CapacityLimiter, n: Notification
    ) -> None:
        async with limiter:
            # The run's end (and this notification) is committed before anyone hears of it.
            await self._store.settled()
            status: int | None = None
            error: str | None = None
            try:
                async with client.stream(
                    "POST", n.url, content=n.body, headers=notify.headers(n, self._secret)
                ) as response:
                    status = response.status_code  # the answer's body is not read
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            after = notify.after_attempt(n, self._now(), status, error)
        where = f"notification of run {n.number} of workflow {n.workflow_id} to {n.url}"
        self._metrics.notification_attempted("retry" if after.state == "pending" else after.state)
        if after.state == "delivered":
            log.info("%s delivered (HTTP %s)", where, status)
        elif after.state == "failed":
            log.warning("%s given up after %d attempts: %s", where, after.attempts, error)
        else:
            log.info("%s: attempt %d failed: %s", where, after.attempts, after.last_error)
        try:
            await self._store.put_notification(after)
        except Exception:  # noqa: BLE001 - the stored state stays pending: retried
            log.exception("%s: could not store the attempt", where)
        self._held.discard(n.id)
        if after.state == "pending":
            self.enqueue(after)
        else:
            self._finished[n.id] = None
            while len(self._finished) > FINISHED_REMEMBERED:
                self._finished.popitem(last=False)


# --- the three together ----------------------------------------------------------------------


class Automation:
    """A home's schedule clock, delivery intake and notifier over one store.

    `start` loads the schedules' marks and the pending notifications and starts
    the two tasks; a home with several nodes starts them on its leader only.
    """

    def __init__(
        self,
        runtime: TriggerRuntime,
        store: TriggerStore,
        metrics: Metrics,
        webhook_secret: str | None = None,
        now: Callable[[], int] = now_ms,
    ) -> None:
        self.store = store
        self.clock = ScheduleClock(runtime, store, metrics, now)
        self.intake = DeliveryIntake(runtime, store, metrics, now)
        self.notifier = Notifier(store, webhook_secret, metrics=metrics, now=now)

    async def start(self, nursery: trio.Nursery, specs: list[WorkflowSpec]) -> None:
        await self.clock.load(specs)
        nursery.start_soon(self.clock.run)
        nursery.start_soon(self.notifier.run)

    def due_notifications(self, run: RunState, spec: WorkflowSpec) -> list[Notification]:
        """The notifications a run that just ended owes (`spec`: the definition it ran with)."""
        return notify.notifications_for(spec.notify, run, now_ms(), lambda: str(uuid.uuid4()))

    async def run_notifications(self, workflow_id: str, number: int) -> list[NotificationStatus]:
        found = await self.store.run_notifications(workflow_id, number)
        return [notification_status(n) for n in found]
