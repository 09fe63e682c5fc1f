"""Parallel steps: one task per item, per-item retries, an explicit join.

Per-item state lives in the step's recorded detail (:mod:`tamma_actors._fanout`); a mixin
of the execution supervisor through :class:`tamma_actors._step_types.StepTypeHandling`.

Under a workflow's ``circuit_breaker`` each item is a call through the breaker of the
step's implementation (and target), as a task step is (:mod:`tamma_actors._breaker_gate`):
an item goes out only when the breaker admits it (items go out in index order, so the
first refusal ends the batch; the step records ``step.held`` once and the registry wakes
it, ``_pump_held``), every item attempt's outcome is recorded, and a cancelled probe item
gives its slot back.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tamma_actors._breaker_gate import item_probe
from tamma_actors._errors import ExpressionError
from tamma_actors._expr import evaluate, to_source
from tamma_actors._expr_eval import kind_of
from tamma_actors._fanout import ITEM_DONE, item_task_id
from tamma_actors._retry import plan_retry
from tamma_actors._step_base import OPEN, StepTypeBase, tell
from tamma_actors._step_configs import ParallelPlan
from tamma_actors._timers import TimerHandle
from tamma_actors._workerpool import Cancel, Dispatch, TaskFinished, TaskRedispatched, TaskStarted

if TYPE_CHECKING:
    from tamma_actors._breaker import BreakerState
    from tamma_actors._breakers import BreakerRegistry
    from tamma_actors._state import StepState

__all__ = ["MAX_ITEMS", "ItemRetryDue", "ParallelSteps"]

_OPEN_ITEM = ("pending", "dispatched", "retry_wait")
MAX_ITEMS = 10_000  # one fan-out's items live in its events and snapshots
MAX_ITEM_REDISPATCH = 2  # worker losses one item attempt survives (as for a task step)
_SHARED_KEYS = itertools.count(1)  # a fan-out's shared-data key is new in this process


@dataclass(frozen=True)
class ItemRetryDue:
    step: str
    index: int
    attempt: int


class ParallelSteps(StepTypeBase):
    if TYPE_CHECKING:  # the breaker gate (_breaker_gate.BreakerGate), per item

        def _breaker_of(
            self, name: str, *, items: bool = False
        ) -> tuple[BreakerRegistry, str] | None: ...
        def _breaker_refuses(
            self, name: str, probe: str | None = None
        ) -> tuple[str, BreakerState] | None: ...
        def _note_held(self, name: str, refused: tuple[str, BreakerState]) -> None: ...
        def _item_readmit(self, name: str, index: int) -> None: ...
        def _item_outcome(self, name: str, index: int, ok: bool) -> None: ...
        def _breaker_release(self, name: str) -> None: ...

    def _init_items(self) -> None:
        self._item_tasks: dict[str, tuple[str, int]] = {}  # task id -> (step, item index)
        self._item_lost: dict[str, int] = {}
        self._item_timers: dict[tuple[str, int], TimerHandle] = {}
        self._item_cursor: dict[str, int] = {}  # per step: no pending item before it
        # per step: the key under which the pool sends its items' shared inputs and
        # upstream outputs to each worker once (_pool_shared); a new one per fan-out
        self._item_shared: dict[str, str] = {}

    def _item_started(self, msg: TaskStarted) -> bool:
        ref = self._item_tasks.get(msg.task_id)
        if ref is None:
            return False
        st = self.state.steps[ref[0]]
        if st.status == "dispatched":
            # the whole fan-out's timeout, from its first item's start; one that starts
            # while paused gets all of it on resume (_thaw_deadlines)
            running = self.state.status == "running"
            self._emit(
                "step.started",
                step=ref[0],
                attempt=st.attempts,
                worker=msg.worker_id,
                **(self._running_deadline(ref[0], st.attempts, msg.ran_s) if running else {}),
            )
        return True

    def _item_finished(self, msg: TaskFinished) -> bool:
        ref = self._item_tasks.pop(msg.task_id, None)
        if ref is None:
            return False
        name, index = ref
        st = self.state.steps[name]
        item = _items(st)[index]
        if st.status not in OPEN or item["status"] != "dispatched":
            return True  # cancelled meanwhile: the late result is discarded
        self._item_outcome(name, index, msg.ok)
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
        st = self.state.steps[name]
        item = _items(st)[index]
        if st.status not in OPEN or item["status"] != "dispatched":
            return True
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
        self._item_outcome(name, index, False)
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

    def _pause_items(self, name: str, st: StepState, now: float) -> None:
        left = []
        for i, item in enumerate(_items(st)):
            if item["status"] == "retry_wait":
                handle = self._item_timers.pop((name, i), None)
                if handle is not None:
                    handle.cancel()
                left.append([i, max(0.0, (item["retry_at"] or now) - now)])
        if left:
            self._emit("step.items_frozen", step=name, left=left)

    def _resume_items(self, name: str, st: StepState, now: float) -> None:
        due = [
            [i, now + _left(item, now)]
            for i, item in enumerate(_items(st))
            if item["status"] == "retry_wait"
        ]
        if due:
            self._emit("step.items_thawed", step=name, retry_at=due)
        self._arm_item_retries(name)
        self._pump(name)

    def _recover_items(self, name: str, st: StepState) -> None:
        """In flight: sent again with the same attempt (the same idempotency key), each
        one of the probes while its breaker is half-open."""
        items = enumerate(_items(st))
        batch = [[i, it["attempts"]] for i, it in items if it["status"] == "dispatched"]
        if self._breaker_of(name, items=True) is not None:
            for i, _ in batch:
                self._item_readmit(name, i)
        self._send_items(name, batch)
        if self.state.status == "running":
            self._arm_item_retries(name)
            self._pump(name)

    def _fan_out(self, name: str, attempt: int, plan: ParallelPlan) -> bool:
        self._item_shared.pop(name, None)
        items: Any = plan.items
        try:
            if not isinstance(plan.items, list):
                try:
                    items = evaluate(plan.items, self._expression_context(name))
                except ExpressionError as exc:
                    raise ExpressionError(f"items: {exc}") from exc
                if not isinstance(items, list):
                    source = to_source(plan.items)
                    raise ExpressionError(
                        f"parallel items must be a list; {source} is {kind_of(items)}"
                    )
            if len(items) > MAX_ITEMS:
                raise ExpressionError(
                    f"parallel items: {len(items)} items, more than the limit of {MAX_ITEMS}"
                )
        except ExpressionError as exc:
            self._expression_failed(name, attempt, exc)
            self._again = True
            return False
        too_big = self._over_cap(items, f"the list of its {len(items)} items")
        if too_big is not None:
            self._on_step_error(name, attempt, too_big)
            self._again = True
            return False
        self._item_cursor[name] = 0
        self._emit("step.items_planned", step=name, attempt=attempt, items=items)
        self._after_item(name)
        return self.state.steps[name].status in OPEN

    def _after_item(self, name: str) -> None:
        """Dispatch what may run, or join when every item has finished."""
        counts = _counts(self.state.steps[name])
        if any(counts.get(status) for status in _OPEN_ITEM):
            self._pump(name)
            return
        states = _items(self.state.steps[name])
        self._again = True
        self._deadlines.cancel_step(name)
        st = self.state.steps[name]
        bad = [(i, item) for i, item in enumerate(states) if item["status"] != "succeeded"]
        if not bad:
            outputs = [item["output"] for item in states]
            too_big = self._over_cap(outputs, f"the output of its {len(states)} items together")
            if too_big is None:
                self._emit("step.completed", step=name, attempt=st.attempts, output=outputs)
            else:
                self._on_step_error(name, st.attempts, too_big)
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
        st = self.state.steps[name]
        states, counts = _items(st), _counts(st)
        limit = plan.max_concurrency or len(states)
        busy, waiting = counts.get("dispatched", 0), counts.get("pending", 0)
        if busy >= limit or not waiting:
            return
        gated = self._breaker_of(name, items=True) is not None
        refused: tuple[str, BreakerState] | None = None
        # Items go out in index order, so nothing before the cursor is pending (a retry
        # that makes an item pending again moves the cursor back): O(1) per result.
        i, batch = self._item_cursor.get(name, 0), list[list[int]]()
        while i < len(states) and busy < limit and len(batch) < waiting:
            if states[i]["status"] == "pending":
                if gated:  # the breaker would refuse the items after this one too
                    refused = self._breaker_refuses(name, item_probe(name, i))
                    if refused is not None:
                        break
                batch.append([i, states[i]["attempts"] + 1])
                busy += 1
            i += 1
        self._item_cursor[name] = i
        if batch:
            self._emit("step.items_dispatched", step=name, items=batch)
            self._send_items(name, batch)
        if refused is not None:  # after the dispatch, which ends an earlier hold
            self._note_held(name, refused)

    def _pump_held(self, key: str) -> None:
        for name, plan in self._plans.items():
            st = self.state.steps[name]
            hold = st.hold if isinstance(plan, ParallelPlan) and st.status in OPEN else None
            if hold is not None and hold.get("breaker") == key:
                self._pump(name)

    def _send_items(self, name: str, batch: list[list[int]]) -> None:
        """One effect for the whole batch: the tasks reach the pool together."""
        if not batch:
            return
        values = self.state.steps[name].detail["items"]  # type: ignore[index]
        plan = self._plans[name]
        assert isinstance(plan, ParallelPlan)
        shared = self._item_shared.get(name)
        if shared is None:
            shared = self._item_shared[name] = f"{self.state.id}/{name}#{next(_SHARED_KEYS)}"
        tasks = []
        for index, attempt in batch:
            tid = item_task_id(self.state.id, name, index, attempt)
            self._item_tasks[tid] = (name, index)
            task = self._task(name, attempt, tid)
            # not the step's whole config: its items (up to 10,000) would go with each one
            task.update(input=values[index], item_index=index, config=plan.config)
            task["shared"] = shared  # its inputs and upstream: the same for every item
            tasks.append(task)
        pool, me = self.deps.pool, self.actor_ref

        def send() -> None:
            for task in tasks:
                pool.tell(Dispatch(task, me))

        self._after_commit(send)

    def _item_error(
        self, name: str, index: int, item: Mapping[str, Any], error: Mapping[str, Any]
    ) -> None:
        attempt = item["attempts"]
        used = attempt - item.get("base", 0)  # a manual retry gives a fresh budget
        info, delay = plan_retry(self.cfg.retry_policy_for(name), used, error, self.deps.rand)
        if delay is not None:
            at = self.deps.clock() + delay
            self._emit(
                "step.item_retry_scheduled",
                step=name,
                index=index,
                attempt=attempt,
                error=info,
                delay_s=delay,
                retry_at=at,
            )
            if self.state.status == "running":
                self._arm_item_retry(name, index, attempt, at)
            elif self.state.status == "paused":  # its whole wait begins on resume
                self._emit("step.items_frozen", step=name, left=[[index, delay]])
            return
        self._emit("step.item_failed", step=name, index=index, attempt=attempt, error=info)
        if self.cfg.error_handling.strategy == "fail_fast":
            self._cancel_items(name, f"item {index} of {name!r} failed")

    def _cancel_items(self, name: str, reason: str) -> None:
        st = self.state.steps[name]
        open_items = [i for i, item in enumerate(_items(st)) if item["status"] not in ITEM_DONE]
        if not open_items:
            return
        gated = self.cfg.circuit_breaker is not None
        # past the fan-out's deadline (its timeout, or an abort that came later still) the
        # items in flight timed out: failed calls; otherwise a probe's slot is given back
        overran = gated and st.deadline is not None and self.deps.clock() >= st.deadline
        for i in open_items:
            item = _items(st)[i]
            if item["status"] == "dispatched":
                tid = item_task_id(self.state.id, name, i, item["attempts"])
                self._item_tasks.pop(tid, None)
                self._after_commit(lambda tid=tid: self.deps.pool.tell(Cancel(tid)))
                if overran:
                    self._item_outcome(name, i, False)
                elif gated:
                    self._breaker_release(item_probe(name, i))
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
            delay, lambda: tell(ref, due)
        )

    def _on_item_retry_due(self, msg: ItemRetryDue) -> None:
        self._item_timers.pop((msg.step, msg.index), None)
        st = self.state.steps[msg.step]
        if self.state.status != "running" or st.status not in OPEN:
            return
        item = _items(st)[msg.index]
        if item["status"] == "retry_wait" and item["attempts"] == msg.attempt:
            cursor = self._item_cursor.get(msg.step, 0)
            self._item_cursor[msg.step] = min(cursor, msg.index)
            self._emit("step.item_ready", step=msg.step, index=msg.index)
            self._pump(msg.step)


def _left(item: Mapping[str, Any], now: float) -> float:
    """The retry wait an item had left when its execution was paused."""
    if item.get("frozen") is not None:
        return float(item["frozen"])
    return max(0.0, float(item["retry_at"] or now) - now)


def _counts(st: StepState) -> dict[str, int]:
    assert st.detail is not None
    counts: dict[str, int] = st.detail["counts"]
    return counts


def _items(st: StepState) -> list[dict[str, Any]]:
    assert st.detail is not None
    items: list[dict[str, Any]] = st.detail["state"]
    return items
