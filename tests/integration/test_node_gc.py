"""The processes tamma starts itself (the node, its workers) tune Python's cyclic
collector; a node embedded in someone else's process leaves theirs alone. Health reports
what the node's collector is doing."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest

from tamma_actors import Client
from tamma_actors._config import load_node_config
from tamma_actors._gc import GC_YOUNG_THRESHOLD
from tamma_actors._node import Node

pytestmark = pytest.mark.integration

_NOOP = {"name": "one", "steps": [{"name": "a", "implementation": "noop"}]}


@contextmanager
def _tamma_node(data: Path) -> Iterator[tuple[subprocess.Popen[str], Client]]:
    """A real ``tamma-node run`` with one worker, up and answering; stopped with SIGTERM,
    which it must obey with exit code 0 (killed if the test failed first)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tamma_actors._cli_node", "run", "--data-dir", str(data),
         "--workers", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None and "control" in proc.stdout.readline()
        with Client(f"ipc://{data / 'control.sock'}", timeout=30.0) as client:
            yield proc, client
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_tamma_node_run_freezes_what_it_loaded_and_collects_less_often(short_dir: Path) -> None:
    with _tamma_node(short_dir / "var") as (_, client):
        collector = client.health()["node"]["gc"]
    assert collector["threshold"][0] == GC_YOUNG_THRESHOLD
    assert collector["frozen"] > 1000  # the modules and classes loaded before the node
    assert len(collector["collections"]) == 3


def test_an_embedded_node_leaves_its_host_s_collector_alone(short_dir: Path) -> None:
    before = (gc.get_threshold(), gc.get_freeze_count(), gc.isenabled())
    with Node(load_node_config(None, data_dir=short_dir / "var", workers=0)) as node:
        report = node.engine.health().result(30)
        assert (gc.get_threshold(), gc.get_freeze_count(), gc.isenabled()) == before
    assert report["node"]["gc"]["threshold"] == list(before[0])
    assert report["node"]["gc"]["frozen"] is None  # tamma froze nothing of its host's


@pytest.mark.parametrize(
    "entry",
    [
        "from tamma_actors import _worker as w; main = lambda: w.main(['--connect', ENDPOINT])",
        "from tamma_actors import _cli_node as c, _worker as w; "
        "main = lambda: c.main(['worker', '--connect', ENDPOINT])",
    ],
)
def test_a_worker_process_tunes_its_collector_before_it_runs_steps(entry: str) -> None:
    """``python -m tamma_actors._worker`` (a node's local workers) and ``tamma-node worker``
    (one on another machine): the collector is set when the worker starts serving."""
    probe = (
        "import gc\n"
        "ENDPOINT = 'ipc:///nonexistent/workers.sock'\n"
        f"{entry}\n"
        "w.run_worker = lambda *a, **k: print(gc.get_threshold()[0], gc.get_freeze_count() > 0)"
        " or 0\n"
        "raise SystemExit(main())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.split() == [str(GC_YOUNG_THRESHOLD), "True"]


def _cpus_of(pid: int, tid: int | None = None) -> frozenset[int] | None:
    """The CPUs a process (or one of its threads) may run on; None once it has ended."""
    try:
        return frozenset(os.sched_getaffinity(tid if tid is not None else pid))
    except ProcessLookupError:
        return None


def _child(node: psutil.Process, module: str, other_than: int = 0) -> psutil.Process | None:
    """The node's live child running ``module`` (one killed may linger as a zombie)."""
    for child in node.children():
        try:
            if child.pid != other_than and module in " ".join(child.cmdline()):
                return child
        except psutil.Error:
            continue
    return None


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="pinning needs two CPUs")
def test_tamma_node_run_pins_its_threads_and_its_children_keep_every_cpu(
    short_dir: Path,
) -> None:
    everything = frozenset(os.sched_getaffinity(0))
    with _tamma_node(short_dir / "var") as (proc, client):
        cpu = client.health()["node"]["cpu"]
        assert cpu in everything
        threads = [int(t) for t in os.listdir(f"/proc/{proc.pid}/task")]
        assert len(threads) >= 8  # dispatchers, writer, bus, pool, control, ZeroMQ ...
        # every thread that still runs (a short-lived one may end while we look)
        assert {_cpus_of(proc.pid, t) for t in threads} - {None} == {frozenset({cpu})}
        node = psutil.Process(proc.pid)
        children = node.children()
        assert len(children) == 2  # the store writer process and one worker
        # A child the pool's thread spawned after the node pinned it inherits its CPU
        # until its main() has begun (the node answers before a worker has joined).
        deadline = time.monotonic() + 30
        while {_cpus_of(c.pid) for c in children} != {everything}:
            assert time.monotonic() < deadline, [_cpus_of(c.pid) for c in children]
            time.sleep(0.05)
        # A replacement is started by a pinned thread of the node (the pool's for a
        # worker, the supervision loop's for the writer): it inherits that CPU, and
        # runs on every CPU again once its main() has begun.
        for module in ("tamma_actors._worker", "tamma_actors._writer_main"):
            gone = _child(node, module)
            assert gone is not None
            gone.kill()
            deadline = time.monotonic() + 30
            while True:
                new = _child(node, module, other_than=gone.pid)
                if new is not None and _cpus_of(new.pid) == everything:
                    break
                assert time.monotonic() < deadline, f"no {module} on every CPU again"
                time.sleep(0.05)
        assert client.wait(client.start_workflow(_NOOP).id, timeout=30).status == "completed"
