"""Where a workload's CPU time went: the node, its store writer process, its workers, and
this benchmark process (its client and event subscriber share the 2 cores too).

Measured from the processes' own user + system times (psutil) before and after the
workload, so it needs no profiler and costs nothing while the workload runs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import psutil

__all__ = ["ROLES", "cpu_by_process", "cpu_spent"]

# What the benchmark reports, in this order: "client" is this process.
ROLES = ("node", "writer", "workers", "client")
_CHILDREN = {"tamma_actors._writer_main": "writer", "tamma_actors._worker": "workers"}

Sample = dict[int, tuple[str, float]]  # pid -> (role, CPU seconds so far)


def _cpu(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


def _role(proc: psutil.Process) -> str | None:
    """A node child's role by the module it runs (``python -m <module>``)."""
    cmdline = proc.cmdline()
    for i, arg in enumerate(cmdline[:-1]):
        if arg == "-m":
            return _CHILDREN.get(cmdline[i + 1])
    return None


def cpu_by_process(node_pid: int) -> Sample:
    """The CPU time so far of the node, each child of it with a known role, and this
    process; a process that ends while being read is left out."""
    sample: Sample = {}
    try:
        node = psutil.Process(node_pid)
        sample[node_pid] = ("node", _cpu(node))
        children = node.children()
    except psutil.Error:
        children = []
    for child in children:
        try:
            role = _role(child)
            if role is not None:
                sample[child.pid] = (role, _cpu(child))
        except psutil.Error:
            continue  # it ended meanwhile (a worker being replaced)
    sample[os.getpid()] = ("client", _cpu(psutil.Process()))
    return sample


def cpu_spent(before: Mapping[int, tuple[str, float]], after: Sample) -> dict[str, float]:
    """CPU seconds per role between two samples. A process born in between counts from
    zero; one gone by ``after`` is left out (its last seconds are not known)."""
    spent = dict.fromkeys(ROLES, 0.0)
    for pid, (role, seconds) in after.items():
        was = before.get(pid)
        start = was[1] if was is not None and was[0] == role else 0.0
        spent[role] += max(0.0, seconds - start)
    return spent
