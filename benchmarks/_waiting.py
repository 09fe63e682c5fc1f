"""W5 and W6: many executions parked in the built-in ``wait`` step (a coordinator timer).

W5 kills the node with SIGKILL and measures how long a new node takes until it serves
requests (``serving_s``), until all N are back (health's ``executions.live`` plus
``executions.resting``: a supervisor, or a wake-up timer armed at the wait's end) and the
last execution in recovery order answers ``status`` (``recovery_s``), and until every one
of them has answered (``all_status_s``, which includes serving those N requests). W6
measures the coordinator's RSS with N executions waiting, and W2's throughput under that
load against W2 on a twin node with nothing parked, in pairs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from benchmarks._node import BenchmarkError, EventTap, NodeProcess
from benchmarks._stats import Result, aggregate
from benchmarks._workloads import Bench, Sizes, Unavailable, chain, w2
from tamma_actors import Client
from tamma_actors._errors import TammaError

__all__ = ["W5_TITLE", "W6_TITLE", "run_w5", "run_w6"]

W5_TITLE = "{n} waiting executions, SIGKILL, restart: until all re-activated and serving"
W6_TITLE = "{n} waiting executions: coordinator RSS; W2 under that load"
_WAIT = {"name": "bench-wait", "steps": [{"name": "park", "implementation": "wait",
                                          "config": {"seconds": 3600}}]}  # fmt: skip
_BIG_STORE = {"TAMMA_MAP_SIZE": str(8 << 30)}

Progress = Callable[[str, float, float], None]


def _park(client: Client, count: int, what: str, progress: Progress) -> list[str]:
    """Start ``count`` executions of the wait workflow; refuse to go on without ``wait``."""
    try:
        first = client.start_workflow(_WAIT)
    except TammaError as exc:
        raise Unavailable(f"the node has no built-in `wait` step: {exc}") from exc
    ids = [first.id]
    chunk = 2000
    while len(ids) < count:
        n = min(chunk, count - len(ids))
        ids += [e.id for e in client.start_workflows(_WAIT, ({} for _ in range(n)))]
        progress(what, len(ids), count)
    status = client.get_workflow_status(first.id)
    if status.status != "running":
        raise Unavailable(f"a `wait` execution is {status.status}, not running")
    return ids


def _all_running(client: Client, ids: list[str]) -> None:
    statuses = client.request_many("status", ({"id": i} for i in ids), timeout=60.0)
    bad = [s for s in statuses if s.get("status") != "running"]
    if bad:
        raise Unavailable(f"{len(bad)} waiting executions are not running after restart")


def _until_recovered(client: Client, count: int, deadline: float) -> None:
    """Until ``count`` executions are back: live (a supervisor) or resting (a wake timer)."""
    while True:
        executions = client.health()["executions"]
        back = int(executions["live"]) + int(executions.get("resting", 0))
        if back >= count:
            return
        if time.perf_counter() >= deadline:
            raise BenchmarkError(f"only {back} of {count} executions recovered in time")
        time.sleep(0.05)


def run_w5(scratch: Path, sizes: Sizes, runs: int, progress: Progress) -> Result:
    n = sizes.w5_executions
    title = W5_TITLE.format(n=f"{n:,}")
    samples: list[dict[str, float]] = []
    with NodeProcess(scratch / "w5", env=_BIG_STORE) as node:
        with Client(node.control, timeout=60.0) as client:
            ids = _park(client, n, "W5 start", progress)
        last = max(ids)  # recovery goes in id order: the last one re-activated
        for run in range(runs):
            node.kill()
            began = time.perf_counter()
            serving = node.start(timeout=sizes.timeout)
            with Client(node.control, timeout=60.0) as client:
                # The node serves while it recovers, and a request re-activates its own
                # execution on the spot: wait until all N are back (live, or resting with
                # their wake timer armed), then for the last one in recovery order to
                # answer.
                _until_recovered(client, n, began + sizes.timeout)
                _all_running(client, [last])
                recovered = time.perf_counter() - began
                _all_running(client, ids)  # and every one answers through its supervisor
                every = time.perf_counter() - began
            samples.append({"recovery_s": recovered, "serving_s": serving, "all_status_s": every})
            progress("W5", run + 1, runs)
    return aggregate("W5", title, samples)


def run_w6(scratch: Path, sizes: Sizes, runs: int, progress: Progress) -> Result:
    """RSS with N executions waiting, and W2 under that load against W2 on a twin node
    (same settings, nothing parked), measured in pairs back to back (which goes first
    alternates): each run's ratio compares the two at the same moment, so the machine's
    drift over the minutes it takes to park N executions is not in it."""
    n = sizes.w6_executions
    title = W6_TITLE.format(n=f"{n:,}")
    with (
        NodeProcess(scratch / "w6", env=_BIG_STORE) as node,
        Client(node.control, timeout=60.0) as client,
        EventTap(node.events) as tap,
        NodeProcess(scratch / "w6-twin") as twin,
        Client(twin.control, timeout=60.0) as twin_client,
        EventTap(twin.events) as twin_tap,
    ):
        tap.sync(client, chain("bench-sync", 1))
        twin_tap.sync(twin_client, chain("bench-sync", 1))
        loaded_bench = Bench(node, client, tap, sizes, progress)
        alone_bench = Bench(twin, twin_client, twin_tap, sizes, progress)
        w2(alone_bench)  # both warm (a first W2 pays for imports and first allocations)
        w2(loaded_bench)
        _park(client, n, "W6 start", progress)
        # W2 "while they wait": after the node has published their creation (the events of
        # 100,000 starts); a probe's end reaches us once every event before it did
        tap.sync(client, chain("bench-sync", 1), timeout=120.0)
        samples: list[dict[str, Any]] = []
        for run in range(runs):
            if run % 2 == 0:
                alone = w2(alone_bench)["steps_per_s"]
                loaded = w2(loaded_bench)["steps_per_s"]
            else:
                loaded = w2(loaded_bench)["steps_per_s"]
                alone = w2(alone_bench)["steps_per_s"]
            rss = psutil.Process(node.pid).memory_info().rss / (1 << 20)
            samples.append(
                {
                    "rss_mib": rss,
                    "w2_steps_per_s": loaded,
                    "w2_alone_steps_per_s": alone,
                    "w2_ratio": loaded / alone,
                }
            )
            progress("W6", run + 1, runs)
    return aggregate("W6", title, samples)
