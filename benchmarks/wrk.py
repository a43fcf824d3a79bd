"""Running wrk with the claim/complete Lua script and reading its result line."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

SCRIPT = Path(__file__).with_name("claim_complete.lua")
THREADS = 2
CONNECTIONS = 16


@dataclass
class WrkResult:
    requests: int
    duration_us: int
    socket_errors: int
    claims: int
    completes: int
    empty_claims: int
    http_errors: int
    p50_us: int
    p90_us: int
    p99_us: int
    mean_us: float
    command: str = ""

    @property
    def seconds(self) -> float:
        return self.duration_us / 1e6

    @property
    def requests_per_sec(self) -> float:
        return self.requests / self.seconds

    @property
    def completes_per_sec(self) -> float:
        return self.completes / self.seconds


def available() -> bool:
    return shutil.which("wrk") is not None


def run(url: str, seconds: float) -> WrkResult:
    """`wrk -t2 -c16 --latency` for `seconds` against `url`; bounded by a timeout."""
    argv = [
        "wrk",
        f"-t{THREADS}",
        f"-c{CONNECTIONS}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "--latency",
        "-s",
        str(SCRIPT),
        url,
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False)
    for line in done.stdout.splitlines():
        if line.startswith("WRK_RESULT "):
            return WrkResult(**json.loads(line.removeprefix("WRK_RESULT ")), command=" ".join(argv))
    raise RuntimeError(f"wrk gave no result (exit {done.returncode}):\n{done.stdout}{done.stderr}")
