"""StepProbe: run one step of an execution once, outside its schedule (``execute_step``).

The story's ``executeStep(executionId, stepName, context)``: an operator runs a step with a
context of their choosing — to try a fix, or to see what a step would produce — without
touching the execution. The probe is a short-lived PoolActor that sends one task to the
worker pool and resolves a future with a step result when the task finishes (``timed_out``
when it does not finish in time: it is then cancelled). The execution's state and event
log are not changed: a probe is not part of the run, so it needs no commit before it is
dispatched.

Probe task ids are ``execution_id/step/probe-N``: they can never fence or be fenced by the
execution's own attempts (``execution_id/step/attempt``).
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import pykka

from tamma_actors._deadlines import timeout_error
from tamma_actors._dispatch import Dispatcher, PoolActor
from tamma_actors._errors import RequestTimeout
from tamma_actors._timers import TimerHandle, TimerService
from tamma_actors._workerpool import (
    Cancel,
    Dispatch,
    TaskFinished,
    TaskProgress,
    TaskRedispatched,
    TaskStarted,
)

__all__ = ["StepProbe", "probe_task_id"]

_counter = itertools.count(1)


def probe_task_id(execution_id: str, step: str) -> str:
    return f"{execution_id}/{step}/probe-{next(_counter)}"


@dataclass(frozen=True)
class _Expired:
    pass


class StepProbe(PoolActor):
    """Dispatches ``task`` on start; resolves ``reply`` with a step-result record."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        pool: Any,
        timers: TimerService,
        task: dict[str, Any],
        reply: Future[dict[str, Any]],
        timeout: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(dispatcher)
        self._pool = pool
        self._timers = timers
        self._task = task
        self._reply = reply
        self._timeout = timeout
        self._clock = clock
        self._started_at: float | None = None
        self._worker: str | None = None
        self._redispatched = 0
        self._timer: TimerHandle | None = None

    def on_start(self) -> None:
        ref = self.actor_ref
        self._timer = self._timers.call_later(self._timeout, lambda: _tell(ref, _Expired()))
        self._pool.tell(Dispatch(self._task, ref))

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, TaskStarted):
            self._started_at = self._clock()
            self._worker = message.worker_id
        elif isinstance(message, TaskRedispatched):
            self._redispatched += 1  # the pool queued it again; keep waiting
        elif isinstance(message, TaskFinished):
            self._finish(message)
        elif isinstance(message, _Expired):
            self._expire()
        elif not isinstance(message, TaskProgress):
            return super().on_receive(message)
        return None

    def _finish(self, msg: TaskFinished) -> None:
        error = None
        if not msg.ok:
            error = {
                "type": str((msg.error or {}).get("type") or "StepFailure"),
                "message": str((msg.error or {}).get("message") or ""),
                "retryable": (msg.error or {}).get("retryable"),
            }
        status = "succeeded" if msg.ok else "failed"
        self._answer(status, msg.output if msg.ok else None, error, msg.duration_ms)

    def _expire(self) -> None:
        """The step overran: cancelled, and answered as a step that timed out (a result,
        like a failure: the request itself was served)."""
        self._pool.tell(Cancel(self._task["task_id"]))
        kind = "run" if self._started_at is not None else "queue"
        error = timeout_error(kind, self._task["step"], self._timeout)
        error["message"] += "; it was cancelled"
        self._answer("timed_out", None, error, None)

    def _answer(
        self, status: str, data: Any, error: dict[str, Any] | None, duration_ms: float | None
    ) -> None:
        ended = self._clock()
        started = self._started_at if self._started_at is not None else ended
        record = {
            "step": self._task["step"],
            "status": status,
            "data": data,
            "error": error,
            "attempts": 1,
            "started_at": started,
            "ended_at": ended,
            "duration_ms": duration_ms,
            "worker": self._worker,
            "task_id": self._task["task_id"],
        }
        if not self._reply.done():
            self._reply.set_result(record)
        self._end()

    def _end(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self.actor_ref.stop(block=False)

    def on_stop(self) -> None:
        if not self._reply.done():
            self._pool.tell(Cancel(self._task["task_id"]))
            self._reply.set_exception(RequestTimeout("the node stopped before the step finished"))


def _tell(ref: pykka.ActorRef[Any], message: Any) -> None:
    with contextlib.suppress(pykka.ActorDeadError):
        ref.tell(message)
