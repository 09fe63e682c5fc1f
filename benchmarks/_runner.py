"""Runs the selected workloads: one shared node for W1-W4, W7 and W8, own nodes for W5/W6."""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from benchmarks._calibrate import print_machine, watching
from benchmarks._node import BenchmarkError, EventTap, NodeProcess
from benchmarks._report import machine, print_table, write_json
from benchmarks._stats import Result, aggregate
from benchmarks._waiting import run_w5, run_w6
from benchmarks._workloads import Bench, Sizes, Unavailable, chain, w1, w2, w3, w4, w7, w8
from tamma_actors import Client

__all__ = ["WORKLOADS", "parse_only", "run_suite"]

_SHARED: dict[str, tuple[str, Callable[[Bench], dict[str, float]]]] = {
    "W1": ("1-step noop started sequentially: latency", w1),
    "W2": ("chains of noop steps, all submitted at once: durable steps/s", w2),
    "W3": ("1 step -> parallel over N items -> join: wall time", w3),
    "W4": ("chains of cpu 20 ms steps on 2 workers: wall time", w4),
    "W7": ("under W2 load: transition commit wait; event publish->subscriber", w7),
    "W8": ("one big workflow at a time, a chain and a fan-in: wall time", w8),
}
WORKLOADS = ("W1", "W2", "W3", "W4", "W5", "W6", "W7", "W8")


def parse_only(spec: str | None) -> tuple[list[str], list[str]]:
    """The workloads ``--only`` names (every one when it is not given), and what is wrong
    with it."""
    if spec is None:
        return list(WORKLOADS), []
    only = [w.strip().upper() for w in spec.split(",") if w.strip()]
    unknown = [w for w in only if w not in WORKLOADS]
    if unknown:
        return only, [f"unknown workload(s): {', '.join(unknown)}"]
    return only, [] if only else [f"--only {spec!r} names no workload"]


def _describe(workload: str, sizes: Sizes) -> str:
    title = _SHARED[workload][0]
    counts = {
        "W1": f"{sizes.w1_starts} starts",
        "W2": f"{sizes.w2_workflows} x {sizes.w2_steps} steps",
        "W3": f"{sizes.w3_items} items",
        "W4": f"{sizes.w4_workflows} x {sizes.w4_steps} steps",
        "W7": f"{sizes.w2_workflows} x {sizes.w2_steps} steps",
        "W8": f"{sizes.w8_steps} steps",
    }
    return f"{title} ({counts[workload]})"


def _repeat(
    workload: str, fn: Callable[[Bench], dict[str, float]], bench: Bench, runs: int
) -> Result:
    title = _describe(workload, bench.sizes)
    samples = []
    try:
        for _ in range(runs):
            samples.append(fn(bench))
    except Unavailable as exc:
        return Result(workload, title, unavailable=str(exc))
    return aggregate(workload, title, samples)


def run_suite(
    only: Sequence[str],
    *,
    quick: bool = False,
    runs: int = 3,
    json_path: str | None = None,
    workers: int = 2,
    keep: bool = False,
    console: Console | None = None,
) -> int:
    """Run ``only`` (workload ids); returns an exit code (1 if a benchmark broke)."""
    console = console or Console(width=None if sys.stdout.isatty() else 120)
    sizes = Sizes.quick() if quick else Sizes()
    scratch = Path(tempfile.mkdtemp(prefix="tamma-bench-"))
    results: list[Result] = []
    broken: list[str] = []
    began = time.perf_counter()
    try:
        with watching(scratch) as calibration, Progress(
            TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed:.0f}/"
            "{task.total:.0f}"), TimeElapsedColumn(), console=console, transient=True,
        ) as bar:  # fmt: skip
            task = bar.add_task("starting the node", total=1)

            last: dict[str, Any] = {"what": "", "at": 0.0}

            def progress(what: str, done: float, total: float) -> None:
                bar.update(task, description=what, completed=done, total=max(total, 1))
                now = time.monotonic()
                if not console.is_terminal and (what != last["what"] or now - last["at"] > 10):
                    # no live bar in a log: a line per phase, and every 10 s within one
                    console.print(f"{what}: {done:.0f}/{total:.0f}")
                    last.update(what=what, at=now)

            shared = [w for w in only if w in _SHARED]
            if shared:
                results += _run_shared(shared, scratch / "node", sizes, runs, workers, progress,
                                       broken)  # fmt: skip
            for workload, runner in (("W5", run_w5), ("W6", run_w6)):
                if workload not in only:
                    continue
                try:
                    results.append(runner(scratch, sizes, runs, progress))
                except Unavailable as exc:
                    results.append(Result(workload, workload, unavailable=str(exc)))
                except BenchmarkError as exc:
                    broken.append(f"{workload}: {exc}")
    finally:
        if not keep:
            shutil.rmtree(scratch, ignore_errors=True)
    meta = {
        **machine(),
        "calibration": calibration,
        "quick": quick,
        "runs": runs,
        "workers": workers,
        "durability": "full",
        "elapsed_s": round(time.perf_counter() - began, 1),
        "errors": broken,
    }
    order = {w: i for i, w in enumerate(WORKLOADS)}
    results.sort(key=lambda r: order[r.workload])
    header = (f"tamma_actors benchmarks — {meta['date']}, {meta['cpus']} CPUs, "
              f"Python {meta['python']}, {workers} workers, fsync on"
              + (" (quick)" if quick else ""))  # fmt: skip
    print_table(results, console, header, targets=not quick)
    print_machine(console, calibration)
    for problem in broken:
        console.print(f"[red]benchmark failed[/] {problem}")
    if keep:
        console.print(f"data kept in {scratch}")
    if json_path and not write_json(json_path, results, meta, console):
        return 1
    return 1 if broken else 0


def _run_shared(
    workloads: Sequence[str],
    data_dir: Path,
    sizes: Sizes,
    runs: int,
    workers: int,
    progress: Callable[[str, float, float], None],
    broken: list[str],
) -> list[Result]:
    results: list[Result] = []
    with (
        NodeProcess(data_dir, workers=workers) as node,
        Client(node.control, timeout=60.0) as client,
        EventTap(node.events) as tap,  # workflow.* events: W7 has a tap of its own
    ):
        tap.sync(client, chain("bench-sync", 1))
        bench = Bench(node, client, tap, sizes, progress)
        for workload in workloads:
            _, fn = _SHARED[workload]
            try:
                results.append(_repeat(workload, fn, bench, runs))
            except BenchmarkError as exc:
                broken.append(f"{workload}: {exc}")
    return results
