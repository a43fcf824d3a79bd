"""Prometheus metrics of one runtime: counters and histograms the homes feed through
hooks, gauges read from the runtime's state when `/metrics` is scraped.

Each `Metrics` has its own registry (never the process-global one), so several
runtimes in one process, or one per test, never share a series. Both homes of
the engine call the same hooks at the moments that matter (`job_enqueued`,
`job_claimed`, `job_completed`, ...); nothing here knows which home it serves.
The gauges cost nothing between scrapes: at a scrape the home reads a
`QueueState` (the embedded home from its actors, PostgreSQL from the database)
and `exposition` renders it with the rest.

Label values are bounded. `workflow` is the workflow id for the first
`max_workflows` (default 100) distinct ids this process has counted, then
`(other)`; a required-label set (`labels`, sorted and comma-joined, `(none)`
when empty) likewise after `max_label_sets`; HTTP routes are URL templates,
never raw paths; no lease, run or worker id is ever a label value.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric

from .waiting import covers

if TYPE_CHECKING:
    from .rules import Effects
    from .rules import Run as RunState

OTHER = "(other)"
NO_LABELS = "(none)"
DEFAULT_MAX_WORKFLOWS = 100
DEFAULT_MAX_LABEL_SETS = 100
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED_ROUTE = "(unmatched)"

# Seconds. A queue wait runs from milliseconds (a parked worker) to hours (no worker).
QUEUE_WAIT_BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 600, 1800, 3600)
JOB_DURATION_BUCKETS = (0.1, 0.5, 1, 5, 10, 30, 60, 300, 600, 1800, 3600, 7200)
DISPATCH_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class BoundedLabel:
    """A label's values: the first `limit` distinct ones as they are, then `(other)`."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._known: dict[str, str] = {}

    def __call__(self, value: str) -> str:
        known = self._known.get(value)
        if known is not None:
            return known
        if len(self._known) < self.limit:
            self._known[value] = value
            return value
        return OTHER


def label_set_text(labels: Iterable[str]) -> str:
    """A required-label set as one label value: sorted, comma-joined."""
    return ",".join(sorted(labels)) or NO_LABELS


@dataclass
class QueueState:
    """What the gauges show, read by the home when `/metrics` is scraped."""

    # Ready (claimable) jobs per required-label set: (how many, the oldest one's
    # claimable-since epoch ms).
    ready: Mapping[frozenset[str], tuple[int, int]] = field(default_factory=dict)
    delayed: int = 0  # jobs waiting out a retry's backoff
    active_leases: int = 0
    parked_claims: int = 0
    workers: Mapping[str, int] = field(default_factory=dict)  # by status
    # The label sets of the workers not `offline`, for the jobs no worker can take.
    live_label_sets: Collection[frozenset[str]] = ()
    now_ms: int = 0


class Metrics:
    """One runtime's metrics. The hook methods are the interface of both homes."""

    def __init__(
        self,
        *,
        max_workflows: int = DEFAULT_MAX_WORKFLOWS,
        max_label_sets: int = DEFAULT_MAX_LABEL_SETS,
    ) -> None:
        self.registry = CollectorRegistry()
        self.workflow = BoundedLabel(max_workflows)
        self.label_set = BoundedLabel(max_label_sets)
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}
        self._http_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        r = self.registry
        wf = ["workflow"]
        self._enqueued = Counter(
            "wfg_jobs_enqueued", "Jobs put in the queue (first tries and retries).", wf, registry=r
        )
        self._claimed = Counter("wfg_jobs_claimed", "Jobs claimed by a worker.", wf, registry=r)
        self._completed = Counter(
            "wfg_jobs_completed", "Attempts reported successful.", wf, registry=r
        )
        self._failed = Counter(
            "wfg_jobs_failed",
            "Attempts reported failed, by the worker's retryable flag.",
            ["workflow", "retryable"],
            registry=r,
        )
        self._retried = Counter(
            "wfg_jobs_retried",
            "Failed or expired attempts queued again for a retry.",
            wf,
            registry=r,
        )
        self._expired = Counter(
            "wfg_lease_expiries", "Leases that expired without a heartbeat.", wf, registry=r
        )
        self._runs = Counter(
            "wfg_runs_finished",
            "Runs that ended, by how they ended.",
            ["workflow", "status"],
            registry=r,
        )
        trigger = ["workflow", "trigger"]
        self._triggered = Counter(
            "wfg_triggered_runs",
            "Runs started by a trigger (schedule, push, pull_request, webhook).",
            trigger,
            registry=r,
        )
        self._trigger_skipped = Counter(
            "wfg_trigger_skipped",
            "Due times and deliveries whose workflow could not start a run (busy, bad input).",
            trigger,
            registry=r,
        )
        self._notifications = Counter(
            "wfg_notification_attempts",
            "Attempts to send a run's notification, by outcome (delivered, retry, failed).",
            ["outcome"],
            registry=r,
        )
        self._queue_wait = Histogram(
            "wfg_job_queue_wait_seconds",
            "From the moment a job could be claimed (queued, or its backoff over) to its claim.",
            buckets=QUEUE_WAIT_BUCKETS,
            registry=r,
        )
        self._duration = Histogram(
            "wfg_job_duration_seconds",
            "From a job's claim to its worker's report (complete or fail).",
            buckets=JOB_DURATION_BUCKETS,
            registry=r,
        )
        self._dispatch = Histogram(
            "wfg_dispatch_latency_seconds",
            "From a job's enqueue to its lease, for a parked claim the job woke.",
            buckets=DISPATCH_BUCKETS,
            registry=r,
        )
        self._http = Counter(
            "wfg_http_requests",
            "HTTP requests answered, by route template, method and status.",
            ["route", "method", "status"],
            registry=r,
        )
        self._http_latency = Histogram(
            "wfg_http_request_duration_seconds",
            "From a request's arrival to its answer's headers, by route template and method.",
            ["route", "method"],
            buckets=HTTP_BUCKETS,
            registry=r,
        )
        self.sse_streams = Gauge(
            "wfg_sse_streams_open", "Log streams (Server-Sent Events) open now.", registry=r
        )
        self._state = _StateCollector(self)
        r.register(self._state)

    def _child(self, metric: Any, *values: str) -> Any:
        key = (metric, values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    # --- hooks: the moments both homes report -----------------------------------

    def job_enqueued(self, workflow_id: str, count: int = 1) -> None:
        self._child(self._enqueued, self.workflow(workflow_id)).inc(count)

    def job_claimed(self, workflow_id: str, queue_wait_secs: float) -> None:
        self._child(self._claimed, self.workflow(workflow_id)).inc()
        self._queue_wait.observe(max(0.0, queue_wait_secs))

    def job_completed(self, workflow_id: str, duration_secs: float | None) -> None:
        self._child(self._completed, self.workflow(workflow_id)).inc()
        if duration_secs is not None:
            self._duration.observe(max(0.0, duration_secs))

    def job_failed(self, workflow_id: str, retryable: bool, duration_secs: float | None) -> None:
        flag = "true" if retryable else "false"
        self._child(self._failed, self.workflow(workflow_id), flag).inc()
        if duration_secs is not None:
            self._duration.observe(max(0.0, duration_secs))

    def job_retried(self, workflow_id: str, count: int = 1) -> None:
        self._child(self._retried, self.workflow(workflow_id)).inc(count)

    def lease_expired(self, workflow_id: str) -> None:
        self._child(self._expired, self.workflow(workflow_id)).inc()

    def run_finished(self, workflow_id: str, status: str) -> None:
        self._child(self._runs, self.workflow(workflow_id), str(status)).inc()

    def run_triggered(self, workflow_id: str, trigger: str) -> None:
        self._child(self._triggered, self.workflow(workflow_id), trigger).inc()

    def trigger_skipped(self, workflow_id: str, trigger: str) -> None:
        self._child(self._trigger_skipped, self.workflow(workflow_id), trigger).inc()

    def notification_attempted(self, outcome: str) -> None:
        self._child(self._notifications, outcome).inc()

    def claim_dispatched(self, latency_secs: float) -> None:
        self._dispatch.observe(max(0.0, latency_secs))

    def effects_applied(self, run: RunState, fx: Effects) -> None:
        """After a run's transition is applied: its enqueues, retries and end."""
        if fx.enqueued:
            self.job_enqueued(run.workflow_id, len(fx.enqueued))
        retried = sum(1 for _, final in fx.attempt_ended if not final)
        if retried:
            self.job_retried(run.workflow_id, retried)
        if fx.ended:
            self.run_finished(run.workflow_id, run.status.value)

    def http_request(self, route: str, method: str, status: int, secs: float) -> None:
        # On every request of the worker protocol: one dict lookup, then two updates.
        key = (route, method if method in HTTP_METHODS else OTHER, status)
        children = self._http_children.get(key)
        if children is None:
            children = self._http_children[key] = (
                self._http.labels(key[0], key[1], str(status)),
                self._http_latency.labels(key[0], key[1]),
            )
        children[0].inc()
        children[1].observe(secs)

    # --- scrape -------------------------------------------------------------------

    def exposition(self, state: QueueState | None = None) -> bytes:
        """The Prometheus text format of every metric, the gauges read from `state`."""
        self._state.current = state
        try:
            return generate_latest(self.registry)
        finally:
            self._state.current = None


class _StateCollector:
    """The gauges of the runtime's state, from the `QueueState` of the scrape."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self.current: QueueState | None = None

    def describe(self) -> list:
        return []  # registered without a sample: the state is only there at a scrape

    def collect(self) -> Iterator[Metric]:
        state = self.current
        if state is None:
            return
        label_set = self._metrics.label_set
        ready = GaugeMetricFamily(
            "wfg_jobs_ready", "Jobs claimable now, by required-label set.", labels=["labels"]
        )
        oldest = GaugeMetricFamily(
            "wfg_jobs_ready_oldest_age_seconds",
            "How long the longest-waiting claimable job has waited, by required-label set.",
            labels=["labels"],
        )
        waiting = GaugeMetricFamily(
            "wfg_jobs_waiting_for_worker",
            "Claimable jobs whose required labels no live (not offline) worker has.",
            labels=["labels"],
        )
        counts: dict[str, int] = {}
        ages: dict[str, float] = {}
        unserved: dict[str, int] = {}
        for labels, (count, since_ms) in state.ready.items():
            if not count:
                continue
            text = label_set(label_set_text(labels))
            counts[text] = counts.get(text, 0) + count
            age = max(0.0, (state.now_ms - since_ms) / 1000)
            ages[text] = max(ages.get(text, 0.0), age)
            if not covers(labels, state.live_label_sets):
                unserved[text] = unserved.get(text, 0) + count
        for text, count in counts.items():
            ready.add_metric([text], count)
            oldest.add_metric([text], ages[text])
        for text, count in unserved.items():
            waiting.add_metric([text], count)
        workers = GaugeMetricFamily(
            "wfg_workers", "Registered workers by status.", labels=["status"]
        )
        for status in ("idle", "busy", "offline"):
            workers.add_metric([status], state.workers.get(status, 0))
        yield ready
        yield oldest
        yield waiting
        yield GaugeMetricFamily(
            "wfg_jobs_delayed", "Jobs waiting out a retry's backoff.", value=state.delayed
        )
        yield GaugeMetricFamily("wfg_leases_active", "Jobs held by a worker.", state.active_leases)
        yield GaugeMetricFamily(
            "wfg_claims_parked", "Claims waiting for a job (wait_secs).", value=state.parked_claims
        )
        yield workers


__all__ = ["Metrics", "QueueState", "label_set_text"]
