"""Appending a run to benchmarks/RESULTS.md (a section per run) and results.json (a list)."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .outcome import Outcome
from .processes import REPO

HERE = Path(__file__).absolute().parent
RESULTS_MD = HERE / "RESULTS.md"
RESULTS_JSON = HERE / "results.json"

INTRO = HERE / "intro.md"  # the head of a new RESULTS.md


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
        wrk_version = (wrk.stdout + wrk.stderr).splitlines()[0].strip()
    except (OSError, IndexError):
        wrk_version = "not installed"
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": model or platform.processor() or "unknown",
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "wrk": wrk_version,
    }


def code_digest() -> str:
    """A digest of the server and tool sources measured, to tell runs of different code apart."""
    digest = hashlib.sha256()
    for path in sorted(REPO.glob("[aw]*/**/*.py")):
        if path.parts[len(REPO.parts)] in {"actors", "web", "wfg"}:
            digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def new_run(command: str, quick: bool) -> dict[str, Any]:
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": command,
        "mode": "quick" if quick else "full",
        "machine": machine(),
        "code": code_digest(),
        "scenarios": [],
    }


def _markdown(run: dict[str, Any], outcomes: list[Outcome]) -> str:
    m = run["machine"]
    lines = [
        f"## {run['date']}: {run['mode']} run",
        "",
        f"- command: `{run['command']}`",
        f"- machine: {m['cpu_count']} CPUs ({m['cpu_model']}), Python {m['python']}, "
        f"{m['platform']}, load average at start {m['load_average']}, {m['wrk']}",
        f"- code measured: sources of actors/, web/, wfg/ with digest `{run['code']}`",
        "",
    ]
    for outcome in outcomes:
        lines += [f"### `{outcome.scenario}`: {outcome.title}", ""]
        if outcome.skipped:
            lines += [f"skipped: {outcome.skipped}", ""]
            continue
        if outcome.error:
            lines += ["error:", "", "```", outcome.error.rstrip(), "```", ""]
        if outcome.figures:
            lines += ["| figure | value |", "|---|---|"]
            for fig in outcome.figures:
                name, _, value = fig.text().partition(": ")
                lines.append(f"| {name} | {value} |")
            lines.append("")
        for target in outcome.targets:
            lines.append(f"- **{target.text()[:4]}** {target.text()[6:]}")
        for note in outcome.notes:
            lines.append(f"- note: {note}")
        lines += [f"- took {outcome.seconds:.1f} s", ""]
    return "\n".join(lines) + "\n"


def append(run: dict[str, Any], outcomes: list[Outcome]) -> None:
    """Add the run to both files; the markdown file starts with the intro when new."""
    run = {**run, "scenarios": [o.as_json() for o in outcomes]}
    runs: list[Any] = []
    if RESULTS_JSON.exists():
        try:
            runs = json.loads(RESULTS_JSON.read_text())
        except ValueError:
            runs = []
    runs.append(run)
    RESULTS_JSON.write_text(json.dumps(runs, indent=1) + "\n")
    existing = (RESULTS_MD if RESULTS_MD.exists() else INTRO).read_text()
    RESULTS_MD.write_text(existing.rstrip("\n") + "\n\n" + _markdown(run, outcomes))
