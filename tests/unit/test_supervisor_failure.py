"""An execution whose supervisor fails (a turn raises: a bug) is not left stuck.

The requests queued behind the turn that raised are answered; the supervisor's timers go
with it; the execution rests, and is brought back from what the store holds after 0.1 s,
or at once by a request; after its fourth failure it is left as the store has it and
health names it. Manual timers and a holding pool (tests/timekit.py); the failure is a
handler patched to raise.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from tamma_actors import _execution
from tamma_actors._errors import ActorStopped, StoreError, StoreWriterLost
from tamma_actors._watchdog import WatchdogCheck
from tamma_actors._workerpool import TaskFinished, TaskStarted
from tests.timekit import WAIT, Kit, finished, make_kit, step, wait_step, wf

# every scheduler test runs with both of its books (conftest.either_book)
pytestmark = pytest.mark.usefixtures("either_book")

RETRY = {"max_attempts": 2, "base_delay": 1000, "max_delay": 1000, "jitter": 0}


@pytest.fixture
def kit() -> Iterator[Kit]:
    yield from make_kit()


def _watchdog_checks_raise(
    monkeypatch: pytest.MonkeyPatch, before: Callable[[], None] = lambda: None
) -> None:
    """From now on a supervisor's turn with a WatchdogCheck raises (after ``before``)."""

    def raises(sup: object, msg: object) -> None:
        before()
        raise RuntimeError("a bug in a turn")

    monkeypatch.setitem(_execution._DISPATCH, WatchdogCheck, raises)


def _raise_in_a_held_turn(
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[threading.Event, threading.Event]:
    """From now on a turn with a WatchdogCheck raises, once the test sets ``go``; it sets
    ``entered`` when it has begun (so the test can queue messages behind it)."""
    entered, go = threading.Event(), threading.Event()

    def in_the_turn() -> None:
        entered.set()
        go.wait(WAIT)

    _watchdog_checks_raise(monkeypatch, in_the_turn)
    return entered, go


def _hold_commits(kit: Kit, monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """From now on the store's commits wait until the returned event is set."""
    released = threading.Event()
    commit = kit.store.commit

    def held_commit(writes: Any) -> Any:
        released.wait(WAIT)
        return commit(writes)

    monkeypatch.setattr(kit.store, "commit", held_commit)
    return released


def _a_step_running_with_commits_held(
    kit: Kit, monkeypatch: pytest.MonkeyPatch
) -> tuple[str, Any, threading.Event]:
    """A one-step execution whose step was dispatched, and from now on the store's commits
    wait for the returned event: (its id, the dispatch, the event)."""
    eid = kit.start(wf(step("s")))
    running = kit.next_held()
    return eid, running, _hold_commits(kit, monkeypatch)


def _fail_with_a_commit_held(kit: Kit, eid: str, running: Any) -> Any:
    """Tell ``eid``'s supervisor that its step started (a commit the store holds back),
    then a WatchdogCheck (its turn raises); returns that supervisor."""
    failing = kit.engine._live[eid]
    failing.tell(TaskStarted(running.task["task_id"], "w1"))
    failing.tell(WatchdogCheck())
    return failing


def _ends_under_its_next_supervisor(kit: Kit, eid: str, failing: Any, waiting: Any) -> None:
    """``eid`` is back under a supervisor other than ``failing``, which sends its step
    again; ``waiting`` (a wait for its end) is not answered until the step's result
    completes it."""
    kit.until(eid, lambda _: kit.engine._live.get(eid) not in (None, failing))
    again = kit.next_held()
    assert not waiting.done()  # not the unfinished record from the store
    _finish(kit, again)
    assert waiting.result(WAIT)["status"] == "completed"


def _fail(kit: Kit, eid: str) -> None:
    """Make ``eid``'s live supervisor fail, and wait until it rests (or is given up)."""
    ref = kit.engine._live[eid]
    ref.tell(WatchdogCheck())
    kit.until(eid, lambda _: eid not in kit.engine._live)
    kit.until(eid, lambda _: kit.engine._is_resting(eid) or eid in kit.engine.unrecovered)


def _finish(kit: Kit, d: Any, ok: bool = True) -> None:
    error = None if ok else {"type": "Boom", "message": "no"}
    d.reply_to.tell(TaskFinished(d.task["task_id"], ok, "out" if ok else None, error, 1.0))


def test_requests_queued_behind_a_turn_that_raises_are_answered(
    kit: Kit, monkeypatch: pytest.MonkeyPatch
) -> None:
    eid = kit.start(wf(wait_step("w", 60), step("s")))
    kit.next_held()
    entered, go = _raise_in_a_held_turn(monkeypatch)
    kit.engine._live[eid].tell(WatchdogCheck())
    assert entered.wait(WAIT)
    read, pause = kit.engine.get_workflow(eid), kit.engine.pause_workflow(eid)
    go.set()  # both wait in its inbox behind the turn that raises
    assert read.result(WAIT)["status"] == "running"  # answered from the store
    with pytest.raises(ActorStopped, match=f"execution {eid}'s supervisor stopped"):
        pause.result(WAIT)


def test_it_is_brought_back_from_the_store_and_its_step_in_flight_reports_there(
    kit: Kit, monkeypatch: pytest.MonkeyPatch
) -> None:
    eid = kit.start(wf(wait_step("w", 60), step("s", retry_policy=RETRY)))
    first = kit.next_held()
    _finish(kit, first, ok=False)
    kit.step_is(eid, "s", "retry_wait")
    assert kit.timers.pending() == 2  # the wait and the retry
    _watchdog_checks_raise(monkeypatch)
    _fail(kit, eid)
    assert kit.timers.pending() == 1  # its own timers are gone; the revival's is armed
    kit.timers.advance(0.1)
    kit.woken(eid)
    assert kit.timers.pending() == 2  # re-armed by the new supervisor, from the store
    kit.timers.advance(1.0)  # the retry: dispatched once, by the new supervisor
    second = kit.next_held()
    assert second.task["attempt"] == 2 and kit.held.empty()
    _finish(kit, second)
    kit.step_is(eid, "s", "succeeded")
    kit.timers.advance(60)
    assert kit.status_is(eid, "completed")["results"]["s"]["data"] == "out"


def test_a_step_running_when_it_failed_is_dispatched_again_with_the_same_attempt(
    kit: Kit, monkeypatch: pytest.MonkeyPatch
) -> None:
    eid = kit.start(wf(step("s")))
    running = kit.next_held()
    kit.started(eid, running)
    _watchdog_checks_raise(monkeypatch)
    _fail(kit, eid)
    kit.timers.advance(0.1)
    kit.woken(eid)
    again = kit.next_held()
    assert again.task["task_id"] == running.task["task_id"]  # same idempotency key
    _finish(kit, again)
    kit.status_is(eid, "completed")
    redispatched = [e for e in kit.events(eid) if e["type"] == "step.redispatched"]
    assert [e["data"]["reason"] for e in redispatched] == ["recovery"]


def test_a_wait_for_its_end_goes_on_waiting_where_it_is_brought_back(
    kit: Kit, monkeypatch: pytest.MonkeyPatch
) -> None:
    eid = kit.start(wf(step("s")))
    kit.next_held()
    waiting = kit.engine.wait(eid)  # no timeout: until it ends
    kit.record(eid)  # a read queued behind the wait: the wait is registered
    _watchdog_checks_raise(monkeypatch)
    failing = kit.engine._live[eid]
    failing.tell(WatchdogCheck())
    # the wait is asked again, which brings the execution back at once
    _ends_under_its_next_supervisor(kit, eid, failing, waiting)


def test_a_wait_asked_again_waits_only_for_the_time_it_had_left(
    kit: Kit, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tamma_actors import _engine_reads

    eid = kit.start(wf(step("s")))
    kit.next_held()
    waiting = kit.engine.wait(eid, timeout=100)
    kit.record(eid)
    later = time.monotonic() + 60  # 60 s pass before it is asked again (for the engine)
    clock = SimpleNamespace(monotonic=lambda: later, time=time.time)
    monkeypatch.setattr(_engine_reads, "time", clock)
    _watchdog_checks_raise(monkeypatch)
    failing = kit.engine._live[eid]
    failing.tell(WatchdogCheck())
    kit.until(eid, lambda _: kit.engine._live.get(eid) not in (None, failing))
    kit.next_held()  # the step, sent again by the new supervisor
    # the new supervisor has the wait: its timer only (the stopped one's is cancelled)
    kit.until(eid, lambda _: kit.timers.pending() == 1)
    kit.timers.advance(39.9)
    assert not waiting.done()
    kit.timers.advance(0.1)
    assert waiting.result(WAIT)["status"] == "running"  # its time is up


def test_a_request_brings_it_back_at_once(kit: Kit, monkeypatch: pytest.MonkeyPatch) -> None:
    eid = kit.start(wf(wait_step("w", 60), step("s", "w")))
    kit.step_is(eid, "w", "running")
    _watchdog_checks_raise(monkeypatch)
    _fail(kit, eid)
    assert kit.engine.pause_workflow(eid).result(WAIT)["status"] == "paused"
    assert eid in kit.engine._live
    assert kit.engine.resume_workflow(eid).result(WAIT)["status"] == "running"
    kit.timers.advance(60)
    _finish(kit, kit.next_held())
    kit.status_is(eid, "completed")


def _given_up(kit: Kit, monkeypatch: pytest.MonkeyPatch) -> str:
    """An execution whose supervisor failed four times: revived after 0.1, 1 and 10 s
    (not before), then left to the store."""
    eid = kit.start(wf(wait_step("w", 600)))
    kit.step_is(eid, "w", "running")
    _watchdog_checks_raise(monkeypatch)
    for delay in (0.1, 1.0, 10.0):
        _fail(kit, eid)
        kit.timers.advance(delay - 0.01)
        assert kit.engine._is_resting(eid)  # not before its time
        kit.timers.advance(0.01)
        kit.woken(eid)
    _fail(kit, eid)
    return eid


def test_an_execution_given_up_on_can_still_be_aborted(
    kit: Kit, monkeypatch: pytest.MonkeyPatch
) -> None:
    eid = _given_up(kit, monkeypatch)
    assert eid in kit.engine.unrecovered
    # brought back from the store once more, so that its abort is recorded
    aborted = kit.engine.abort_workflow(eid, "given up").result(WAIT)
    assert (aborted["status"], aborted["reason"]) == ("aborted", "given up")
    health = kit.engine.health().result(WAIT)
    assert health["status"] == "ok" and health["recovery"]["unrecoverable"] == {}
    assert kit.record(eid)["status"] == "aborted"


def test_after_its_fourth_failure_it_is_left_to_the_store_and_waits_are_held(
    kit: Kit, monkeypatch: pytest.MonkeyPatch
) -> None:
    eid = _given_up(kit, monkeypatch)
    assert not kit.engine._is_resting(eid) and eid not in kit.engine._live
    health = kit.engine.health().result(WAIT)
    assert health["status"] == "degraded"
    why = health["recovery"]["unrecoverable"][eid]
    assert "failed 4 times" in why and "RuntimeError: a bug in a turn" in why
    assert kit.record(eid)["status"] == "running"  # as the store has it
    summary = kit.engine.explain(eid).result(WAIT)["summary"]
    assert summary.startswith("not driven by this node: its supervisor failed 4 times")
    # nothing will end it before a restart: a wait for its end is held for its time
    waiting = kit.engine.wait(eid, timeout=30)
    kit.timers.advance(29.9)
    assert not waiting.done()  # a client's wait loop must not spin on it
    kit.timers.advance(0.1)
    assert waiting.result(WAIT)["status"] == "running"
    forever, timed = kit.engine.wait(eid), kit.engine.wait(eid, timeout=100)
    kit.engine.close()
    assert forever.result(WAIT)["status"] == "running"  # answered when the engine closes
    assert timed.result(WAIT)["status"] == "running" and kit.timers.pending() == 0
    assert kit.engine.wait(eid).result(WAIT)["status"] == "running"  # closed: at once


def test_a_wait_queued_behind_the_turn_that_raises_waits_where_it_is_brought_back(
    kit: Kit, monkeypatch: pytest.MonkeyPatch
) -> None:
    eid, running, released = _a_step_running_with_commits_held(kit, monkeypatch)
    entered, go = _raise_in_a_held_turn(monkeypatch)
    dropped = threading.Event()
    on_dropped = _execution.ExecutionSupervisor.on_dropped

    def dropping(sup: _execution.ExecutionSupervisor, message: Any) -> None:
        on_dropped(sup, message)
        dropped.set()

    monkeypatch.setattr(_execution.ExecutionSupervisor, "on_dropped", dropping)
    failing = _fail_with_a_commit_held(kit, eid, running)
    assert entered.wait(WAIT)
    waiting = kit.engine.wait(eid)  # in its inbox, not registered, when the turn raises
    go.set()
    assert dropped.wait(WAIT)  # the wait, dropped while the failure's commit is held
    released.set()  # its last commit is in: it rests, and the wait asked again wakes it
    _ends_under_its_next_supervisor(kit, eid, failing, waiting)


def test_a_wait_that_comes_before_it_rests_is_handed_to_its_next_supervisor(
    kit: Kit, monkeypatch: pytest.MonkeyPatch
) -> None:
    eid, running, released = _a_step_running_with_commits_held(kit, monkeypatch)
    _watchdog_checks_raise(monkeypatch)
    _fail_with_a_commit_held(kit, eid, running)
    deadline = time.monotonic() + WAIT
    while eid in kit.engine._live and time.monotonic() < deadline:
        time.sleep(0.01)
    # neither live nor resting yet: nothing drives it while its last commit is pending
    waiting, short = kit.engine.wait(eid), kit.engine.wait(eid, timeout=5)
    assert len(kit.engine._held[eid]) == 2 and not waiting.done()
    released.set()
    kit.until(eid, lambda _: kit.engine._is_resting(eid))
    kit.timers.advance(0.1)  # its revival: the held waits go to the new supervisor
    kit.woken(eid)
    assert eid not in kit.engine._held
    again = kit.next_held()
    kit.timers.advance(4.8)  # the short one waits there only for the time it had left
    assert not short.done()
    kit.timers.advance(0.1)
    assert short.result(WAIT)["status"] == "running"
    assert not waiting.done()
    _finish(kit, again)
    assert waiting.result(WAIT)["status"] == "completed"


def test_a_wait_that_would_be_held_as_its_execution_comes_back_waits_on_it(kit: Kit) -> None:
    eid = kit.start(wf(step("s")))
    running = kit.next_held()
    state = kit.engine._load(eid)  # read as if nothing drove it; it is live by the hold
    waiting = kit.engine._hold_wait(state, lambda r: _execution.Wait(r, None))
    assert eid not in kit.engine._held
    _finish(kit, running)
    assert waiting.result(WAIT)["status"] == "completed"


def test_failures_an_hour_apart_do_not_add_up(kit: Kit, monkeypatch: pytest.MonkeyPatch) -> None:
    eid = kit.start(wf(wait_step("w", 100_000)))
    kit.step_is(eid, "w", "running")
    _watchdog_checks_raise(monkeypatch)
    for _ in range(6):  # each after a quiet hour: always the first, revived in 0.1 s
        _fail(kit, eid)
        kit.timers.advance(0.1)
        kit.woken(eid)
        kit.timers.advance(3600)
    assert eid not in kit.engine.unrecovered
    assert kit.engine._failures[eid][0] == 1


def test_what_is_known_of_past_failures_is_forgotten_after_an_hour(
    kit: Kit, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = kit.start(wf(wait_step("w", 100_000)))
    second = kit.start(wf(wait_step("w", 100_000)))
    kit.step_is(first, "w", "running")
    kit.step_is(second, "w", "running")
    _watchdog_checks_raise(monkeypatch)
    _fail(kit, first)
    kit.timers.advance(0.1)
    kit.woken(first)
    kit.timers.advance(3600)
    _fail(kit, second)  # the first one's count goes: the table only holds the last hour's
    assert list(kit.engine._failures) == [second]


def test_a_result_queued_behind_the_turn_that_raises_goes_back_to_the_pool(
    kit: Kit, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pool keeps it for the supervisor that brings the execution back, which
    dispatches the same task again (tests/integration/test_workerpool.py)."""
    eid = kit.start(wf(step("s")))
    running = kit.next_held()
    entered, go = _raise_in_a_held_turn(monkeypatch)
    failing = kit.engine._live[eid]
    failing.tell(WatchdogCheck())
    assert entered.wait(WAIT)
    _finish(kit, running)  # in its inbox when the turn raises
    go.set()
    back = kit.handed_back.get(timeout=WAIT)
    assert back.task_id == running.task["task_id"] and back.output == "out"
    kit.timers.advance(0.1)
    kit.woken(eid)
    again = kit.next_held()  # the same task (the pool answers it with what it kept)
    assert again.task["task_id"] == running.task["task_id"]


def test_a_result_that_reaches_a_supervisor_stopped_by_a_failed_commit_goes_back(
    kit: Kit,
) -> None:
    eid = kit.start(wf(step("s")))
    running = kit.next_held()
    supervisor = kit.engine._live[eid]._actor_weakref()
    assert isinstance(supervisor, _execution.ExecutionSupervisor)
    supervisor._broken = True  # as after a failed commit, before its stop is handled
    _finish(kit, running)
    back = kit.handed_back.get(timeout=WAIT)
    assert back.task_id == running.task["task_id"] and back.ok


def test_a_timed_wait_leaves_no_timer_once_its_execution_ends(kit: Kit) -> None:
    eid = kit.start(wf(step("s")))
    running = kit.next_held()
    waiting = kit.engine.wait(eid, timeout=3600)
    kit.record(eid)  # queued behind the wait: the wait is registered, with its timer
    assert kit.timers.pending() == 1
    _finish(kit, running)
    assert waiting.result(WAIT)["status"] == "completed"
    kit.until(eid, lambda _: eid not in kit.engine._live)  # its supervisor stopped
    kit.until(eid, lambda _: kit.timers.pending() == 0)  # and its wait's timer went with it


def test_a_result_whose_commit_is_lost_goes_back_to_the_pool(
    kit: Kit, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its store writer died before confirming the commit: the execution is brought back
    from the store once a writer is back, and dispatches the same task again, which the
    pool answers with the result it was handed."""
    eid = kit.start(wf(step("s")))
    running = kit.next_held()
    commit = kit.store.commit

    def lost(writes: Any) -> None:
        raise StoreWriterLost("the store writer process died")

    monkeypatch.setattr(kit.store, "commit", lost)
    _finish(kit, running)
    back = kit.handed_back.get(timeout=WAIT)
    assert back.task_id == running.task["task_id"] and back.output == "out"
    monkeypatch.setattr(kit.store, "commit", commit)
    assert kit.engine.reactivate_unconfirmed() == 1
    again = kit.next_held()
    assert again.task["task_id"] == running.task["task_id"]
    kit.step_is(eid, "s", "dispatched", "running")  # the lost commit is not in the store


def test_a_wait_held_over_a_lost_commit_is_answered_when_the_commit_had_landed(
    kit: Kit, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store writer process died after its last commit reached the file but before it
    said so: the node's reads still showed the execution running, so a wait for its end
    (a parent's for its subflow child: no timeout) was held for its return. Re-read once a
    writer is back, it has ended and nothing brings it back: the held wait gets its end."""
    eid = kit.start(wf(step("s")))
    running = kit.next_held()
    commit, landed = kit.store.commit, []

    def unconfirmed(writes: Any) -> None:
        landed.append(writes)  # in the file, not yet seen by the node's reads
        raise StoreWriterLost("the store writer process died")

    monkeypatch.setattr(kit.store, "commit", unconfirmed)
    waiting = kit.engine.wait(eid)
    kit.record(eid)  # the wait is registered before the result
    _finish(kit, running)
    kit.until(eid, lambda _: eid in kit.engine._held)  # held: the store says running
    assert not waiting.done()
    monkeypatch.setattr(kit.store, "commit", commit)
    for writes in landed:
        commit(writes)
    assert kit.engine.reactivate_unconfirmed() == 0  # ended: nothing to bring back
    assert waiting.result(WAIT)["status"] == "completed"
    assert eid not in kit.engine._held


def test_a_commit_that_cannot_store_its_record_is_a_failure_health_names(
    kit: Kit, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A record that cannot be encoded fails its commit every time: the execution used to
    stop unseen, running in the store for ever (health 'ok'). Now it is brought back from
    the store as after a turn that raised, and after the fourth failure health names it."""
    eid = kit.start(wf(step("s")))
    commit = kit.store.commit

    def unstorable(writes: Any) -> None:
        if any(e["type"] == "step.completed" for w in writes for e in w.events):
            raise StoreError("record cannot be stored: value cannot be encoded: out of range")
        commit(writes)

    monkeypatch.setattr(kit.store, "commit", unstorable)
    for delay in (0.1, 1.0, 10.0, None):
        _finish(kit, kit.next_held())  # (the same attempt, sent again by each revival)
        kit.until(eid, lambda _: eid not in kit.engine._live)
        kit.until(eid, lambda _: kit.engine._is_resting(eid) or eid in kit.engine.unrecovered)
        if delay is not None:
            kit.timers.advance(delay)
            kit.woken(eid)
    health = kit.engine.health().result(WAIT)
    assert health["status"] == "degraded"
    why = health["recovery"]["unrecoverable"][eid]
    assert "failed 4 times" in why and "StoreError: record cannot be stored" in why
    assert kit.record(eid)["status"] == "running"  # as the store has it


def test_an_ended_execution_hands_back_no_result(kit: Kit) -> None:
    """An aborted execution is not brought back: the late result of its cancelled step,
    queued when its supervisor stops, is not handed to the pool. (A supervisor stopped
    by a failed commit hands every result back: the store may not have the end.)"""
    eid = kit.start(wf(step("s")))
    running = kit.next_held()
    supervisor = kit.engine._live[eid]._actor_weakref()
    assert isinstance(supervisor, _execution.ExecutionSupervisor)
    assert kit.engine.abort_workflow(eid).result(WAIT)["status"] == "aborted"
    late = finished(running, error={"type": "StepCancelled", "message": "cancelled"})
    supervisor.on_dropped(late)
    with pytest.raises(queue.Empty):
        kit.handed_back.get(timeout=0.2)
