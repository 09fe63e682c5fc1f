"""Requests to one execution: start, recover, pause, resume, abort, retry a step, read it
and wait for its end. The messages and the handlers, a mixin of
:class:`~tamma_actors._execution.ExecutionSupervisor`.

A request that changes the execution is answered with its record once its events are
committed; a refused one (an illegal transition, an unknown step) is answered with the
error and changes nothing. Reads (``GetRecord``, ``Wait``) are answered with durable state:
after the writes before them commit. Pause and resume are idempotent.
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from tamma_actors._errors import IllegalTransition, UnknownStep
from tamma_actors._state import to_record, to_status
from tamma_actors._step_base import tell

if TYPE_CHECKING:
    from collections.abc import Mapping

    import pykka

    from tamma_actors._execution import ExecutionDeps
    from tamma_actors._state import ExecutionState
    from tamma_actors._timers import TimerHandle

__all__ = [
    "Abort",
    "ExecutionControl",
    "GetRecord",
    "Pause",
    "Recover",
    "Resume",
    "RetryStep",
    "Start",
    "Wait",
    "WaitExpired",
]


@dataclass(frozen=True)
class Start:
    """Begin a new execution; ``created`` is the data of its ``workflow.created`` event."""

    reply: Future[dict[str, Any]] | None
    created: dict[str, Any]


@dataclass(frozen=True)
class Recover:
    """Re-activate an execution loaded from the store: re-dispatch what was in flight."""


@dataclass(frozen=True)
class Pause:
    reply: Future[dict[str, Any]]
    reason: str | None = None


@dataclass(frozen=True)
class Resume:
    reply: Future[dict[str, Any]]


@dataclass(frozen=True)
class Abort:
    reply: Future[dict[str, Any]]
    reason: str | None = None


@dataclass(frozen=True)
class RetryStep:
    step: str
    reply: Future[dict[str, Any]]


@dataclass(frozen=True)
class GetRecord:
    reply: Future[dict[str, Any]]
    status_only: bool = False


@dataclass(frozen=True)
class Wait:
    reply: Future[dict[str, Any]]
    timeout: float | None = None


@dataclass(frozen=True)
class WaitExpired:
    reply: Future[dict[str, Any]]


class ExecutionControl:
    if TYPE_CHECKING:
        state: ExecutionState
        deps: ExecutionDeps
        _deps_of: Mapping[str, tuple[str, ...]]
        _retry_timers: dict[str, TimerHandle]
        _waiters: list[Future[dict[str, Any]]]
        _wait_timers: dict[Future[dict[str, Any]], TimerHandle]
        actor_ref: pykka.ActorRef[Any]

        def _emit(self, etype: str, **data: Any) -> None: ...
        def _advance(self) -> None: ...
        def _reply_after_commit(self, reply: Future[dict[str, Any]] | None) -> None: ...
        def _reply_committed(
            self, reply: Future[dict[str, Any]], value: dict[str, Any]
        ) -> None: ...
        def _send_task(self, name: str, attempt: int) -> None: ...
        def _arm_retry(self, name: str, attempt: int, at_wall: float) -> None: ...
        def _cancel_open_steps(self, reason: str) -> None: ...
        def _cancel_compensations(self, reason: str) -> None: ...
        def _abort_report(self) -> dict[str, Any]: ...
        def _is_wait(self, name: str) -> bool: ...
        def _workflow_deadline(self) -> dict[str, Any]: ...
        def _queue_deadline(self, name: str, attempt: int) -> dict[str, Any]: ...
        def _arm_deadlines(self) -> None: ...
        def _freeze_deadlines(self) -> dict[str, Any]: ...
        def _thaw_deadlines(self) -> dict[str, Any]: ...
        def _recover_step_type(self, name: str) -> bool: ...
        def _pause_step_types(self, reason: str | None) -> None: ...
        def _resume_step_types(self) -> None: ...
        def _breaker_readmit(self, name: str) -> None: ...

    def _on_start(self, msg: Start) -> None:
        self._emit("workflow.created", **msg.created)
        self._emit("workflow.started", **self._workflow_deadline())
        self._advance()
        self._reply_after_commit(msg.reply)

    def _on_recover(self, msg: Recover) -> None:
        """Re-enter through the normal path: whatever was in flight is dispatched again with
        the same attempt number (same idempotency key); retry timers resume."""
        for name in self.state.order:
            st = self.state.steps[name]
            if self._recover_step_type(name):
                continue
            if st.status == "running" and not self._is_wait(name):
                self._emit(
                    "step.redispatched",
                    step=name,
                    attempt=st.attempts,
                    reason="recovery",
                    **self._queue_deadline(name, st.attempts),
                )
            if st.status == "dispatched":
                self._breaker_readmit(name)
                self._send_task(name, st.attempts)
            elif st.status == "retry_wait" and self.state.status == "running":
                self._arm_retry(name, st.attempts, st.retry_at or self.deps.clock())
        if self.state.status == "pending":
            self._emit("workflow.started", **self._workflow_deadline())
        self._arm_deadlines()  # wait steps, queue deadlines, the workflow timeout
        self._advance()

    def _on_get(self, msg: GetRecord) -> None:
        value = to_status(self.state) if msg.status_only else to_record(self.state)
        self._reply_committed(msg.reply, value)

    def _on_wait(self, msg: Wait) -> None:
        if self.state.terminal:
            self._reply_committed(msg.reply, to_record(self.state))
            return
        self._waiters.append(msg.reply)
        if msg.timeout is not None:
            ref = self.actor_ref
            expire = partial(tell, ref, WaitExpired(msg.reply))
            self._wait_timers[msg.reply] = self.deps.timers.call_later(msg.timeout, expire)

    def _on_wait_expired(self, msg: WaitExpired) -> None:
        self._wait_timers.pop(msg.reply, None)
        if msg.reply in self._waiters:
            self._waiters.remove(msg.reply)
            self._reply_committed(msg.reply, to_record(self.state))

    def _on_pause(self, msg: Pause) -> None:
        if self.state.status != "paused":
            self._require("running", "pause")
            now = self.deps.clock()
            frozen = {}
            for name, handle in self._retry_timers.items():
                handle.cancel()
                frozen[name] = max(0.0, (self.state.steps[name].retry_at or now) - now)
            self._retry_timers.clear()
            self._emit(
                "workflow.paused", reason=msg.reason, frozen=frozen, **self._freeze_deadlines()
            )
            self._pause_step_types(msg.reason)
        self._reply_after_commit(msg.reply)

    def _on_resume(self, msg: Resume) -> None:
        if self.state.status != "running":
            self._require("paused", "resume")
            now = self.deps.clock()
            retry_at = {
                name: now
                + (
                    st.frozen_delay
                    if st.frozen_delay is not None
                    else max(0.0, (st.retry_at or now) - now)
                )
                for name, st in self.state.steps.items()
                if st.status == "retry_wait"
            }
            self._emit("workflow.resumed", retry_at=retry_at, **self._thaw_deadlines())
            for name, at in retry_at.items():
                self._arm_retry(name, self.state.steps[name].attempts, at)
            self._arm_deadlines()
            self._resume_step_types()
            self._advance()
        self._reply_after_commit(msg.reply)

    def _on_abort(self, msg: Abort) -> None:
        if self.state.status != "aborted":
            if self.state.terminal:
                raise IllegalTransition(
                    f"execution {self.state.id} is {self.state.status}; it cannot be aborted"
                )
            reason = msg.reason or "aborted by request"
            self._cancel_open_steps(reason)
            self._cancel_compensations(reason)
            self._emit("workflow.aborted", reason=reason, **self._abort_report())
        self._reply_after_commit(msg.reply)

    def _on_retry_step(self, msg: RetryStep) -> None:
        st = self.state.steps.get(msg.step)
        if st is None:
            raise UnknownStep(f"execution {self.state.id} has no step {msg.step!r}")
        if st.status not in ("failed", "cancelled"):
            raise IllegalTransition(
                f"step {msg.step!r} is {st.status}; only a failed or cancelled step can be retried"
            )
        if self.state.status not in ("running", "paused", "failed"):
            raise IllegalTransition(
                f"execution {self.state.id} is {self.state.status}; its steps cannot be retried"
            )
        if self.state.compensations:
            # its completed steps are (being) undone: running on would build on what is not
            # there, and an execution that completed would still have been undone
            what = (
                "was compensated after it failed (its completed steps were undone)"
                if self.state.status == "failed"
                else "is compensating after a failure (its completed steps are being undone)"
            )
            raise IllegalTransition(
                f"execution {self.state.id} {what}; its steps cannot be retried: start a "
                "new execution instead"
            )
        blocked = [
            d
            for d in self._deps_of[msg.step]
            if self.state.steps[d].status not in ("succeeded", "skipped")
        ]
        if blocked:
            raise IllegalTransition(
                f"step {msg.step!r} cannot run again: its dependency {blocked[0]!r} is "
                f"{self.state.steps[blocked[0]].status}; retry that step instead"
            )
        # A failed execution runs again: its timeout bounds this run, counted from now.
        revived = self._workflow_deadline() if self.state.status == "failed" else {}
        self._emit("step.retried", step=msg.step, **revived)
        for name in self.state.order:  # what the failure cancelled may run again
            if name != msg.step and self.state.steps[name].status == "cancelled":
                self._emit("step.reopened", step=name)
        self._advance()
        self._reply_after_commit(msg.reply)

    def _require(self, status: str, action: str) -> None:
        if self.state.status != status:
            raise IllegalTransition(
                f"execution {self.state.id} is {self.state.status}; cannot {action} it"
            )
