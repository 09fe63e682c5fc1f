"""``tamma explain ID``: why an execution is where it is, in words.

:func:`explain` is a pure function of the execution's state (plus what the node knows:
its breakers and the plugins its workers offer). It returns a one-line ``summary`` and,
for every step that is not finished, what it waits for::

    {"id", "status", "summary", "since", "steps": {name: {"status", "waiting_for", ...}}}

The live supervisor answers with its in-memory state (after pending writes commit); a
finished execution is explained from the store.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from tamma_actors._deadlines import WAIT_IMPLEMENTATION
from tamma_actors._errors import UnknownStep

if TYPE_CHECKING:
    from tamma_actors._models import WorkflowConfig
    from tamma_actors._state import ExecutionState, StepState

__all__ = ["Explain", "Explaining", "explain"]


ChildStatus = Callable[[str], "str | None"]


@dataclass(frozen=True)
class Explain:
    reply: Future[dict[str, Any]]
    offered: frozenset[str] | None = None  # plugins the connected workers offer, if known
    child_status: ChildStatus | None = None  # a subflow child's status, from the store


def _at(ts: float | None) -> str:
    if ts is None:
        return "an unknown time"
    try:
        return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, OSError, ValueError):  # beyond what a calendar date can say
        return f"{ts:g} s after the epoch"


def _is_wait(cfg: WorkflowConfig | None, name: str) -> bool:
    if cfg is None:
        return False
    try:
        step = cfg.step(name)
    except UnknownStep:  # a definition that no longer names the step: explain without it
        return False
    return step.type == "task" and step.implementation == WAIT_IMPLEMENTATION


def _implementation(cfg: WorkflowConfig | None, name: str) -> str | None:
    if cfg is None:
        return None
    try:
        return cfg.step(name).implementation
    except UnknownStep:
        return None


def _step_reason(
    state: ExecutionState,
    cfg: WorkflowConfig | None,
    name: str,
    st: StepState,
    now: float,
    breakers: Mapping[str, Mapping[str, Any]],
    offered: Collection[str] | None,
    child_status: ChildStatus | None = None,
) -> str:
    paused = state.status == "paused"
    if st.status == "pending":
        deps = cfg.deps(name) if cfg is not None else []
        open_deps = [f"{d} ({state.steps[d].status})" for d in deps if d in state.steps]
        open_deps = [d for d in open_deps if not d.endswith(("(succeeded)", "(skipped)"))]
        if open_deps:
            return "dependencies: " + ", ".join(open_deps)
        return "paused by request: not scheduled until resumed" if paused else "to be scheduled"
    if st.status == "ready":
        if paused:  # whatever held it before, nothing goes out until resume
            return "paused by request: not dispatched until resumed"
        if st.hold is not None:
            return _breaker_reason(st.hold, breakers)
        return "a dispatch slot (max_parallel)"
    if st.status in ("dispatched", "running") and st.hold is not None and st.detail and not paused:
        # a fan-out whose pending items wait for a breaker (its items in flight run on)
        held = _breaker_reason(st.hold, breakers)
        return f"{_detail_reason(st.detail, paused, child_status)}; its pending items wait: {held}"
    if st.status == "retry_wait":
        if paused and st.frozen_delay is not None:
            return f"retry of attempt {st.attempts + 1}: frozen by pause, {st.frozen_delay:g}s left"
        return f"retry (attempt {st.attempts + 1}) at {_at(st.retry_at)}"
    if st.status == "dispatched":
        impl = _implementation(cfg, name)
        if offered is not None and impl is not None and impl not in offered:
            return f"queued: no worker offers plugin {impl}"
        return f"queued: no worker has started it yet (attempt {st.attempts})"
    if st.status in ("dispatched", "running") and st.detail:
        return _detail_reason(st.detail, paused, child_status)
    if st.status == "running":
        if _is_wait(cfg, name):
            if paused and st.frozen_delay is not None:
                return f"wait step: frozen by pause, {st.frozen_delay:g}s left"
            return f"wait step: until {_at(st.deadline)}"
        where = f"running on worker {st.worker}" if st.worker else "running"
        text = f"{where} since {_at(st.started_at)} (attempt {st.attempts})"
        if st.deadline is not None:
            text += f"; times out at {_at(st.deadline)}"
        return text
    if st.status == "timed_out":
        return "its retry decision (it timed out)"
    return ""


def _breaker_reason(hold: Mapping[str, Any], breakers: Mapping[str, Mapping[str, Any]]) -> str:
    key = str(hold.get("breaker"))
    info = breakers.get(key, {})
    if info.get("phase") == "half_open":
        return f"breaker {key} is half-open: its probe calls are in use"
    return f"breaker {key} open until {_at(info.get('until', hold.get('until')))}"


def _detail_reason(
    detail: Mapping[str, Any], paused: bool, child_status: ChildStatus | None
) -> str:
    """A fan-out's items or a subflow's child (see tamma_actors/_fanout.py)."""
    if "child" in detail:
        child = detail["child"]
        text = f"subflow: child execution {child} (attempt {detail.get('attempt')})"
        status = child_status(child) if child_status is not None else None
        if status == "paused" and not paused:  # paused on its own: it will not end so
            return f"{text}, paused: resume the child to go on"
        return f"{text}, {status}" if status is not None else text
    counts: dict[str, int] = {}
    for item in detail.get("state", ()):
        counts[item["status"]] = counts.get(item["status"], 0) + 1
    total = len(detail.get("state", ()))
    rest = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    return f"fan-out: {counts.get('succeeded', 0)} of {total} items succeeded ({rest})"


def explain(
    state: ExecutionState,
    cfg: WorkflowConfig | None,
    now: float,
    *,
    breakers: Mapping[str, Mapping[str, Any]] | None = None,
    offered: Collection[str] | None = None,
    child_status: ChildStatus | None = None,
) -> dict[str, Any]:
    breakers = breakers or {}
    steps: dict[str, dict[str, Any]] = {}
    for name in state.order:
        st = state.steps[name]
        if st.status in ("succeeded", "failed", "skipped", "cancelled"):
            continue
        reason = _step_reason(state, cfg, name, st, now, breakers, offered, child_status)
        steps[name] = {"status": st.status, "waiting_for": reason, "attempts": st.attempts}
    return {
        "id": state.id,
        "workflow_id": state.workflow_id,
        "status": state.status,
        "summary": _summary(state, steps),
        "since": state.end_time if state.terminal else state.start_time,
        "steps": steps,
        "compensations": state.compensations,
    }


def _summary(state: ExecutionState, steps: Mapping[str, Mapping[str, Any]]) -> str:
    if state.status == "completed":
        return f"completed at {_at(state.end_time)}"
    if state.status == "failed":
        message = (state.error or {}).get("message", "")
        return f"failed at {_at(state.end_time)}: {message}"
    if state.status == "aborted":
        return f"aborted at {_at(state.end_time)}: {state.reason or 'by request'}"
    if state.status == "paused":
        why = f" ({state.reason})" if state.reason else ""
        return f"paused by request{why}: nothing new is dispatched until it is resumed"
    if state.status == "pending":
        return "created, not yet started"
    compensating = [c for c in state.compensations or () if c["status"] == "running"]
    if compensating:
        return f"compensating after a failure: step {compensating[0]['step']!r} is undone now"
    active = [(n, s) for n, s in steps.items() if s["status"] != "pending"]
    if not active and steps:
        return "no step can run: the watchdog will re-drive or fail it"
    if not active:
        return "finishing"
    name, first = active[0]
    more = f" (and {len(active) - 1} more)" if len(active) > 1 else ""
    return f"running: step {name!r}: {first['waiting_for']}{more}"


class Explaining:
    """The supervisor's answer to :class:`Explain` (a mixin)."""

    if TYPE_CHECKING:
        from tamma_actors._execution import ExecutionDeps

        state: ExecutionState
        cfg: WorkflowConfig
        deps: ExecutionDeps

        def _reply_committed(
            self, reply: Future[dict[str, Any]], value: dict[str, Any]
        ) -> None: ...

    def _on_explain(self, msg: Explain) -> None:
        breakers = self.deps.breakers.snapshot() if self.deps.breakers is not None else {}
        report = explain(
            self.state,
            self.cfg,
            self.deps.clock(),
            breakers=breakers,
            offered=msg.offered,
            child_status=msg.child_status,
        )
        self._reply_committed(msg.reply, report)
