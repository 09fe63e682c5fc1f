"""``python -m benchmarks [--only W1,W2] [--quick] [--runs N] [--json FILE]``.

Starts a real ``tamma-node run`` (temporary data directory, fsync on, 2 local workers) and
runs the load workloads of issue 5 against it over ZeroMQ; prints a table of medians with
their spread and writes the raw figures as JSON on request.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence

from benchmarks._report import option_problems, refuse
from benchmarks._runner import WORKLOADS, parse_only, run_suite


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    p.add_argument("--only", help=f"comma-separated workloads ({','.join(WORKLOADS)})")
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    p.add_argument("--runs", type=int, default=3, help="runs per workload (median; >= 1)")
    p.add_argument("--json", dest="json_path", help="write the figures to this file")
    p.add_argument("--workers", type=int, default=2, help="local worker processes")
    p.add_argument("--keep", action="store_true", help="keep the data directory")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    only, problems = parse_only(args.only)
    workers = ["--workers must be >= 1"] if args.workers < 1 else []
    if refuse([*problems, *workers, *option_problems(args.runs, args.json_path)]):
        return 2
    # SIGTERM (a timeout, CI, kill) must still stop the node and its workers (its own
    # process group: they would outlive us) and remove the data directory.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    return run_suite(
        only, quick=args.quick, runs=args.runs, json_path=args.json_path,
        workers=args.workers, keep=args.keep,
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
