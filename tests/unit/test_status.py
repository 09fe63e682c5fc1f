"""The transition table: closed, terminal states sealed, and check_* agreeing with it."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tamma_actors._errors import IllegalTransition
from tamma_actors._status import (
    EXECUTION_TRANSITIONS,
    MANUAL_RETRY_STEP,
    STEP_TRANSITIONS,
    TERMINAL_EXECUTION,
    TERMINAL_STEP,
    ExecutionStatus,
    StepStatus,
    check_execution_transition,
    check_step_transition,
    is_terminal,
    is_terminal_execution,
    is_terminal_step,
)

E = ExecutionStatus
S = StepStatus


def test_status_values_are_the_documented_strings() -> None:
    assert [s.value for s in E] == [
        "pending", "running", "paused", "completed", "failed", "aborted"
    ]  # fmt: skip
    assert {s.value for s in S} == {
        "pending", "ready", "dispatched", "running", "succeeded", "failed",
        "skipped", "cancelled", "retry_wait", "timed_out",
    }  # fmt: skip
    assert E("running") == "running"


def test_tables_are_closed_and_total() -> None:
    assert set(EXECUTION_TRANSITIONS) == set(E)
    assert set(STEP_TRANSITIONS) == set(S)
    for targets in EXECUTION_TRANSITIONS.values():
        assert all(isinstance(t, E) for t in targets)
    for step_targets in STEP_TRANSITIONS.values():
        assert all(isinstance(t, S) for t in step_targets)


def test_tables_are_read_only() -> None:
    with pytest.raises(TypeError):
        EXECUTION_TRANSITIONS[E.COMPLETED] = frozenset({E.RUNNING})  # type: ignore[index]


def test_terminal_executions_exit_only_by_manual_retry() -> None:
    assert {E.COMPLETED, E.FAILED, E.ABORTED} == TERMINAL_EXECUTION
    assert EXECUTION_TRANSITIONS[E.COMPLETED] == frozenset()
    assert EXECUTION_TRANSITIONS[E.ABORTED] == frozenset()
    assert EXECUTION_TRANSITIONS[E.FAILED] == {E.RUNNING}


def test_terminal_steps_exit_only_by_manual_retry() -> None:
    assert {S.SUCCEEDED, S.FAILED, S.SKIPPED, S.CANCELLED} == TERMINAL_STEP
    for status in TERMINAL_STEP:
        expected = {S.READY} if status in MANUAL_RETRY_STEP else set()
        assert STEP_TRANSITIONS[status] == expected


def test_documented_edges() -> None:
    assert STEP_TRANSITIONS[S.DISPATCHED] >= {S.RUNNING, S.READY, S.SUCCEEDED}
    assert S.READY in STEP_TRANSITIONS[S.RUNNING]
    assert STEP_TRANSITIONS[S.TIMED_OUT] == {S.RETRY_WAIT, S.FAILED}
    assert STEP_TRANSITIONS[S.RETRY_WAIT] == {S.READY, S.CANCELLED}
    assert EXECUTION_TRANSITIONS[E.PENDING] == {E.RUNNING, E.ABORTED, E.FAILED}
    assert EXECUTION_TRANSITIONS[E.PAUSED] == {E.RUNNING, E.ABORTED}


def test_every_non_terminal_status_can_still_end() -> None:
    def reaches_terminal(start: S) -> bool:
        seen, todo = {start}, [start]
        while todo:
            for nxt in STEP_TRANSITIONS[todo.pop()]:
                if nxt in TERMINAL_STEP:
                    return True
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return False

    assert all(reaches_terminal(s) for s in S if s not in TERMINAL_STEP)


@settings(deadline=None)  # no timing assertions: the box may be busy
@given(st.sampled_from(E), st.sampled_from(E))
def test_check_execution_agrees_with_table(src: E, dst: E) -> None:
    if dst in EXECUTION_TRANSITIONS[src]:
        check_execution_transition(src, dst)
        check_execution_transition(src.value, dst.value)
    else:
        with pytest.raises(IllegalTransition) as info:
            check_execution_transition(src, dst)
        assert f"from {src.value} to {dst.value}" in str(info.value)


@settings(deadline=None)  # no timing assertions: the box may be busy
@given(st.sampled_from(S), st.sampled_from(S), st.text(max_size=10))
def test_check_step_agrees_with_table(src: S, dst: S, name: str) -> None:
    if dst in STEP_TRANSITIONS[src]:
        check_step_transition(src, dst, name)
        check_step_transition(src.value, dst.value)
    else:
        with pytest.raises(IllegalTransition) as info:
            check_step_transition(src, dst, name)
        message = str(info.value)
        assert f"from {src.value} to {dst.value}" in message
        if name:
            assert repr(name) in message


@pytest.mark.parametrize(("src", "dst"), [("bogus", "ready"), ("pending", "bogus")])
def test_unknown_statuses_are_illegal(src: str, dst: str) -> None:
    with pytest.raises(IllegalTransition, match="bogus"):
        check_step_transition(src, dst, "a")
    with pytest.raises(IllegalTransition, match="bogus"):
        check_execution_transition(src, dst)


def test_illegal_transition_is_a_tamma_error_with_its_code() -> None:
    with pytest.raises(IllegalTransition) as info:
        check_step_transition(S.SUCCEEDED, S.RUNNING, "build")
    assert info.value.code == "illegal_transition"
    assert str(info.value) == "step 'build' cannot go from succeeded to running"


@settings(deadline=None)  # no timing assertions: the box may be busy
@given(st.sampled_from([*E, *S]))
def test_is_terminal_helpers_agree(status: E | S) -> None:
    if isinstance(status, E):
        assert is_terminal(status) == is_terminal_execution(status.value)
        assert is_terminal(status) == (status in TERMINAL_EXECUTION)
    else:
        assert is_terminal(status) == is_terminal_step(status.value)
        assert is_terminal(status) == (status in TERMINAL_STEP)
