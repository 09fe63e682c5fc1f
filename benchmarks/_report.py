"""The results table (rich), the targets of issue 5, and the JSON file."""

from __future__ import annotations

import json
import operator
import os
import platform
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from benchmarks._stats import Result

__all__ = [
    "TARGETS",
    "figure_text",
    "json_path_problem",
    "machine",
    "option_problems",
    "print_table",
    "refuse",
    "save_json",
    "write_json",
]

# figure -> (comparison, bound): never asserted, only reported as met / missed.
TARGETS: dict[str, tuple[str, float]] = {
    "W1.accepted_p50_ms": ("<=", 0.5),
    "W1.accepted_p99_ms": ("<=", 2.0),
    "W1.completed_p50_ms": ("<=", 1.5),
    "W1.completed_p99_ms": ("<=", 4.0),
    "W2.steps_per_s": (">=", 7500.0),
    "W3.wall_s": ("<=", 0.1),
    "W4.wall_s": ("<=", 1.1),
    "W5.recovery_s": ("<=", 2.0),
    "W6.rss_mib": ("<=", 2048.0),
    "W6.w2_ratio": (">=", 0.7),
    "W7.commit_p99_ms": ("<=", 2.0),
    "W7.event_p99_ms": ("<=", 1.0),
}
_OPS: dict[str, Callable[[float, float], bool]] = {"<=": operator.le, ">=": operator.ge}


def machine() -> dict[str, Any]:
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
    }


def figure_text(value: float) -> str:
    """A figure as the tables print it: three significant digits, thousands grouped."""
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def _verdict(key: str, value: float) -> str:
    target = TARGETS.get(key)
    if target is None:
        return ""
    op, bound = target
    mark = "[green]met[/]" if _OPS[op](value, bound) else "[red]missed[/]"
    return f"{op} {figure_text(bound)} {mark}"


def print_table(
    results: Sequence[Result], console: Console, header: str, *, targets: bool = True
) -> None:
    """The figures; ``targets=False`` (quick sizes) leaves the verdicts out: a small run
    says nothing about a target set for the full size."""
    table = Table(title=header, show_lines=False)
    for column in ("workload", "figure", "median", "spread (min..max)", "runs", "target"):
        table.add_column(column)
    for result in results:
        if result.unavailable is not None:
            table.add_row(result.workload, "[yellow]unavailable[/]", result.unavailable)
            continue
        for i, (name, value) in enumerate(result.figures.items()):
            low, high = result.spread[name]
            table.add_row(
                result.workload if i == 0 else "",
                name,
                figure_text(value),
                f"{figure_text(low)}..{figure_text(high)}",
                str(len(result.runs)),
                _verdict(f"{result.workload}.{name}", value) if targets else "",
            )
        for note in result.notes:
            table.add_row("", "[dim]note[/]", f"[dim]{note}[/]")
    console.print(table)


def json_path_problem(path: str) -> str | None:
    """Why ``--json PATH`` could not be written, or None: checked before any run, so a
    typo does not cost a whole run's figures."""
    target = Path(path)
    if target.is_dir():
        return f"--json {path}: that is a directory"
    if not target.parent.is_dir():
        return f"--json {path}: directory {target.parent} does not exist"
    if not os.access(target if target.exists() else target.parent, os.W_OK):
        return f"--json {path}: not writable"
    return None


def option_problems(runs: int, json_path: str | None) -> list[str]:
    """What is wrong with the options both commands take (``--runs``, ``--json``)."""
    problems = [] if runs >= 1 else ["--runs must be >= 1"]
    if json_path and (problem := json_path_problem(json_path)):
        problems.append(problem)
    return problems


def refuse(problems: Sequence[str]) -> bool:
    """Say what is wrong with a command's arguments (on stderr); True if anything is."""
    if problems:
        print("\n".join(problems), file=sys.stderr)
    return bool(problems)


def save_json(path: str, data: dict[str, Any], console: Console) -> bool:
    """Write ``data`` to ``path``; False (and says why) if it cannot be written."""
    try:
        Path(path).write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    except OSError as exc:
        console.print(f"[red]cannot write {path}[/]: {exc.strerror or exc}")
        return False
    return True


def write_json(
    path: str, results: Sequence[Result], meta: dict[str, Any], console: Console
) -> bool:
    """The suite's figures as JSON: ``meta``, then one object per workload."""
    data: dict[str, Any] = {"meta": meta}
    for result in results:
        data[result.workload] = result.to_json()
    return save_json(path, data, console)
