"""Read-only views of an :class:`~tamma_actors._state.ExecutionState`: the execution record,
the status record (tamma_actors/_engine_api.py), the listing summary and the metrics.

Pure functions of the state; the reducer in ``_state.py`` is the only code that changes it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tamma_actors._fanout import summarize_detail

if TYPE_CHECKING:
    from tamma_actors._state import ExecutionState, StepState

__all__ = ["to_record", "to_status", "to_summary"]


def _metrics(state: ExecutionState) -> dict[str, Any]:
    counts = {s: 0 for s in ("succeeded", "failed", "skipped", "cancelled")}
    for st in state.steps.values():
        if st.status in counts:
            counts[st.status] += 1
    duration = None
    if state.start_time is not None and state.end_time is not None:
        duration = (state.end_time - state.start_time) * 1000.0
    return {
        "steps_total": len(state.steps),
        "steps_succeeded": counts["succeeded"],
        "steps_failed": counts["failed"],
        "steps_skipped": counts["skipped"],
        "steps_cancelled": counts["cancelled"],
        "retries": state.retries,
        "duration_ms": duration,
    }


def _result(st: StepState) -> dict[str, Any]:
    result = {
        "status": st.status,
        "data": st.data,
        "error": st.error,
        "attempts": st.attempts,
        "started_at": st.started_at,
        "ended_at": st.ended_at,
    }
    if st.detail is not None:  # a fan-out's item counts, a subflow's child
        result["detail"] = summarize_detail(st.detail)
    return result


def to_record(state: ExecutionState) -> dict[str, Any]:
    """The execution record of tamma_actors/_engine_api.py."""
    results = {name: _result(st) for name, st in state.steps.items()}
    return {
        "id": state.id,
        "workflow_id": state.workflow_id,
        "workflow_version": state.workflow_version,
        "status": state.status,
        "start_time": state.start_time,
        "end_time": state.end_time,
        "current_step": state.current_step,
        "context": state.context,
        "results": results,
        "error": state.error,
        "metrics": _metrics(state),
        "seq": state.seq,
        "reason": state.reason,
    }


def to_summary(state: ExecutionState, rest: float | None = None) -> dict[str, Any]:
    """The small record kept in the ``executions`` sub-database for listing and filtering.
    ``rest``: when the execution may rest, the time it next needs a supervisor
    (``_execution_rest.rest_until``): recovery then rests it from this record alone."""
    summary = {
        "id": state.id,
        "workflow_id": state.workflow_id,
        "status": state.status,
        "start_time": state.start_time,
        "end_time": state.end_time,
        "current_step": state.current_step,
        "seq": state.seq,
        "digest": state.digest,
    }
    if rest is not None:
        summary["rest"] = rest
    return summary


def to_status(state: ExecutionState) -> dict[str, Any]:
    """The status record of tamma_actors/_engine_api.py."""
    progress = {"total": len(state.steps), "succeeded": 0, "failed": 0, "skipped": 0, "running": 0}
    for st in state.steps.values():
        if st.status in ("succeeded", "failed", "skipped"):
            progress[st.status] += 1
        elif st.status in ("dispatched", "running"):
            progress["running"] += 1
    return {
        "id": state.id,
        "workflow_id": state.workflow_id,
        "status": state.status,
        "current_step": state.current_step,
        "reason": state.reason,
        "seq": state.seq,
        "progress": progress,
        "steps": {name: st.status for name, st in state.steps.items()},
        "waiting": _waiting(state),
        "compensations": [
            {key: entry[key] for key in ("step", "implementation", "status")}
            for entry in state.compensations or ()
        ],
    }


def _waiting(state: ExecutionState) -> dict[str, str]:
    """What holds each step: a breaker (a ready step, or a fan-out's pending items), or,
    once the execution compensates, the compensation that undoes it."""
    waiting = {
        name: f"breaker {st.hold['breaker']}"
        for name, st in state.steps.items()
        if st.hold is not None
    }
    for entry in state.compensations or ():
        if entry["status"] in ("pending", "running"):
            waiting[entry["step"]] = f"compensation {entry['implementation']!r}: {entry['status']}"
    return waiting
