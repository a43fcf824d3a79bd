"""Load and scale benchmarks for workflow-graph.

Run them all with ``python -m benchmarks`` (several minutes), or the CI smoke
run with ``python -m benchmarks --quick`` (under a minute, no thresholds
asserted); ``--only NAME ...`` picks scenarios. Each run appends its figures,
the machine and the exact command to ``benchmarks/RESULTS.md`` and
``benchmarks/results.json``.

Every speed figure is a ratio against a baseline measured in the same run, so
a slower machine moves both sides; absolute numbers are reported, never
asserted. Targets print PASS or MISS and never fail the run.
"""
