"""Recovered executions with nothing to do but wait rest: no supervisor until they are due.

Manual timers and a holding pool (tests/timekit.py): the first kit parks executions, the
second recovers the same store. A resting execution is read from the store, woken by its
timer or by any other request, and behaves afterwards exactly as if it had never rested.
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest

from tamma_actors._errors import StoreError
from tamma_actors._execution import ExecutionSupervisor
from tamma_actors._execution_rest import MayRest, Resting
from tamma_actors._store import MemoryStore
from tests.timekit import WAIT, Kit, finished, step, wait_step, wf
from tests.timekit import make_kit as _kit

# every scheduler test runs with both of its books (conftest.either_book)
pytestmark = pytest.mark.usefixtures("either_book")


def _eventually(condition: Callable[[], bool]) -> None:
    """Until ``condition`` holds (what a dispatcher thread does next; bounded)."""
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.005)


def _rests(k: Kit, count: int) -> None:
    """Until ``count`` executions rest (their MayRest follows their commit)."""
    _eventually(lambda: k.engine.resting_count == count)


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
        assert k.engine.explain(eid).result(WAIT)["status"] == "running"
        assert (k.engine.live_count, k.engine.resting_count) == (0, 1)  # none woke it


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
        k.timers.advance(50)  # its wake timer fires; the waker's read fails
        _eventually(lambda: eid in k.engine.unrecovered)  # noqa: B023 (waited for here)
        assert k.engine.unrecovered == {eid: "the disk went away"}
        assert (k.engine.live_count, k.engine.resting_count) == (0, 0)
        health = k.engine.health().result(WAIT)
        assert health["status"] == "degraded"
        assert health["recovery"]["unrecoverable"] == {eid: "the disk went away"}
        with pytest.raises(StoreError, match="the disk went away"):
            k.record(eid)  # a read names the failure too; the node carries on
        monkeypatch.undo()  # the disk is back: the store still has it, running
        assert k.record(eid)["results"]["w"]["status"] == "running"


def test_a_wake_reads_the_store_on_a_dispatcher_thread_not_the_timer_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = MemoryStore()
    (eid,) = _parked(store, wf(wait_step("w", 60)))
    reading, release = threading.Event(), threading.Event()
    readers: list[threading.Thread] = []
    real = store.read_execution

    def slow(*args: Any, **kwargs: Any) -> Any:
        readers.append(threading.current_thread())
        reading.set()
        release.wait(WAIT)
        return real(*args, **kwargs)

    for k in _kit(store, start=1010.0):
        k.engine.recover()
        monkeypatch.setattr(store, "read_execution", slow)
        k.timers.advance(50)  # fires its wake timer here, which only tells the waker
        assert reading.wait(WAIT) and readers == [readers[0]]
        assert readers[0] is not threading.current_thread()
        release.set()
        k.woken(eid)
        assert k.status_is(eid, "completed")["results"]["w"]["data"] == {"waited_s": 60.0}


def test_a_wake_reads_without_the_engine_lock_and_a_request_meanwhile_wakes_it_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # While the timer's wake reads the store, the engine serves other requests, and a
    # request for the same execution wakes it itself; the timer's wake then finds it live
    # and drops what it read: one supervisor, one end.
    store = MemoryStore()
    eid, other = _parked(store, wf(wait_step("w", 60)), wf(wait_step("w", 600)))
    reading, release = threading.Event(), threading.Event()
    released: list[bool] = []
    real = store.read_execution

    def slow(execution_id: str, *args: Any, **kwargs: Any) -> Any:
        if execution_id == eid and not reading.is_set():  # the timer's wake, the first read
            reading.set()
            released.append(release.wait(WAIT))
        return real(execution_id, *args, **kwargs)

    for k in _kit(store, start=1010.0):
        k.engine.recover()
        monkeypatch.setattr(store, "read_execution", slow)
        k.timers.advance(50)  # eid is due: the waker starts its read and blocks in it
        assert reading.wait(WAIT)
        assert k.engine.pause_workflow(other).result(WAIT)["status"] == "paused"
        ended = k.engine.wait(eid, WAIT)  # wakes eid on this thread
        k.woken(eid)
        assert ended.result(WAIT)["status"] == "completed"
        release.set()
        _eventually(lambda: bool(released))
        assert released == [True]  # nothing waited for the blocked read to end
        types = [e["type"] for e in k.events(eid)]
        assert types.count("step.completed") == types.count("workflow.completed") == 1
        _eventually(lambda: k.engine.live_count == 1)  # noqa: B023 (waited for here)
        assert k.engine.resting_count == 0 and k.engine.unrecovered == {}


# -- resting while the node runs (rest_after) ----------------------------------------------


def test_a_live_execution_that_only_waits_rests_until_it_is_due() -> None:
    for k in _kit(start=1000.0, rest_after=1.0):
        eid = k.start(wf(wait_step("w", 60), step("after", "w")))
        _rests(k, 1)
        assert k.engine.health().result(WAIT)["executions"] == {"live": 0, "resting": 1}
        assert k.record(eid)["results"]["w"]["status"] == "running"  # from the store
        why = k.engine.explain(eid).result(WAIT)  # from the store too: it goes on resting
        assert why["steps"]["w"]["waiting_for"] == "wait step: until 1970-01-01 00:17:40 UTC"
        assert why["steps"]["after"]["waiting_for"] == "dependencies: w (running)"
        assert (k.engine.live_count, k.engine.resting_count) == (0, 1)
        k.timers.advance(59.9)
        assert k.engine.resting_count == 1 and k.held.empty()
        k.timers.advance(0.1)
        k.woken(eid)
        after = k.next_held()
        assert after.task["step"] == "after" and after.task["input"] == {"waited_s": 60.0}
        after.reply_to.tell(finished(after, "done"))
        assert k.status_is(eid, "completed")["results"]["after"]["data"] == "done"
        assert (k.engine.live_count, k.engine.resting_count) == (0, 0)
        started = [e for e in k.events(eid) if e["type"] == "step.started"]
        assert [e["data"]["step"] for e in started] == ["w"]  # not started again on waking


def test_a_wait_ending_sooner_than_rest_after_keeps_its_supervisor() -> None:
    for k in _kit(start=1000.0, rest_after=10.0):
        short = k.start(wf(wait_step("w", 5)))
        long = k.start(wf(wait_step("w", 60)))
        _rests(k, 1)
        k.record(short)  # queued behind its MayRest, if it had rested this is the store's
        assert (k.engine.live_count, k.engine.resting_count) == (1, 1)
        assert k.engine.explain(short).result(WAIT)["status"] == "running"
        assert (k.engine.live_count, k.engine.resting_count) == (1, 1)  # it was live
        k.timers.advance(5)
        assert k.status_is(short, "completed")["results"]["w"]["data"] == {"waited_s": 5.0}
        assert k.record(long)["status"] == "running"


def test_nothing_rests_while_a_step_is_in_flight_or_rest_after_is_off() -> None:
    for k in _kit(start=1000.0, rest_after=1.0):
        busy = k.start(wf(wait_step("w", 60), step("t")))
        task = k.next_held()
        k.step_is(busy, "w", "running")
        k.record(busy)
        assert (k.engine.live_count, k.engine.resting_count) == (1, 0)
        task.reply_to.tell(finished(task, "ok"))  # now only the wait is left
        _rests(k, 1)
    for k in _kit(start=1000.0):  # rest_after None: live executions never rest
        eid = k.start(wf(wait_step("w", 60)))
        k.step_is(eid, "w", "running")
        k.record(eid)
        assert (k.engine.live_count, k.engine.resting_count) == (1, 0)


def test_pause_wakes_a_resting_execution_and_resume_lets_it_rest_with_the_time_left() -> None:
    for k in _kit(start=1000.0, rest_after=1.0):
        eid = k.start(wf(wait_step("w", 60)))
        _rests(k, 1)
        k.timers.advance(20)
        paused = k.engine.pause_workflow(eid).result(WAIT)
        assert paused["status"] == "paused" and k.engine.resting_count == 0
        k.timers.advance(500)  # frozen while paused
        k.engine.resume_workflow(eid).result(WAIT)
        _rests(k, 1)
        k.timers.advance(39.9)
        assert k.record(eid)["status"] == "running"
        k.timers.advance(0.1)
        k.woken(eid)
        assert k.status_is(eid, "completed")["results"]["w"]["data"] == {"waited_s": 60.0}


def test_waiting_on_its_end_or_the_workflow_timeout_wakes_a_resting_execution() -> None:
    for k in _kit(start=1000.0, rest_after=1.0):
        first = k.start(wf(wait_step("w", 60)))
        doomed = k.start(wf(wait_step("w", 600), timeout="10s"))
        _rests(k, 2)
        ended = k.engine.wait(first)  # a long poll needs a supervisor: it keeps one
        assert k.engine.resting_count == 1
        k.timers.advance(10)  # the doomed one rested until its workflow timeout
        k.woken(doomed)
        assert k.status_is(doomed, "failed")["error"]["type"] == "WorkflowTimeout"
        k.timers.advance(50)
        assert ended.result(WAIT)["status"] == "completed"
        assert (k.engine.live_count, k.engine.resting_count) == (0, 0)


def test_resting_executions_keep_a_bounded_number_of_parsed_definitions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Each execution has its own definition (its name differs): the parsed ones kept for
    # wakes stay within the bound, and one shared by many is parsed once for all.
    monkeypatch.setattr("tamma_actors._recovery._DEFINITIONS_KEPT", 3)
    parsed: list[str] = []  # the executions whose definition was parsed from the store
    for k in _kit(start=1000.0, rest_after=1.0):
        definition_of = k.engine._definition_of

        def counted(state: Any, definition_of: Any = definition_of) -> Any:
            parsed.append(state.id)
            return definition_of(state)

        monkeypatch.setattr(k.engine, "_definition_of", counted)
        own = [k.start(wf(wait_step("w", 60), name=f"own-{i}")) for i in range(6)]
        _rests(k, 6)
        assert len(k.engine._configs) == 3  # the last three to rest
        shared = [k.start(wf(wait_step("w", 60), name="shared")) for _ in range(4)]
        _rests(k, 10)
        k.timers.advance(60)  # all due: woken in the order they rested
        for eid in own + shared:
            k.woken(eid)
            assert k.status_is(eid, "completed")["results"]["w"]["data"] == {"waited_s": 60.0}
            assert len(k.engine._configs) <= 3
        assert own[0] in parsed  # pushed out by the later ones: parsed again to wake
        assert len(set(parsed) & set(shared)) <= 1  # four executions, at most one parse
        assert k.engine._configs == {}  # nothing rests any more


def test_a_supervisor_that_rests_is_freed_at_once_not_left_to_the_collector() -> None:
    # Its inbox and its deadlines let go of it when it stops (each held it in a cycle):
    # reference counting frees it, so parking thousands leaves the collector nothing.
    for k in _kit(start=1000.0, rest_after=1.0):
        spec = wf(wait_step("w", 60))
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            parked = {k.start(spec) for _ in range(20)}
            _rests(k, 20)
            k.start(wf(step("t")))  # one more commit: the writer lets go of the last batch
            k.next_held()
            left = [
                o
                for o in gc.get_objects()
                if isinstance(o, ExecutionSupervisor) and o.state.id in parked
            ]
            assert left == []
        finally:
            if was_enabled:
                gc.enable()


class _Supervisor(Resting):
    """Resting's decision alone: a wake time, an inbox, and an engine that answers."""

    def __init__(self, queued: list[object], engine_says: bool) -> None:
        self.actor_inbox = SimpleNamespace(empty=lambda: not queued)
        self.actor_ref = SimpleNamespace(tell=queued.append)  # type: ignore[assignment]
        self.deps = SimpleNamespace(rest=lambda *args: engine_says)  # type: ignore[assignment]
        self.state = self.cfg = None  # type: ignore[assignment]
        self.stopped = False

    def _may_rest_until(self) -> float | None:
        return 2000.0

    def _stop(self) -> None:
        self.stopped = True


def test_a_message_before_may_rest_goes_first_then_it_asks_again() -> None:
    queued: list[object] = ["a watchdog look"]
    sup = _Supervisor(queued, engine_says=True)
    sup._on_may_rest(MayRest())
    assert not sup.stopped and queued == ["a watchdog look", MayRest()]
    queued.clear()  # handled: now the inbox is empty
    sup._on_may_rest(MayRest())
    assert sup.stopped and queued == []
    refused = _Supervisor([], engine_says=False)  # e.g. the wake is too near
    refused._on_may_rest(MayRest())
    assert not refused.stopped
