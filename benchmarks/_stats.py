"""Percentiles and the aggregation of repeated runs (median, with min..max as the spread)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Result", "aggregate", "latency_figures", "percentile"]


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile, ``q`` in [0, 1]."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


@dataclass
class Result:
    """One workload: the median of each figure over its runs, its spread, or why not."""

    workload: str
    title: str
    figures: dict[str, float] = field(default_factory=dict)
    spread: dict[str, tuple[float, float]] = field(default_factory=dict)
    runs: list[dict[str, float]] = field(default_factory=list)
    unavailable: str | None = None
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        if self.unavailable is not None:
            return {"title": self.title, "unavailable": self.unavailable}
        out: dict[str, Any] = {"title": self.title, **self.figures}
        out["spread"] = {k: list(v) for k, v in self.spread.items()}
        out["runs"] = self.runs
        if self.notes:
            out["notes"] = self.notes
        return out


def latency_figures(accepted: Sequence[float], completed: Sequence[float]) -> dict[str, float]:
    """W1's four figures from its start→accepted and start→completed times (ms)."""
    return {
        "accepted_p50_ms": percentile(accepted, 0.5),
        "accepted_p99_ms": percentile(accepted, 0.99),
        "completed_p50_ms": percentile(completed, 0.5),
        "completed_p99_ms": percentile(completed, 0.99),
    }


def aggregate(workload: str, title: str, runs: Sequence[Mapping[str, float]]) -> Result:
    """Median and min..max of every figure the runs share."""
    result = Result(workload, title, runs=[dict(r) for r in runs])
    if not runs:
        return result
    for key in runs[0]:
        values = [float(r[key]) for r in runs if key in r]
        result.figures[key] = statistics.median(values)
        result.spread[key] = (min(values), max(values))
    return result
