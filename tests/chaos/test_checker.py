"""The chaos checks themselves: they must fail on the faults they look for."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tamma_actors._state import ExecutionState, apply, make_event
from tests.chaos.harness import Runs, _check_execution, mark_kill

pytestmark = pytest.mark.chaos


def _events(attempt: int = 1, at: float = 4.0, redispatch: int = 0) -> list[dict[str, Any]]:
    """A one-step execution whose step ``a`` succeeded at ``attempt``, committed at ``at``."""
    state = ExecutionState(id="e")
    out: list[dict[str, Any]] = []

    def emit(etype: str, ts: float = 0.0, **data: Any) -> None:
        event = make_event(state, etype, ts, **data)
        apply(state, event)
        out.append(event)

    emit("workflow.created", workflow_id="w", steps=["a"])
    emit("workflow.started")
    emit("step.ready", step="a")
    emit("step.dispatched", step="a", attempt=attempt)
    for _ in range(redispatch):
        emit("step.started", step="a", attempt=attempt, worker="w")
        emit("step.redispatched", step="a", attempt=attempt, reason="worker lost")
    emit("step.started", step="a", attempt=attempt, worker="w")
    emit("step.completed", at, step="a", attempt=attempt, output=None, duration_ms=1.0)
    return out


def _runs(tmp_path: Path, *lines: str) -> Runs:
    log = tmp_path / "record.log"
    for line in lines:
        if line.startswith("KILL"):
            mark_kill(log, 0, float(line.split()[1]))
        else:
            with open(log, "a") as fh:
                fh.write(line + "\n")
    return Runs.read(log)


def test_a_clean_run_and_a_rerun_before_commit_pass(tmp_path: Path) -> None:
    runs = _runs(tmp_path, "e a 1", "KILL 5.0", "e a 1")
    assert _check_execution("e", _events(at=6.0), runs) == 1


def test_a_run_after_the_commit_fails(tmp_path: Path) -> None:
    runs = _runs(tmp_path, "e a 1", "KILL 5.0", "e a 1")
    with pytest.raises(AssertionError, match="after its result was committed"):
        _check_execution("e", _events(), runs)


def test_two_runs_in_one_epoch_need_a_redispatch(tmp_path: Path) -> None:
    runs = _runs(tmp_path, "e a 1", "e a 1")
    with pytest.raises(AssertionError, match="ran 2 times in epoch 0"):
        _check_execution("e", _events(), runs)
    assert _check_execution("e", _events(redispatch=1), runs) == 1


def test_a_result_committed_twice_or_never_run_fails(tmp_path: Path) -> None:
    runs = _runs(tmp_path, "e a 1")
    twice = _events()
    twice.append({**twice[-1], "seq": twice[-1]["seq"] + 1})
    with pytest.raises(AssertionError, match="committed twice"):
        _check_execution("e", twice, runs)
    with pytest.raises(AssertionError, match="committed but never ran"):
        _check_execution("e", _events(attempt=2), runs)
    gap = _events()
    gap[-1]["seq"] = 9
    with pytest.raises(AssertionError, match="gap"):
        _check_execution("e", gap, runs)
