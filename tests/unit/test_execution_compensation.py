"""The ``compensate`` policy's edges: retry, pause, lost workers, timeouts and abort while
compensations run (the basic plan is in test_execution_policies.py)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pykka
import pytest

from tamma_actors._errors import IllegalTransition
from tamma_actors._execution import MAX_REDISPATCH
from tamma_actors._store import MemoryStore
from tamma_actors._workerpool import Dispatch, TaskProgress, TaskRedispatched, TaskStarted
from tests.timekit import WAIT, Kit, finished, make_kit, step, wf

# every scheduler test runs with both of its books (conftest.either_book)
pytestmark = pytest.mark.usefixtures("either_book")

BOOM = {"type": "Boom", "message": "it broke", "retryable": False}


@pytest.fixture
def kit() -> Iterator[Kit]:
    yield from make_kit()


def types(kit: Kit, eid: str) -> list[str]:
    return [e["type"] for e in kit.events(eid)]


def fail_after(kit: Kit, spec: dict[str, Any], *done: str) -> str:
    """Start ``spec``; its steps ``done`` succeed one after another, the next one fails."""
    eid = kit.start(spec)
    for name in done:
        d = kit.next_held()
        d.reply_to.tell(finished(d, name))
    last = kit.next_held()
    last.reply_to.tell(finished(last, error=BOOM))
    return eid


def fail_into_compensation(
    kit: Kit,
    *extra: dict[str, Any],
    comp: str = "noop",
    a_extra: dict[str, Any] | None = None,
) -> tuple[str, Dispatch]:
    """a (compensated by ``comp``) then b, which fails: the first compensation, held."""
    first = step("a", compensation=comp, **(a_extra or {}))
    spec = wf(first, step("b", "a"), *extra, error_handling="compensate")
    eid = kit.start(spec)
    a = kit.next_held()
    a.reply_to.tell(finished(a, "A"))
    b = kit.next_held()
    b.reply_to.tell(finished(b, error=BOOM))
    comp = kit.next_held()
    assert comp.task["step"] == "a~compensate"
    return eid, comp


def fail_into_two_compensations(kit: Kit) -> tuple[str, Dispatch]:
    """a and b (each compensated by ``noop``) succeed, then c fails: b's compensation,
    held (a's comes next)."""
    spec = wf(
        step("a", compensation="noop"),
        step("b", "a", compensation="noop"),
        step("c", "b"),
        error_handling="compensate",
    )
    eid = fail_after(kit, spec, "a", "b")
    return eid, kit.next_held()


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
    eid, undo_b = fail_into_two_compensations(kit)
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


def test_the_status_record_shows_which_compensation_runs_and_which_wait(kit: Kit) -> None:
    eid, undo_b = fail_into_two_compensations(kit)
    status = kit.engine.get_workflow_status(eid).result(WAIT)
    assert status["waiting"] == {
        "b": "compensation 'noop': running",
        "a": "compensation 'noop': pending",
    }
    assert [(c["step"], c["status"]) for c in status["compensations"]] == [
        ("b", "running"),
        ("a", "pending"),
    ]
    undo_b.reply_to.tell(finished(undo_b, "undone"))
    undo_a = kit.next_held()
    undo_a.reply_to.tell(finished(undo_a, error=BOOM))
    kit.status_is(eid, "failed")
    status = kit.engine.get_workflow_status(eid).result(WAIT)
    assert status["waiting"] == {}
    assert [c["status"] for c in status["compensations"]] == ["succeeded", "failed"]


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


def test_a_compensation_runs_under_its_template_steps_timeout(kit: Kit) -> None:
    undo = step("undo", timeout=30)
    eid, comp = fail_into_compensation(kit, undo, comp="undo")
    tid = comp.task["task_id"]
    kit.timers.advance(100)  # queued: start-to-close has not begun
    assert kit.cancels.empty()
    comp.reply_to.tell(TaskStarted(tid, "w-1"))
    kit.record(eid)
    kit.timers.advance(29.9)
    assert kit.cancels.empty() and kit.record(eid)["status"] == "running"
    kit.timers.advance(0.2)
    assert kit.cancels.get(timeout=WAIT) == tid  # cancelled: its worker is killed if need be
    final = kit.status_is(eid, "failed")
    [entry] = final["error"]["compensations"]
    assert (entry["status"], entry["error"]["type"]) == ("failed", "StepTimeout")
    assert "did not finish within 30s" in entry["error"]["message"]
    with contextlib.suppress(pykka.ActorDeadError):  # the failed execution may be gone
        comp.reply_to.tell(finished(comp, "late"))  # and if not, the result is discarded
    assert kit.record(eid)["error"]["compensations"] == [entry]


def test_a_compensation_that_stops_heartbeating_or_never_starts_fails(kit: Kit) -> None:
    spec = wf(
        step("a", compensation="beat"),
        step("b", "a", compensation="queued"),
        step("c", "b"),
        step("beat", heartbeat_timeout=5),
        step("queued", queue_timeout=20),
        error_handling="compensate",
    )
    eid = fail_after(kit, spec, "a", "b")
    undo_b = kit.next_held()  # no worker starts it within its queue_timeout
    kit.timers.advance(20.1)
    assert kit.cancels.get(timeout=WAIT) == undo_b.task["task_id"]
    undo_a = kit.next_held()
    undo_a.reply_to.tell(TaskStarted(undo_a.task["task_id"], "w-1"))
    kit.record(eid)
    kit.timers.advance(4)
    undo_a.reply_to.tell(TaskProgress(undo_a.task["task_id"], {"at": "half"}))
    kit.record(eid)
    kit.timers.advance(4)  # 8s after its start, 4s after its heartbeat
    kit.record(eid)  # whatever those 4s made it do is done
    assert kit.cancels.empty()
    kit.timers.advance(1.1)
    assert kit.cancels.get(timeout=WAIT) == undo_a.task["task_id"]
    final = kit.status_is(eid, "failed")
    kinds = [
        (e["step"], e["status"], e["error"]["message"]) for e in final["error"]["compensations"]
    ]
    assert kinds == [
        ("b", "failed", "step 'b~compensate' was not started by a worker within 20s"),
        ("a", "failed", "step 'a~compensate' sent no heartbeat for 5s"),
    ]


def test_a_compensation_named_by_implementation_runs_under_its_steps_timeout(kit: Kit) -> None:
    eid, comp = fail_into_compensation(kit, a_extra={"timeout": 10, "heartbeat_timeout": 1})
    comp.reply_to.tell(TaskStarted(comp.task["task_id"], "w-1"))
    kit.record(eid)
    kit.timers.advance(9.9)  # the step's heartbeat_timeout does not apply to its undoing
    kit.record(eid)  # whatever those 9.9s made it do is done
    assert kit.cancels.empty()
    kit.timers.advance(0.2)
    assert kit.cancels.get(timeout=WAIT) == comp.task["task_id"]
    final = kit.status_is(eid, "failed")
    error = final["error"]["compensations"][0]["error"]
    assert error["type"] == "StepTimeout" and "did not finish within 10s" in error["message"]


def test_a_workflow_timeout_compensates_what_completed_and_reports_it() -> None:
    store = MemoryStore()
    spec = wf(
        step("a", compensation="noop"),
        step("b", "a"),
        step("side"),
        error_handling="compensate",
        timeout="60s",
    )
    for k in make_kit(store):
        eid = k.start(spec)
        first = {d.task["step"]: d for d in (k.next_held(), k.next_held())}
        first["a"].reply_to.tell(finished(first["a"], "A"))
        b = k.next_held()
        k.timers.advance(60)
        assert {k.cancels.get(timeout=WAIT) for _ in range(2)} == {
            b.task["task_id"],
            first["side"].task["task_id"],
        }
        comp = k.next_held()
        assert comp.task["step"] == "a~compensate" and comp.task["input"] == "A"
        rec = k.record(eid)
        assert rec["status"] == "running" and rec["error"]["type"] == "WorkflowTimeout"
    for k in make_kit(store):  # the cause and the plan survive a restart
        k.engine.recover()
        again = k.next_held()
        assert again.task["task_id"] == comp.task["task_id"]
        k.timers.advance(600)  # the workflow timeout does not run while compensating
        again.reply_to.tell(finished(again, "undone"))
        final = k.status_is(eid, "failed")
        error = final["error"]
        assert (error["type"], error["step"], error["failed_steps"]) == (
            "WorkflowTimeout",
            None,
            [],
        )
        assert "did not finish within its timeout (60s)" in error["message"]
        assert error["compensations"] == [
            {"step": "a", "implementation": "noop", "status": "succeeded", "output": "undone"}
        ]
        res = final["results"]
        assert (res["b"]["status"], res["side"]["status"]) == ("cancelled", "cancelled")
        assert res["b"]["error"]["message"] == "the workflow timed out after 60s"


@pytest.mark.parametrize("policy", ["continue", "compensate"])
def test_a_workflow_timeout_lists_the_steps_that_had_failed(kit: Kit, policy: str) -> None:
    spec = wf(step("bad"), step("slow"), error_handling=policy, timeout="60s")
    eid = kit.start(spec)
    held = {d.task["step"]: d for d in (kit.next_held(), kit.next_held())}
    if policy == "compensate":  # nothing to compensate: it fails at once, as before
        kit.timers.advance(60)
        error = kit.status_is(eid, "failed")["error"]
        assert (error["type"], error["failed_steps"]) == ("WorkflowTimeout", [])
        assert "compensations" not in error
        return
    held["bad"].reply_to.tell(finished(held["bad"], error=BOOM))
    kit.step_is(eid, "bad", "failed")
    kit.timers.advance(60)
    error = kit.status_is(eid, "failed")["error"]
    assert (error["type"], error["failed_steps"]) == ("WorkflowTimeout", ["bad"])


def test_an_abort_while_compensating_records_what_each_compensation_did(kit: Kit) -> None:
    spec = wf(
        step("a", compensation="noop"),
        step("b", "a", compensation="noop"),
        step("c", "b", compensation="noop"),
        step("d", "c"),
        error_handling="compensate",
    )
    eid = fail_after(kit, spec, "a", "b", "c")
    undo_c = kit.next_held()
    undo_c.reply_to.tell(finished(undo_c, "undone"))
    undo_b = kit.next_held()
    rec = kit.engine.abort_workflow(eid, "enough").result(WAIT)
    assert kit.cancels.get(timeout=WAIT) == undo_b.task["task_id"]
    assert (rec["status"], rec["reason"]) == ("aborted", "enough")
    error = rec["error"]
    assert (error["step"], error["type"], error["failed_steps"]) == ("d", "Boom", ["d"])
    outcome = [
        (c["step"], c["status"], (c.get("error") or {}).get("message"))
        for c in error["compensations"]
    ]
    assert outcome == [
        ("c", "succeeded", None),
        ("b", "cancelled", "enough"),  # it ran, and was cancelled
        ("a", "cancelled", "enough (before it started)"),
    ]
    assert kit.held.empty()
    types = [e["type"] for e in kit.events(eid)]
    assert types.count("compensation.cancelled") == 2 and types[-1] == "workflow.aborted"
