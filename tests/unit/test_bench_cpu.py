"""The benchmark's CPU accounting per process (``benchmarks._cpu``)."""

from __future__ import annotations

import os
import subprocess
import sys

from benchmarks._cpu import ROLES, cpu_by_process, cpu_spent


def test_cpu_spent_sums_each_role_between_two_samples() -> None:
    before = {1: ("node", 1.0), 2: ("workers", 5.0), 3: ("workers", 2.0), 9: ("writer", 3.0)}
    after = {
        1: ("node", 1.25),
        2: ("workers", 5.5),
        3: ("workers", 2.25),
        4: ("workers", 0.5),  # born in between: counts from zero
        7: ("client", 0.125),
        # 9 is gone: its last seconds are not known, it is left out
    }
    assert cpu_spent(before, after) == {
        "node": 0.25,
        "writer": 0.0,
        "workers": 1.25,
        "client": 0.125,
    }


def test_a_pid_reused_by_another_role_counts_from_zero() -> None:
    spent = cpu_spent({5: ("workers", 4.0)}, {5: ("writer", 0.5)})
    assert spent["writer"] == 0.5 and spent["workers"] == 0.0
    assert list(spent) == list(ROLES)


def test_cpu_by_process_reads_the_node_its_known_children_and_this_process() -> None:
    """A stand-in node (a real process) with a child that runs a known module and one that
    does not: only the node, the known child and this process are read."""
    script = (
        "import subprocess, sys\n"
        "kids = [subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)',"
        " '-m', 'tamma_actors._worker']),"
        " subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)'])]\n"
        "print(' '.join(str(k.pid) for k in kids), flush=True)\n"
        "sys.stdin.read()\n"
        "for k in kids: k.kill()\n"
    )
    node = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert node.stdout is not None
        worker, other = (int(pid) for pid in node.stdout.readline().split())
        sample = cpu_by_process(node.pid)
        assert {pid: role for pid, (role, _) in sample.items()} == {
            node.pid: "node",
            worker: "workers",
            os.getpid(): "client",
        }
        assert other not in sample
        assert sample[os.getpid()][1] > 0
    finally:
        node.communicate("", timeout=10)


def test_a_node_that_is_gone_leaves_only_this_process() -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert {role for role, _ in cpu_by_process(gone.pid).values()} == {"client"}
