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

import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import pykka

from tamma_actors._errors import ExpressionError, TammaError
from tamma_actors._expr import evaluate
from tamma_actors._fanout import ITEM_DONE, item_task_id
from tamma_actors._keys import new_execution_id
from tamma_actors._retry import compute_delay, should_retry
from tamma_actors._step_configs import DecisionPlan, ParallelPlan, Plan, SubflowPlan, plan_of
from tamma_actors._timeouts import TimeoutHandling
from tamma_actors._timers import TimerHandle
from tamma_actors._workerpool import (
    Cancel,
    Dispatch,
    TaskFinished,
    TaskRedispatched,
    TaskStarted,
)

if TYPE_CHECKING:
    from tamma_actors._state import StepState

__all__ = ["ChildFinished", "ChildRun", "Children", "ItemRetryDue", "StepTypeHandling"]

log = logging.getLogger(__name__)

MAX_ITEM_REDISPATCH = 2  # worker losses one item attempt survives (as for a task step)
_OPEN = ("dispatched", "running")


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
        """``pause``, ``resume`` or ``abort`` a child (best effort: it may have ended)."""


@dataclass(frozen=True)
class ItemRetryDue:
    step: str
    index: int
    attempt: int


@dataclass(frozen=True)
class ChildFinished:
    step: str
    attempt: int
    child_id: str
    outcome: dict[str, Any] | BaseException


def _tell(ref: pykka.ActorRef[Any], msg: Any) -> None:
    with contextlib.suppress(pykka.ActorDeadError):
        ref.tell(msg)


class StepTypeHandling(TimeoutHandling):
    if TYPE_CHECKING:
        actor_ref: pykka.ActorRef[Any]
        _deps_of: dict[str, list[str]]

        def _task(self, name: str, attempt: int, tid: str) -> dict[str, Any]: ...

    def _init_step_types(self) -> None:
        self._plans: dict[str, Plan] = {}
        for step in self.cfg.steps:
            plan = plan_of(step)
            if plan is not None:
                self._plans[step.name] = plan
        self._item_tasks: dict[str, tuple[str, int]] = {}  # task id -> (step, item index)
        self._item_lost: dict[str, int] = {}
        self._item_timers: dict[tuple[str, int], TimerHandle] = {}
        self._again = False  # a step finished inside the coordinator: look again

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
        not be dependency order, so one pass is not always enough)."""
        steps = self.state.steps
        changed = True
        while changed:
            changed = False
            for name in self.state.order:
                if steps[name].status != "pending":
                    continue
                verdict = join([steps[d].status for d in self._deps_of[name]])
                if verdict == "ready":
                    self._emit("step.ready", step=name)
                elif verdict == "cancelled":
                    self._emit("step.cancelled", step=name, reason="a dependency did not succeed")
                elif verdict == "skipped":
                    self._emit("step.skipped", step=name, reason="its dependencies were skipped")
                changed = changed or verdict is not None

    def _take_again(self) -> bool:
        again, self._again = self._again, False
        return again

    def _item_started(self, msg: TaskStarted) -> bool:
        ref = self._item_tasks.get(msg.task_id)
        if ref is None:
            return False
        st = self.state.steps[ref[0]]
        if st.status == "dispatched":
            self._emit("step.started", step=ref[0], attempt=st.attempts, worker=msg.worker_id)
        return True

    def _item_finished(self, msg: TaskFinished) -> bool:
        ref = self._item_tasks.pop(msg.task_id, None)
        if ref is None:
            return False
        name, index = ref
        st = self.state.steps[name]
        item = _items(st)[index]
        if st.status not in _OPEN or item["status"] != "dispatched":
            return True  # cancelled meanwhile: the late result is discarded
        if msg.ok:
            self._emit(
                "step.item_completed",
                step=name,
                index=index,
                attempt=item["attempts"],
                output=msg.output,
                duration_ms=msg.duration_ms,
            )
        else:
            self._item_error(name, index, item, msg.error or {})
        self._after_item(name)
        self._advance()
        return True

    def _item_redispatched(self, msg: TaskRedispatched) -> bool:
        ref = self._item_tasks.get(msg.task_id)
        if ref is None:
            return False
        name, index = ref
        item = _items(self.state.steps[name])[index]
        lost = self._item_lost[msg.task_id] = self._item_lost.get(msg.task_id, 0) + 1
        if lost <= MAX_ITEM_REDISPATCH:
            self._emit(
                "step.item_redispatched",
                step=name,
                index=index,
                attempt=item["attempts"],
                reason=msg.reason,
            )
            return True
        del self._item_tasks[msg.task_id]
        self._after_commit(lambda: self.deps.pool.tell(Cancel(msg.task_id)))
        error = {
            "type": "WorkerLost",
            "retryable": True,
            "message": f"its worker was lost {lost} times ({msg.reason})",
        }
        self._item_error(name, index, item, error)
        self._after_item(name)
        self._advance()
        return True

    def _cancel_step_type(self, name: str, reason: str) -> None:
        """Before a parallel or subflow step is cancelled: stop its items or its child."""
        st = self.state.steps[name]
        plan = self._plans.get(name)
        if isinstance(plan, ParallelPlan) and st.detail is not None and "state" in st.detail:
            self._cancel_items(name, reason)
        elif isinstance(plan, SubflowPlan) and st.status in _OPEN and st.detail:
            self._control_child(st.detail["child"], "abort", reason)

    def _pause_step_types(self, reason: str | None) -> None:
        now = self.deps.clock()
        for name, plan in self._plans.items():
            st = self.state.steps[name]
            if st.status not in _OPEN or not st.detail:
                continue
            if isinstance(plan, SubflowPlan):
                self._control_child(st.detail["child"], "pause", reason)
            elif isinstance(plan, ParallelPlan):
                left = []
                for i, item in enumerate(_items(st)):
                    if item["status"] == "retry_wait":
                        handle = self._item_timers.pop((name, i), None)
                        if handle is not None:
                            handle.cancel()
                        left.append([i, max(0.0, (item["retry_at"] or now) - now)])
                if left:
                    self._emit("step.items_frozen", step=name, left=left)

    def _resume_step_types(self) -> None:
        now = self.deps.clock()
        for name, plan in self._plans.items():
            st = self.state.steps[name]
            if st.status not in _OPEN or not st.detail:
                continue
            if isinstance(plan, SubflowPlan):
                self._control_child(st.detail["child"], "resume")
                continue
            due = [
                [i, now + _left(item, now)]
                for i, item in enumerate(_items(st))
                if item["status"] == "retry_wait"
            ]
            if due:
                self._emit("step.items_thawed", step=name, retry_at=due)
            self._arm_item_retries(name)
            self._pump(name)

    def _recover_step_type(self, name: str) -> bool:
        """Re-enter a parallel or subflow step after a restart; False: not ours to do."""
        plan, st = self._plans.get(name), self.state.steps[name]
        if plan is None or st.status not in _OPEN:
            return False
        if isinstance(plan, DecisionPlan):
            self._decide(name, st.attempts, plan)
        elif isinstance(plan, ParallelPlan) and st.detail is not None:
            batch = [
                [i, it["attempts"]]
                for i, it in enumerate(_items(st))
                if it["status"] == "dispatched"
            ]
            self._send_items(name, batch)
            if self.state.status == "running":
                self._arm_item_retries(name)
                self._pump(name)
        elif isinstance(plan, SubflowPlan) and st.detail is not None:
            inputs = self._child_inputs(plan)
            if isinstance(inputs, dict):
                self._watch_child(name, st.attempts, st.detail["child"], plan, inputs)
        return True

    # -- decision --------------------------------------------------------------------------

    def _expression_context(self) -> dict[str, Any]:
        steps = {n: {"output": st.data, "status": st.status} for n, st in self.state.steps.items()}
        return {"inputs": self.state.context, "steps": steps}

    def _decide(self, name: str, attempt: int, plan: DecisionPlan) -> None:
        self._again = True
        ctx = self._expression_context()
        chosen: int | None = None
        try:
            for i, (condition, _) in enumerate(plan.branches):
                if condition is None or _is_true(evaluate(condition, ctx)):
                    chosen = i
                    break
        except ExpressionError as exc:
            self._expression_failed(name, attempt, exc)
            return
        names = list(plan.branches[chosen][1]) if chosen is not None else []
        output = {"branch": chosen, "steps": names, "input": self._task(name, attempt, "")["input"]}
        self._emit("step.completed", step=name, attempt=attempt, output=output, duration_ms=0.0)
        label = "no branch" if chosen is None else f"branch {chosen}"
        for other in plan.members:
            if other not in names and self.state.steps[other].status == "pending":
                self._emit("step.skipped", step=other, reason=f"decision {name!r} chose {label}")

    def _expression_failed(self, name: str, attempt: int, exc: ExpressionError) -> None:
        error = {"type": "ExpressionError", "message": str(exc), "retryable": False}
        self._on_step_error(name, attempt, error)

    # -- parallel --------------------------------------------------------------------------

    def _fan_out(self, name: str, attempt: int, plan: ParallelPlan) -> bool:
        items: Any = plan.items
        try:
            if not isinstance(items, list):
                items = evaluate(items, self._expression_context())
            if not isinstance(items, list):
                raise ExpressionError(f"parallel items must be a list, not {type(items).__name__}")
        except ExpressionError as exc:
            self._expression_failed(name, attempt, exc)
            self._again = True
            return False
        self._emit("step.items_planned", step=name, attempt=attempt, items=items)
        self._after_item(name)
        return self.state.steps[name].status in _OPEN

    def _after_item(self, name: str) -> None:
        """Dispatch what may run, or join when every item has finished."""
        states = _items(self.state.steps[name])
        if any(item["status"] not in ITEM_DONE for item in states):
            self._pump(name)
            return
        self._again = True
        st = self.state.steps[name]
        bad = [(i, item) for i, item in enumerate(states) if item["status"] != "succeeded"]
        if not bad:
            outputs = [item["output"] for item in states]
            self._emit("step.completed", step=name, attempt=st.attempts, output=outputs)
            return
        failed = [(i, item) for i, item in bad if item["status"] == "failed"] or bad
        first = failed[0][1]["error"] or {}
        message = (
            f"{len(bad)} of {len(states)} items did not succeed "
            f"(items {', '.join(str(i) for i, _ in bad)}); item {failed[0][0]}: "
            f"{first.get('type', 'cancelled')}: {first.get('message', '')}"
        )
        self._on_step_error(
            name, st.attempts, {"type": "ItemsFailed", "message": message, "retryable": False}
        )

    def _pump(self, name: str) -> None:
        if self.state.status != "running":
            return
        plan = self._plans[name]
        assert isinstance(plan, ParallelPlan)
        states = _items(self.state.steps[name])
        limit = plan.max_concurrency or len(states)
        busy = sum(1 for item in states if item["status"] == "dispatched")
        batch = []
        for i, item in enumerate(states):
            if busy >= limit:
                break
            if item["status"] == "pending":
                batch.append([i, item["attempts"] + 1])
                busy += 1
        if batch:
            self._emit("step.items_dispatched", step=name, items=batch)
            self._send_items(name, batch)

    def _send_items(self, name: str, batch: list[list[int]]) -> None:
        """One effect for the whole batch: the tasks reach the pool together."""
        if not batch:
            return
        values = self.state.steps[name].detail["items"]  # type: ignore[index]
        tasks = []
        for index, attempt in batch:
            tid = item_task_id(self.state.id, name, index, attempt)
            self._item_tasks[tid] = (name, index)
            task = self._task(name, attempt, tid)
            task.update(input=values[index], item_index=index)
            tasks.append(task)
        pool, me = self.deps.pool, self.actor_ref

        def send() -> None:
            for task in tasks:
                pool.tell(Dispatch(task, me))

        self._after_commit(send)

    def _item_error(
        self, name: str, index: int, item: Mapping[str, Any], error: Mapping[str, Any]
    ) -> None:
        policy = self.cfg.retry_policy_for(name)
        etype = str(error.get("type") or "StepFailure")
        message = str(error.get("message") or "")
        explicit = error.get("retryable")
        info = {"type": etype, "message": message, "retryable": explicit}
        attempt = item["attempts"]
        used = attempt - item.get("base", 0)  # a manual retry gives a fresh budget
        if should_retry(policy, used, etype, message, explicit):
            delay = error.get("retry_after")
            if not isinstance(delay, int | float) or delay < 0:
                delay = compute_delay(policy, used, self.deps.rand())
            at = self.deps.clock() + float(delay)
            self._emit(
                "step.item_retry_scheduled",
                step=name,
                index=index,
                attempt=attempt,
                error=info,
                delay_s=float(delay),
                retry_at=at,
            )
            if self.state.status == "running":
                self._arm_item_retry(name, index, attempt, at)
            return
        self._emit("step.item_failed", step=name, index=index, attempt=attempt, error=info)
        if self.cfg.error_handling.strategy == "fail_fast":
            self._cancel_items(name, f"item {index} of {name!r} failed")

    def _cancel_items(self, name: str, reason: str) -> None:
        st = self.state.steps[name]
        open_items = [i for i, item in enumerate(_items(st)) if item["status"] not in ITEM_DONE]
        if not open_items:
            return
        for i in open_items:
            item = _items(st)[i]
            if item["status"] == "dispatched":
                tid = item_task_id(self.state.id, name, i, item["attempts"])
                self._item_tasks.pop(tid, None)
                self._after_commit(lambda tid=tid: self.deps.pool.tell(Cancel(tid)))
            handle = self._item_timers.pop((name, i), None)
            if handle is not None:
                handle.cancel()
        self._emit("step.items_cancelled", step=name, indexes=open_items, reason=reason)

    def _arm_item_retries(self, name: str) -> None:
        now = self.deps.clock()
        for i, item in enumerate(_items(self.state.steps[name])):
            if item["status"] == "retry_wait" and (name, i) not in self._item_timers:
                self._arm_item_retry(name, i, item["attempts"], item["retry_at"] or now)

    def _arm_item_retry(self, name: str, index: int, attempt: int, at: float) -> None:
        ref, delay = self.actor_ref, max(0.0, at - self.deps.clock())
        due = ItemRetryDue(name, index, attempt)
        self._item_timers[(name, index)] = self.deps.timers.call_later(
            delay, lambda: _tell(ref, due)
        )

    def _on_item_retry_due(self, msg: ItemRetryDue) -> None:
        self._item_timers.pop((msg.step, msg.index), None)
        st = self.state.steps[msg.step]
        if self.state.status != "running" or st.status not in _OPEN:
            return
        item = _items(st)[msg.index]
        if item["status"] == "retry_wait" and item["attempts"] == msg.attempt:
            self._emit("step.item_ready", step=msg.step, index=msg.index)
            self._pump(msg.step)

    # -- subflow ---------------------------------------------------------------------------

    def _child_inputs(self, plan: SubflowPlan) -> dict[str, Any] | ExpressionError:
        ctx = self._expression_context()
        try:
            return {
                key: evaluate(value, ctx) if is_expr else value
                for key, (is_expr, value) in plan.inputs.items()
            }
        except ExpressionError as exc:
            return exc

    def _start_child(self, name: str, attempt: int, plan: SubflowPlan) -> bool:
        inputs = self._child_inputs(plan)
        if isinstance(inputs, ExpressionError):
            self._expression_failed(name, attempt, inputs)
            self._again = True
            return False
        child = new_execution_id()
        self._emit("step.child_started", step=name, attempt=attempt, child=child)
        self._emit("step.started", step=name, attempt=attempt, worker=None)
        self._watch_child(name, attempt, child, plan, inputs)
        return False  # a child holds no worker slot of its parent

    def _watch_child(
        self, name: str, attempt: int, child: str, plan: SubflowPlan, inputs: dict[str, Any]
    ) -> None:
        children = self.deps.children
        me = self.actor_ref
        if children is None:
            _tell(me, ChildFinished(name, attempt, child, TammaError("this node runs no subflows")))
            return
        run = ChildRun(child, plan.workflow, inputs, self.state.source, self.state.id)

        def done(outcome: dict[str, Any] | BaseException) -> None:
            _tell(me, ChildFinished(name, attempt, child, outcome))

        self._after_commit(lambda: children.run(run, done))

    def _control_child(self, child: str, action: str, reason: str | None = None) -> None:
        children = self.deps.children
        if children is not None:
            self._after_commit(lambda: children.control(child, action, reason))

    def _on_child_finished(self, msg: ChildFinished) -> None:
        st = self.state.steps[msg.step]
        current = (st.detail or {}).get("child")
        if st.status not in _OPEN or st.attempts != msg.attempt or current != msg.child_id:
            return  # an earlier attempt's child, or the step was cancelled meanwhile
        outcome = msg.outcome
        if isinstance(outcome, BaseException):
            error = {"type": type(outcome).__name__, "message": str(outcome), "retryable": False}
            self._on_step_error(msg.step, msg.attempt, error)
        elif outcome.get("status") == "completed":
            results = outcome.get("results") or {}
            output = {step: (r or {}).get("data") for step, r in results.items()}
            self._emit("step.completed", step=msg.step, attempt=msg.attempt, output=output)
        else:
            status = outcome.get("status")
            cause = (outcome.get("error") or {}).get("message") or outcome.get("reason") or ""
            self._on_step_error(
                msg.step,
                msg.attempt,
                {
                    "type": "SubflowFailed",
                    "message": f"child execution {msg.child_id} {status}: {cause}",
                    "retryable": False if status == "aborted" else None,
                },
            )
        self._advance()


def join(dep_states: list[str]) -> str | None:
    """What a pending step becomes given its dependencies' statuses (None: still waits)."""
    if any(s in ("failed", "cancelled") for s in dep_states):
        return "cancelled"
    if not all(s in ("succeeded", "skipped") for s in dep_states):
        return None
    if dep_states and all(s == "skipped" for s in dep_states):
        return "skipped"
    return "ready"


def _is_true(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ExpressionError(f"a decision's 'when' must be true or false, not {value!r}")
    return value


def _left(item: Mapping[str, Any], now: float) -> float:
    """The retry wait an item had left when its execution was paused."""
    if item.get("frozen") is not None:
        return float(item["frozen"])
    return max(0.0, float(item["retry_at"] or now) - now)


def _items(st: StepState) -> list[dict[str, Any]]:
    assert st.detail is not None
    items: list[dict[str, Any]] = st.detail["state"]
    return items
