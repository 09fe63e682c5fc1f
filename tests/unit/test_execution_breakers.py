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
