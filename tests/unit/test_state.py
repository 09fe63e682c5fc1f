"""The pure reducer: live application and recovery replay must agree."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tamma_actors._errors import IllegalTransition, StoreCorrupted
from tamma_actors._models import WorkflowExecution, WorkflowStatusInfo
from tamma_actors._state import (
    ExecutionState,
    apply,
    make_event,
    replay,
    to_record,
    to_status,
    to_summary,
)


def _run(events: list[tuple[str, dict[str, Any]]]) -> tuple[ExecutionState, list[dict[str, Any]]]:
    state = ExecutionState(id="e1")
    log = []
    for i, (etype, data) in enumerate(events):
        ev = make_event(state, etype, 1000.0 + i, **data)
        apply(state, ev)
        log.append(ev)
    return state, log


CREATED = (
    "workflow.created",
    {
        "workflow_id": "wf",
        "workflow_version": "2",
        "digest": "d",
        "inputs": {"topic": "x"},
        "steps": ["a", "b", "c"],
    },
)

HAPPY = [
    CREATED,
    ("workflow.started", {}),
    ("step.ready", {"step": "a"}),
    ("step.dispatched", {"step": "a", "attempt": 1}),
    ("step.started", {"step": "a", "attempt": 1, "worker": "w1"}),
    (
        "step.retry_scheduled",
        {
            "step": "a",
            "attempt": 1,
            "retry_at": 1010.0,
            "error": {"type": "Boom", "message": "m", "retryable": None},
        },
    ),
    ("workflow.paused", {"reason": "ops", "frozen": {"a": 4.0}}),
    ("workflow.resumed", {"retry_at": {"a": 1020.0}}),
    ("step.ready", {"step": "a"}),
    ("step.dispatched", {"step": "a", "attempt": 2}),
    ("step.completed", {"step": "a", "attempt": 2, "output": {"v": 1}}),
    ("step.ready", {"step": "b"}),
    ("step.dispatched", {"step": "b", "attempt": 1}),
    ("step.redispatched", {"step": "b", "attempt": 1, "reason": "worker died"}),
    ("step.started", {"step": "b", "attempt": 1, "worker": "w2"}),
    ("step.failed", {"step": "b", "attempt": 1, "error": {"type": "X", "message": "no"}}),
    ("step.cancelled", {"step": "c", "reason": "a dependency did not succeed"}),
    ("workflow.failed", {"error": {"message": "step 'b' failed", "step": "b"}}),
    ("step.retried", {"step": "b"}),
    ("step.reopened", {"step": "c"}),
    ("step.dispatched", {"step": "b", "attempt": 2}),
    ("step.completed", {"step": "b", "attempt": 2, "output": 2}),
    ("step.ready", {"step": "c"}),
    ("step.dispatched", {"step": "c", "attempt": 1}),
    ("step.completed", {"step": "c", "attempt": 1, "output": 3}),
    ("workflow.completed", {}),
]


def test_a_full_life_is_reduced_to_the_expected_state() -> None:
    state, log = _run(HAPPY)
    assert state.status == "completed"
    assert state.seq == len(HAPPY) == log[-1]["seq"]
    assert [ev["seq"] for ev in log] == list(range(1, len(HAPPY) + 1))
    a, b, c = (state.steps[n] for n in "abc")
    assert (a.status, a.attempts, a.data) == ("succeeded", 2, {"v": 1})
    assert state.retries == 2  # one scheduled by the policy (a), one asked for (b)
    assert (b.status, b.attempts, b.attempt_base, b.data) == ("succeeded", 2, 1, 2)
    assert c.status == "succeeded" and state.error is None and state.end_time == 1000.0 + 25


def test_pause_freezes_and_resume_rearms_retry_times() -> None:
    state, _ = _run(HAPPY[:7])
    assert state.status == "paused" and state.reason == "ops"
    assert state.steps["a"].frozen_delay == 4.0 and state.steps["a"].retry_at is None
    state, _ = _run(HAPPY[:8])
    assert state.steps["a"].retry_at == 1020.0 and state.steps["a"].frozen_delay is None


def test_a_retry_scheduled_during_a_pause_keeps_its_whole_wait_for_the_resume() -> None:
    start = [*HAPPY[:5], ("workflow.paused", {"reason": "ops"})]
    failed = {"step": "a", "attempt": 1, "retry_at": 1010.0, "delay_s": 5.0}
    state, _ = _run([*start, ("step.retry_scheduled", {**failed, "frozen": 5.0})])
    a = state.steps["a"]
    assert (a.status, a.retry_at, a.frozen_delay) == ("retry_wait", None, 5.0)
    # a log written before the event said so replays as that node ran it
    state, _ = _run([*start, ("step.retry_scheduled", failed)])
    assert (state.steps["a"].retry_at, state.steps["a"].frozen_delay) == (1010.0, None)


@given(st.integers(min_value=0, max_value=len(HAPPY)))
def test_snapshot_plus_tail_equals_full_replay(cut: int) -> None:
    _, log = _run(HAPPY)
    full = replay("e1", log)
    head = replay("e1", log[:cut])
    snap = head.to_dict()
    resumed = replay("e1", log[cut:], snapshot=snap if cut else None)
    assert resumed.to_dict() == full.to_dict()
    # events already covered by the snapshot are skipped, not applied twice
    assert replay("e1", log, snapshot=snap if cut else None).to_dict() == full.to_dict()


def test_illegal_step_transition_is_refused() -> None:
    state, _ = _run(HAPPY[:3])
    bad = make_event(state, "step.completed", 5.0, step="a", attempt=1, output=None)
    with pytest.raises(IllegalTransition, match="ready"):
        apply(state, bad)
    assert state.steps["a"].status == "ready" and state.seq == 3


def test_illegal_execution_transition_is_refused() -> None:
    state, _ = _run(HAPPY[:2])
    with pytest.raises(IllegalTransition):
        apply(state, make_event(state, "workflow.resumed", 5.0))
    assert state.status == "running"


def test_sequence_gaps_unknown_types_and_missing_fields_are_corruption() -> None:
    state, _ = _run(HAPPY[:2])
    gap = make_event(state, "step.ready", 5.0, step="a")
    gap["seq"] += 1
    with pytest.raises(StoreCorrupted, match="does not follow"):
        apply(state, gap)
    with pytest.raises(StoreCorrupted, match="unknown event type"):
        apply(state, make_event(state, "step.exploded", 5.0, step="a"))
    with pytest.raises(StoreCorrupted, match="lacks"):
        apply(state, make_event(state, "step.ready", 5.0))
    with pytest.raises(StoreCorrupted, match="does not decode"):
        ExecutionState.from_dict({"id": "e1", "steps": {"a": "not a mapping"}})


def test_reopen_only_applies_to_cancelled_or_skipped_steps() -> None:
    state, _ = _run(HAPPY[:3])
    with pytest.raises(IllegalTransition, match="reopen"):
        apply(state, make_event(state, "step.reopened", 5.0, step="a"))


def test_records_match_the_public_models() -> None:
    state, _ = _run(HAPPY[:17])
    record = to_record(state)
    model = WorkflowExecution.model_validate(record)
    assert model.status == "running" and model.results["b"].status == "failed"
    assert model.results["c"].error is not None
    assert model.metrics.steps_failed == 1 and model.metrics.retries == 1
    status = WorkflowStatusInfo.model_validate(to_status(state))
    assert status.progress.failed == 1 and status.steps["a"] == "succeeded"
    summary = to_summary(state)
    assert summary["status"] == "running" and summary["seq"] == 17


def test_metrics_count_terminal_steps_and_duration() -> None:
    state, _ = _run(HAPPY)
    metrics = to_record(state)["metrics"]
    assert metrics["steps_total"] == 3 and metrics["steps_succeeded"] == 3
    assert metrics["duration_ms"] == pytest.approx(25_000.0)
