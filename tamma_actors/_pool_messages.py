"""The messages between execution supervisors and the WorkerPool.

Supervisors tell the pool :class:`Dispatch` (a task and whom to report to) and
:class:`Cancel`; the pool tells a task's owner :class:`TaskStarted`, :class:`TaskProgress`,
:class:`TaskFinished` and :class:`TaskRedispatched` (its worker was lost; it runs again).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pykka

__all__ = [
    "Cancel",
    "Dispatch",
    "TaskFinished",
    "TaskProgress",
    "TaskRedispatched",
    "TaskStarted",
]


@dataclass(frozen=True)
class Dispatch:
    task: dict[str, Any]
    reply_to: pykka.ActorRef[Any]


@dataclass(frozen=True)
class Cancel:
    task_id: str


@dataclass(frozen=True)
class TaskStarted:
    task_id: str
    worker_id: str
    ran_s: float = 0.0  # the worker held the notice: the step began this long before


@dataclass(frozen=True)
class TaskProgress:
    task_id: str
    progress: Any


@dataclass(frozen=True)
class TaskFinished:
    task_id: str
    ok: bool
    output: Any
    error: dict[str, Any] | None
    duration_ms: float


@dataclass(frozen=True)
class TaskRedispatched:
    task_id: str
    reason: str
