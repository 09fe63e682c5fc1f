"""A paused fan-out or subflow: pause holds its items or its child, so its ``timeout`` stops
counting too (as the workflow timeout and a wait step's do), on one node and across a
restart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tamma_actors._store import MemoryStore
from tamma_actors._workerpool import Cancel, Dispatch, TaskStarted
from tests.unit.test_step_types import (
    WAIT,
    FakePool,
    Kit,
    _item,
    _kit,
    _until,
    _write,
    fan,
    ok,
    wf,
)

pytestmark = pytest.mark.usefixtures("either_book")

ONCE = {"max_attempts": 1}


def _status(k: Kit, eid: str) -> str:
    return str(k.get(eid)["results"]["f"]["status"])


def _paused_with_3s_left(k: Kit) -> str:
    """A fan-out of two items, one at a time, with a 5 s timeout: item 0 ran 2 s, then the
    execution was paused and item 0 finished (recorded, though paused)."""
    eid = k.start(wf(fan("f", items=[0, 1], max_concurrency=1, timeout=5, retry_policy=ONCE)))
    first = k.next_held()
    _until(lambda: _status(k, eid) == "running")  # its start notice came: the clock runs
    k.timers.advance(2.0)
    assert k.engine.pause_workflow(eid).result(WAIT)["status"] == "paused"
    first.reply_to.tell(ok(first.task, "zero"))
    _until(lambda: _item(k, eid, 0)["status"] == "succeeded")
    return eid


def _times_out_after_3s_of_running(k: Kit, eid: str) -> None:
    k.timers.advance(100.0)  # paused: nothing runs, nothing times out
    assert _status(k, eid) == "running" and k.held.empty()
    k.engine.resume_workflow(eid).result(WAIT)
    second = k.next_held()  # item 1 goes out on resume
    assert second.task["item_index"] == 1
    k.timers.advance(2.9)
    assert _status(k, eid) == "running"
    k.timers.advance(0.2)  # the 3 s it had left when it was paused
    assert k.cancels.get(timeout=WAIT) == second.task["task_id"]
    final = k.finish(eid)
    assert final["status"] == "failed"
    assert final["results"]["f"]["error"]["type"] == "StepTimeout"


def test_pause_freezes_a_fan_outs_timeout_and_resume_gives_it_the_time_it_had_left() -> None:
    with _kit(lambda t: None) as k:
        eid = _paused_with_3s_left(k)
        _times_out_after_3s_of_running(k, eid)


def test_a_paused_fan_outs_timeout_keeps_the_time_it_had_left_across_a_restart() -> None:
    store = MemoryStore()
    with _kit(lambda t: None, store) as k:
        eid = _paused_with_3s_left(k)
    with _kit(lambda t: None, store) as k:
        assert k.engine.recover() == 1
        assert k.get(eid)["status"] == "paused"
        _times_out_after_3s_of_running(k, eid)


def test_a_fan_out_that_finishes_within_its_unpaused_time_completes() -> None:
    def script(task: dict[str, Any]) -> Any:
        return None

    with _kit(script) as k:
        eid = _paused_with_3s_left(k)
        k.timers.advance(100.0)
        k.engine.resume_workflow(eid).result(WAIT)
        second = k.next_held()
        k.timers.advance(2.5)
        second.reply_to.tell(ok(second.task, "one"))
        final = k.finish(eid)
        assert final["status"] == "completed"
        assert final["results"]["f"]["data"] == ["zero", "one"]


def test_pause_freezes_a_subflows_timeout_while_its_child_is_paused_with_it(
    tmp_path: Path,
) -> None:
    child_spec = {"name": "child", "steps": [{"name": "c", "implementation": "noop"}]}
    sub = {
        "name": "sub",
        "type": "subflow",
        "timeout": 5,
        "retry_policy": ONCE,
        "config": {"workflow": str(_write(tmp_path / "child.yaml", child_spec))},
    }
    with _kit(lambda t: None) as k:
        eid = k.start(wf(sub))
        held = k.next_held()  # the child's step
        child = held.task["execution_id"]
        k.timers.advance(2.0)
        k.engine.pause_workflow(eid).result(WAIT)
        _until(lambda: k.get(child)["status"] == "paused")
        k.timers.advance(100.0)  # both paused: the child is not aborted
        assert k.get(eid)["results"]["sub"]["status"] == "running"
        assert k.get(child)["status"] == "paused"
        k.engine.resume_workflow(eid).result(WAIT)
        _until(lambda: k.get(child)["status"] == "running")
        k.timers.advance(2.9)
        assert k.get(eid)["results"]["sub"]["status"] == "running"
        k.timers.advance(0.2)  # the 3 s it had left
        final = k.finish(eid)
        assert final["results"]["sub"]["error"]["type"] == "StepTimeout"
        _until(lambda: k.get(child)["status"] == "aborted")


@pytest.fixture
def late_start_notices(monkeypatch: pytest.MonkeyPatch) -> None:
    """The pool twin holds every task without a start notice: the test sends it."""

    def on_receive(self: FakePool, message: Any) -> None:
        if isinstance(message, Dispatch):
            self.log.append(message.task)
            self.held.put(message)
        elif isinstance(message, Cancel):
            self.cancels.put(message.task_id)

    monkeypatch.setattr(FakePool, "on_receive", on_receive)


def _started(k: Kit, held: Dispatch, eid: str) -> None:
    held.reply_to.tell(TaskStarted(held.task["task_id"], "w-1"))
    _until(lambda: _status(k, eid) == "running")


def _times_out_after(k: Kit, eid: str, held: Dispatch, seconds: float) -> None:
    k.timers.advance(seconds - 0.1)
    assert _status(k, eid) == "running"
    k.timers.advance(0.2)
    assert k.cancels.get(timeout=WAIT) == held.task["task_id"]
    assert k.finish(eid)["results"]["f"]["error"]["type"] == "StepTimeout"


@pytest.mark.usefixtures("late_start_notices")
def test_a_fan_out_whose_first_item_starts_while_paused_has_its_whole_timeout_on_resume() -> None:
    with _kit(lambda t: None) as k:
        eid = k.start(wf(fan("f", items=[0], timeout=5, retry_policy=ONCE)))
        held = k.next_held()
        k.engine.pause_workflow(eid).result(WAIT)
        _started(k, held, eid)
        k.timers.advance(100.0)
        assert _status(k, eid) == "running"
        k.engine.resume_workflow(eid).result(WAIT)
        _times_out_after(k, eid, held, 5.0)


@pytest.mark.usefixtures("late_start_notices")
def test_a_fan_out_paused_before_its_first_item_started_counts_from_that_start() -> None:
    with _kit(lambda t: None) as k:
        eid = k.start(wf(fan("f", items=[0], timeout=5, retry_policy=ONCE)))
        held = k.next_held()
        k.engine.pause_workflow(eid).result(WAIT)
        k.engine.resume_workflow(eid).result(WAIT)
        k.timers.advance(100.0)  # no item has started: its timeout has not begun
        assert _status(k, eid) == "dispatched"
        _started(k, held, eid)
        _times_out_after(k, eid, held, 5.0)
