"""``explain`` and the watchdog, over ManualTimers and a holding pool."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tamma_actors._errors import UnknownExecution
from tamma_actors._explain import explain
from tamma_actors._models import WorkflowConfig
from tamma_actors._state import ExecutionState, StepState
from tamma_actors._workerpool import TaskStarted
from tests.timekit import WAIT, Kit, finished, make_kit, step, wait_step, wf

# every scheduler test runs with both of its books (conftest.either_book)
pytestmark = pytest.mark.usefixtures("either_book")

BOOM = {"type": "Boom", "message": "down", "retryable": True}


@pytest.fixture
def kit() -> Iterator[Kit]:
    yield from make_kit()


def explained(kit: Kit, eid: str) -> dict[str, Any]:
    return kit.engine.explain(eid).result(WAIT)


def test_explain_says_what_each_step_waits_for(kit: Kit) -> None:
    retry = {"max_attempts": 3, "base_delay": 60000, "max_delay": 60000, "jitter": 0}
    eid = kit.start(
        wf(
            step("run", timeout=100),
            step("after", "run"),
            wait_step("nap", 30),
            step("flaky", retry_policy=retry),
        )
    )
    held = {}
    for _ in range(2):
        d = kit.next_held()
        held[d.task["step"]] = d
    held["run"].reply_to.tell(TaskStarted(held["run"].task["task_id"], "w-7"))
    held["flaky"].reply_to.tell(finished(held["flaky"], error=BOOM))
    kit.step_is(eid, "flaky", "retry_wait")
    kit.step_is(eid, "run", "running")
    report = explained(kit, eid)
    why = {name: s["waiting_for"] for name, s in report["steps"].items()}
    assert why["run"].startswith("running on worker w-7 since 1970-01-01 00:16:40 UTC")
    assert why["run"].endswith("times out at 1970-01-01 00:18:20 UTC")
    assert why["after"] == "dependencies: run (running)"
    assert why["nap"] == "wait step: until 1970-01-01 00:17:10 UTC"
    assert why["flaky"] == "retry (attempt 2) at 1970-01-01 00:17:40 UTC"
    assert report["summary"].startswith("running: step 'run': running on worker w-7")
    kit.engine.pause_workflow(eid).result(WAIT)
    report = explained(kit, eid)
    assert report["summary"].startswith("paused by request")
    assert report["steps"]["nap"]["waiting_for"] == "wait step: frozen by pause, 30s left"
    assert report["steps"]["flaky"]["waiting_for"].endswith("frozen by pause, 60s left")
    assert report["steps"]["after"]["waiting_for"] == "dependencies: run (running)"
    held["run"].reply_to.tell(finished(held["run"], "done"))  # ends during the pause
    kit.step_is(eid, "run", "succeeded")
    why = explained(kit, eid)["steps"]["after"]["waiting_for"]
    assert why == "paused by request: not scheduled until resumed"
    kit.engine.abort_workflow(eid, "done looking").result(WAIT)
    final = explained(kit, eid)  # from the store now
    assert final["summary"].endswith("done looking") and final["steps"] == {}
    with pytest.raises(UnknownExecution):
        explained(kit, "nope")


def test_explain_names_a_breaker_and_the_status_shows_it(kit: Kit) -> None:
    spec = wf(
        step("call", retry_policy={"max_attempts": 1}),
        circuit_breaker={"failure_threshold": 1, "reset_timeout": 60},
    )
    first = kit.start(spec)
    d = kit.next_held()
    d.reply_to.tell(finished(d, error=BOOM))
    kit.status_is(first, "failed")
    eid = kit.start(spec)
    kit.step_is(eid, "call", "ready")
    report = explained(kit, eid)
    assert report["steps"]["call"]["waiting_for"] == (
        "breaker noop open until 1970-01-01 00:17:40 UTC"
    )
    status = kit.engine.get_workflow_status(eid).result(WAIT)
    assert status["waiting"] == {"call": "breaker noop"}
    kit.engine.pause_workflow(eid).result(WAIT)  # the pause holds it, whatever the breaker
    why = explained(kit, eid)["steps"]["call"]["waiting_for"]
    assert why == "paused by request: not dispatched until resumed"


def test_a_queued_step_no_worker_can_run_is_named() -> None:
    cfg = WorkflowConfig.model_validate(
        {"name": "w", "steps": [{"name": "s", "implementation": "gpu"}]}
    )
    state = ExecutionState(id="e", status="running", order=["s"])
    state.steps = {"s": StepState(status="dispatched", attempts=1)}
    why = explain(state, cfg, 0.0, offered={"noop"})["steps"]["s"]["waiting_for"]
    assert why == "queued: no worker offers plugin gpu"
    why = explain(state, cfg, 0.0, offered={"gpu"})["steps"]["s"]["waiting_for"]
    assert why == "queued: no worker has started it yet (attempt 1)"


# -- the watchdog -----------------------------------------------------------------------------


def supervisor(kit: Kit, eid: str) -> Any:
    return kit.engine._live[eid]._actor_weakref()  # the test reaches in to break things


def test_the_watchdog_re_arms_a_lost_retry_timer_and_resends_a_lost_task() -> None:
    for kit in make_kit(watchdog=10):
        retry = {"max_attempts": 2, "base_delay": 1000, "max_delay": 1000, "jitter": 0}
        eid = kit.start(wf(step("a", retry_policy=retry)))
        d = kit.next_held()
        d.reply_to.tell(finished(d, error=BOOM))
        kit.step_is(eid, "a", "retry_wait")
        sup = supervisor(kit, eid)
        sup._retry_timers.pop("a").cancel()  # a timer lost to a bug
        kit.timers.advance(5)
        assert kit.held.empty()
        kit.timers.advance(10)  # first look: it records where the execution is
        kit.record(eid)
        kit.timers.advance(10)  # second look: no progress: the retry timer is re-armed
        kit.record(eid)  # (queued behind the check, so the check has run)
        kit.timers.advance(0)  # the re-armed timer is already due
        again = kit.next_held()
        assert again.task["attempt"] == 2
        sup._inflight.clear()  # the execution forgot the task it sent
        kit.timers.advance(10)
        kit.record(eid)
        kit.timers.advance(10)
        resent = kit.next_held()
        assert resent.task["task_id"] == again.task["task_id"]  # same attempt, same key
        resent.reply_to.tell(finished(resent, "ok"))
        assert kit.status_is(eid, "completed")["results"]["a"]["attempts"] == 2


def test_the_watchdog_fails_an_execution_that_can_never_move() -> None:
    for kit in make_kit(watchdog=10):
        eid = kit.start(wf(step("a"), step("b", "a"), step("c", "b")))
        d = kit.next_held()
        sup = supervisor(kit, eid)
        # a scheduling bug: b and c now wait for each other (this execution's map only)
        sup._deps_of = {**sup._deps_of, "b": ("c",)}
        d.reply_to.tell(finished(d, 1))
        kit.step_is(eid, "a", "succeeded")
        kit.timers.advance(10)
        kit.record(eid)
        assert kit.record(eid)["status"] == "running"
        kit.timers.advance(10)
        final = kit.status_is(eid, "failed")
        assert (final["error"]["type"], final["error"]["failed_steps"]) == ("Stuck", [])
        assert "b, c wait for steps that will never finish" in final["error"]["message"]


def test_a_paused_or_busy_execution_is_left_alone_by_the_watchdog() -> None:
    for kit in make_kit(watchdog=10):
        eid = kit.start(wf(step("a"), wait_step("w", 1000)))
        d = kit.next_held()
        kit.engine.pause_workflow(eid).result(WAIT)
        seq = kit.record(eid)["seq"]
        kit.timers.advance(50)
        kit.engine.resume_workflow(eid).result(WAIT)
        kit.timers.advance(50)
        rec = kit.record(eid)
        assert rec["status"] == "running" and rec["seq"] == seq + 1  # only the resume
        assert kit.held.empty()
        d.reply_to.tell(finished(d, 1))
        kit.step_is(eid, "a", "succeeded")


def _state(status: str, **steps: StepState) -> ExecutionState:
    state = ExecutionState(id="e", workflow_id="w", status=status, order=list(steps))
    state.steps = dict(steps)
    return state


def test_summaries_of_every_execution_status() -> None:
    cfg = WorkflowConfig.model_validate(
        {"name": "w", "steps": [{"name": "s", "implementation": "noop"}]}
    )
    done = _state("completed", s=StepState(status="succeeded"))
    done.end_time = 0.0
    assert explain(done, cfg, 0.0)["summary"] == "completed at 1970-01-01 00:00:00 UTC"
    failed = _state("failed", s=StepState(status="failed"))
    failed.error = {"message": "boom"}
    assert explain(failed, cfg, 0.0)["summary"].endswith(": boom")
    assert explain(_state("pending", s=StepState()), cfg, 0.0)["summary"] == (
        "created, not yet started"
    )
    ready = _state("running", s=StepState(status="ready"))
    report = explain(ready, cfg, 0.0)
    assert report["steps"]["s"]["waiting_for"] == "a dispatch slot (max_parallel)"
    ready.steps["s"].hold = {"breaker": "noop", "until": 5.0}
    half = explain(ready, cfg, 9.0, breakers={"noop": {"phase": "half_open"}})
    assert (
        half["steps"]["s"]["waiting_for"] == "breaker noop is half-open: its probe calls are in use"
    )
    timed = _state("running", s=StepState(status="timed_out"))
    assert explain(timed, cfg, 0.0)["steps"]["s"]["waiting_for"].startswith("its retry")
    comp = _state("running", s=StepState(status="failed"))
    comp.compensations = [{"step": "s", "implementation": "noop", "status": "running"}]
    assert explain(comp, cfg, 0.0)["summary"].startswith("compensating after a failure")
    stuck = _state("running", s=StepState(status="pending"))
    assert explain(stuck, None, 0.0)["summary"].startswith("no step can run")
    assert explain(stuck, None, 0.0)["steps"]["s"]["waiting_for"] == "to be scheduled"
    gone = _state("running", s=StepState(status="dispatched"))
    other = WorkflowConfig.model_validate(
        {"name": "w", "steps": [{"name": "t", "implementation": "noop"}]}
    )  # a definition that lost the step: explained without it
    assert explain(gone, other, 0.0, offered=set())["steps"]["s"]["status"] == "dispatched"


def test_the_watchdog_leaves_a_healthy_waiting_execution_alone_and_re_arms_lost_timers() -> None:
    for kit in make_kit(watchdog=10):
        eid = kit.start(wf(wait_step("w", 1000), step("q", queue_timeout=500), timeout="900s"))
        kit.next_held()
        seq = kit.step_is(eid, "w", "running")["seq"]
        pending = kit.timers.pending()  # wait, queue, workflow, the watchdog
        for _ in range(3):
            kit.timers.advance(10)
            kit.record(eid)
        assert kit.timers.pending() == pending and kit.record(eid)["seq"] == seq
        sup = supervisor(kit, eid)
        for kind, name in (("wait", "w"), ("queue", "q"), ("workflow", None)):
            sup._deadlines.cancel(kind, name)  # every timer lost
        kit.timers.advance(10)
        kit.record(eid)
        assert kit.timers.pending() == pending  # all three re-armed at their old deadlines
        kit.timers.advance(470)  # 1000 + 500: the queue deadline
        assert kit.step_is(eid, "q", "retry_wait", "failed")["results"]["q"]["error"]["type"] == (
            "StepTimeout"
        )


def test_explain_describes_a_fan_out_and_a_subflow() -> None:
    fan = _state("running", f=StepState(status="running"))
    fan.steps["f"].detail = {
        "state": [{"status": "succeeded"}, {"status": "running"}, {"status": "succeeded"}]
    }
    why = explain(fan, None, 0.0)["steps"]["f"]["waiting_for"]
    assert why == "fan-out: 2 of 3 items succeeded (1 running, 2 succeeded)"
    sub = _state("running", c=StepState(status="running"))
    sub.steps["c"].detail = {"child": "kid-1", "attempt": 1, "children": ["kid-1"]}
    why = explain(sub, None, 0.0)["steps"]["c"]["waiting_for"]
    assert why == "subflow: child execution kid-1 (attempt 1)"


def test_explain_says_a_subflow_waits_on_a_child_paused_on_its_own() -> None:
    sub = _state("running", c=StepState(status="running"))
    sub.steps["c"].detail = {"child": "kid-1", "attempt": 1, "children": ["kid-1"]}

    def why(child: str | None, parent: str = "running") -> str:
        sub.status = parent
        report = explain(sub, None, 0.0, child_status={"kid-1": child}.get)
        return str(report["steps"]["c"]["waiting_for"])

    assert why("running") == "subflow: child execution kid-1 (attempt 1), running"
    assert why("paused") == (
        "subflow: child execution kid-1 (attempt 1), paused: resume the child to go on"
    )
    assert why("paused", parent="paused") == "subflow: child execution kid-1 (attempt 1), paused"
    assert why(None) == "subflow: child execution kid-1 (attempt 1)"  # not started yet


def test_explain_says_a_time_beyond_any_calendar_date_without_failing() -> None:
    # a retry 1e300 s away (a plugin's RetryAfter) took the supervisor down with it
    far = _state("running", r=StepState(status="retry_wait", attempts=1, retry_at=1e300))
    assert explain(far, None, 0.0)["steps"]["r"]["waiting_for"] == (
        "retry (attempt 2) at 1e+300 s after the epoch"
    )
