"""W1-W4 on Dask distributed: a LocalCluster of 2 worker processes, 1 thread each."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

from benchmarks._workloads import Sizes
from benchmarks.compare._tasks import cpu, noop, one_at_a_time

__all__ = ["dask_system"]


@contextlib.contextmanager
def dask_system() -> Iterator[Any]:
    from dask.distributed import Client, LocalCluster

    with (
        LocalCluster(  # type: ignore[no-untyped-call]
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,  # type: ignore[no-untyped-call]
    ):
        client.wait_for_workers(2, timeout=60)
        yield client


def w1(c: Any, sizes: Sizes) -> dict[str, float]:
    return one_at_a_time(
        sizes.w1_starts,
        lambda i: c.submit(noop, i, pure=False),
        lambda future: future.result(timeout=sizes.timeout),
    )


def _chains(c: Any, count: int, steps: int, fn: Any, first: Any) -> float:
    from dask.distributed import wait

    began = time.perf_counter()
    ends = []
    for i in range(count):
        future = c.submit(fn, first(i), pure=False)
        for _ in range(steps - 1):
            future = c.submit(fn, first(i), future, pure=False)
        ends.append(future)
    wait(ends, timeout=600)  # type: ignore[no-untyped-call]
    return time.perf_counter() - began


def w2(c: Any, sizes: Sizes) -> dict[str, float]:
    wall = _chains(c, sizes.w2_workflows, sizes.w2_steps, noop, lambda i: i)
    return {"steps_per_s": sizes.w2_workflows * sizes.w2_steps / wall}


def w3(c: Any, sizes: Sizes) -> dict[str, float]:
    began = time.perf_counter()
    first = c.submit(noop, 0, pure=False)
    fan = [c.submit(noop, first, i, pure=False) for i in range(sizes.w3_items)]
    c.submit(noop, fan, pure=False).result(timeout=600)
    return {"wall_s": time.perf_counter() - began}


def w4(c: Any, sizes: Sizes) -> dict[str, float]:
    wall = _chains(c, sizes.w4_workflows, sizes.w4_steps, cpu, lambda i: sizes.w4_cpu_ms)
    return {"wall_s": wall}
