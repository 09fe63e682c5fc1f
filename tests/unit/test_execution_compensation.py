"""The ``compensate`` policy's edges: retry, pause, lost workers, timeouts and abort while
compensations run (the basic plan is in test_execution_policies.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tamma_actors._errors import IllegalTransition
from tamma_actors._execution import MAX_REDISPATCH
from tamma_actors._workerpool import Dispatch, TaskRedispatched
from tests.timekit import WAIT, Kit, finished, make_kit, step, wf

# every scheduler test runs with both of its books (conftest.either_book)
pytestmark = pytest.mark.usefixtures("either_book")

BOOM = {"type": "Boom", "message": "it broke", "retryable": False}


@pytest.fixture
def kit() -> Iterator[Kit]:
    yield from make_kit()


def types(kit: Kit, eid: str) -> list[str]:
    return [e["type"] for e in kit.events(eid)]


def fail_into_compensation(kit: Kit, *extra: dict[str, object]) -> tuple[str, Dispatch]:
    """a (compensated by noop) then b, which fails: the first compensation, held."""
    spec = wf(step("a", compensation="noop"), step("b", "a"), *extra, error_handling="compensate")
    eid = kit.start(spec)
    a = kit.next_held()
    a.reply_to.tell(finished(a, "A"))
    b = kit.next_held()
    b.reply_to.tell(finished(b, error=BOOM))
    comp = kit.next_held()
    assert comp.task["step"] == "a~compensate"
    return eid, comp


def test_a_retry_is_refused_once_compensation_has_begun(kit: Kit) -> None:
    eid, comp = fail_into_compensation(kit)
    assert kit.record(eid)["status"] == "running"
    with pytest.raises(IllegalTransition, match="is compensating"):
        kit.engine.retry_step(eid, "b").result(WAIT)
    comp.reply_to.tell(finished(comp, "undone"))
    final = kit.status_is(eid, "failed")
    assert final["results"]["b"]["status"] == "failed"
    assert "step.retried" not in types(kit, eid)


def test_pause_holds_compensation_and_a_retry_while_paused_is_refused(kit: Kit) -> None:
    spec = wf(
        step("a", compensation="noop"),
        step("b", "a", compensation="noop"),
        step("c", "b"),
        error_handling="compensate",
    )
    eid = kit.start(spec)
    for name in ("a", "b"):
        d = kit.next_held()
        d.reply_to.tell(finished(d, name))
    c = kit.next_held()
    c.reply_to.tell(finished(c, error=BOOM))
    undo_b = kit.next_held()
    kit.engine.pause_workflow(eid).result(WAIT)
    undo_b.reply_to.tell(finished(undo_b, "undone"))  # the running one ends while paused
    kit.until(eid, lambda r: "compensation.completed" in types(kit, eid))
    assert kit.held.empty() and kit.record(eid)["status"] == "paused"  # the next one waits
    with pytest.raises(IllegalTransition, match="is compensating"):
        kit.engine.retry_step(eid, "c").result(WAIT)
    kit.engine.resume_workflow(eid).result(WAIT)
    undo_a = kit.next_held()
    assert undo_a.task["step"] == "a~compensate"
    kit.engine.pause_workflow(eid).result(WAIT)
    undo_a.reply_to.tell(finished(undo_a, "undone"))  # the last one, while paused
    kit.until(eid, lambda r: types(kit, eid).count("compensation.completed") == 2)
    assert kit.record(eid)["status"] == "paused"  # it ends when resumed, as a step would
    with pytest.raises(IllegalTransition, match="is compensating"):
        kit.engine.retry_step(eid, "c").result(WAIT)
    kit.engine.resume_workflow(eid).result(WAIT)
    final = kit.status_is(eid, "failed")
    assert [c["status"] for c in final["error"]["compensations"]] == ["succeeded", "succeeded"]
    assert final["results"]["c"]["status"] == "failed"


def test_a_compensation_that_keeps_losing_its_worker_fails_as_a_task_would(kit: Kit) -> None:
    eid, comp = fail_into_compensation(kit)
    tid = comp.task["task_id"]
    for _ in range(MAX_REDISPATCH):  # sent again by the pool, same task: it runs on
        comp.reply_to.tell(TaskRedispatched(tid, "worker w-1 died"))
    kit.record(eid)  # a read queued behind them: they were handled
    assert kit.record(eid)["status"] == "running" and kit.cancels.empty()
    comp.reply_to.tell(TaskRedispatched(tid, "worker w-2 died"))
    final = kit.status_is(eid, "failed")
    assert kit.cancels.get(timeout=WAIT) == tid  # out of the pool's queue: no endless re-runs
    [undo] = final["error"]["compensations"]
    assert (undo["step"], undo["status"]) == ("a", "failed")
    assert undo["error"]["type"] == "WorkerLost"
    assert "lost 3 times" in undo["error"]["message"]
    assert final["error"]["step"] == "b" and final["error"]["failed_steps"] == ["b"]
