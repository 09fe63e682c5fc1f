"""The messages between execution supervisors and the WorkerPool.

Supervisors tell the pool :class:`Dispatch` (a task and whom to report to) and
:class:`Cancel` (and the node :class:`HoldQueue` when it drains); the pool tells a task's
owner :class:`TaskStarted`, :class:`TaskProgress`, :class:`TaskFinished` and
:class:`TaskRedispatched` (its worker was lost; it runs again). The pool tells through
:func:`notify`, which a stopped owner does not fail. A supervisor that stops with a result
it did not take hands it back (:class:`Undelivered`): the pool keeps such results a while
for a dispatch of the same task (see ``_workerpool``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pykka

__all__ = [
    "Cancel",
    "Dispatch",
    "HoldQueue",
    "TaskFinished",
    "TaskProgress",
    "TaskRedispatched",
    "TaskStarted",
    "Undelivered",
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
class HoldQueue:
    """The node is draining: send no queued task to a worker any more (each stays
    committed as dispatched and goes out again when the node starts next)."""


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


@dataclass(frozen=True)
class Undelivered:
    """A result its owner stopped before taking (a turn raised, or its commit failed)."""

    finished: TaskFinished


def notify(owner: pykka.ActorRef[Any], message: Any) -> bool:
    """Tell a task's owner; False if it has stopped (an execution that has ended, or
    one whose supervisor failed) and no longer listens."""
    try:
        owner.tell(message)
    except pykka.ActorDeadError:
        return False
    return True


def cancelled_error(message: str) -> dict[str, Any]:
    """The ``error`` of a :class:`TaskFinished` for a cancelled task."""
    return {"type": "StepCancelled", "message": message, "retryable": False, "retry_after": None}
