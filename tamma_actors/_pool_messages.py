"""The messages between execution supervisors and the WorkerPool.

Supervisors tell the pool :class:`Dispatch` (a task and whom to report to) and
:class:`Cancel`; the pool tells a task's owner :class:`TaskStarted`, :class:`TaskProgress`,
:class:`TaskFinished` and :class:`TaskRedispatched` (its worker was lost; it runs again).
The pool tells through :func:`notify`, which a stopped owner does not fail.
"""

from __future__ import annotations

import contextlib
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
    "cancelled_error",
    "notify",
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


def notify(owner: pykka.ActorRef[Any], message: Any) -> None:
    """Tell a task's owner; an execution that has ended meanwhile no longer listens."""
    with contextlib.suppress(pykka.ActorDeadError):
        owner.tell(message)


def cancelled_error(message: str) -> dict[str, Any]:
    """The ``error`` of a :class:`TaskFinished` for a cancelled task."""
    return {"type": "StepCancelled", "message": message, "retryable": False, "retry_after": None}
