"""The Celery app the comparison's workers run (broker and backend from TAMMA_CMP_REDIS)."""

from __future__ import annotations

import os
from typing import Any

from celery import Celery  # type: ignore[import-untyped]

from benchmarks.compare import _tasks

_URL = os.environ.get("TAMMA_CMP_REDIS", "redis://127.0.0.1:6379/0")
app = Celery("tamma_compare", broker=_URL, backend=_URL)
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    worker_prefetch_multiplier=4,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task(name="noop")  # type: ignore[untyped-decorator]
def noop(value: Any = None, *rest: Any) -> Any:
    return _tasks.noop(value, *rest)


@app.task(name="cpu")  # type: ignore[untyped-decorator]
def cpu(ms: float, *rest: Any) -> dict[str, float]:
    return _tasks.cpu(ms)
