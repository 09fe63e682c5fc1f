"""W1-W4 on DBOS Transact: a durable engine like tamma (its steps checkpointed in SQLite,
which syncs each commit), run as DBOS runs: a library inside the application's process,
each workflow on a thread of its own (so its steps share that process's GIL).

A workflow is a chain of ``@DBOS.step`` calls; W3's items are child workflows started
together (``DBOS.start_workflow`` from the parent: no queue polling in between).
DBOS is a process-wide singleton: it is launched once and destroyed at the end.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dbos import DBOS, DBOSConfig

from benchmarks._workloads import Sizes
from benchmarks.compare import _tasks
from benchmarks.compare._tasks import one_at_a_time

__all__ = ["dbos_system"]


@DBOS.step()
def noop(value: Any = None) -> Any:
    return _tasks.noop(value)


@DBOS.step()
def cpu(ms: float) -> dict[str, float]:
    return _tasks.cpu(ms)


@DBOS.workflow()
def noop_chain(steps: int) -> Any:
    value = None
    for _ in range(steps):
        value = noop(value)
    return value


@DBOS.workflow()
def cpu_chain(steps: int, ms: float) -> None:
    for _ in range(steps):
        cpu(ms)


@DBOS.workflow()
def item(i: int) -> Any:
    return noop(i)


@DBOS.workflow()
def fan(items: int) -> int:
    noop(0)
    handles = [DBOS.start_workflow(item, i) for i in range(items)]
    done = [h.get_result() for h in handles]
    noop(len(done))
    return len(done)


@contextlib.contextmanager
def dbos_system(scratch: Path) -> Iterator[None]:
    """DBOS launched on a SQLite system database in ``scratch``; destroyed on exit."""
    scratch.mkdir(parents=True, exist_ok=True)
    config: DBOSConfig = {
        "name": "tamma-compare",
        "system_database_url": f"sqlite:///{scratch / 'dbos.sqlite'}",
        "log_level": "WARNING",
    }
    DBOS(config=config)
    DBOS.launch()
    try:
        yield
    finally:
        DBOS.destroy()


def w1(_: Any, sizes: Sizes) -> dict[str, float]:
    return one_at_a_time(
        sizes.w1_starts,
        lambda _i: DBOS.start_workflow(noop_chain, 1),  # returns once its status is stored
        lambda handle: handle.get_result(),
    )


def w2(_: Any, sizes: Sizes) -> dict[str, float]:
    began = time.perf_counter()
    handles = [DBOS.start_workflow(noop_chain, sizes.w2_steps) for _ in range(sizes.w2_workflows)]
    for handle in handles:
        handle.get_result()
    return {"steps_per_s": sizes.w2_workflows * sizes.w2_steps / (time.perf_counter() - began)}


def w3(_: Any, sizes: Sizes) -> dict[str, float]:
    began = time.perf_counter()
    DBOS.start_workflow(fan, sizes.w3_items).get_result()
    return {"wall_s": time.perf_counter() - began}


def w4(_: Any, sizes: Sizes) -> dict[str, float]:
    began = time.perf_counter()
    handles = [
        DBOS.start_workflow(cpu_chain, sizes.w4_steps, sizes.w4_cpu_ms)
        for _ in range(sizes.w4_workflows)
    ]
    for handle in handles:
        handle.get_result()
    return {"wall_s": time.perf_counter() - began}
