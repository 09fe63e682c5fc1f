"""The execution supervisor's deadlines: wait steps, step timeouts and the workflow timeout.

A mixin of :class:`~tamma_actors._execution.ExecutionSupervisor` (kept apart so the state
machine stays readable). The rules:

- a ``wait`` step is dispatched and started by the coordinator itself; it occupies no worker
  slot and completes when its timer fires (``{"waited_s": seconds}``);
- queue (schedule-to-start), run (start-to-close) and heartbeat deadlines of a task step
  end in ``running|dispatched -> timed_out`` with a retryable ``StepTimeout``; the task is
  cancelled through the pool (which kills the worker after its grace period and
  re-dispatches that worker's other steps without using up their attempts); then the retry
  policy decides between ``retry_wait`` and ``failed``;
- the workflow ``timeout`` cancels the open steps and fails the execution; under
  ``compensate``, once what completed is compensated (the timeout stops then);
- a compensation's deadlines (``_compensation``) are keyed ``step~compensate`` and handled
  there;
- pause freezes wait, queue and workflow deadlines, and the timeout of a fan-out or a
  subflow (pause holds the items not yet sent, or pauses the child, so a long pause would
  otherwise fail a step that was not let run), and resume re-arms them with the time they
  had left; recovery re-arms them from the wall-clock deadlines in the events.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

from tamma_actors._deadlines import (
    WAIT_IMPLEMENTATION,
    DeadlineDue,
    Deadlines,
    timeout_error,
    wait_seconds,
)
from tamma_actors._workerpool import Cancel

if TYPE_CHECKING:
    from tamma_actors._execution import ExecutionDeps
    from tamma_actors._models import WorkflowConfig
    from tamma_actors._state import ExecutionState

__all__ = ["TimeoutHandling"]


class TimeoutHandling:
    if TYPE_CHECKING:
        state: ExecutionState
        cfg: WorkflowConfig
        deps: ExecutionDeps
        _deadlines: Deadlines
        _inflight: dict[str, str]

        def _emit(self, etype: str, **data: Any) -> None: ...
        def _advance(self) -> None: ...
        def _send_task(self, name: str, attempt: int) -> None: ...
        def _after_commit(self, effect: Any) -> None: ...
        def _cancel_open_steps(self, reason: str) -> None: ...
        def _on_step_error(self, name: str, attempt: int, error: dict[str, Any]) -> None: ...
        def _breaker_admits(self, name: str) -> bool: ...
        def _compensation_only(self, name: str) -> bool: ...
        def _compensate(self, cause: dict[str, Any] | None = None) -> bool: ...
        def _compensation_deadline(self, due: DeadlineDue) -> bool: ...
        def _breaker_outcome(self, name: str, ok: bool) -> None: ...

    def _is_wait(self, name: str) -> bool:
        step = self.cfg.step(name)
        return step.type == "task" and step.implementation == WAIT_IMPLEMENTATION

    def _is_held_by_pause(self, name: str) -> bool:
        """A fan-out (a pause holds its items not yet sent) or a subflow (its child is
        paused with it): the coordinator's steps whose timeout a pause freezes."""
        return self.cfg.step(name).type in ("parallel", "subflow")

    def _frozen_by_pause(self, name: str, status: str) -> bool:
        """A step whose deadline stops while paused: one waiting for a worker to start it,
        a wait step, a fan-out and a subflow."""
        running = status == "running" and (self._is_wait(name) or self._is_held_by_pause(name))
        return running or status == "dispatched"

    def _workflow_deadline(self) -> dict[str, Any]:
        if self.cfg.timeout is None:
            return {}
        at = self.deps.clock() + self.cfg.timeout
        self._deadlines.arm("workflow", None, 0, at)
        return {"deadline": at}

    def _queue_deadline(self, name: str, attempt: int) -> dict[str, Any]:
        """Arm the schedule-to-start deadline of a step going to the pool."""
        limit = self.cfg.step(name).queue_timeout
        self._deadlines.cancel_step(name)
        if limit is None:
            return {}
        at = self.deps.clock() + limit
        if self.state.status == "running":
            self._deadlines.arm("queue", name, attempt, at)
        return {"deadline": at}

    def _launch(self, name: str, attempt: int) -> bool:
        """Dispatch a ready step; False when it takes no worker slot (a wait step)."""
        if self._compensation_only(name):
            self._emit(
                "step.skipped", step=name, reason="a compensation step runs only to compensate"
            )
            return False
        if self._is_wait(name):
            at = self.deps.clock() + wait_seconds(self.cfg.step(name).config)
            self._emit("step.dispatched", step=name, attempt=attempt)
            self._emit("step.started", step=name, attempt=attempt, worker=None, deadline=at)
            self._deadlines.arm("wait", name, attempt, at)
            return False
        if not self._breaker_admits(name):
            return False  # held: it stays ready, using no attempt, until the breaker admits it
        self._emit(
            "step.dispatched", step=name, attempt=attempt, **self._queue_deadline(name, attempt)
        )
        self._send_task(name, attempt)
        return True

    def _running_deadline(self, name: str, attempt: int, ran: float = 0.0) -> dict[str, Any]:
        """A worker started the step ``ran`` seconds ago (a held start notice): the queue
        deadline ends, run and heartbeat begin (dated from the real start)."""
        step, now = self.cfg.step(name), self.deps.clock() - ran
        self._deadlines.cancel("queue", name)
        if step.heartbeat_timeout is not None:
            self._deadlines.arm("heartbeat", name, attempt, now + step.heartbeat_timeout)
        if step.timeout is None:
            return {}
        self._deadlines.arm("run", name, attempt, now + step.timeout)
        return {"deadline": now + step.timeout}

    def _heartbeat(self, name: str) -> None:
        st = self.state.steps[name]
        limit = self.cfg.step(name).heartbeat_timeout
        if limit is not None and st.status == "running":
            self._deadlines.arm("heartbeat", name, st.attempts, self.deps.clock() + limit)

    def _on_deadline(self, due: DeadlineDue) -> None:
        if not self._deadlines.fired(due):
            return  # cancelled or re-armed after it fired: the notice is stale
        if due.kind == "workflow":
            if self.state.status == "running":
                self._workflow_timed_out()
            return
        assert due.step is not None
        if self._compensation_deadline(due):
            return
        st = self.state.steps[due.step]
        if st.attempts != due.attempt or self.state.terminal:
            return
        if due.kind == "wait":
            if st.status == "running" and self.state.status == "running":
                waited = wait_seconds(self.cfg.step(due.step).config)
                self._emit(
                    "step.completed",
                    step=due.step,
                    attempt=due.attempt,
                    output={"waited_s": waited},
                    duration_ms=waited * 1000.0,
                )
                self._advance()
            return
        wanted = "dispatched" if due.kind == "queue" else "running"
        if st.status == wanted:
            self._step_timed_out(due.step, due.attempt, due.kind)

    def _step_timed_out(self, name: str, attempt: int, kind: str) -> None:
        from tamma_actors._execution import task_id  # the supervisor module imports us

        tid = task_id(self.state.id, name, attempt)
        self._inflight.pop(tid, None)
        self._after_commit(partial(self.deps.pool.tell, Cancel(tid)))
        self._deadlines.cancel_step(name)
        self._breaker_outcome(name, False)
        step = self.cfg.step(name)
        limit = {"queue": step.queue_timeout, "run": step.timeout}.get(kind, step.heartbeat_timeout)
        error = timeout_error(kind, name, limit)
        self._emit("step.timed_out", step=name, attempt=attempt, error=error)
        self._on_step_error(name, attempt, error)
        self._advance()

    def _workflow_timed_out(self) -> None:
        """Its open steps are cancelled and, under ``compensate``, what completed is
        compensated as after any failure; then it fails, its error naming the timeout."""
        limit = self.cfg.timeout or 0.0
        self._cancel_open_steps(f"the workflow timed out after {limit:g}s")
        error = {
            "type": "WorkflowTimeout",
            "message": f"workflow {self.cfg.name!r} did not finish within its timeout ({limit:g}s)",
            "step": None,
        }
        if self._compensate(cause=error):
            return
        failed = self.state.failed_steps()
        self._emit("workflow.failed", error={**error, "failed_steps": failed})

    # -- pause, resume, recovery -------------------------------------------------------------

    def _freeze_deadlines(self) -> dict[str, Any]:
        """Pause: what wait and queue deadlines, fan-outs' and subflows' timeouts and the
        workflow timeout have left."""
        now, held = self.deps.clock(), {}
        for name, st in self.state.steps.items():
            if self._frozen_by_pause(name, st.status) and st.deadline is not None:
                held[name] = max(0.0, st.deadline - now)
                for kind in ("wait", "queue", "run"):
                    self._deadlines.cancel(kind, name)
        out: dict[str, Any] = {"held": held} if held else {}
        if self.state.deadline is not None:
            self._deadlines.cancel("workflow")
            out["workflow_left"] = max(0.0, self.state.deadline - now)
        return out

    def _thaw_deadlines(self) -> dict[str, Any]:
        """Resume: new deadlines with the time that was left (armed once emitted)."""
        now, deadlines = self.deps.clock(), {}
        for name, st in self.state.steps.items():
            if not self._frozen_by_pause(name, st.status):
                continue
            left = st.frozen_delay
            started_while_paused = st.status == "running" and self._is_held_by_pause(name)
            if left is None and st.deadline is None and started_while_paused:
                left = self.cfg.step(name).timeout  # a fan-out's first item, while paused
            if left is not None:
                deadlines[name] = now + left
        out: dict[str, Any] = {"deadlines": deadlines} if deadlines else {}
        if self.state.frozen_left is not None:
            out["deadline"] = now + self.state.frozen_left
        return out

    def _arm_deadlines(self) -> None:
        """Arm every frozen-kind deadline the state holds (after resume or recovery)."""
        if self.state.status != "running":
            return
        for name, st in self.state.steps.items():
            if st.deadline is None:
                continue
            if st.status == "running" and self._is_wait(name):
                self._deadlines.arm("wait", name, st.attempts, st.deadline)
            elif st.status == "running" and self._is_held_by_pause(name):
                self._deadlines.arm("run", name, st.attempts, st.deadline)
            elif st.status == "dispatched":
                self._deadlines.arm("queue", name, st.attempts, st.deadline)
        if self.state.deadline is not None:
            self._deadlines.arm("workflow", None, 0, self.state.deadline)
