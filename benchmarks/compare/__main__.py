"""``python -m benchmarks.compare [--quick] [--runs N] [--only SYSTEMS] [--json FILE]``.

Runs W1-W4 on tamma (a real node, fsync on, 2 workers), Celery (Redis broker and backend
on loopback, 2 prefork worker processes), Dask distributed (LocalCluster, 2 worker
processes), Ray (a local instance with 2 CPUs) and DBOS Transact (durable: SQLite, in
this process) with the same sizes, and prints each figure with the ratio to tamma's.
``--only`` takes a comma-separated list of celery, dask, ray and dbos (default: all).
Their packages and ``redis-server`` are installed on demand (pip; apt-get when root), only
for the systems asked for.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from benchmarks._calibrate import print_machine, watching
from benchmarks._node import EventTap, NodeProcess
from benchmarks._report import machine, option_problems, refuse, save_json
from benchmarks._workloads import Bench, Sizes, Unavailable, chain, w1, w2, w3, w4
from tamma_actors import Client

# figure -> True when higher is better
FIGURES = {
    "W1.accepted_p50_ms": False,
    "W1.completed_p50_ms": False,
    "W1.completed_p99_ms": False,
    "W2.steps_per_s": True,
    "W3.wall_s": False,
    "W4.wall_s": False,
}
DURABLE = {
    "tamma": "yes (fsync)",
    "celery": "no",
    "dask": "no",
    "ray": "no",
    "dbos": "yes (SQLite)",
}
# system -> (modules it needs, what pip installs for them)
_PACKAGES = {
    "celery": (("celery", "redis"), ("celery[redis]",)),
    "dask": (("distributed",), ("dask[distributed]",)),
    "ray": (("ray",), ("ray",)),
    "dbos": (("dbos",), ("dbos",)),
}
SYSTEMS = tuple(_PACKAGES)  # besides tamma
Runner = Callable[[Any, Sizes], dict[str, float]]
UNAVAILABLE: dict[str, str] = {}  # tamma workload -> why it could not run


def ensure_installed(systems: Sequence[str]) -> None:
    """pip-install what ``systems`` need if it is missing, and apt-get install
    redis-server for Celery."""
    wanted = [
        spec
        for system in systems
        for spec in _PACKAGES[system][1]
        if any(importlib.util.find_spec(m) is None for m in _PACKAGES[system][0])
    ]
    if wanted:
        print(f"installing {', '.join(wanted)} ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", *wanted], check=True)
    if "celery" in systems and shutil.which("redis-server") is None:
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            raise SystemExit("redis-server is missing: install it (apt-get install redis-server)")
        print("installing redis-server ...", file=sys.stderr)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "redis-server"], check=True, env=env)


def _medians(runs: Sequence[dict[str, dict[str, float]]]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for run in runs:
        for workload, figures in run.items():
            for name, value in figures.items():
                out.setdefault(f"{workload}.{name}", []).append(value)
    return out


def _run_all(target: Any, table: dict[str, Runner], sizes: Sizes, runs: int) -> dict[str, Any]:
    """Every workload ``runs`` times; one the system cannot run is left out (and said)."""
    samples: list[dict[str, dict[str, float]]] = []
    for _ in range(runs):
        sample = {}
        for workload, fn in table.items():
            try:
                sample[workload] = fn(target, sizes)
            except Unavailable as exc:
                UNAVAILABLE[workload] = str(exc)
        samples.append(sample)
    return {k: (statistics.median(v), min(v), max(v)) for k, v in _medians(samples).items()}


def run_tamma(scratch: Path, sizes: Sizes, runs: int) -> dict[str, Any]:
    with (
        NodeProcess(scratch / "tamma") as node,
        Client(node.control, timeout=60.0) as client,
        EventTap(node.events, prefixes=[b"workflow."]) as tap,
    ):
        tap.sync(client, chain("bench-sync", 1))
        bench = Bench(node, client, tap, sizes, lambda *_: None)
        table: dict[str, Runner] = {
            "W1": lambda b, s: w1(b),
            "W2": lambda b, s: w2(b),
            "W3": lambda b, s: w3(b),
            "W4": lambda b, s: w4(b),
        }
        return _run_all(bench, table, sizes, runs)


def _workloads(module: Any) -> dict[str, Runner]:
    """A system's module's ``w1``..``w4``, by workload."""
    return {w: getattr(module, w.lower()) for w in ("W1", "W2", "W3", "W4")}


def run_celery(scratch: Path, sizes: Sizes, runs: int) -> dict[str, Any]:
    from benchmarks.compare import _celery

    with _celery.celery_system(scratch) as app:
        return _run_all(app, _workloads(_celery), sizes, runs)


def run_dask(scratch: Path, sizes: Sizes, runs: int) -> dict[str, Any]:
    from benchmarks.compare import _dask

    with _dask.dask_system() as client:
        return _run_all(client, _workloads(_dask), sizes, runs)


def run_ray(scratch: Path, sizes: Sizes, runs: int) -> dict[str, Any]:
    from benchmarks.compare import _ray

    with _ray.ray_system() as tasks:
        return _run_all(tasks, _workloads(_ray), sizes, runs)


def run_dbos(scratch: Path, sizes: Sizes, runs: int) -> dict[str, Any]:
    from benchmarks.compare import _dbos

    with _dbos.dbos_system(scratch / "dbos"):
        return _run_all(None, _workloads(_dbos), sizes, runs)


def _ratio(figure: str, ours: float, theirs: float) -> float:
    """How many times better tamma is (> 1: tamma ahead)."""
    return ours / theirs if FIGURES[figure] else theirs / ours


def print_comparison(results: dict[str, dict[str, Any]], console: Console, title: str) -> None:
    systems = list(results)
    table = Table(title=title)
    table.add_column("figure")
    for system in systems:
        table.add_column(f"{system} (durable: {DURABLE[system]})")
    for figure in FIGURES:
        ours = results.get("tamma", {}).get(figure)
        row = [figure]
        for system in systems:
            value = results[system].get(figure)
            if value is None:
                row.append("—")
                continue
            median, low, high = value
            cell = f"{median:.3g} ({low:.3g}..{high:.3g})"
            if system != "tamma" and ours is not None:
                cell += f"  tamma x{_ratio(figure, ours[0], median):.2f}"
            row.append(cell)
        table.add_row(*row)
    console.print(table)
    console.print("tamma xN: N > 1 means tamma is N times better on that figure.")
    for workload, why in UNAVAILABLE.items():
        console.print(f"tamma {workload} unavailable: {why}")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.compare", description=__doc__.split("\n")[0]
    )
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    p.add_argument("--runs", type=int, default=3, help="runs per workload (median; >= 1)")
    p.add_argument(
        "--only",
        default=",".join(SYSTEMS),
        help=f"systems besides tamma ({','.join(SYSTEMS)})",
    )
    p.add_argument("--json", dest="json_path", help="write the figures to this file")
    args = p.parse_args(argv)
    others = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(others) - set(SYSTEMS)
    problems = [f"--only {args.only}: it takes {', '.join(SYSTEMS)}"] if unknown else []
    if refuse([*problems, *option_problems(args.runs, args.json_path)]):
        return 2
    # SIGTERM (a timeout, CI) must still stop redis, the celery worker and the cluster.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    ensure_installed(others)
    sizes = Sizes.quick() if args.quick else Sizes()
    scratch = Path(tempfile.mkdtemp(prefix="tamma-compare-"))
    console = Console(width=None if sys.stdout.isatty() else 140)
    results: dict[str, dict[str, Any]] = {}
    try:
        runners = {
            "tamma": run_tamma,
            "celery": run_celery,
            "dask": run_dask,
            "ray": run_ray,
            "dbos": run_dbos,
        }
        with watching(scratch) as calibration:
            for name, fn in runners.items():
                if name == "tamma" or name in others:
                    console.print(f"running {name} ...")
                    results[name] = fn(scratch, sizes, args.runs)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    meta = {**machine(), "calibration": calibration}
    title = (f"W1-W4: {' vs '.join(results)} — {meta['date']}, {meta['cpus']} CPUs, "
             f"median of {args.runs} runs (min..max)")  # fmt: skip
    print_comparison(results, console, title)
    print_machine(console, calibration)
    if args.json_path:
        data = {"meta": {**meta, "runs": args.runs, "quick": args.quick}, "results": results}
        if not save_json(args.json_path, data, console):
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
