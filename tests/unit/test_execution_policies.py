"""Error handling policies on one failing DAG, compensation, and pause/abort races."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pykka
import pytest

from tamma_actors._errors import IllegalTransition
from tamma_actors._store import MemoryStore
from tamma_actors._workerpool import Dispatch, TaskStarted
from tests.timekit import WAIT, Kit, finished, make_kit, step, wf

# every scheduler test runs with both of its books (conftest.either_book)
pytestmark = pytest.mark.usefixtures("either_book")

BOOM = {"type": "Boom", "message": "it broke", "retryable": False}


@pytest.fixture
def kit() -> Iterator[Kit]:
    yield from make_kit()


def by_step(kit: Kit, n: int) -> dict[str, Dispatch]:
    out = {}
    for _ in range(n):
        d = kit.next_held()
        out[d.task["step"]] = d
    return out


# a and slow run first; bad fails after a; after_slow depends on slow
POLICY_DAG = [
    step("a", compensation="noop"),
    step("bad", "a"),
    step("slow"),
    step("after_slow", "slow"),
]


@pytest.mark.parametrize("policy", ["fail_fast", "continue", "compensate"])
def test_each_error_policy_on_the_same_failing_dag(kit: Kit, policy: str) -> None:
    eid = kit.start(wf(*POLICY_DAG, error_handling=policy))
    first = by_step(kit, 2)
    first["a"].reply_to.tell(finished(first["a"], "A"))
    bad = kit.next_held()
    bad.reply_to.tell(finished(bad, error=BOOM))
    slow = first["slow"]
    if policy == "continue":
        kit.step_is(eid, "bad", "failed")
        slow.reply_to.tell(finished(slow, "S"))
        tail = kit.next_held()
        assert tail.task["step"] == "after_slow"  # the independent branch goes on
        tail.reply_to.tell(finished(tail, "T"))
        final = kit.status_is(eid, "failed")
        assert final["results"]["after_slow"]["status"] == "succeeded"
        assert final["error"]["failed_steps"] == ["bad"]
        return
    assert kit.cancels.get(timeout=WAIT) == slow.task["task_id"]  # the rest is cancelled
    if policy == "compensate":
        comp = kit.next_held()
        assert comp.task["step"] == "a~compensate" and comp.task["input"] == "A"
        assert comp.task["task_id"] == f"{eid}/a~compensate/1"
        comp.reply_to.tell(finished(comp, "undone"))
    final = kit.status_is(eid, "failed")
    res = final["results"]
    assert (res["slow"]["status"], res["after_slow"]["status"]) == ("cancelled", "cancelled")
    assert final["error"]["step"] == "bad"
    if policy == "compensate":
        assert final["error"]["compensations"] == [
            {"step": "a", "implementation": "noop", "status": "succeeded", "output": "undone"}
        ]
    else:
        assert "compensations" not in final["error"]


def test_compensations_run_in_reverse_completion_order_and_failures_do_not_stop_them(
    kit: Kit,
) -> None:
    spec = wf(
        step("undo", config={"how": "carefully"}),
        step("first", compensation="undo"),
        step("second", "first", compensation="noop"),
        step("third", "second"),
        error_handling="compensate",
    )
    eid = kit.start(spec)
    for name in ("first", "second"):
        d = kit.next_held()
        assert d.task["step"] == name
        d.reply_to.tell(finished(d, name.upper()))
    third = kit.next_held()
    third.reply_to.tell(finished(third, error=BOOM))
    comp_second = kit.next_held()
    assert comp_second.task["step"] == "second~compensate"
    rec = kit.record(eid)
    assert rec["status"] == "running" and rec["results"]["undo"]["status"] == "skipped"
    comp_second.reply_to.tell(finished(comp_second, error={"type": "E", "message": "nope"}))
    comp_first = kit.next_held()
    assert comp_first.task["step"] == "first~compensate"
    assert comp_first.task["config"] == {"how": "carefully"}  # the named step is the template
    assert comp_first.task["input"] == "FIRST"
    comp_first.reply_to.tell(finished(comp_first, "ok"))
    final = kit.status_is(eid, "failed")
    assert [(c["step"], c["status"]) for c in final["error"]["compensations"]] == [
        ("second", "failed"),
        ("first", "succeeded"),
    ]
    types = [e["type"] for e in kit.events(eid)]
    assert types.count("compensation.started") == 2 and types[-1] == "workflow.failed"
    # undone: running its failed step again would build on what is no longer there
    with pytest.raises(IllegalTransition, match="was compensated after it failed"):
        kit.engine.retry_step(eid, "third").result(WAIT)
    assert kit.record(eid)["status"] == "failed" and kit.events(eid)[-1]["type"] == types[-1]


def test_a_compensation_in_flight_is_resent_after_a_restart() -> None:
    store = MemoryStore()
    spec = wf(step("a", compensation="noop"), step("b", "a"), error_handling="compensate")
    for k in make_kit(store):
        eid = k.start(spec)
        a = k.next_held()
        a.reply_to.tell(finished(a, 1))
        b = k.next_held()
        b.reply_to.tell(finished(b, error=BOOM))
        comp = k.next_held()
        k.until(eid, lambda r: True)
    for k in make_kit(store):
        k.engine.recover()
        again = k.next_held()
        assert again.task["task_id"] == comp.task["task_id"]
        again.reply_to.tell(finished(again, "undone"))
        final = k.status_is(eid, "failed")
        assert final["error"]["compensations"][0]["status"] == "succeeded"


def test_abort_cancels_a_running_compensation(kit: Kit) -> None:
    spec = wf(step("a", compensation="noop"), step("b", "a"), error_handling="compensate")
    eid = kit.start(spec)
    a = kit.next_held()
    a.reply_to.tell(finished(a, 1))
    b = kit.next_held()
    b.reply_to.tell(finished(b, error=BOOM))
    comp = kit.next_held()
    rec = kit.engine.abort_workflow(eid, "enough").result(WAIT)
    assert rec["status"] == "aborted"
    assert kit.cancels.get(timeout=WAIT) == comp.task["task_id"]
    with contextlib.suppress(pykka.ActorDeadError):  # the aborted execution may be gone
        comp.reply_to.tell(finished(comp, "late"))  # and if not, the result is discarded
    assert kit.record(eid)["status"] == "aborted"


# -- pause / resume / abort races ---------------------------------------------------------


def test_a_result_after_pause_is_recorded_and_the_status_stays_paused(kit: Kit) -> None:
    eid = kit.start(wf(step("a"), step("b", "a")))
    a = kit.next_held()
    kit.engine.pause_workflow(eid).result(WAIT)
    a.reply_to.tell(TaskStarted(a.task["task_id"], "w-1"))
    a.reply_to.tell(finished(a, "A"))
    rec = kit.step_is(eid, "a", "succeeded")
    assert rec["status"] == "paused" and rec["results"]["b"]["status"] == "pending"
    assert kit.held.empty()
    for _ in range(2):  # idempotent, and a repeated resume changes nothing
        assert kit.engine.resume_workflow(eid).result(WAIT)["status"] == "running"
    b = kit.next_held()
    assert b.task["input"] == "A" and kit.held.empty()
    b.reply_to.tell(finished(b, "B"))
    kit.status_is(eid, "completed")
    types = [e["type"] for e in kit.events(eid)]
    assert types.count("workflow.paused") == 1 and types.count("workflow.resumed") == 1


def test_a_failure_after_pause_schedules_its_retry_only_on_resume(kit: Kit) -> None:
    policy = {"max_attempts": 2, "base_delay": 5000, "max_delay": 5000, "jitter": 0}
    eid = kit.start(wf(step("a", retry_policy=policy)))
    a = kit.next_held()
    kit.engine.pause_workflow(eid).result(WAIT)
    a.reply_to.tell(finished(a, error={"type": "Flaky", "message": "x"}))
    kit.step_is(eid, "a", "retry_wait")
    kit.timers.advance(100)
    assert kit.held.empty() and kit.record(eid)["status"] == "paused"
    report = kit.engine.explain(eid).result(WAIT)  # its wait has not begun
    assert report["steps"]["a"]["waiting_for"].endswith("frozen by pause, 5s left")
    kit.engine.resume_workflow(eid).result(WAIT)
    kit.timers.advance(4.9)  # the retry delay counts from the resume, not the failure
    assert kit.held.empty()
    kit.timers.advance(0.2)
    assert kit.next_held().task["attempt"] == 2


def test_results_after_abort_are_discarded_and_abort_is_idempotent(kit: Kit) -> None:
    eid = kit.start(wf(step("a"), step("b")))
    held = by_step(kit, 2)
    kit.engine.pause_workflow(eid).result(WAIT)
    assert kit.engine.abort_workflow(eid, "stop").result(WAIT)["status"] == "aborted"
    for d in held.values():
        with contextlib.suppress(pykka.ActorDeadError):  # retired after its abort
            d.reply_to.tell(finished(d, "late"))
    rec = kit.engine.abort_workflow(eid).result(WAIT)
    assert rec["status"] == "aborted" and rec["reason"] == "stop"
    assert {r["status"] for r in rec["results"].values()} == {"cancelled"}
    assert {kit.cancels.get(timeout=WAIT) for _ in range(2)} == {
        d.task["task_id"] for d in held.values()
    }
    types = [e["type"] for e in kit.events(eid)]
    assert types.count("workflow.aborted") == 1 and "step.completed" not in types


def test_many_racing_pause_resume_requests_settle_consistently(kit: Kit) -> None:
    eid = kit.start(wf(step("a")))
    a = kit.next_held()
    futures = []
    for i in range(40):
        call = kit.engine.pause_workflow if i % 2 == 0 else kit.engine.resume_workflow
        futures.append(call(eid))
    a.reply_to.tell(finished(a, 1))
    answers: list[Any] = []
    for f in futures:
        try:
            answers.append(f.result(WAIT)["status"])
        except IllegalTransition:  # asked after it completed
            answers.append("refused")
    assert set(answers) <= {"paused", "running", "completed", "refused"}
    with contextlib.suppress(IllegalTransition):
        kit.engine.resume_workflow(eid).result(WAIT)
    final = kit.status_is(eid, "completed")
    assert final["results"]["a"]["data"] == 1


def test_the_workflow_timeout_does_not_cut_a_running_compensation_short(kit: Kit) -> None:
    spec = wf(
        step("a", compensation="noop"),
        step("b", "a"),
        error_handling="compensate",
        timeout="60s",
    )
    eid = kit.start(spec)
    a = kit.next_held()
    a.reply_to.tell(finished(a, 1))
    b = kit.next_held()
    b.reply_to.tell(finished(b, error=BOOM))
    comp = kit.next_held()
    kit.timers.advance(600)  # compensations have their own deadlines, not the workflow's
    assert kit.cancels.empty() and kit.record(eid)["status"] == "running"
    comp.reply_to.tell(finished(comp, "undone"))
    final = kit.status_is(eid, "failed")
    assert (final["error"]["type"], final["error"]["step"]) == ("Boom", "b")
    assert final["error"]["compensations"][0]["status"] == "succeeded"
