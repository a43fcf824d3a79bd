"""What a scenario reports: figures, targets with PASS/MISS, or why it was skipped."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Figure:
    name: str
    value: float | int | str
    unit: str = ""

    def text(self) -> str:
        value = self.value
        if isinstance(value, float):
            value = f"{value:.4g}" if abs(value) < 1000 else f"{value:,.0f}"
        elif isinstance(value, int):
            value = f"{value:,}"
        return f"{self.name}: {value}{' ' + self.unit if self.unit else ''}"


@dataclass
class Target:
    """A goal for one figure: `value <= limit` or `value >= limit`."""

    name: str
    value: float
    op: str  # "<=" or ">="
    limit: float
    unit: str = ""

    @property
    def passed(self) -> bool:
        return self.value <= self.limit if self.op == "<=" else self.value >= self.limit

    def text(self) -> str:
        verdict = "PASS" if self.passed else "MISS"
        unit = f" {self.unit}" if self.unit else ""
        goal = f"target {self.op} {self.limit:g}{unit}"
        return f"{verdict}  {self.name}: {self.value:.4g}{unit} ({goal})"


@dataclass
class Outcome:
    """One scenario's result; `figure`, `target` and `note` print as they are added."""

    scenario: str
    title: str
    figures: list[Figure] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    skipped: str | None = None
    error: str | None = None
    seconds: float = 0.0

    def figure(self, name: str, value: float | int | str, unit: str = "") -> None:
        fig = Figure(name, value, unit)
        self.figures.append(fig)
        print(f"  {fig.text()}", flush=True)

    def target(self, name: str, value: float, op: str, limit: float, unit: str = "") -> None:
        target = Target(name, value, op, limit, unit)
        self.targets.append(target)
        print(f"  {target.text()}", flush=True)

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"  note: {text}", flush=True)

    def skip(self, reason: str) -> Outcome:
        self.skipped = reason
        print(f"  skipped: {reason}", flush=True)
        return self

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        for target, t in zip(data["targets"], self.targets, strict=True):
            target["verdict"] = "PASS" if t.passed else "MISS"
        return data


def percentile(samples: list[float], p: float) -> float:
    """The p-th percentile (0..100) by linear interpolation; samples need not be sorted."""
    ordered = sorted(samples)
    if not ordered:
        return float("nan")
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * p / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(samples: list[float]) -> float:
    return statistics.median(samples) if samples else float("nan")
