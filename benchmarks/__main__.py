"""`python -m benchmarks [--quick] [--only NAME ...] [--no-record]`."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
import traceback

from . import (
    dispatch_latency,
    durability,
    end_to_end,
    http_throughput,
    postgres,
    record,
    runs,
    runtime_inprocess,
    scale,
)
from .outcome import Outcome

SCENARIOS = {
    m.NAME: m
    for m in (
        http_throughput,
        dispatch_latency,
        runtime_inprocess,
        scale,
        runs,
        end_to_end,
        durability,
        postgres,
    )
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smoke run: under a minute")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=list(SCENARIOS),
        metavar="NAME",
        help=f"run only these scenarios: {', '.join(SCENARIOS)}",
    )
    parser.add_argument(
        "--no-record",
        action="store_true",
        help="print only; leave RESULTS.md and results.json alone",
    )
    args = parser.parse_args(argv)
    command = shlex.join(["python", "-m", "benchmarks", *argv])
    run = record.new_run(command, args.quick)
    print(
        f"{command}  ({run['mode']} mode, {run['machine']['cpu_count']} CPUs, "
        f"Python {run['machine']['python']})",
        flush=True,
    )
    outcomes: list[Outcome] = []
    started = time.perf_counter()
    try:
        for name in args.only or SCENARIOS:
            module = SCENARIOS[name]
            print(f"\n[{name}] {module.TITLE}", flush=True)
            began = time.perf_counter()
            try:
                outcome = module.run(args.quick)
            except Exception:  # noqa: BLE001 - reported, and the other scenarios still run
                outcome = Outcome(name, module.TITLE, error=traceback.format_exc())
                print(f"  error:\n{outcome.error}", flush=True)
            outcome.seconds = time.perf_counter() - began
            outcomes.append(outcome)
    finally:
        if outcomes and not args.no_record:
            record.append(run, outcomes)
    misses = [t for o in outcomes for t in o.targets if not t.passed]
    errors = [o.scenario for o in outcomes if o.error]
    print(
        f"\n{len(outcomes)} scenario(s) in {time.perf_counter() - started:.0f} s; "
        f"{sum(len(o.targets) for o in outcomes) - len(misses)} target(s) PASS, "
        f"{len(misses)} MISS; errors: {', '.join(errors) or 'none'}",
        flush=True,
    )
    # A MISS never fails the run (CI asserts no thresholds); a broken scenario does.
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
