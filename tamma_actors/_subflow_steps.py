"""Subflow steps: a child execution whose results become the step's output.

The child's id is chosen and committed by the parent before the engine starts it, so a
restart re-attaches to the same child instead of starting another; pause, resume and abort
of the parent reach the child through :class:`Children` (the engine's side is
:mod:`tamma_actors._subflows`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from tamma_actors._codec import packed_size
from tamma_actors._errors import ExpressionError, WorkflowError
from tamma_actors._expr import evaluate
from tamma_actors._keys import new_execution_id
from tamma_actors._step_base import OPEN, StepTypeBase, tell
from tamma_actors._step_configs import SubflowPlan

__all__ = ["ChildFinished", "ChildRun", "Children", "SubflowSteps"]


@dataclass(frozen=True)
class ChildRun:
    """What a subflow step asks its engine to run (or re-attach to, after a restart)."""

    child_id: str
    workflow: str  # a file path (relative to the parent's source) or a known workflow name
    inputs: dict[str, Any]
    parent_source: str | None
    parent_id: str


class Children(Protocol):
    """The narrow seam between a supervisor and its engine for child executions."""

    def run(self, run: ChildRun, done: Callable[[dict[str, Any] | BaseException], None]) -> None:
        """Start the child unless it exists; call ``done`` once with its final record."""

    def control(self, child_id: str, action: str, reason: str | None = None) -> None:
        """``pause``, ``resume`` or ``abort`` a child (best effort: it may have ended), with
        ``reason``; ``resume_if_paused_by``: resume it only if it is paused for ``reason``."""


@dataclass(frozen=True)
class ChildFinished:
    step: str
    attempt: int
    child_id: str
    outcome: dict[str, Any] | BaseException


class SubflowSteps(StepTypeBase):
    def _child_inputs(self, name: str, plan: SubflowPlan) -> dict[str, Any] | ExpressionError:
        ctx = self._expression_context(name)
        inputs: dict[str, Any] = {}
        for key, (is_expr, value) in plan.inputs.items():
            try:
                inputs[key] = evaluate(value, ctx) if is_expr else value
            except ExpressionError as exc:
                return ExpressionError(f"inputs.{key}: {exc}")
        return inputs

    def _start_child(self, name: str, attempt: int, plan: SubflowPlan) -> bool:
        inputs = self._child_inputs(name, plan)
        if isinstance(inputs, ExpressionError):
            self._expression_failed(name, attempt, inputs)
            self._again = True
            return False
        too_big = self._over_cap(inputs, "the child's inputs")
        if too_big is not None:
            cap = self.deps.max_frame_bytes
            largest = max(inputs, key=lambda key: packed_size(inputs[key], cap))
            too_big["message"] += f"; the largest is inputs.{largest}"
            self._on_step_error(name, attempt, too_big)
            self._again = True
            return False
        child = new_execution_id()
        self._emit("step.child_started", step=name, attempt=attempt, child=child)
        self._emit(
            "step.started",
            step=name,
            attempt=attempt,
            worker=None,
            **self._running_deadline(name, attempt),  # the child must end within the timeout
        )
        self._watch_child(name, attempt, child, plan, inputs)
        return True  # it counts towards max_parallel (it holds no worker slot)

    def _watch_child(
        self, name: str, attempt: int, child: str, plan: SubflowPlan, inputs: dict[str, Any]
    ) -> None:
        children = self.deps.children
        me = self.actor_ref
        if children is None:
            tell(
                me, ChildFinished(name, attempt, child, WorkflowError("this node runs no subflows"))
            )
            return
        run = ChildRun(child, plan.workflow, inputs, self.state.source, self.state.id)

        def done(outcome: dict[str, Any] | BaseException) -> None:
            tell(me, ChildFinished(name, attempt, child, outcome))

        self._after_commit(lambda: children.run(run, done))

    def _paused_by_me(self) -> str:
        """The reason a child paused by this parent carries (how a parent knows its own)."""
        return f"its parent {self.state.id} is paused"

    def _control_child(self, child: str, action: str, reason: str | None = None) -> None:
        children = self.deps.children
        if children is not None:
            self._after_commit(lambda: children.control(child, action, reason))

    def _on_child_finished(self, msg: ChildFinished) -> None:
        st = self.state.steps[msg.step]
        current = (st.detail or {}).get("child")
        if st.status not in OPEN or st.attempts != msg.attempt or current != msg.child_id:
            return  # an earlier attempt's child, or the step was cancelled meanwhile
        outcome = msg.outcome
        self._deadlines.cancel_step(msg.step)
        if isinstance(outcome, BaseException):
            # a bad child workflow stays bad; a node that refused to start it (shutting
            # down, a full store) may take it on a later attempt
            retryable = False if isinstance(outcome, WorkflowError) else None
            error = {
                "type": type(outcome).__name__,
                "message": str(outcome),
                "retryable": retryable,
            }
            self._on_step_error(msg.step, msg.attempt, error)
        elif outcome.get("status") == "completed":
            results = outcome.get("results") or {}
            output = {step: (r or {}).get("data") for step, r in results.items()}
            too_big = self._over_cap(output, f"the output of child execution {msg.child_id}")
            if too_big is None:
                self._emit("step.completed", step=msg.step, attempt=msg.attempt, output=output)
            else:
                self._on_step_error(msg.step, msg.attempt, too_big)
        else:
            status = outcome.get("status")
            error = outcome.get("error") or {}
            cause = error.get("message") or outcome.get("reason") or ""
            # a runaway nesting is not retried at any level (retries would multiply it)
            too_deep = error.get("type") == "SubflowTooDeep"
            self._on_step_error(
                msg.step,
                msg.attempt,
                {
                    "type": "SubflowTooDeep" if too_deep else "SubflowFailed",
                    "message": f"child execution {msg.child_id} {status}: {cause}",
                    "retryable": False if status == "aborted" or too_deep else None,
                },
            )
        self._advance()
