"""The watchdog: no execution may be left stuck.

A node-level :class:`Watchdog` wakes every ``interval`` seconds on the TimerService (no
thread of its own) and tells each live execution :class:`WatchdogCheck`. An execution
that made progress since the last check (its event sequence moved) answers nothing. One
that did not inspects itself (:class:`WatchdogChecks`, a supervisor mixin) and repairs
what a lost message or a lost timer would leave hanging:

- a retry wait, a wait step, a queue deadline or the workflow timeout with no live timer
  is re-armed;
- a dispatched or running task step the execution no longer tracks is sent again (same
  attempt, same idempotency key);
- a running step long past its start-to-close deadline is timed out;
- then the scheduler runs (``_advance``). If nothing at all can move after that — no step
  ready, queued, running or waiting on a timer, yet the execution is not finished — it is
  failed with a reason naming the stuck steps, rather than left "running" forever.

A paused execution is never stuck: it waits for its operator.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pykka

from tamma_actors._errors import SupervisionError
from tamma_actors._timers import TimerHandle, TimerService

if TYPE_CHECKING:
    from tamma_actors._deadlines import Deadlines
    from tamma_actors._execution import ExecutionDeps
    from tamma_actors._models import WorkflowConfig
    from tamma_actors._state import ExecutionState
    from tamma_actors._timers import TimerHandle as _Handle

__all__ = ["Watchdog", "WatchdogCheck", "WatchdogChecks"]

log = logging.getLogger(__name__)

# A running step this long past its own deadline has lost its timer.
OVERDUE_GRACE = 5.0
_ACTIVE = frozenset({"ready", "dispatched", "running", "retry_wait", "timed_out"})


@dataclass(frozen=True)
class WatchdogCheck:
    """Told to every live execution once per watchdog interval."""


class Watchdog:
    def __init__(
        self,
        timers: TimerService,
        interval: float,
        live: Callable[[], list[pykka.ActorRef[Any]]],
    ) -> None:
        self._timers = timers
        self._interval = interval
        self._live = live
        self._handle: TimerHandle | None = None
        self._closed = False
        self.sweeps = 0
        self._arm()

    def _arm(self) -> None:
        if self._closed or self._interval <= 0:
            return
        try:
            self._handle = self._timers.call_later(self._interval, self._sweep)
        except SupervisionError:  # the timer service is closing: so is the node
            self._handle = None

    def _sweep(self) -> None:  # on the timer thread: only tells
        self.sweeps += 1
        for ref in self._live():
            with contextlib.suppress(pykka.ActorDeadError):
                ref.tell(WatchdogCheck())
        self._arm()

    def close(self) -> None:
        self._closed = True
        if self._handle is not None:
            self._handle.cancel()


class WatchdogChecks:
    if TYPE_CHECKING:
        state: ExecutionState
        cfg: WorkflowConfig
        deps: ExecutionDeps
        _deadlines: Deadlines
        _inflight: dict[str, str]
        _retry_timers: dict[str, _Handle]
        _comp_tasks: dict[str, str]
        _watch_seq: int

        def _emit(self, etype: str, **data: Any) -> None: ...
        def _advance(self) -> None: ...
        def _send_task(self, name: str, attempt: int) -> None: ...
        def _arm_retry(self, name: str, attempt: int, at_wall: float) -> None: ...
        def _is_wait(self, name: str) -> bool: ...
        def _step_timed_out(self, name: str, attempt: int, kind: str) -> None: ...
        def _cancel_open_steps(self, reason: str) -> None: ...
        def _cancel_compensations(self, reason: str) -> None: ...
        def _compensation_report(self) -> dict[str, Any]: ...

    def _on_watchdog(self, msg: WatchdogCheck) -> None:
        if self.state.terminal or self.state.status != "running":
            self._watch_seq = self.state.seq
            return
        if self.state.seq != self._watch_seq:
            self._watch_seq = self.state.seq  # it moved since the last look
            return
        repaired = self._repair()
        self._advance()
        if not self.state.terminal and not self._can_move():
            self._fail_stuck()
        if repaired:
            log.warning("execution %s: watchdog re-drove %s", self.state.id, ", ".join(repaired))
        self._watch_seq = self.state.seq

    def _repair(self) -> list[str]:
        from tamma_actors._execution import task_id  # the supervisor module imports us

        repaired: list[str] = []
        now = self.deps.clock()
        if self.state.deadline is not None and not self._deadlines.armed("workflow"):
            self._deadlines.arm("workflow", None, 0, self.state.deadline)
            repaired.append("the workflow timeout")
        plans: dict[str, Any] = getattr(self, "_plans", {})
        for name in self.state.order:
            st = self.state.steps[name]
            if st.status == "retry_wait" and name not in self._retry_timers:
                self._arm_retry(name, st.attempts, st.retry_at or now)
                repaired.append(f"{name} (retry timer)")
            elif st.status == "running" and self._is_wait(name):
                if st.deadline is not None and not self._deadlines.armed("wait", name):
                    self._deadlines.arm("wait", name, st.attempts, st.deadline)
                    repaired.append(f"{name} (wait timer)")
            elif st.status in ("dispatched", "running"):
                if name in plans:
                    continue  # fan-outs and children keep their own books
                if task_id(self.state.id, name, st.attempts) not in self._inflight:
                    self._send_task(name, st.attempts)
                    repaired.append(f"{name} (sent again)")
                elif (
                    st.status == "dispatched"
                    and st.deadline is not None
                    and not self._deadlines.armed("queue", name)
                ):
                    self._deadlines.arm("queue", name, st.attempts, st.deadline)
                    repaired.append(f"{name} (queue deadline)")
                elif (
                    st.status == "running"
                    and st.deadline is not None
                    and now > st.deadline + OVERDUE_GRACE
                ):
                    self._step_timed_out(name, st.attempts, "run")
                    repaired.append(f"{name} (overdue)")
        return repaired

    def _can_move(self) -> bool:
        if any(c["status"] == "running" for c in self.state.compensations or ()):
            return True
        return any(st.status in _ACTIVE for st in self.state.steps.values())

    def _fail_stuck(self) -> None:
        waiting = [n for n in self.state.order if self.state.steps[n].status == "pending"]
        reason = (
            "no step can run: " + ", ".join(waiting) + " wait for steps that will never finish"
            if waiting
            else "nothing is running and the execution did not finish"
        )
        log.error("execution %s is stuck: %s", self.state.id, reason)
        self._cancel_open_steps(reason)
        self._cancel_compensations(reason)
        failed = self.state.failed_steps()
        error = {"type": "Stuck", "message": f"the watchdog ended it: {reason}", "step": None}
        self._emit(
            "workflow.failed",
            error={**error, "failed_steps": failed, **self._compensation_report()},
        )
