"""`tamma` output of long logs and big workflows: beyond ``PLAIN_FROM_ROWS`` rows, plain
aligned columns, as `tamma list` prints many executions, not a rich table (~1,000 rows a
second: `tamma events` of a 6,000-item fan-out took 8.8 s to print)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tamma_actors._cli_output import PLAIN_FROM_ROWS, Output, show_events, show_execution
from tamma_actors._record_models import StepResult, WorkflowEvent, WorkflowExecution

WHEN = datetime(2026, 11, 28, 6, 0, tzinfo=UTC)
MANY = PLAIN_FROM_ROWS + 1


def _plain(out: str, rows: int, header: list[str]) -> list[str]:
    lines = out.splitlines()
    assert "┃" not in out and "│" not in out  # no box
    assert lines[0].split() == header and set(lines[1].replace(" ", "")) == {"-"}
    assert len(lines) == 2 + rows  # one line per row
    return lines[2:]


def test_a_long_event_log_prints_as_plain_aligned_columns(
    capsys: pytest.CaptureFixture[str],
) -> None:
    events = [
        WorkflowEvent(
            seq=i, type="step.item_completed", execution_id="e", timestamp=WHEN, data={"i": i}
        )
        for i in range(1, MANY + 1)
    ]
    show_events(Output(False), events)
    rows = _plain(capsys.readouterr().out, MANY, ["seq", "time", "type", "data"])
    assert rows[-1].split()[:3] == [str(MANY), "2026-11-28T06:00:00Z", "step.item_completed"]
    assert rows[-1].endswith(f'{{"i": {MANY}}}')
    assert rows[0].split()[:3] == ["1", "2026-11-28T06:00:00Z", "step.item_completed"]
    show_events(Output(False), events[:PLAIN_FROM_ROWS])
    assert "┃" in capsys.readouterr().out  # a shorter log stays a rich table


def test_the_steps_of_a_big_workflow_print_as_plain_aligned_columns(
    capsys: pytest.CaptureFixture[str],
) -> None:
    results = {f"s{i}": StepResult(status="succeeded", attempts=1, data=i) for i in range(MANY)}
    execution = WorkflowExecution(
        id="e", workflow_id="big", status="completed", start_time=WHEN, results=results
    )
    show_execution(Output(False), execution)
    out = capsys.readouterr().out
    steps = out[out.index("\nstep ") + 1 :]  # the record's own fields stay a rich table
    rows = _plain(steps, MANY, ["step", "status", "attempts", "error", "data"])
    assert rows[5].split() == ["s5", "succeeded", "1", "5"]
