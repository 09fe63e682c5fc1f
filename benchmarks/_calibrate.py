"""How fast the machine is while the suite runs, so that two runs' figures can be told
apart from two machines' (or two hours') speed: on a shared virtual machine the same
code's medians move by 30-80 % from one hour to the next.

Measured once, before the workloads, in the run's scratch directory (the file system of
the node's data directory):

- ``fdatasync_p50_ms`` / ``fdatasync_p99_ms``: a 4 KiB write and an ``fdatasync``,
  ``_SYNCS`` times: the disk's floor under any durable commit;
- ``lmdb_commit_p50_ms`` / ``lmdb_commit_p99_ms``: an fsync'd LMDB commit of one small put,
  as the node's store makes it (data pages, then the meta page): a durable start's floor;
- ``python_loop_ms``: a fixed pure-Python loop, the fastest of ``_LOOPS`` runs: the
  interpreter's speed on this CPU;
- ``filesystem``: the type of that file system. On a ``tmpfs`` (``/tmp`` on many
  systems) an fsync reaches no disk: the figures are then not those of a durable engine,
  and the suite says so (set ``TMPDIR`` to a directory on a disk).

And over the whole run, ``steal_pct``: the share of the machine's CPU time that its
hypervisor gave to other guests (0 where the platform does not report steal).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lmdb
import psutil
from rich.console import Console

from benchmarks._stats import percentile

__all__ = [
    "calibrate",
    "describe",
    "filesystem",
    "not_durable",
    "print_machine",
    "steal_pct",
    "stolen_s",
    "watching",
]

_SYNCS = 200
_LOOPS = 5
_LOOP_ITERATIONS = 200_000
# File systems whose fsync writes nothing to a disk.
_MEMORY_FILESYSTEMS = frozenset({"tmpfs", "ramfs"})


def _fdatasync_ms(directory: Path) -> list[float]:
    path = directory / "fdatasync.probe"
    block = os.urandom(4096)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        times = []
        for _ in range(_SYNCS):
            began = time.perf_counter()
            os.pwrite(fd, block, 0)
            os.fdatasync(fd)
            times.append((time.perf_counter() - began) * 1000)
        return times
    finally:
        os.close(fd)


def _lmdb_commit_ms(directory: Path) -> list[float]:
    env = lmdb.open(str(directory / "lmdb.probe"), map_size=1 << 24, sync=True, metasync=True)
    try:
        value = os.urandom(300)
        times = []
        for i in range(_SYNCS):
            began = time.perf_counter()
            with env.begin(write=True) as txn:
                txn.put(i.to_bytes(8, "big"), value)
            times.append((time.perf_counter() - began) * 1000)
        return times
    finally:
        env.close()


def _python_loop_ms() -> float:
    best = float("inf")
    for _ in range(_LOOPS):
        began = time.perf_counter()
        total = 0
        for i in range(_LOOP_ITERATIONS):
            total += i & 7
        best = min(best, (time.perf_counter() - began) * 1000)
    return best


def filesystem(path: Path) -> str:
    """The type of the file system ``path`` is on ("unknown" if no mount point matches)."""
    resolved = str(path.resolve())
    best, kind = "", "unknown"
    for part in psutil.disk_partitions(all=True):
        mount = part.mountpoint.rstrip("/") or "/"
        inside = resolved == mount or resolved.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) > len(best):
            best, kind = mount, part.fstype
    return kind


def not_durable(calibration: dict[str, Any]) -> bool:
    """Whether the run's data directory was on a file system that keeps nothing on disk."""
    return calibration.get("filesystem") in _MEMORY_FILESYSTEMS


def calibrate(scratch: Path) -> dict[str, Any]:
    """The machine's figures (see the module doc), measured in a directory of ``scratch``
    that is removed afterwards."""
    directory = Path(tempfile.mkdtemp(prefix="calibrate-", dir=scratch))
    try:
        syncs = _fdatasync_ms(directory)
        commits = _lmdb_commit_ms(directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return {
        "fdatasync_p50_ms": percentile(syncs, 0.50),
        "fdatasync_p99_ms": percentile(syncs, 0.99),
        "lmdb_commit_p50_ms": percentile(commits, 0.50),
        "lmdb_commit_p99_ms": percentile(commits, 0.99),
        "python_loop_ms": _python_loop_ms(),
        "filesystem": filesystem(scratch),
    }


def stolen_s(before: Any, after: Any) -> float:
    """The core-seconds the hypervisor took between two ``psutil.cpu_times()`` samples;
    0 where the platform reports no steal."""
    return float(getattr(after, "steal", 0.0) - getattr(before, "steal", 0.0))


def steal_pct(before: Any, after: Any) -> float:
    """The hypervisor's share (%) of the machine's CPU time between two samples."""
    total = sum(after) - sum(before)
    return 100.0 * stolen_s(before, after) / total if total > 0 else 0.0


@contextmanager
def watching(scratch: Path) -> Iterator[dict[str, Any]]:
    """The machine's figures (:func:`calibrate`, on ``scratch``), measured on entry; its
    ``steal_pct`` is added on exit, for the time in between."""
    calibration = calibrate(scratch)
    before = psutil.cpu_times()
    try:
        yield calibration
    finally:
        calibration["steal_pct"] = steal_pct(before, psutil.cpu_times())


def describe(calibration: dict[str, Any]) -> list[str]:
    """The lines for the table's foot: the machine's figures, and a warning when the data
    directory's file system keeps nothing on disk."""
    lines = [
        f"machine during the run: fdatasync {calibration['fdatasync_p50_ms']:.2f} ms p50, "
        f"fsync'd LMDB commit {calibration['lmdb_commit_p50_ms']:.2f} ms p50 "
        f"({calibration['filesystem']}), Python loop {calibration['python_loop_ms']:.1f} ms, "
        f"CPU stolen {calibration.get('steal_pct', 0.0):.1f} %"
    ]
    if not_durable(calibration):
        lines.append(
            f"warning: the node's data directory was on {calibration['filesystem']}, whose "
            "fsync reaches no disk: these are not a durable engine's figures (set TMPDIR to "
            "a directory on a disk)"
        )
    return lines


def print_machine(console: Console, calibration: dict[str, Any]) -> None:
    for line in describe(calibration):
        console.print(line, style="red" if line.startswith("warning") else None)
