"""Which CPUs the coordinator's threads run on (``coordinator_cpu``).

The coordinator's Python threads share one GIL, so together they use at most about one
core; yet the kernel spreads them over every CPU, and each hand-off between two of them
(a tell, a commit's callback, a reply) then wakes a thread on another CPU, whose caches
hold none of the data it is handed. Pinned to one CPU, a ``tamma-node`` ran W2 30 %
faster (median of three alternating pairs against the code before, 2 vCPUs), with a
quarter less CPU per step and half the system time. Its children keep every CPU the node
was given: the store writer process and the workers get
that set (``--cpus``) and restore it at start, since a child started by a pinned thread
(a restart) would inherit that thread's single CPU.

Only ``tamma-node run`` pins, once recovery is done; an engine embedded in another
program's process never pins that program's threads. Linux only (elsewhere nothing is
pinned).
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

__all__ = [
    "CoordinatorCpu",
    "allowed",
    "check",
    "choose",
    "format_cpus",
    "interrupt_load",
    "parse_cpus",
    "pin_threads",
    "restore",
]

log = logging.getLogger(__name__)

CoordinatorCpu = int | Literal["auto", "off"]

_SUPPORTED = hasattr(os, "sched_setaffinity") and hasattr(os, "sched_getaffinity")


def allowed() -> frozenset[int]:
    """The CPUs this process may run on (empty where that cannot be known)."""
    return frozenset(os.sched_getaffinity(0)) if _SUPPORTED else frozenset()


def interrupt_load(stat: Path = Path("/proc/stat")) -> dict[int, int]:
    """Each CPU's time in hardware and software interrupts since boot (``irq`` and
    ``softirq`` of ``/proc/stat``, in clock ticks); empty where that cannot be read."""
    load: dict[int, int] = {}
    try:
        lines = stat.read_text().splitlines()
    except OSError:
        return load
    for line in lines:
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and len(fields) >= 7:
            load[int(name[3:])] = int(fields[5]) + int(fields[6])
    return load


def choose(setting: CoordinatorCpu, cpus: frozenset[int]) -> int | None:
    """The CPU to pin the coordinator to, or None: ``off``, or fewer than two CPUs (one
    CPU has nothing to spare, and pinning there changes nothing). ``auto`` takes the CPU
    that has spent the least time in interrupts (the lowest on a tie): on the 2-CPU
    machine of the benchmarks the disk's interrupts all went to CPU 1, and W2 pinned there
    ran -2..+5 % against +15..25 % on CPU 0 (the writer process, which waits for the
    disk, is not pinned). A number must be one of ``cpus`` (:func:`check`)."""
    check(setting, cpus)
    if setting == "off" or len(cpus) < 2:
        return None
    if isinstance(setting, int):
        return setting
    load = interrupt_load()
    return min(sorted(cpus), key=lambda cpu: load.get(cpu, 0))


def check(setting: CoordinatorCpu, cpus: frozenset[int]) -> None:
    """ValueError when ``setting`` names a CPU that is not one of ``cpus``."""
    if isinstance(setting, int) and cpus and setting not in cpus:
        raise ValueError(
            f"coordinator_cpu {setting} is not one of the CPUs this node may use "
            f"({format_cpus(cpus)})"
        )


def pin_threads(cpu: int, tasks: Path = Path("/proc/self/task")) -> int:
    """Pin every thread of this process to ``cpu`` (threads started later inherit it from
    the thread that starts them); returns how many were pinned."""
    pinned = 0
    for entry in tasks.iterdir():
        try:
            os.sched_setaffinity(int(entry.name), {cpu})
        except ProcessLookupError:  # it ended meanwhile
            continue
        pinned += 1
    return pinned


def format_cpus(cpus: Iterable[int]) -> str:
    return ",".join(str(c) for c in sorted(cpus))


def parse_cpus(text: str) -> frozenset[int]:
    """``"0,1,3"`` as a set (the type of a ``--cpus`` option); a clear error otherwise."""
    try:
        cpus = frozenset(int(part) for part in text.split(","))
    except ValueError:
        cpus = frozenset()
    if not cpus or min(cpus) < 0:
        raise argparse.ArgumentTypeError(
            f"expected CPU numbers separated by commas (as in 0,1), got {text!r}"
        )
    return cpus


def restore(cpus: frozenset[int] | None) -> None:
    """In a child of the node (``--cpus``): run on the node's CPUs again, whatever the
    thread that started it was pinned to."""
    if not cpus or not _SUPPORTED:
        return
    try:
        os.sched_setaffinity(0, cpus)
    except OSError as exc:  # CPUs gone offline since, or a tighter cgroup: keep what it has
        log.warning("cannot run on CPUs %s: %s", format_cpus(cpus), exc)
