"""What the compared systems' runs share: the step bodies (the same work as tamma's
built-ins) and W1's timing loop."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from benchmarks._stats import latency_figures

H = TypeVar("H")


def noop(value: Any = None, *_: Any) -> Any:
    return value


def cpu(ms: float, *_: Any) -> dict[str, float]:
    """Burn ``ms`` milliseconds of this thread's CPU time (like the ``cpu`` built-in)."""
    budget = ms / 1000.0
    start = time.thread_time()
    spins = 0
    while time.thread_time() - start < budget:
        spins += 1
    return {"ms": ms, "spins": spins}


def one_at_a_time(
    count: int, submit: Callable[[int], H], finish: Callable[[H], object]
) -> dict[str, float]:
    """W1: ``count`` 1-step workflows one after the other; ``submit(i)`` starts one (it is
    accepted when that returns) and ``finish(handle)`` waits for its end (completed)."""
    accepted, completed = [], []
    for i in range(count):
        began = time.perf_counter()
        handle = submit(i)
        accepted.append((time.perf_counter() - began) * 1000)
        finish(handle)
        completed.append((time.perf_counter() - began) * 1000)
    return latency_figures(accepted, completed)
