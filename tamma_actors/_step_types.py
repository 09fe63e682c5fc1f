"""Decision, parallel and subflow steps: the execution supervisor's coordinator-side types.

A mixin of :class:`~tamma_actors._execution.ExecutionSupervisor`; every change is an event
(see :mod:`tamma_actors._fanout` for the per-item and child records), so recovery resumes
each type where it stopped.

- **decision**: evaluated in the coordinator when it is launched (no worker, no slot):
  the first branch whose ``when`` is true, else ``otherwise``; the steps of the other
  branches are skipped. Its output records the choice: ``{"branch": index or None,
  "steps": [chosen], "input": its primary input}``.
- **join** (every step): a pending step becomes ready when all its dependencies
  succeeded or were skipped and at least one succeeded (or it has none); it is skipped
  when all of them were skipped; it is cancelled as soon as one failed or was cancelled.
- **parallel**: one task per item (``item_index`` set, task id ``eid/step[i]/attempt``,
  the item is the task's input), at most ``max_concurrency`` in flight, dispatched in
  one batch per turn. Each item retries on its own, per the step's retry policy, before
  the join. Join: an empty list succeeds with ``[]``; all items succeeded: the output is
  their outputs in item order; an item failed for good: under ``fail_fast`` the other
  items are cancelled at once and the step fails, otherwise the step fails once every
  item has finished, each item's outcome recorded.
- **subflow**: starts a child execution (its id is chosen and recorded first, so a
  restart re-attaches to the same child instead of starting another); the child's
  results become the step's output; a failed child fails the step (retryable per
  policy, each retry a new child); pause, resume and abort of the parent reach the child.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tamma_actors._errors import ExpressionError
from tamma_actors._expr import evaluate
from tamma_actors._expr_eval import kind_of
from tamma_actors._parallel import ItemRetryDue, ParallelSteps
from tamma_actors._step_base import OPEN
from tamma_actors._step_configs import DecisionPlan, ParallelPlan, SubflowPlan, plan_of
from tamma_actors._subflow_steps import ChildFinished, Children, ChildRun, SubflowSteps

__all__ = [
    "ChildFinished",
    "ChildRun",
    "Children",
    "ItemRetryDue",
    "StepTypeHandling",
    "join",
]


class StepTypeHandling(ParallelSteps, SubflowSteps):
    def _init_step_types(self) -> None:
        self._plans = {}
        for step in self.cfg.steps:
            plan = plan_of(step)
            if plan is not None:
                self._plans[step.name] = plan
        self._again = False
        self._init_items()

    # -- hooks called by the supervisor ----------------------------------------------------

    def _launch(self, name: str, attempt: int) -> bool:
        plan = self._plans.get(name)
        if plan is None:
            return super()._launch(name, attempt)
        self._emit("step.dispatched", step=name, attempt=attempt)
        if isinstance(plan, DecisionPlan):
            self._decide(name, attempt, plan)
            return False
        if isinstance(plan, ParallelPlan):
            return self._fan_out(name, attempt, plan)
        return self._start_child(name, attempt, plan)

    def _mark_pending(self) -> None:
        """Move pending steps to ready, skipped or cancelled, to a fixpoint (file order need
        not be dependency order, so one pass is not always enough). Only the pending steps
        whose dependencies moved since the last look are judged (see _step_index)."""
        steps = self.state.steps
        for name in self._step_index().pending_passes(self.state):
            verdict = join(steps[d].status for d in self._deps_of[name])
            if verdict == "ready":
                self._emit("step.ready", step=name)
            elif verdict == "cancelled":
                self._emit("step.cancelled", step=name, reason="a dependency did not succeed")
            elif verdict == "skipped":
                self._emit("step.skipped", step=name, reason="its dependencies were skipped")

    def _take_again(self) -> bool:
        again, self._again = self._again, False
        return again

    def _cancel_step_type(self, name: str, reason: str) -> None:
        """Before a parallel or subflow step is cancelled: stop its items or its child."""
        st = self.state.steps[name]
        plan = self._plans.get(name)
        if isinstance(plan, ParallelPlan) and st.detail is not None and "state" in st.detail:
            self._cancel_items(name, reason)
        elif isinstance(plan, SubflowPlan) and st.status in OPEN and st.detail:
            self._control_child(st.detail["child"], "abort", reason)

    def _pause_step_types(self, reason: str | None) -> None:
        now = self.deps.clock()
        for name, plan in self._plans.items():
            st = self.state.steps[name]
            if st.status not in OPEN or not st.detail:
                continue
            if isinstance(plan, SubflowPlan):
                self._control_child(st.detail["child"], "pause", self._paused_by_me())
            elif isinstance(plan, ParallelPlan):
                self._pause_items(name, st, now)

    def _resume_step_types(self) -> None:
        now = self.deps.clock()
        for name, plan in self._plans.items():
            st = self.state.steps[name]
            if st.status not in OPEN or not st.detail:
                continue
            if isinstance(plan, SubflowPlan):
                self._control_child(st.detail["child"], "resume")
            elif isinstance(plan, ParallelPlan):
                self._resume_items(name, st, now)

    def _step_timed_out(self, name: str, attempt: int, kind: str) -> None:
        if name in self._plans:  # stop the items or the child before the retry policy decides
            self._cancel_step_type(name, f"step {name!r} timed out")
        super()._step_timed_out(name, attempt, kind)

    def _recover_step_type(self, name: str) -> bool:
        """Re-enter a coordinator-side step after a restart; False: not ours to do."""
        plan, st = self._plans.get(name), self.state.steps[name]
        if plan is None or st.status not in OPEN:
            return False
        if st.status == "running" and st.deadline is not None:
            self._deadlines.arm("run", name, st.attempts, st.deadline)
        if isinstance(plan, DecisionPlan):
            self._decide(name, st.attempts, plan)
        elif isinstance(plan, ParallelPlan) and st.detail is not None:
            self._recover_items(name, st)
        elif isinstance(plan, SubflowPlan) and st.detail is not None:
            child, inputs = st.detail["child"], self._child_inputs(name, plan)
            if isinstance(inputs, dict):
                self._watch_child(name, st.attempts, child, plan, inputs)
                # A pause or resume passed on just before the node stopped may not have
                # reached the child: pass on the parent's own again (a child paused by
                # someone else stays paused).
                paused = self.state.status == "paused"
                action = "pause" if paused else "resume_if_paused_by"
                self._control_child(child, action, self._paused_by_me())
            else:  # an execution made under rules since changed: its step must not hang
                self._control_child(child, "abort", f"its parent's step {name!r} failed")
                self._expression_failed(name, st.attempts, inputs)
                self._again = True
        return True

    # -- decision --------------------------------------------------------------------------

    def _decide(self, name: str, attempt: int, plan: DecisionPlan) -> None:
        self._again = True
        ctx = self._expression_context(name)
        chosen: int | None = None
        for i, (condition, _) in enumerate(plan.branches):
            try:
                if condition is None or _is_true(evaluate(condition, ctx)):
                    chosen = i
                    break
            except ExpressionError as exc:
                self._expression_failed(
                    name, attempt, ExpressionError(f"branches[{i}].when: {exc}")
                )
                return
        names = list(plan.branches[chosen][1]) if chosen is not None else []
        output = {"branch": chosen, "steps": names, "input": self._task(name, attempt, "")["input"]}
        self._emit("step.completed", step=name, attempt=attempt, output=output, duration_ms=0.0)
        label = "no branch" if chosen is None else f"branch {chosen}"
        for other in plan.members:
            if other not in names and self.state.steps[other].status == "pending":
                self._emit("step.skipped", step=other, reason=f"decision {name!r} chose {label}")


def join(dep_states: Iterable[str]) -> str | None:
    """What a pending step becomes given its dependencies' statuses (None: still waits):
    cancelled if any failed or was cancelled, else waiting while any is open, else skipped
    if all (at least one) were skipped, else ready. One pass: it runs on every transition."""
    waiting = False
    succeeded = skipped = False
    for status in dep_states:
        if status == "succeeded":
            succeeded = True
        elif status == "skipped":
            skipped = True
        elif status in ("failed", "cancelled"):
            return "cancelled"
        else:
            waiting = True
    if waiting:
        return None
    return "skipped" if skipped and not succeeded else "ready"


def _is_true(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ExpressionError(f"a decision's 'when' must be true or false, not {kind_of(value)}")
    return value
