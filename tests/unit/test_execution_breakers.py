"""Circuit breakers seen from executions: open, hold the queue, half-open, close, persist."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tamma_actors._store import MemoryStore
from tests.timekit import WAIT, Kit, finished, make_kit, step, wf

# every scheduler test runs with both of its books (conftest.either_book)
pytestmark = pytest.mark.usefixtures("either_book")

BREAKER = {"failure_threshold": 2, "reset_timeout": "30s", "half_open_max_calls": 1}
ONCE = {"max_attempts": 1}
BOOM = {"type": "Boom", "message": "service down", "retryable": True}


@pytest.fixture
def kit() -> Iterator[Kit]:
    yield from make_kit()


def guarded(name: str = "call", **config: Any) -> dict[str, Any]:
    return wf(
        step(name, impl="noop", config=config, retry_policy=ONCE),
        circuit_breaker=BREAKER,
    )


def fail_one(kit: Kit, spec: dict[str, Any]) -> str:
    eid = kit.start(spec)
    d = kit.next_held()
    d.reply_to.tell(finished(d, error=BOOM))
    kit.status_is(eid, "failed")
    return eid


def breakers(kit: Kit) -> dict[str, Any]:
    return kit.engine.health().result(WAIT)["breakers"]


def test_a_breaker_opens_holds_steps_half_opens_and_closes(kit: Kit) -> None:
    fail_one(kit, guarded())
    assert breakers(kit)["noop"]["phase"] == "closed"
    fail_one(kit, guarded())
    assert breakers(kit)["noop"] | {"waiting": 0} == {
        "phase": "open",
        "failures": 2,
        "opened_at": 1000.0,
        "until": 1030.0,
        "probes": 0,
        "changed_at": 1000.0,
        "waiting": 0,
    }
    waiting = [kit.start(guarded()) for _ in range(2)]
    for eid in waiting:
        rec = kit.step_is(eid, "call", "ready")
        assert rec["results"]["call"]["attempts"] == 0  # held steps use no attempt
    held = [e for e in kit.events(waiting[0]) if e["type"] == "step.held"]
    assert held[0]["data"] == {"step": "call", "breaker": "noop", "until": 1030.0}
    assert kit.held.empty() and breakers(kit)["noop"]["waiting"] == 2
    kit.timers.advance(30)
    probe = kit.next_held()  # one probe while half-open
    assert kit.held.empty() and breakers(kit)["noop"]["phase"] == "half_open"
    probe.reply_to.tell(finished(probe, "fine"))
    other = kit.next_held()  # closed: the other held step goes too
    other.reply_to.tell(finished(other, "fine"))
    for eid in waiting:
        rec = kit.status_is(eid, "completed")
        assert rec["results"]["call"]["attempts"] == 1
    assert breakers(kit)["noop"]["phase"] == "closed"


def test_a_failed_probe_opens_it_again(kit: Kit) -> None:
    fail_one(kit, guarded())
    fail_one(kit, guarded())
    kit.timers.advance(30)
    first = fail_one(kit, guarded())  # the probe fails
    rec = kit.engine.get_workflow(first).result(WAIT)
    assert rec["results"]["call"]["attempts"] == 1
    state = breakers(kit)["noop"]
    assert (state["phase"], state["until"]) == ("open", 1060.0)
    eid = kit.start(guarded())
    kit.step_is(eid, "call", "ready")
    assert kit.held.empty()


def test_breakers_are_per_target_and_only_for_workflows_that_ask(kit: Kit) -> None:
    fail_one(kit, guarded(target="github"))
    fail_one(kit, guarded(target="github"))
    assert breakers(kit)["noop@github"]["phase"] == "open"
    other = kit.start(guarded(target="gitlab"))
    d = kit.next_held()
    d.reply_to.tell(finished(d, 1))
    kit.status_is(other, "completed")
    unguarded = kit.start(wf(step("call", config={"target": "github"})))
    d = kit.next_held()
    d.reply_to.tell(finished(d, 1))
    kit.status_is(unguarded, "completed")


def test_breaker_state_survives_a_restart() -> None:
    store = MemoryStore()
    for k in make_kit(store, start=1000.0):
        fail_one(k, guarded())
        fail_one(k, guarded())
    assert store.get_breakers()["noop"]["phase"] == "open"
    for k in make_kit(store, start=1010.0):
        assert breakers(k)["noop"]["until"] == 1030.0
        eid = k.start(guarded())
        k.step_is(eid, "call", "ready")
        k.timers.advance(19.9)
        assert k.held.empty()
        k.timers.advance(0.1)
        probe = k.next_held()
        probe.reply_to.tell(finished(probe, "back"))
        k.status_is(eid, "completed")
    assert store.get_breakers()["noop"]["phase"] == "closed"


def test_a_probe_in_flight_at_a_restart_still_holds_its_slot() -> None:
    store = MemoryStore()
    for k in make_kit(store, start=1000.0):
        fail_one(k, guarded())
        fail_one(k, guarded())
        k.timers.advance(30)
        probing = k.start(guarded())
        probe = k.next_held()  # the one probe of the half-open breaker, then a crash
        held = k.start(guarded())
        k.step_is(held, "call", "ready")
    assert store.get_breakers()["noop"]["probes"] == 0  # the count is not persisted
    for k in make_kit(store, start=1031.0):
        k.engine.recover()
        again = k.next_held()  # sent again, as one of the probes ...
        assert again.task["task_id"] == probe.task["task_id"]
        k.step_is(held, "call", "ready")  # ... so the other waits for its outcome
        assert k.held.empty() and breakers(k)["noop"]["probes"] == 1
        again.reply_to.tell(finished(again, "back"))
        k.status_is(probing, "completed")
        last = k.next_held()  # closed now
        last.reply_to.tell(finished(last, "back"))
        k.status_is(held, "completed")


def test_aborting_a_held_step_or_a_probe_frees_the_breaker(kit: Kit) -> None:
    fail_one(kit, guarded())
    fail_one(kit, guarded())
    kit.timers.advance(30)
    probing = kit.start(guarded())
    probe = kit.next_held()
    queued = kit.start(guarded())
    kit.step_is(queued, "call", "ready")
    kit.engine.abort_workflow(probing, "no").result(WAIT)  # the probe slot is given back
    replacement = kit.next_held()
    assert replacement.task["execution_id"] == queued
    assert probe.task["execution_id"] == probing
    replacement.reply_to.tell(finished(replacement, 1))
    kit.status_is(queued, "completed")


# -- parallel steps: each item is a call through the step's breaker -----------------------


def fan(items: list[Any], breaker: dict[str, Any] | None = BREAKER, **extra: Any) -> dict[str, Any]:
    config = {"items": items, **({"target": extra.pop("target")} if "target" in extra else {})}
    spec = {
        "name": "f",
        "type": "parallel",
        "implementation": "noop",
        "config": config,
        "retry_policy": ONCE,
    }
    return wf(spec, **({"circuit_breaker": breaker} if breaker else {}), **extra)


def open_breaker(kit: Kit) -> None:
    fail_one(kit, guarded())
    fail_one(kit, guarded())
    assert breakers(kit)["noop"]["phase"] == "open"


def of_type(kit: Kit, eid: str, etype: str) -> list[dict[str, Any]]:
    return [e["data"] for e in kit.events(eid) if e["type"] == etype]


def test_items_wait_for_an_open_breaker_then_go_as_probes_then_all(kit: Kit) -> None:
    policy = BREAKER | {"half_open_max_calls": 2}
    fail_one(kit, wf(step("call", retry_policy=ONCE), circuit_breaker=policy))
    fail_one(kit, wf(step("call", retry_policy=ONCE), circuit_breaker=policy))
    eid = kit.start(fan([0, 1, 2, 3], policy))
    rec = kit.until(eid, lambda r: bool(r["results"]["f"]["detail"]))
    assert rec["results"]["f"]["detail"] == {"items": 4, "pending": 4}  # no attempt used
    assert of_type(kit, eid, "step.held") == [{"step": "f", "breaker": "noop", "until": 1030.0}]
    why = kit.engine.explain(eid).result(WAIT)["steps"]["f"]["waiting_for"]
    assert "pending items wait: breaker noop open until" in why
    status = kit.engine.get_workflow_status(eid).result(WAIT)
    assert status["waiting"] == {"f": "breaker noop"}  # tamma status says so too
    assert kit.held.empty() and breakers(kit)["noop"]["waiting"] == 1
    kit.timers.advance(30)  # half-open: two probes, the other items stay held
    probes = [kit.next_held(), kit.next_held()]
    assert [p.task["item_index"] for p in probes] == [0, 1]
    kit.until(eid, lambda r: r["results"]["f"]["detail"].get("pending") == 2)
    assert breakers(kit)["noop"] | {"waiting": 1} == breakers(kit)["noop"]
    assert breakers(kit)["noop"]["probes"] == 2 and kit.held.empty()
    assert len(of_type(kit, eid, "step.held")) == 2  # once more, after its probes went
    probes[0].reply_to.tell(finished(probes[0], "a"))  # closed: the rest go
    rest = [kit.next_held(), kit.next_held()]
    assert kit.engine.get_workflow_status(eid).result(WAIT)["waiting"] == {}
    assert sorted(d.task["item_index"] for d in rest) == [2, 3]
    for d in [probes[1], *rest]:
        d.reply_to.tell(finished(d, d.task["item_index"]))
    final = kit.status_is(eid, "completed")
    assert final["results"]["f"]["data"] == ["a", 1, 2, 3]
    assert [i[1] for e in of_type(kit, eid, "step.items_dispatched") for i in e["items"]] == [1] * 4
    assert breakers(kit)["noop"]["phase"] == "closed"


def test_failing_items_open_the_breaker_and_items_in_flight_run_on(kit: Kit) -> None:
    eid = kit.start(fan([0, 1, 2, 3], target="svc", error_handling="continue"))
    sent = [kit.next_held() for _ in range(4)]
    for d in sent:  # the breaker opens at the second; the others were sent already
        d.reply_to.tell(finished(d, error=BOOM))
    final = kit.status_is(eid, "failed")
    assert "4 of 4 items did not succeed" in final["results"]["f"]["error"]["message"]
    state = breakers(kit)["noop@svc"]
    assert (state["phase"], state["failures"], state["until"]) == ("open", 2, 1030.0)
    held = kit.start(guarded(target="svc"))  # a task step of the same implementation waits now
    kit.step_is(held, "call", "ready")
    assert kit.held.empty()


def test_repeated_worker_loss_of_an_item_counts_as_a_failure(kit: Kit) -> None:
    from tamma_actors._workerpool import TaskRedispatched

    for _ in range(2):
        eid = kit.start(fan([0]))
        d = kit.next_held()
        for _ in range(3):  # the third loss of the same attempt fails it
            d.reply_to.tell(TaskRedispatched(d.task["task_id"], "worker lost"))
        kit.status_is(eid, "failed")
    assert breakers(kit)["noop"]["phase"] == "open"


def test_a_cancelled_probe_item_gives_its_slot_back(kit: Kit) -> None:
    open_breaker(kit)
    kit.timers.advance(30)
    probing = kit.start(fan([0, 1]))
    probe = kit.next_held()  # item 0 probes; item 1 is held behind it
    assert probe.task["item_index"] == 0
    kit.until(probing, lambda r: r["results"]["f"]["detail"].get("pending") == 1)
    queued = kit.start(guarded())
    kit.step_is(queued, "call", "ready")
    assert kit.held.empty() and breakers(kit)["noop"]["probes"] == 1
    kit.engine.abort_workflow(probing, "no").result(WAIT)
    assert kit.cancels.get(timeout=WAIT) == probe.task["task_id"]
    replacement = kit.next_held()  # the slot went to the other execution's step
    assert replacement.task["execution_id"] == queued
    replacement.reply_to.tell(finished(replacement, 1))
    kit.status_is(queued, "completed")
    assert breakers(kit)["noop"]["phase"] == "closed"


def test_a_probe_item_in_flight_at_a_restart_keeps_its_slot() -> None:
    store = MemoryStore()
    for k in make_kit(store, start=1000.0):
        open_breaker(k)
        k.timers.advance(30)
        eid = k.start(fan([0, 1]))
        probe = k.next_held()
        k.until(eid, lambda r: r["results"]["f"]["detail"].get("pending") == 1)
    for k in make_kit(store, start=1031.0):
        k.engine.recover()
        again = k.next_held()  # sent again, as the one probe: item 1 still waits
        assert again.task["task_id"] == probe.task["task_id"]
        k.record(eid)
        assert k.held.empty() and breakers(k)["noop"]["probes"] == 1
        again.reply_to.tell(finished(again, "a"))
        last = k.next_held()
        assert last.task["item_index"] == 1
        last.reply_to.tell(finished(last, "b"))
        assert k.status_is(eid, "completed")["results"]["f"]["data"] == ["a", "b"]


def test_a_fan_out_without_circuit_breaker_is_not_held_and_not_counted(kit: Kit) -> None:
    open_breaker(kit)
    guarded_fan = kit.start(fan([0, 1]))
    kit.until(guarded_fan, lambda r: bool(r["results"]["f"]["detail"]))
    assert kit.held.empty()  # the same fan-out under the breaker waits ...
    free = kit.start(fan([0, 1], breaker=None))
    sent = [kit.next_held(), kit.next_held()]  # ... without one it runs at once
    assert {d.task["execution_id"] for d in sent} == {free}
    for d in sent:
        d.reply_to.tell(finished(d, error=BOOM))
    kit.status_is(free, "failed")
    assert not of_type(kit, free, "step.held")
    assert breakers(kit)["noop"]["failures"] == 2  # its failures were not counted


def test_a_fan_out_timeout_counts_its_items_in_flight_as_failed_calls(kit: Kit) -> None:
    spec = fan([0, 1])
    spec["steps"][0]["timeout"] = 5
    eid = kit.start(spec)
    sent = [kit.next_held(), kit.next_held()]
    kit.started(eid, sent[0])
    kit.timers.advance(5)  # neither answers: both calls timed out
    assert {kit.cancels.get(timeout=WAIT) for _ in sent} == {d.task["task_id"] for d in sent}
    final = kit.status_is(eid, "failed")
    assert final["results"]["f"]["error"]["type"] == "StepTimeout"
    assert breakers(kit)["noop"]["phase"] == "open"


def test_held_items_wait_out_a_pause_and_go_on_resume(kit: Kit) -> None:
    open_breaker(kit)
    eid = kit.start(fan([0, 1]))
    kit.until(eid, lambda r: bool(r["results"]["f"]["detail"]))
    kit.engine.pause_workflow(eid).result(WAIT)
    kit.timers.advance(30)  # half-open while paused: nothing goes out
    kit.record(eid)
    assert kit.held.empty() and breakers(kit)["noop"]["probes"] == 0
    kit.engine.resume_workflow(eid).result(WAIT)
    probe = kit.next_held()
    assert probe.task["item_index"] == 0
    probe.reply_to.tell(finished(probe, "a"))
    last = kit.next_held()
    last.reply_to.tell(finished(last, "b"))
    assert kit.status_is(eid, "completed")["results"]["f"]["data"] == ["a", "b"]


def test_the_reducer_holds_a_fan_outs_items_until_they_go_out() -> None:
    from tamma_actors._errors import IllegalTransition
    from tamma_actors._state import ExecutionState, apply, make_event, to_record

    state = ExecutionState(id="e1")
    held = {"step": "f", "breaker": "noop", "until": 1030.0}
    for etype, data in [
        ("workflow.created", {"workflow_id": "wf", "steps": ["f", "g"]}),
        ("workflow.started", {}),
        ("step.ready", {"step": "f"}),
        ("step.ready", {"step": "g"}),
        ("step.dispatched", {"step": "f", "attempt": 1}),
        ("step.items_planned", {"step": "f", "attempt": 1, "items": [0, 1]}),
        ("step.held", held),
    ]:
        apply(state, make_event(state, etype, 1000.0, **data))
    assert state.steps["f"].hold == {"breaker": "noop", "until": 1030.0}
    apply(state, make_event(state, "step.items_dispatched", 1001.0, step="f", items=[[0, 1]]))
    assert state.steps["f"].hold is None  # an item went out: the hold is recorded anew
    apply(state, make_event(state, "step.held", 1001.0, **held))
    apply(state, make_event(state, "step.items_cancelled", 1002.0, step="f", indexes=[0, 1]))
    assert state.steps["f"].hold is None
    apply(state, make_event(state, "step.dispatched", 1003.0, step="g", attempt=1))
    with pytest.raises(IllegalTransition, match="held"):  # a task step once dispatched
        apply(state, make_event(state, "step.held", 1004.0, **held | {"step": "g"}))
    assert to_record(state)["results"]["f"]["detail"] == {"items": 2, "cancelled": 2}
