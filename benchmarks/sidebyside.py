"""``python -m benchmarks.sidebyside BASE [NEW] [--only W1,W2] [--runs N] [--pairs N]``.

Two versions of tamma_actors measured side by side. On a shared machine the same code's
medians move by 30-80 % from one hour to the next, so two runs an hour apart say little
about a change: this runs the suite (``python -m benchmarks``) from each version in turn,
``--pairs`` times, alternating which goes first, and prints each figure of every pair
next to each other, with how many pairs the new version was ahead in, and the machine's
figures of each run (``benchmarks._calibrate``: how comparable the two runs of a pair were).

BASE and NEW are git revisions of this repository, checked out into temporary worktrees
(removed at the end) and byte-compiled; NEW defaults to the working tree as it is,
uncommitted changes included. Both run with this interpreter (the dependencies installed
here), with the same options.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from benchmarks._report import TARGETS, figure_text, option_problems, refuse, save_json
from benchmarks._runner import parse_only
from benchmarks._signals import signals_deferred

__all__ = [
    "CannotCheckOut",
    "Row",
    "SideBySideError",
    "compare",
    "figures",
    "higher_is_better",
    "main",
]

ROOT = Path(__file__).resolve().parent.parent
_LEFT_OUT = frozenset({"title", "spread", "runs", "notes", "unavailable"})
_STOP_WAIT = 60.0  # for a suite told to stop (SIGTERM) to stop its node and exit
MACHINE = "machine."  # rows of the machine's figures, not the versions'


class SideBySideError(RuntimeError):
    """A version's suite failed (exit status 1)."""

    code = 1


class CannotCheckOut(SideBySideError):
    """A version is not there to run: not a revision, not a git checkout (exit status 2)."""

    code = 2


@dataclass(frozen=True)
class Tree:
    label: str  # what the user named (a revision, or "working tree")
    path: Path
    temporary: bool  # a worktree of ours, removed at the end


@dataclass(frozen=True)
class Row:
    """One figure over the pairs: each side's value per pair, in pair order."""

    key: str
    base: list[float]
    new: list[float]

    @property
    def ahead(self) -> int:
        """In how many pairs the new version did better."""
        up = higher_is_better(self.key)
        return sum((n > b) if up else (n < b) for b, n in zip(self.base, self.new, strict=True))

    @property
    def change(self) -> float:
        """The new median against the base median (0.1: 10 % more), 0 if the base is 0."""
        base = statistics.median(self.base)
        return statistics.median(self.new) / base - 1.0 if base else 0.0


def higher_is_better(key: str) -> bool:
    """Whether a larger value of figure ``key`` (``W2.steps_per_s``) is the better one:
    the target's direction where there is one, else only rates and ratios."""
    if key in TARGETS:
        return TARGETS[key][0] == ">="
    return key.endswith(("_per_s", "ratio"))


def figures(data: Mapping[str, Any]) -> dict[str, float]:
    """The figures of one suite's JSON, flat (``W1.accepted_p50_ms``): each workload's
    medians, not its spread, runs or notes; a workload that was unavailable has none."""
    out: dict[str, float] = {}
    for workload, body in data.items():
        if workload == "meta" or not isinstance(body, Mapping) or "unavailable" in body:
            continue
        for key, value in body.items():
            if key in _LEFT_OUT or isinstance(value, bool) or not isinstance(value, int | float):
                continue
            out[f"{workload}.{key}"] = float(value)
    return out


def compare(base: Sequence[Mapping[str, float]], new: Sequence[Mapping[str, float]]) -> list[Row]:
    """A row per figure that every run of both sides has, in the first run's order."""
    runs = [*base, *new]
    if not runs:
        return []
    keys = [k for k in runs[0] if all(k in r for r in runs)]
    return [Row(k, [r[k] for r in base], [r[k] for r in new]) for k in keys]


def _git(*args: str) -> str:
    try:
        proc = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
    except OSError as exc:
        raise CannotCheckOut(f"cannot run git: {exc}") from exc
    if proc.returncode != 0:
        raise CannotCheckOut(f"git {' '.join(args)}: {proc.stderr.strip() or proc.returncode}")
    return proc.stdout.strip()


def _commit_of(rev: str) -> str:
    try:
        return _git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    except CannotCheckOut:
        raise CannotCheckOut(f"{rev!r} is not a revision of {ROOT}") from None


def _compile(tree: Path) -> None:
    """Byte-compile it, as ``make bytecode`` does: a node and its workers would otherwise
    compile every module at each start (with PYTHONDONTWRITEBYTECODE set)."""
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", "tamma_actors", "benchmarks"],
        cwd=tree,
        capture_output=True,
        check=False,
    )


def checkout(rev: str, into: Path) -> Tree:
    """``rev`` in a worktree of its own under ``into``, byte-compiled."""
    commit = _commit_of(rev)
    path = into / f"{len(list(into.iterdir()))}-{commit[:12]}"
    _git("worktree", "add", "--detach", "--force", str(path), commit)
    _compile(path)
    return Tree(f"{rev} ({commit[:9]})", path, True)


def working_tree() -> Tree:
    _git("rev-parse", "--show-toplevel")  # a checkout at all
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
    _compile(ROOT)
    return Tree("working tree" + (" (uncommitted changes)" if dirty else ""), ROOT, False)


def run_suite_of(tree: Tree, options: Sequence[str], out: Path) -> dict[str, Any]:
    """Run the suite of ``tree`` with ``options``; its JSON. A SIGTERM meanwhile is passed
    on, so that the suite stops its node before this exits."""
    cmd = [sys.executable, "-m", "benchmarks", *options, "--json", str(out)]
    env = {**os.environ, "PYTHONPATH": str(tree.path)}
    with signals_deferred():  # one inside Popen would leave the suite unknown, running
        child = subprocess.Popen(
            cmd, cwd=tree.path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
    try:
        output, _ = child.communicate()
    except BaseException:
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(_STOP_WAIT)
        except subprocess.TimeoutExpired:
            child.kill()
        raise
    if child.returncode != 0:
        tail = "\n".join(output.strip().splitlines()[-5:])
        raise SideBySideError(f"{tree.label}: the suite failed (exit {child.returncode}):\n{tail}")
    data: dict[str, Any] = json.loads(out.read_text())
    return data


def _remove(tree: Tree) -> None:
    if tree.temporary:
        try:
            _git("worktree", "remove", "--force", str(tree.path))
        except CannotCheckOut as exc:
            print(f"could not remove the worktree {tree.path}: {exc}", file=sys.stderr)


def _machine(calibration: Mapping[str, Any] | None) -> dict[str, float]:
    """The machine's figures of a run (``machine.fdatasync_p50_ms``...), which say how
    comparable its pair's two runs were; none from a version whose suite did not take them."""
    if not calibration:
        return {}
    return {
        f"{MACHINE}{key}": float(value)
        for key, value in calibration.items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }


def print_rows(rows: Sequence[Row], base: Tree, new: Tree, console: Console) -> None:
    table = Table(title=f"base: {base.label}   new: {new.label}")
    for column in ("figure", "base, per pair", "new, per pair", "new ahead", "median change"):
        table.add_column(column)
    for row in rows:
        machine = row.key.startswith(MACHINE)
        table.add_row(
            f"[dim]{row.key}[/]" if machine else row.key,
            ", ".join(figure_text(v) for v in row.base),
            ", ".join(figure_text(v) for v in row.new),
            "" if machine else f"{row.ahead} of {len(row.new)}",
            ""
            if machine
            else f"{row.change:+.1%}"
            + (" (higher is better)" if higher_is_better(row.key) else ""),
        )
    console.print(table)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.sidebyside", description=__doc__.split("\n")[2]
    )
    p.add_argument("base", help="the git revision to compare with (e.g. HEAD~1, main)")
    p.add_argument("new", nargs="?", help="a git revision (default: the working tree)")
    p.add_argument("--only", default="W1,W2", help="comma-separated workloads (W1,W2)")
    p.add_argument("--runs", type=int, default=3, help="runs per workload in each suite")
    p.add_argument("--pairs", type=int, default=3, help="how many times each version runs")
    p.add_argument("--quick", action="store_true", help="the suites' small sizes")
    p.add_argument("--json", dest="json_path", help="write every pair's figures to this file")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    only, problems = parse_only(args.only)
    pairs = ["--pairs must be >= 1"] if args.pairs < 1 else []
    if refuse([*problems, *pairs, *option_problems(args.runs, args.json_path)]):
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    options = ["--only", ",".join(only), "--runs", str(args.runs)]
    options += ["--quick"] if args.quick else []
    console = Console(width=None if sys.stdout.isatty() else 140)
    trees: list[Tree] = []
    with tempfile.TemporaryDirectory(prefix="tamma-sidebyside-") as scratch:
        try:
            holder = Path(scratch) / "trees"
            holder.mkdir()
            trees.append(checkout(args.base, holder))
            trees.append(checkout(args.new, holder) if args.new else working_tree())
            pairs = _run_pairs(trees[0], trees[1], args.pairs, options, Path(scratch), console)
        except SideBySideError as exc:
            print(exc, file=sys.stderr)
            return exc.code
        finally:
            for tree in trees:
                _remove(tree)
    rows = compare(
        [{**p["base"], **_machine(p["base_machine"])} for p in pairs],
        [{**p["new"], **_machine(p["new_machine"])} for p in pairs],
    )
    print_rows(rows, trees[0], trees[1], console)
    if args.json_path:
        data = {
            "meta": {
                "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
                "base": trees[0].label,
                "new": trees[1].label,
                "options": options,
            },
            "pairs": pairs,
            "summary": {
                r.key: {"ahead": r.ahead, "change": r.change}
                for r in rows
                if not r.key.startswith(MACHINE)
            },
        }
        if not save_json(args.json_path, data, console):
            return 1
    return 0


def _run_pairs(
    base: Tree, new: Tree, count: int, options: Sequence[str], scratch: Path, console: Console
) -> list[dict[str, Any]]:
    """Each pair's figures of both sides (and the machine's, per side); which side goes
    first alternates."""
    pairs = []
    for i in range(count):
        order = [("base", base), ("new", new)] if i % 2 == 0 else [("new", new), ("base", base)]
        pair: dict[str, Any] = {"first": order[0][0]}
        for side, tree in order:
            console.print(f"pair {i + 1}/{count}: {side} ({tree.label}) ...")
            data = run_suite_of(tree, options, scratch / f"{i}-{side}.json")
            pair[side] = figures(data)
            pair[f"{side}_machine"] = data.get("meta", {}).get("calibration")
        pairs.append(pair)
    return pairs


if __name__ == "__main__":
    sys.exit(main())
