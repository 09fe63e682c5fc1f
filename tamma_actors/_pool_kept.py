"""The results the worker pool keeps for owners that had stopped.

A result whose owner had stopped (its supervisor failed, or its commit did), unless the
owner had cancelled the task, is kept by task id, as is one an owner hands back
(``Undelivered``): the supervisor brought back from the store dispatches the same attempt
again, and gets that result instead of running the step a second time. A task id names an
execution, a step and an attempt, so the result is the one that attempt had. At most
``_KEEP_UNDELIVERED`` results are kept, with outputs and errors of
``_KEEP_UNDELIVERED_BYTES`` in all (encoded), each for ``_KEEP_UNDELIVERED_S``; the oldest
go first.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from tamma_actors._codec import pack
from tamma_actors._errors import TammaError
from tamma_actors._pool_messages import TaskFinished

__all__ = ["KeptResults"]

log = logging.getLogger("tamma_actors._workerpool")

_KEEP_UNDELIVERED = 1024
_KEEP_UNDELIVERED_S = 600.0
_KEEP_UNDELIVERED_BYTES = 64 << 20


@dataclass(frozen=True)
class _Kept:
    """What a stopped owner was to be told of a finished task (the last report is its
    TaskFinished), since when, and how many bytes its output and error take encoded."""

    at: float
    size: int
    reports: tuple[Any, ...]


class KeptResults:
    """What stopped owners were to be told of finished tasks, by task id (see above)."""

    def __init__(self) -> None:
        self._kept: OrderedDict[str, _Kept] = OrderedDict()
        self.size = 0  # bytes: the outputs and errors kept, encoded

    def __len__(self) -> int:
        return len(self._kept)

    def take(self, task_id: str) -> tuple[Any, ...] | None:
        """What the owner of ``task_id`` was to be told, if it was kept; it is kept no more."""
        kept = self._kept.pop(task_id, None)
        if kept is None:
            return None
        self.size -= kept.size
        return kept.reports

    def keep(self, reports: tuple[Any, ...]) -> None:
        """Keep what a stopped owner was to be told of a finished task (the last report is
        its TaskFinished), for a dispatch of the same task; the oldest go first."""
        finished: TaskFinished = reports[-1]
        try:
            size = len(pack([finished.output, finished.error]))
        except TammaError:  # it came over the wire, so this is not expected: not kept
            size = _KEEP_UNDELIVERED_BYTES + 1
        if size > _KEEP_UNDELIVERED_BYTES:
            log.warning("result of %s not kept for a later dispatch: %d bytes",
                        finished.task_id, size)  # fmt: skip
            return
        now = time.monotonic()
        kept = self._kept
        old = kept.pop(finished.task_id, None)
        self.size += size - (old.size if old is not None else 0)
        kept[finished.task_id] = _Kept(now, size, reports)
        while kept:
            oldest = next(iter(kept.values()))
            if (
                len(kept) <= _KEEP_UNDELIVERED
                and self.size <= _KEEP_UNDELIVERED_BYTES
                and now - oldest.at <= _KEEP_UNDELIVERED_S
            ):
                break
            kept.popitem(last=False)
            self.size -= oldest.size
