"""Scenario `runtime`: the actor runtime through the `Runtime` API, no HTTP.

- claims/s: a claim + complete loop over independent queued jobs; the baseline
  is one `ask` round trip to a do-nothing actor on the same trio loop;
- diamond cascades of N = 100, 1 000, 10 000 jobs (root; A_i needing root;
  B_i needing A_i; a sink needing every B_i), claim/complete driven until the
  sink is done, as time per job against the flat loop's time per job;
- the cost of one claim with 100 000 jobs queued against 100 queued.
"""

from __future__ import annotations

import time
import uuid

import trio

from actors import open_runtime
from actors.actor import Actor
from actors.models import WorkflowCreate
from actors.spec import spec_from_create

from .outcome import Outcome, median, percentile

NAME = "runtime"
TITLE = "In-process runtime (Runtime API, no HTTP)"
TARGET_QUEUE_DEPTH_RATIO = 1.5
SMALL_QUEUE = 100
LARGE_QUEUE = 100_000
WORKFLOW_SIZE = 5_000  # the per-workflow job limit the HTTP API enforces
WORKER = "bench-worker"


class Echo(Actor):
    """The baseline actor: answers every message with itself."""

    name = "echo"

    def handle(self, message):
        return message


def _flat(jobs: int):
    body = {"name": "flat", "jobs": [{"id": f"j{i}", "command": "true"} for i in range(jobs)]}
    return spec_from_create(str(uuid.uuid4()), WorkflowCreate.model_validate(body))


def _diamond(n: int):
    """root -> A_1..A_k -> B_1..B_k -> sink, with k = n/2 - 1: n jobs in all."""
    k = n // 2 - 1
    jobs: list[dict] = [{"id": "root", "command": "true"}]
    jobs += [{"id": f"a{i}", "command": "true", "depends_on": ["root"]} for i in range(k)]
    jobs += [{"id": f"b{i}", "command": "true", "depends_on": [f"a{i}"]} for i in range(k)]
    jobs.append({"id": "sink", "command": "true", "depends_on": [f"b{i}" for i in range(k)]})
    body = {"name": f"diamond-{n}", "jobs": jobs}
    return spec_from_create(str(uuid.uuid4()), WorkflowCreate.model_validate(body))


async def _queue(rt, jobs: int) -> None:
    """Add and run flat workflows until `jobs` more jobs are queued."""
    while jobs > 0:
        size = min(jobs, WORKFLOW_SIZE)
        spec = _flat(size)
        rt.add_workflow(spec)
        await rt.run_workflow(spec.id)
        jobs -= size


async def _cycle(rt) -> bool:
    claim = await rt.claim(WORKER, [], 300)
    if claim is None:
        return False
    await rt.complete(claim.lease.lease_id, {})
    return True


async def _ask_baseline(samples: int) -> float:
    """Seconds per `ask` round trip to a do-nothing actor."""
    echo = Echo()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(echo.run)
        for _ in range(1000):
            await echo.ask(None)
        started = time.perf_counter()
        for _ in range(samples):
            await echo.ask(None)
        elapsed = time.perf_counter() - started
        nursery.cancel_scope.cancel()
    return elapsed / samples


async def _claims_per_sec(rt, cycles: int) -> float:
    """Seconds per claim + complete over `cycles` independent queued jobs."""
    await _queue(rt, cycles + 500)
    for _ in range(500):  # warm-up
        await _cycle(rt)
    started = time.perf_counter()
    for _ in range(cycles):
        if not await _cycle(rt):
            raise RuntimeError("the queue ran dry")
    return (time.perf_counter() - started) / cycles


async def _cascade(rt, n: int) -> tuple[float, int]:
    """Seconds to drive a diamond of `n` jobs from run to sink done, and jobs run."""
    spec = _diamond(n)
    rt.add_workflow(spec)
    ran = 0
    started = time.perf_counter()
    await rt.run_workflow(spec.id)
    while True:
        claim = await rt.claim(WORKER, [], 300)
        if claim is None:
            break
        await rt.complete(claim.lease.lease_id, {})
        ran += 1
        if claim.job.job_id == "sink":
            break
    return time.perf_counter() - started, ran


async def _claim_costs(rt, rounds: int, per_round: int) -> list[float]:
    """Per-claim seconds with the queue's depth held where it is (+per_round, -per_round)."""
    costs = []
    for _ in range(rounds):
        await _queue(rt, per_round)
        leases = []
        for _ in range(per_round):
            started = time.perf_counter()
            claim = await rt.claim(WORKER, [], 300)
            costs.append(time.perf_counter() - started)
            leases.append(claim.lease.lease_id)
        for lease_id in leases:
            await rt.complete(lease_id, {})
    return costs


async def _measure(quick: bool, outcome: Outcome) -> None:
    ask = await _ask_baseline(2_000 if quick else 50_000)
    outcome.figure("baseline: one actor ask round trip", ask * 1e6, "us")

    async with open_runtime() as rt:
        cycle = await _claims_per_sec(rt, 1_000 if quick else 30_000)
    outcome.figure("claim + complete cycles/s", 1 / cycle, "cycles/s")
    outcome.figure("claim + complete cycle", cycle * 1e6, "us")
    outcome.figure("cycle / ask round trip", cycle / ask, "x")

    sizes = (100, 1_000) if quick else (100, 1_000, 10_000)
    per_job = {}
    for n in sizes:
        async with open_runtime() as rt:
            seconds, ran = await _cascade(rt, n)
        if ran != n:
            outcome.note(f"diamond-{n}: ran {ran} jobs, expected {n}")
        per_job[n] = seconds / n
        outcome.figure(f"diamond-{n} cascade", seconds * 1000, "ms")
        outcome.figure(f"diamond-{n} per job", per_job[n] * 1e6, "us")
        outcome.figure(f"diamond-{n} per job / flat cycle", per_job[n] / cycle, "x")
    outcome.figure(
        f"diamond per job: {sizes[-1]:,} / {sizes[0]:,}",
        per_job[sizes[-1]] / per_job[sizes[0]],
        "x",
    )

    rounds, per_round = (4, 50) if quick else (40, 50)
    # Quick mode queues fewer: loading 100 000 jobs alone takes longer than its budget.
    large_queue = 10_000 if quick else LARGE_QUEUE
    async with open_runtime() as rt:
        await _queue(rt, SMALL_QUEUE)
        await _claim_costs(rt, 2, per_round)  # warm-up
        small = await _claim_costs(rt, rounds, per_round)
        started = time.perf_counter()
        await _queue(rt, large_queue - SMALL_QUEUE)
        loaded = time.perf_counter() - started
        stats = await rt.queue_stats()
        large = await _claim_costs(rt, rounds, per_round)
    outcome.figure(f"time to queue {large_queue:,} jobs", loaded, "s")
    outcome.figure("ready jobs when measuring the large queue", stats.get("ready", -1))
    for label, costs in ((f"{SMALL_QUEUE} queued", small), (f"{large_queue:,} queued", large)):
        outcome.figure(f"claim p50, {label}", median(costs) * 1e6, "us")
        outcome.figure(f"claim p90, {label}", percentile(costs, 90) * 1e6, "us")
    outcome.target(
        f"claim p50 with {large_queue:,} queued / with {SMALL_QUEUE} queued",
        median(large) / median(small),
        "<=",
        TARGET_QUEUE_DEPTH_RATIO,
        "x",
    )


def run(quick: bool) -> Outcome:
    outcome = Outcome(NAME, TITLE)
    trio.run(_measure, quick, outcome)
    return outcome
