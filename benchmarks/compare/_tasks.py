"""Step bodies shared by the Celery and Dask runs: the same work as tamma's built-ins."""

from __future__ import annotations

import time
from typing import Any


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
