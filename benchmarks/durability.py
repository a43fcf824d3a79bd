"""Scenario `durability`: scenario `http` with the durable store against `--in-memory`.

Both servers are real processes driven by the same wrk settings; the ratio is
durable jobs/s over in-memory jobs/s. The in-memory side is the `http`
scenario's run when it ran in the same invocation. While the server answers
DATA_DIR with "state is kept in memory", there is no store to measure and
this scenario is skipped.
"""

from __future__ import annotations

import tempfile

from . import http_throughput, wrk
from .outcome import Outcome

NAME = "durability"
TITLE = "Durability cost (http scenario: DATA_DIR store vs --in-memory)"


def run(quick: bool) -> Outcome:
    outcome = Outcome(NAME, TITLE)
    if not wrk.available():
        return outcome.skip("wrk is not installed (apt-get update && apt-get install -y wrk)")
    settings = http_throughput.Settings.for_mode(quick)
    with tempfile.TemporaryDirectory(prefix="wfg-bench-data-") as data_dir:
        durable = http_throughput.measure_server(
            settings, in_memory=False, env={"DATA_DIR": data_dir}, require_store=True
        )
    if durable is None:
        return outcome.skip("the durable store does not exist yet (state is kept in memory)")
    previous = http_throughput.last_in_memory_run
    if previous is not None and previous[0] == settings:
        memory = previous[1]
        outcome.note("in-memory figures: the `http` scenario's run")
    else:
        measured = http_throughput.measure_server(settings)
        assert measured is not None
        memory = measured
    http_throughput.report_server_run(outcome, "in-memory", memory)
    http_throughput.report_server_run(outcome, "durable", durable)
    outcome.figure(
        "durable jobs/s / in-memory jobs/s",
        durable.result.completes_per_sec / memory.result.completes_per_sec,
        "x",
    )
    return outcome
