"""W1-W4 on Ray: a local Ray instance with 2 CPUs (so 2 tasks run at once, each in a worker
process of its own), tasks chained by passing their object refs; nothing is persisted.

Ray starts its worker processes lazily: a few tasks are run before any workload so that
the first one does not pay for them (tamma's node and workers are started before too).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from typing import Any

from benchmarks._workloads import Sizes
from benchmarks.compare import _tasks
from benchmarks.compare._tasks import one_at_a_time

__all__ = ["ray_system"]


@contextlib.contextmanager
def ray_system() -> Iterator[dict[str, Any]]:
    """A local Ray instance (2 CPUs, no dashboard, no usage reports); shut down on exit.
    Yields the remote ``noop`` and ``cpu`` tasks."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # it would report over the network
    import ray

    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.WARNING,
    )
    try:
        tasks = {"noop": ray.remote(_tasks.noop), "cpu": ray.remote(_tasks.cpu)}
        ray.get([tasks["noop"].remote(i) for i in range(8)], timeout=120)  # workers up
        yield tasks
    finally:
        ray.shutdown()


def w1(tasks: dict[str, Any], sizes: Sizes) -> dict[str, float]:
    import ray

    return one_at_a_time(
        sizes.w1_starts,
        lambda i: tasks["noop"].remote(i),
        lambda ref: ray.get(ref, timeout=sizes.timeout),
    )


def _chains(fn: Any, count: int, steps: int, first: Any) -> float:
    import ray

    began = time.perf_counter()
    ends = []
    for i in range(count):
        ref = fn.remote(first(i))
        for _ in range(steps - 1):
            ref = fn.remote(first(i), ref)  # ray resolves the ref before the task runs
        ends.append(ref)
    ray.get(ends, timeout=600)
    return time.perf_counter() - began


def w2(tasks: dict[str, Any], sizes: Sizes) -> dict[str, float]:
    wall = _chains(tasks["noop"], sizes.w2_workflows, sizes.w2_steps, lambda i: i)
    return {"steps_per_s": sizes.w2_workflows * sizes.w2_steps / wall}


def w3(tasks: dict[str, Any], sizes: Sizes) -> dict[str, float]:
    import ray

    noop = tasks["noop"]
    began = time.perf_counter()
    first = noop.remote(0)
    fan = [noop.remote(i, first) for i in range(sizes.w3_items)]
    ray.get(noop.remote(0, *fan), timeout=600)  # the join waits for every item
    return {"wall_s": time.perf_counter() - began}


def w4(tasks: dict[str, Any], sizes: Sizes) -> dict[str, float]:
    wall = _chains(tasks["cpu"], sizes.w4_workflows, sizes.w4_steps, lambda i: sizes.w4_cpu_ms)
    return {"wall_s": wall}
