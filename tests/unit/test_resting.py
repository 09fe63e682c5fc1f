"""Recovered executions with nothing to do but wait rest: no supervisor until they are due.

Manual timers and a holding pool (tests/timekit.py): the first kit parks executions, the
second recovers the same store. A resting execution is read from the store, woken by its
timer or by any other request, and behaves afterwards exactly as if it had never rested.
"""

from __future__ import annotations

import pytest

from tamma_actors._errors import StoreError
from tamma_actors._store import MemoryStore
from tests.timekit import WAIT, finished, step, wait_step, wf
from tests.timekit import make_kit as _kit


def _parked(store: MemoryStore, *defs: dict[str, object]) -> list[str]:
    ids = []
    for k in _kit(store, start=1000.0):
        for definition in defs:
            eid = k.start(definition)
            k.step_is(eid, "w", "running")
            ids.append(eid)
    return ids


def test_only_executions_with_nothing_but_waiting_to_do_rest() -> None:
    store = MemoryStore()
    ids = []
    for k in _kit(store, start=1000.0):
        ids.append(k.start(wf(wait_step("w", 60), step("after", "w"))))  # rests
        ids.append(k.start(wf(wait_step("w", 60), step("t"))))  # t is in flight: active
        paused = k.start(wf(wait_step("w", 60)))
        k.step_is(paused, "w", "running")
        k.engine.pause_workflow(paused).result(WAIT)  # paused: active (resume re-arms)
        ids.append(paused)
        for eid in ids[:2]:
            k.step_is(eid, "w", "running")
        k.next_held()  # t was dispatched before the stop
    for k in _kit(store, start=1010.0):
        assert k.engine.recover() == 3
        assert (k.engine.live_count, k.engine.resting_count) == (2, 1)
        assert k.engine.health().result(WAIT)["executions"] == {"live": 2, "resting": 1}
        assert k.next_held().task["step"] == "t"  # the active one re-dispatched its step


def test_reads_and_lists_answer_from_the_store_without_waking() -> None:
    store = MemoryStore()
    (eid,) = _parked(store, wf(wait_step("w", 60)))
    for k in _kit(store, start=1010.0):
        k.engine.recover()
        record = k.record(eid)
        assert record["status"] == "running" and record["results"]["w"]["status"] == "running"
        assert k.engine.get_workflow_status(eid).result(WAIT)["status"] == "running"
        assert [r["id"] for r in k.engine.list_workflows().result(WAIT)] == [eid]
        assert len(k.events(eid)) == store.last_seq(eid)
        assert k.engine.explain(eid).result(WAIT)["status"] == "running"  # explain wakes it
        assert (k.engine.live_count, k.engine.resting_count) == (1, 0)


def test_a_control_request_wakes_it_and_the_wait_keeps_the_time_it_had_left() -> None:
    store = MemoryStore()
    (eid,) = _parked(store, wf(wait_step("w", 60), step("after", "w")))
    for k in _kit(store, start=1010.0):  # 50 s left
        k.engine.recover()
        k.timers.advance(20)  # 30 s left
        paused = k.engine.pause_workflow(eid).result(WAIT)
        assert paused["status"] == "paused" and k.engine.resting_count == 0
        held = next(e for e in k.events(eid) if e["type"] == "workflow.paused")
        assert held["data"]["held"] == {"w": 30.0}
        k.timers.advance(500)  # frozen while paused
        k.engine.resume_workflow(eid).result(WAIT)
        k.timers.advance(29.9)
        assert k.held.empty()
        k.timers.advance(0.1)
        after = k.next_held()
        assert after.task["step"] == "after"
        after.reply_to.tell(finished(after, "done"))
        assert k.status_is(eid, "completed")["results"]["after"]["data"] == "done"


def test_waiting_for_the_end_wakes_it_and_abort_ends_it() -> None:
    store = MemoryStore()
    first, second = _parked(store, wf(wait_step("w", 60)), wf(wait_step("w", 60)))
    for k in _kit(store, start=1010.0):
        k.engine.recover()
        ended = k.engine.wait(first)  # a long poll needs the supervisor
        assert k.engine.resting_count == 1
        k.timers.advance(50)
        k.woken(second)
        assert ended.result(WAIT)["status"] == "completed"
        assert k.status_is(second, "completed")["results"]["w"]["data"] == {"waited_s": 60.0}
    (third,) = _parked(store, wf(wait_step("w", 60)))
    for k in _kit(store, start=1010.0):
        k.engine.recover()
        aborted = k.engine.abort_workflow(third, "not needed").result(WAIT)
        assert aborted["status"] == "aborted" and k.engine.resting_count == 0


def test_closing_the_engine_leaves_resting_executions_to_the_store() -> None:
    store = MemoryStore()
    (eid,) = _parked(store, wf(wait_step("w", 60)))
    for k in _kit(store, start=1010.0):
        k.engine.recover()
        assert k.timers.pending() == 1
        k.engine.close()
        assert k.timers.pending() == 0 and k.engine.resting_count == 0
    for k in _kit(store, start=1100.0):  # past its end: it wakes at once
        assert k.engine.recover() == 1
        k.timers.advance(0)
        k.woken(eid)
        assert k.status_is(eid, "completed")["status"] == "completed"


def test_an_execution_that_cannot_be_woken_is_reported_not_lost(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = MemoryStore()
    (eid,) = _parked(store, wf(wait_step("w", 60)))
    for k in _kit(store, start=1010.0):
        k.engine.recover()

        def unreadable(*args: object, **kwargs: object) -> None:
            raise StoreError("the disk went away")

        monkeypatch.setattr(store, "read_execution", unreadable)
        k.timers.advance(50)  # its wake timer fires; the read fails
        assert k.engine.unrecovered == {eid: "the disk went away"}
        assert (k.engine.live_count, k.engine.resting_count) == (0, 0)
        health = k.engine.health().result(WAIT)
        assert health["status"] == "degraded"
        assert health["recovery"]["unrecoverable"] == {eid: "the disk went away"}
        with pytest.raises(StoreError, match="the disk went away"):
            k.record(eid)  # a read names the failure too; the node carries on
        monkeypatch.undo()  # the disk is back: the store still has it, running
        assert k.record(eid)["results"]["w"]["status"] == "running"
