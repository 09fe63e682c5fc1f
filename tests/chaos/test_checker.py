"""The chaos checks themselves: they must fail on the faults they look for."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.chaos.harness import Runs, _check_execution, mark_kill

pytestmark = pytest.mark.chaos


def _events(*completions: tuple[str, int, float], redispatch: int = 0) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = [
        {"seq": 1, "type": "workflow.created", "timestamp": 0.0, "data": {"steps": ["a"]}},
    ]
    for _ in range(redispatch):
        data = {"step": "a", "attempt": 1, "reason": "worker lost"}
        events.append({"type": "step.redispatched", "timestamp": 0.5, "data": data})
    for step, attempt, ts in completions:
        data = {"step": step, "attempt": attempt}
        events.append({"type": "step.completed", "timestamp": ts, "data": data})
    for seq, event in enumerate(events, start=1):
        event["seq"] = seq
    return events


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
    assert _check_execution("e", _events(("a", 1, 6.0)), runs) == 1


def test_a_run_after_the_commit_fails(tmp_path: Path) -> None:
    runs = _runs(tmp_path, "e a 1", "KILL 5.0", "e a 1")
    with pytest.raises(AssertionError, match="after its result was committed"):
        _check_execution("e", _events(("a", 1, 4.0)), runs)


def test_two_runs_in_one_epoch_need_a_redispatch(tmp_path: Path) -> None:
    runs = _runs(tmp_path, "e a 1", "e a 1")
    with pytest.raises(AssertionError, match="ran 2 times in epoch 0"):
        _check_execution("e", _events(("a", 1, 4.0)), runs)
    assert _check_execution("e", _events(("a", 1, 4.0), redispatch=1), runs) == 1


def test_a_result_committed_twice_or_never_run_fails(tmp_path: Path) -> None:
    runs = _runs(tmp_path, "e a 1")
    with pytest.raises(AssertionError, match="committed twice"):
        _check_execution("e", _events(("a", 1, 4.0), ("a", 1, 4.5)), runs)
    with pytest.raises(AssertionError, match="committed but never ran"):
        _check_execution("e", _events(("a", 2, 4.0)), runs)
    gap = _events(("a", 1, 4.0))
    gap[-1]["seq"] = 9
    with pytest.raises(AssertionError, match="gap"):
        _check_execution("e", gap, runs)
