"""Execution state and the pure reducer that builds it from events.

The supervisor decides what happens and expresses it as events; :func:`apply` is the only
code that changes an :class:`ExecutionState`. The same function rebuilds the state during
recovery (snapshot + the events after it), so the live path and the recovery path cannot
drift apart, and ``replay(all events) == replay(snapshot, events after it)`` is checkable.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tamma_actors._errors import IllegalTransition, StoreCorrupted
from tamma_actors._fanout import DETAIL_EVENTS, apply_detail, copy_detail
from tamma_actors._state_views import to_record, to_status, to_summary
from tamma_actors._status import (
    TERMINAL_EXECUTION,
    TERMINAL_STEP_VALUES,
    ExecutionStatus,
    StepStatus,
    check_execution_transition,
    check_step_transition,
)

__all__ = [
    "ExecutionState",
    "StepState",
    "apply",
    "make_event",
    "replay",
    "to_record",
    "to_status",
    "to_summary",
]

E = ExecutionStatus
S = StepStatus


@dataclass(slots=True)
class StepState:
    status: str = S.PENDING.value
    attempts: int = 0
    attempt_base: int = 0  # attempts used before the last manual retry
    data: Any = None
    error: dict[str, Any] | None = None
    started_at: float | None = None
    ended_at: float | None = None
    retry_at: float | None = None  # wall clock of the next attempt while in retry_wait
    frozen_delay: float | None = None  # retry wait or held deadline left while paused
    worker: str | None = None
    # wall clock of the step's coordinator deadline: the end of a wait step, the queue
    # deadline while dispatched, the start-to-close deadline while running
    deadline: float | None = None
    # what a ready step, or a fan-out's pending items, wait for (a breaker)
    hold: dict[str, Any] | None = None
    detail: dict[str, Any] | None = None  # parallel items / subflow child (_fanout.py)

    def to_dict(self) -> dict[str, Any]:
        out = {name: getattr(self, name) for name in self.__slots__}
        # the reducer updates a fan-out's items in place; a snapshot must not share them
        out["detail"] = copy_detail(self.detail)
        return out


@dataclass(slots=True)
class ExecutionState:
    id: str
    workflow_id: str = ""
    workflow_version: str = ""
    digest: str = ""
    status: str = E.PENDING.value
    context: dict[str, Any] = field(default_factory=dict)
    start_time: float | None = None
    end_time: float | None = None
    seq: int = 0
    steps: dict[str, StepState] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    current_step: str | None = None
    error: dict[str, Any] | None = None
    reason: str | None = None
    retries: int = 0
    source: str | None = None
    deadline: float | None = None  # wall clock of the workflow timeout while running
    frozen_left: float | None = None  # workflow time left while paused
    compensations: list[dict[str, Any]] | None = None  # the compensate plan and results
    # Not part of the state proper (never stored, not compared): the steps whose status
    # changed since its supervisor last looked (``_step_index``); None until one looks,
    # and again when the steps are replaced.
    moved: set[str] | None = field(default=None, compare=False, repr=False)

    @property
    def terminal(self) -> bool:
        return self.status in _TERMINAL_EXECUTION

    def failed_steps(self) -> list[str]:
        """The steps that failed, in the workflow's order (what an error report lists)."""
        return [name for name in self.order if self.steps[name].status == "failed"]

    def to_dict(self) -> dict[str, Any]:
        out = {name: getattr(self, name) for name in self.__slots__ if name not in _NOT_STORED}
        out["steps"] = {name: st.to_dict() for name, st in self.steps.items()}
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ExecutionState:
        try:
            fields = {k: data[k] for k in cls.__slots__ if k in data and k not in _NOT_STORED}
            state = cls(**fields)
            state.steps = {
                name: StepState(**{k: v for k, v in st.items() if k in StepState.__slots__})
                for name, st in data.get("steps", {}).items()
            }
        except (TypeError, AttributeError, KeyError) as exc:
            raise StoreCorrupted(f"snapshot of {data.get('id')!r} does not decode: {exc}") from exc
        return state


_NOT_STORED = frozenset({"steps", "moved"})  # steps are stored one by one
_TERMINAL_EXECUTION = frozenset(s.value for s in TERMINAL_EXECUTION)


def make_event(state: ExecutionState, etype: str, ts: float, **data: Any) -> dict[str, Any]:
    """The next event of ``state`` (its seq follows the state's); not yet applied."""
    return {
        "seq": state.seq + 1,
        "type": etype,
        "execution_id": state.id,
        "timestamp": ts,
        "data": data,
    }


def _step(state: ExecutionState, data: Mapping[str, Any]) -> StepState:
    return state.steps[data["step"]]


def _move_step(state: ExecutionState, name: str, dst: StepStatus) -> StepState:
    st = state.steps[name]
    check_step_transition(st.status, dst, name)
    st.status = dst.value
    if state.moved is not None:
        state.moved.add(name)
    return st


def _move(state: ExecutionState, dst: ExecutionStatus) -> None:
    check_execution_transition(state.status, dst)
    state.status = dst.value


def _created(state: ExecutionState, ev: Mapping[str, Any]) -> None:
    d = ev["data"]
    state.workflow_id = d["workflow_id"]
    state.workflow_version = d.get("workflow_version", "")
    state.digest = d.get("digest", "")
    state.context = dict(d.get("inputs") or {})
    state.order = list(d["steps"])
    state.steps = {name: StepState() for name in state.order}
    state.moved = None
    state.start_time = ev["timestamp"]
    state.source = d.get("source")


def _started(state: ExecutionState, ev: Mapping[str, Any]) -> None:
    _move(state, E.RUNNING)
    state.deadline = ev["data"].get("deadline")


def _paused(state: ExecutionState, ev: Mapping[str, Any]) -> None:
    _move(state, E.PAUSED)
    state.reason = ev["data"].get("reason")
    for name, left in ev["data"].get("frozen", {}).items():
        st = state.steps[name]
        st.frozen_delay, st.retry_at = left, None
    for name, left in ev["data"].get("held", {}).items():
        st = state.steps[name]
        st.frozen_delay, st.deadline = left, None
    if state.deadline is not None:
        state.frozen_left = ev["data"].get("workflow_left")
        state.deadline = None


def _resumed(state: ExecutionState, ev: Mapping[str, Any]) -> None:
    _move(state, E.RUNNING)
    state.reason = None
    for name, at in ev["data"].get("retry_at", {}).items():
        st = state.steps[name]
        st.retry_at, st.frozen_delay = at, None
    for name, at in ev["data"].get("deadlines", {}).items():
        st = state.steps[name]
        st.deadline, st.frozen_delay = at, None
    state.deadline = ev["data"].get("deadline")
    state.frozen_left = None


def _finished(dst: ExecutionStatus) -> Callable[[ExecutionState, Mapping[str, Any]], None]:
    def handler(state: ExecutionState, ev: Mapping[str, Any]) -> None:
        _move(state, dst)
        state.end_time = ev["timestamp"]
        state.current_step = None
        state.deadline = state.frozen_left = None
        if dst is E.FAILED:
            state.error = ev["data"].get("error")
        if dst is E.ABORTED:
            state.reason = ev["data"].get("reason")
            if "error" in ev["data"]:  # it was compensating: what each compensation did
                state.error = ev["data"]["error"]

    return handler


def _ready(state: ExecutionState, ev: Mapping[str, Any]) -> None:
    _move_step(state, ev["data"]["step"], S.READY)


def _dispatched(state: ExecutionState, ev: Mapping[str, Any]) -> None:
    st = _move_step(state, ev["data"]["step"], S.DISPATCHED)
    st.attempts = ev["data"]["attempt"]
    st.retry_at = None
    st.error = None
    st.hold = None
    st.frozen_delay = None
    st.deadline = ev["data"].get("deadline")


def _step_started(state: ExecutionState, ev: Mapping[str, Any]) -> None:
    st = _move_step(state, ev["data"]["step"], S.RUNNING)
    st.started_at = ev["timestamp"]
    st.worker = ev["data"].get("worker")
    st.deadline = ev["data"].get("deadline")
    st.frozen_delay = None
    state.current_step = ev["data"]["step"]


def _completed(state: ExecutionState, ev: Mapping[str, Any]) -> None:
    st = _move_step(state, ev["data"]["step"], S.SUCCEEDED)
    st.data = ev["data"].get("output")
    st.ended_at = ev["timestamp"]
    st.deadline = None
    if st.started_at is None:
        st.started_at = ev["timestamp"]


def _failed(state: ExecutionState, ev: Mapping[str, Any]) -> None:
    st = _move_step(state, ev["data"]["step"], S.FAILED)
    st.error = ev["data"].get("error")
    st.ended_at = ev["timestamp"]
    st.deadline = None


def _retry_scheduled(state: ExecutionState, ev: Mapping[str, Any]) -> None:
    st = _move_step(state, ev["data"]["step"], S.RETRY_WAIT)
    st.error = ev["data"].get("error")
    st.deadline = None
    if "frozen" in ev["data"]:  # failed while paused: its whole wait begins on resume
        st.retry_at, st.frozen_delay = None, ev["data"]["frozen"]
    else:
        st.retry_at, st.frozen_delay = ev["data"]["retry_at"], None
    state.retries += 1


def _redispatched(state: ExecutionState, ev: Mapping[str, Any]) -> None:
    name = ev["data"]["step"]
    _move_step(state, name, S.READY)
    _move_step(state, name, S.DISPATCHED)
    st = _step(state, ev["data"])
    st.worker = None
    st.deadline = ev["data"].get("deadline")


def _timed_out(state: ExecutionState, ev: Mapping[str, Any]) -> None:
    st = _move_step(state, ev["data"]["step"], S.TIMED_OUT)
    st.error = ev["data"].get("error")
    st.deadline = None


def _held(state: ExecutionState, ev: Mapping[str, Any]) -> None:
    """A ready step waits for an open breaker; it stays ready and keeps its attempts. Or a
    running fan-out's pending items do: they stay pending until their items go out
    (``step.items_dispatched``) or are cancelled."""
    st = _step(state, ev["data"])
    fan_out = st.status in _OPEN_STEP and st.detail is not None and "state" in st.detail
    if st.status != S.READY.value and not fan_out:
        raise IllegalTransition(
            f"step {ev['data']['step']!r}: only a ready step or a fan-out's items are held"
        )
    st.hold = {"breaker": ev["data"]["breaker"], "until": ev["data"].get("until")}


_OPEN_STEP = frozenset({S.DISPATCHED.value, S.RUNNING.value})
_UNHOLD = frozenset({"step.items_dispatched", "step.items_cancelled"})


def _compensating(state: ExecutionState, ev: Mapping[str, Any]) -> None:
    """The plan: the workflow timeout stops (compensations have their own deadlines), and
    a cause other than a failed step (a workflow timeout) is the execution's error."""
    state.compensations = [
        {"step": name, "implementation": impl, "status": "pending"}
        for name, impl in ev["data"]["plan"]
    ]
    state.deadline = state.frozen_left = None
    if "cause" in ev["data"]:
        state.error = ev["data"]["cause"]


def _compensation(status: str) -> Callable[[ExecutionState, Mapping[str, Any]], None]:
    def handler(state: ExecutionState, ev: Mapping[str, Any]) -> None:
        for entry in state.compensations or ():
            if entry["step"] == ev["data"]["step"]:
                entry["status"] = status
                for key in ("output", "error"):
                    if key in ev["data"]:
                        entry[key] = ev["data"][key]
                return
        raise IllegalTransition(f"step {ev['data']['step']!r} has no planned compensation")

    return handler


def _terminal_step(dst: StepStatus) -> Callable[[ExecutionState, Mapping[str, Any]], None]:
    def handler(state: ExecutionState, ev: Mapping[str, Any]) -> None:
        st = _move_step(state, ev["data"]["step"], dst)
        st.ended_at = ev["timestamp"]
        st.retry_at = st.frozen_delay = st.deadline = None
        st.hold = None
        if ev["data"].get("reason"):
            st.error = {"type": dst.value, "message": ev["data"]["reason"], "retryable": False}

    return handler


def _reset(state: ExecutionState, ev: Mapping[str, Any]) -> None:
    """A manual retry: the step gets a fresh attempt budget; the execution runs again."""
    name = ev["data"]["step"]
    if state.status == E.FAILED.value:
        _move(state, E.RUNNING)
        state.end_time = None
        state.error = None
        state.deadline = ev["data"].get("deadline")  # its timeout, afresh from the retry
    st = _move_step(state, name, S.READY)
    st.attempt_base = st.attempts
    st.error = None
    st.ended_at = None
    state.retries += 1  # asked for, not scheduled by the policy: a retry all the same


def _reopened(state: ExecutionState, ev: Mapping[str, Any]) -> None:
    """A step cancelled or skipped because of a failure goes back to pending."""
    name = ev["data"]["step"]
    st = state.steps[name]
    if st.status not in (S.CANCELLED.value, S.SKIPPED.value):
        raise IllegalTransition(f"step {name!r}: cannot reopen a {st.status} step")
    st.status = S.PENDING.value
    if state.moved is not None:
        state.moved.add(name)
    st.error = None
    st.ended_at = None


_HANDLERS: dict[str, Callable[[ExecutionState, Mapping[str, Any]], None]] = {
    "workflow.created": _created,
    "workflow.started": _started,
    "workflow.paused": _paused,
    "workflow.resumed": _resumed,
    "workflow.completed": _finished(E.COMPLETED),
    "workflow.failed": _finished(E.FAILED),
    "workflow.aborted": _finished(E.ABORTED),
    "step.ready": _ready,
    "step.dispatched": _dispatched,
    "step.started": _step_started,
    "step.completed": _completed,
    "step.failed": _failed,
    "step.retry_scheduled": _retry_scheduled,
    "step.redispatched": _redispatched,
    "step.skipped": _terminal_step(S.SKIPPED),
    "step.cancelled": _terminal_step(S.CANCELLED),
    "step.retried": _reset,
    "step.reopened": _reopened,
    "step.timed_out": _timed_out,
    "step.held": _held,
    "workflow.compensating": _compensating,
    "compensation.started": _compensation("running"),
    "compensation.completed": _compensation("succeeded"),
    "compensation.failed": _compensation("failed"),
    "compensation.cancelled": _compensation("cancelled"),
}


def _detail(state: ExecutionState, ev: Mapping[str, Any]) -> None:
    st = _step(state, ev["data"])
    st.detail = apply_detail(st.detail, ev)
    if st.hold is not None and ev["type"] in _UNHOLD:  # held items went out, or ended
        st.hold = None


_HANDLERS.update(dict.fromkeys(DETAIL_EVENTS, _detail))

EVENT_TYPES = frozenset(_HANDLERS)


def apply(state: ExecutionState, event: Mapping[str, Any]) -> None:
    """Apply one event in place; raises IllegalTransition (state unchanged for that event's
    own checks) or StoreCorrupted when the event does not follow the state."""
    if event["seq"] != state.seq + 1:
        raise StoreCorrupted(
            f"execution {state.id}: event seq {event['seq']} does not follow {state.seq}"
        )
    handler = _HANDLERS.get(event["type"])
    if handler is None:
        raise StoreCorrupted(f"execution {state.id}: unknown event type {event['type']!r}")
    try:
        handler(state, event)
    except KeyError as exc:
        raise StoreCorrupted(
            f"execution {state.id}: event {event['seq']} ({event['type']}) lacks {exc}"
        ) from exc
    state.seq = event["seq"]


def replay(
    execution_id: str,
    events: Iterable[Mapping[str, Any]],
    snapshot: Mapping[str, Any] | None = None,
) -> ExecutionState:
    """Rebuild a state: from ``snapshot`` (if any) plus the events that follow it."""
    state = ExecutionState.from_dict(snapshot) if snapshot else ExecutionState(id=execution_id)
    for ev in events:
        if ev["seq"] <= state.seq:
            continue
        apply(state, ev)
    return state


def step_is_terminal(st: StepState) -> bool:
    return st.status in TERMINAL_STEP_VALUES
