"""What the worker pool reports about an execution's tasks, and what a failed attempt leads
to: a mixin of :class:`~tamma_actors._execution.ExecutionSupervisor`.

- ``TaskStarted`` moves a dispatched step to ``running`` and arms its run deadline;
  ``TaskProgress`` is liveness (it pushes the heartbeat deadline).
- ``TaskRedispatched``: a lost worker does not use up an attempt, unless the same attempt
  loses its worker more than :data:`MAX_REDISPATCH` times; then it fails (retryably). A
  compensation has the same bound (``_compensation``), then fails.
- ``TaskFinished`` completes the step or hands its error to the retry policy; a result for
  a task the execution no longer tracks (cancelled, timed out, from before a restart) is
  discarded.
- A retryable error within the policy's attempts schedules the next attempt
  (``retry_wait``, a timer telling :class:`RetryDue`; a ``retry_after`` in the error wins
  over the computed delay); otherwise the step fails, and under ``fail_fast`` or
  ``compensate`` the open steps are cancelled.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from tamma_actors._retry import plan_retry
from tamma_actors._step_base import tell
from tamma_actors._workerpool import (
    Cancel,
    TaskFinished,
    TaskProgress,
    TaskRedispatched,
    TaskStarted,
)

if TYPE_CHECKING:
    import pykka

    from tamma_actors._deadlines import Deadlines
    from tamma_actors._execution import ExecutionDeps
    from tamma_actors._execution_commit import Effect
    from tamma_actors._models import WorkflowConfig
    from tamma_actors._state import ExecutionState
    from tamma_actors._timers import TimerHandle

__all__ = ["MAX_REDISPATCH", "RetryDue", "TaskReports"]

# The supervisor's log, wherever in its modules a message comes from.
log = logging.getLogger("tamma_actors._execution")

MAX_REDISPATCH = 2  # worker losses one attempt survives before it counts as a failure


@dataclass(frozen=True)
class RetryDue:
    step: str
    attempt: int


class TaskReports:
    if TYPE_CHECKING:
        state: ExecutionState
        cfg: WorkflowConfig
        deps: ExecutionDeps
        _deadlines: Deadlines
        _inflight: dict[str, str]
        _lost: dict[str, int]
        _retry_timers: dict[str, TimerHandle]
        actor_ref: pykka.ActorRef[Any]

        def _emit(self, etype: str, **data: Any) -> None: ...
        def _advance(self) -> None: ...
        def _after_commit(self, effect: Effect) -> None: ...
        def _item_started(self, msg: TaskStarted) -> bool: ...
        def _item_redispatched(self, msg: TaskRedispatched) -> bool: ...
        def _item_finished(self, msg: TaskFinished) -> bool: ...
        def _compensation_finished(self, msg: TaskFinished) -> bool: ...
        def _compensation_redispatched(self, msg: TaskRedispatched) -> None: ...
        def _compensation_started(self, msg: TaskStarted) -> None: ...
        def _compensation_progress(self, msg: TaskProgress) -> None: ...
        def _running_deadline(
            self, name: str, attempt: int, ran: float = 0.0
        ) -> dict[str, Any]: ...
        def _queue_deadline(self, name: str, attempt: int) -> dict[str, Any]: ...
        def _heartbeat(self, name: str) -> None: ...
        def _breaker_outcome(self, name: str, ok: bool) -> None: ...
        def _cancel_open_steps(self, reason: str) -> None: ...

    def _on_task_started(self, msg: TaskStarted) -> None:
        if self._item_started(msg):
            return
        name = self._inflight.get(msg.task_id)
        if name is None:
            self._compensation_started(msg)
        elif self.state.steps[name].status == "dispatched":
            attempt = self.state.steps[name].attempts
            self._emit(
                "step.started",
                step=name,
                attempt=attempt,
                worker=msg.worker_id,
                **self._running_deadline(name, attempt, msg.ran_s),
            )

    def _on_task_progress(self, msg: TaskProgress) -> None:
        name = self._inflight.get(msg.task_id)
        if name is not None:
            self._heartbeat(name)  # progress is liveness: it pushes the heartbeat deadline
        else:
            self._compensation_progress(msg)

    def _on_task_redispatched(self, msg: TaskRedispatched) -> None:
        """A lost worker does not use up an attempt — unless the same attempt keeps losing
        its worker: a step that crashes every process it runs in then fails (retryably)."""
        if self._item_redispatched(msg):
            return
        name = self._inflight.get(msg.task_id)
        if name is None:
            self._compensation_redispatched(msg)
            return
        if self.state.steps[name].status not in ("dispatched", "running"):
            return
        attempt = self.state.steps[name].attempts
        lost = self._lost.get(msg.task_id, 0) + 1
        self._lost[msg.task_id] = lost
        if lost <= MAX_REDISPATCH:
            self._emit(
                "step.redispatched",
                step=name,
                attempt=attempt,
                reason=msg.reason,
                **self._queue_deadline(name, attempt),
            )
            return
        del self._inflight[msg.task_id]
        self._deadlines.cancel_step(name)
        self._breaker_outcome(name, False)
        self._after_commit(partial(self.deps.pool.tell, Cancel(msg.task_id)))
        error = {
            "type": "WorkerLost",
            "retryable": True,
            "message": f"its worker was lost {lost} times ({msg.reason})",
        }
        self._on_step_error(name, attempt, error)
        self._advance()

    def _on_task_finished(self, msg: TaskFinished) -> None:
        if self._item_finished(msg):
            return
        name = self._inflight.pop(msg.task_id, None)
        if name is None:
            if self._compensation_finished(msg):
                return
            log.info("execution %s: stale result for %s ignored", self.state.id, msg.task_id)
            return
        st = self.state.steps[name]
        if st.status not in ("dispatched", "running"):
            return  # cancelled meanwhile (abort, fail_fast): the late result is discarded
        self._deadlines.cancel_step(name)
        self._breaker_outcome(name, msg.ok)
        if msg.ok:
            self._emit(
                "step.completed",
                step=name,
                attempt=st.attempts,
                output=msg.output,
                duration_ms=msg.duration_ms,
            )
        else:
            self._on_step_error(name, st.attempts, msg.error or {})
        self._advance()

    def _on_step_error(self, name: str, attempt: int, error: dict[str, Any]) -> None:
        used = attempt - self.state.steps[name].attempt_base
        info, delay = plan_retry(self.cfg.retry_policy_for(name), used, error, self.deps.rand)
        if delay is not None:
            at = self.deps.clock() + delay
            # while paused the whole wait is left for the resume: the event says so, so
            # that a log written before this rule replays as it ran
            held = {"frozen": delay} if self.state.status == "paused" else {}
            self._emit(
                "step.retry_scheduled",
                step=name,
                attempt=attempt,
                error=info,
                delay_s=delay,
                retry_at=at,
                **held,
            )
            if self.state.status == "running":
                self._arm_retry(name, attempt, at)
            return
        self._emit("step.failed", step=name, attempt=attempt, error=info)
        if self.cfg.error_handling.strategy in ("fail_fast", "compensate"):
            self._cancel_open_steps(f"step {name!r} failed")

    def _arm_retry(self, name: str, attempt: int, at_wall: float) -> None:
        delay = max(0.0, at_wall - self.deps.clock())
        ref = self.actor_ref
        self._retry_timers[name] = self.deps.timers.call_later(
            delay, lambda: tell(ref, RetryDue(name, attempt))
        )

    def _on_retry_due(self, msg: RetryDue) -> None:
        self._retry_timers.pop(msg.step, None)
        st = self.state.steps[msg.step]
        if (
            self.state.status == "running"
            and st.status == "retry_wait"
            and (st.attempts == msg.attempt)
        ):
            self._emit("step.ready", step=msg.step)
            self._advance()
