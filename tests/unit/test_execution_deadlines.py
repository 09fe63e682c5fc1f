"""Wait steps, step timeouts and the workflow timeout, on ManualTimers and a holding pool.

Time moves only when a test calls ``timers.advance``; the execution's clock is the same
manual clock, so deadlines recorded in events are exact. Every report the pool would send
(started, progress, result) is sent by the test, and the test waits for the execution to
have recorded it before moving time (a bounded wait on committed state, never a sleep
standing in for synchronisation).
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tamma_actors._errors import StoreError, WorkflowValidationError
from tamma_actors._store import ExecutionRecords, MemoryStore, Write
from tamma_actors._workerpool import TaskFinished, TaskProgress, TaskRedispatched, TaskStarted
from tests.timekit import WAIT, Kit, make_kit, step, wait_step, wf

# every scheduler test runs with both of its books (conftest.either_book)
pytestmark = pytest.mark.usefixtures("either_book")

_kit = make_kit


@pytest.fixture
def kit() -> Iterator[Kit]:
    yield from make_kit()


FAST_RETRY = {"max_attempts": 2, "base_delay": 1000, "max_delay": 1000, "jitter": 0}

# -- wait steps -------------------------------------------------------------------------------


def test_a_wait_step_is_a_coordinator_timer_not_a_worker_task(kit: Kit) -> None:
    eid = kit.start(wf(wait_step("w", 30), step("after", "w")))
    rec = kit.step_is(eid, "w", "running")
    assert rec["results"]["after"]["status"] == "pending"
    assert kit.held.empty()  # no worker ever sees a wait step
    kit.timers.advance(29.5)
    assert kit.record(eid)["results"]["w"]["status"] == "running"
    kit.timers.advance(0.5)
    after = kit.next_held()
    assert after.task["step"] == "after" and after.task["input"] == {"waited_s": 30.0}
    after.reply_to.tell(TaskFinished(after.task["task_id"], True, "done", None, 1.0))
    final = kit.status_is(eid, "completed")
    assert final["results"]["w"]["data"] == {"waited_s": 30.0}
    started = next(e for e in kit.events(eid) if e["type"] == "step.started")
    assert started["data"]["deadline"] == 1030.0 and started["data"]["worker"] is None


def test_wait_steps_take_no_worker_slot_under_max_parallel(kit: Kit) -> None:
    eid = kit.start(wf(wait_step("w1", 5), wait_step("w2", 5), step("t"), max_parallel=1))
    kit.step_is(eid, "w2", "running")
    assert kit.next_held().task["step"] == "t"  # the one slot is the task's


def test_many_waiting_executions_cost_one_timer_each(kit: Kit) -> None:
    ids = [kit.start(wf(wait_step("w", 60))) for _ in range(200)]
    for eid in ids:
        kit.step_is(eid, "w", "running")
    assert kit.timers.pending() == 200 and kit.held.empty()
    kit.timers.advance(60)
    for eid in ids:
        kit.status_is(eid, "completed")
    assert kit.timers.pending() == 0


def test_pause_freezes_a_wait_step_and_resume_gives_it_the_time_it_had_left(kit: Kit) -> None:
    eid = kit.start(wf(wait_step("w", 30)))
    kit.step_is(eid, "w", "running")
    kit.timers.advance(10)
    kit.engine.pause_workflow(eid).result(WAIT)
    kit.timers.advance(1000)
    assert kit.record(eid)["results"]["w"]["status"] == "running"
    paused = next(e for e in kit.events(eid) if e["type"] == "workflow.paused")
    assert paused["data"]["held"] == {"w": 20.0}
    kit.engine.resume_workflow(eid).result(WAIT)
    kit.timers.advance(19.9)
    assert kit.record(eid)["status"] == "running"
    kit.timers.advance(0.1)
    kit.status_is(eid, "completed")


def test_a_wait_step_survives_a_restart_with_the_time_it_had_left() -> None:
    store = MemoryStore()
    for k in _kit(store, start=1000.0):
        eid = k.start(wf(wait_step("w", 30), step("after", "w")))
        k.step_is(eid, "w", "running")
        assert k.store.get_summary(eid)["rest"] == 1030.0  # recovery rests it on this alone
    for k in _kit(store, start=1012.0):  # the node was down 12 s of the 30
        assert k.engine.recover() == 1
        # nothing to do but wait: it rests (no supervisor) until its wake timer
        assert (k.engine.live_count, k.engine.resting_count) == (0, 1)
        k.timers.advance(17.9)
        assert k.record(eid)["results"]["w"]["status"] == "running" and k.held.empty()
        assert k.engine.resting_count == 1  # a read is answered from the store
        k.timers.advance(0.1)
        k.woken(eid)  # its timer told the engine's waker, which made its supervisor
        assert (k.engine.live_count, k.engine.resting_count) == (1, 0)
        assert k.next_held().task["step"] == "after"
        assert [e["type"] for e in k.events(eid)].count("step.dispatched") == 2  # w, after


class ReadCounting(MemoryStore):
    """Which executions were read with their events (not a summary alone)."""

    def __init__(self) -> None:
        super().__init__()
        self.read_whole: list[str] = []

    def read_executions(
        self, eids: Sequence[str], *, unless: Collection[str] = (), rest_alone: bool = False
    ) -> list[ExecutionRecords | StoreError | None]:
        found = super().read_executions(eids, unless=unless, rest_alone=rest_alone)
        self.read_whole += [e for e, r in zip(eids, found, strict=True)
                            if isinstance(r, ExecutionRecords) and r.events]  # fmt: skip
        return found

    def read_execution(self, eid: str, *, unless: Collection[str] = ()) -> ExecutionRecords | None:
        self.read_whole.append(eid)
        return super().read_execution(eid, unless=unless)


def test_recovery_rests_a_waiting_execution_from_its_summary_alone() -> None:
    store = ReadCounting()
    for k in _kit(store, start=1000.0):
        waiting = k.start(wf(wait_step("w", 30), step("after", "w")))
        busy = k.start(wf(wait_step("w", 30), step("t")))  # a wait beside a task in flight
        k.step_is(waiting, "w", "running")
        k.step_is(busy, "w", "running")
        assert k.next_held().task["step"] == "t"
        assert "rest" not in k.store.get_summary(busy)
        # rest times that are not finite numbers: those executions are read whole
        odd, endless = k.start(wf(wait_step("w", 50))), k.start(wf(wait_step("w", 50)))
        k.step_is(odd, "w", "running")
        k.step_is(endless, "w", "running")
    for eid, rest in ((odd, "soon"), (endless, float("inf"))):
        store.commit([Write(eid, summary={**store.get_summary(eid), "rest": rest})])
    for k in _kit(store, start=1010.0):
        assert k.engine.recover() == 4
        assert sorted(store.read_whole) == sorted([busy, odd, endless])  # not the waiting one
        store.read_whole.clear()
        assert (k.engine.live_count, k.engine.resting_count) == (1, 3)
        assert k.next_held().task["step"] == "t"  # the busy one's task, sent again
        k.timers.advance(19.9)
        assert k.record(waiting)["results"]["w"]["status"] == "running"
        k.timers.advance(0.1)
        k.woken(waiting)
        assert k.next_held().task["step"] == "after"
        k.timers.advance(20)
        for eid in (odd, endless):  # each woke at its wait's end, as its events say
            k.woken(eid)
            k.status_is(eid, "completed")
            assert "rest" not in store.get_summary(eid)


def test_a_wait_step_config_is_checked_when_the_workflow_is_loaded(kit: Kit) -> None:
    with pytest.raises(WorkflowValidationError, match=r"config\.seconds"):
        kit.engine.start_workflow(wf(step("w", impl="wait")), {}).result(WAIT)
    with pytest.raises(WorkflowValidationError, match=r"config\.seconds"):
        kit.engine.start_workflow(wf(wait_step("w", -1)), {}).result(WAIT)


# -- step timeouts ----------------------------------------------------------------------------


def test_start_to_close_timeout_cancels_and_retries_then_fails(kit: Kit) -> None:
    eid = kit.start(wf(step("s", timeout=5, retry_policy=FAST_RETRY)))
    first = kit.next_held()
    kit.started(eid, first)
    kit.timers.advance(4.9)
    assert kit.record(eid)["results"]["s"]["status"] == "running"
    kit.timers.advance(0.1)
    assert kit.cancels.get(timeout=WAIT) == first.task["task_id"]
    rec = kit.step_is(eid, "s", "retry_wait")
    assert rec["results"]["s"]["error"]["type"] == "StepTimeout"
    # the late result of the timed-out attempt is fenced off
    first.reply_to.tell(TaskFinished(first.task["task_id"], True, "late", None, 1.0))
    kit.timers.advance(1.0)
    second = kit.next_held()
    assert second.task["attempt"] == 2
    kit.started(eid, second)
    kit.timers.advance(5)
    final = kit.status_is(eid, "failed")
    assert final["results"]["s"]["data"] is None and final["results"]["s"]["attempts"] == 2
    assert final["error"]["type"] == "StepTimeout" and "within 5s" in final["error"]["message"]
    types = [e["type"] for e in kit.events(eid)]
    assert types.count("step.timed_out") == 2


def test_a_step_finishing_in_time_cancels_its_deadline(kit: Kit) -> None:
    eid = kit.start(wf(step("s", timeout=5, heartbeat_timeout=2, queue_timeout=3)))
    d = kit.next_held()
    kit.started(eid, d)
    d.reply_to.tell(TaskFinished(d.task["task_id"], True, 1, None, 1.0))
    kit.status_is(eid, "completed")
    assert kit.timers.pending() == 0
    assert kit.timers.advance(100) == 0


def test_queue_timeout_fires_when_no_worker_starts_the_step(kit: Kit) -> None:
    eid = kit.start(wf(step("s", queue_timeout="2s", retry_policy={"max_attempts": 1})))
    d = kit.next_held()
    kit.timers.advance(2)
    final = kit.status_is(eid, "failed")
    assert "was not started by a worker within 2s" in final["error"]["message"]
    assert kit.cancels.get(timeout=WAIT) == d.task["task_id"]


def test_pause_freezes_the_queue_deadline(kit: Kit) -> None:
    eid = kit.start(wf(step("s", queue_timeout=10, retry_policy={"max_attempts": 1})))
    kit.next_held()
    kit.timers.advance(4)
    kit.engine.pause_workflow(eid).result(WAIT)
    kit.timers.advance(500)
    assert kit.record(eid)["results"]["s"]["status"] == "dispatched"
    kit.engine.resume_workflow(eid).result(WAIT)
    kit.timers.advance(5.9)
    assert kit.record(eid)["status"] == "running"
    kit.timers.advance(0.1)
    kit.status_is(eid, "failed")


def test_heartbeats_keep_a_long_step_alive_and_silence_times_it_out(kit: Kit) -> None:
    eid = kit.start(wf(step("s", heartbeat_timeout=5, retry_policy={"max_attempts": 1})))
    d = kit.next_held()
    kit.started(eid, d)
    for _ in range(3):
        kit.timers.advance(4)
        d.reply_to.tell(TaskProgress(d.task["task_id"], {"pct": 10}))
        # a progress report has no event; a read queued behind it in the inbox proves it
        # was handled (and the heartbeat deadline re-armed) before time moves again
        kit.record(eid)
    kit.timers.advance(4.9)
    assert kit.record(eid)["status"] == "running"
    kit.timers.advance(0.1)
    final = kit.status_is(eid, "failed")
    assert "sent no heartbeat for 5s" in final["error"]["message"]


def test_a_start_notice_may_be_held_only_within_the_step_limits() -> None:
    for k in _kit(start_hold=0.25):
        k.start(
            wf(
                step("free"),
                step("run", timeout=0.2),
                step("beat", heartbeat_timeout=0.1, timeout=60),
                step("queued", queue_timeout=30, timeout=60),
            )
        )
        holds = {d.task["step"]: d.task["start_hold"] for d in (k.next_held() for _ in range(4))}
        # half of the run or heartbeat limit at most; none where the notice ends a queue limit
        assert holds == {"free": 0.25, "run": 0.1, "beat": 0.05, "queued": 0.0}


def test_a_held_start_notice_dates_the_deadlines_from_the_real_start(kit: Kit) -> None:
    eid = kit.start(wf(step("s", timeout=5, heartbeat_timeout=2, retry_policy={"max_attempts": 1})))
    d = kit.next_held()
    assert d.task["start_hold"] == 0.0  # the node's default in this kit: no holding
    kit.timers.advance(0.5)
    d.reply_to.tell(TaskStarted(d.task["task_id"], "w-1", 0.5))  # the step began at 1000.0
    kit.step_is(eid, "s", "running")
    started = next(e for e in kit.events(eid) if e["type"] == "step.started")
    assert started["data"]["deadline"] == 1005.0
    kit.timers.advance(1.4)
    assert kit.record(eid)["status"] == "running"
    kit.timers.advance(0.1)  # two seconds of silence since the real start
    final = kit.status_is(eid, "failed")
    assert "sent no heartbeat for 2s" in final["error"]["message"]


def test_a_redispatched_step_gets_a_fresh_queue_deadline(kit: Kit) -> None:
    eid = kit.start(wf(step("s", queue_timeout=3, timeout=10)))
    d = kit.next_held()
    kit.started(eid, d)
    d.reply_to.tell(TaskRedispatched(d.task["task_id"], "worker w-1 died"))
    kit.step_is(eid, "s", "dispatched")
    kit.timers.advance(2.9)
    d.reply_to.tell(TaskStarted(d.task["task_id"], "w-2"))
    kit.step_is(eid, "s", "running")
    kit.timers.advance(8)  # past the lost attempt's run deadline, within the new one
    assert kit.record(eid)["results"]["s"]["status"] == "running"
    d.reply_to.tell(TaskFinished(d.task["task_id"], True, "ok", None, 1.0))
    assert kit.status_is(eid, "completed")["results"]["s"]["attempts"] == 1


# -- the workflow timeout ---------------------------------------------------------------------


def test_the_workflow_timeout_fails_the_execution_and_cancels_running_steps(kit: Kit) -> None:
    eid = kit.start(wf(step("a"), step("b", "a"), timeout="10s"))
    d = kit.next_held()
    kit.started(eid, d)
    kit.timers.advance(10)
    final = kit.status_is(eid, "failed")
    assert final["error"]["type"] == "WorkflowTimeout" and "10s" in final["error"]["message"]
    assert final["results"]["a"]["status"] == "cancelled"
    assert final["results"]["b"]["status"] == "cancelled"
    assert kit.cancels.get(timeout=WAIT) == d.task["task_id"]
    started = next(e for e in kit.events(eid) if e["type"] == "workflow.started")
    assert started["data"]["deadline"] == 1010.0


def test_pause_freezes_the_workflow_timeout(kit: Kit) -> None:
    eid = kit.start(wf(wait_step("w", 100), timeout="10s"))
    kit.step_is(eid, "w", "running")
    kit.timers.advance(4)
    kit.engine.pause_workflow(eid).result(WAIT)
    kit.timers.advance(1000)
    assert kit.record(eid)["status"] == "paused"
    kit.engine.resume_workflow(eid).result(WAIT)
    kit.timers.advance(5.9)
    assert kit.record(eid)["status"] == "running"
    kit.timers.advance(0.1)
    assert kit.status_is(eid, "failed")["error"]["type"] == "WorkflowTimeout"


def test_the_workflow_timeout_survives_a_restart() -> None:
    store = MemoryStore()
    for k in _kit(store, start=1000.0):
        eid = k.start(wf(wait_step("w", 100), timeout="10s"))
        k.step_is(eid, "w", "running")
    for k in _kit(store, start=1008.0):
        k.engine.recover()
        k.timers.advance(1.9)
        assert k.record(eid)["status"] == "running"
        k.timers.advance(0.1)  # it rested until its earliest deadline: the workflow's
        k.woken(eid)
        assert k.status_is(eid, "failed")["error"]["type"] == "WorkflowTimeout"


def test_a_retried_failed_execution_gets_its_timeout_afresh() -> None:
    store = MemoryStore()
    for k in _kit(store, start=1000.0):
        eid = k.start(wf(wait_step("w", 100), timeout="10s"))
        k.step_is(eid, "w", "running")
        k.timers.advance(10)
        assert k.status_is(eid, "failed")["error"]["type"] == "WorkflowTimeout"
        k.engine.retry_step(eid, "w").result(WAIT)  # at 1010: until 1020 this time
        k.step_is(eid, "w", "running")
        k.timers.advance(5)
    retried = next(e for e in k.events(eid) if e["type"] == "step.retried")
    assert retried["data"]["deadline"] == 1020.0
    for k in _kit(store, start=1015.0):  # it survives a restart too
        k.engine.recover()
        k.timers.advance(4.9)
        assert k.record(eid)["status"] == "running"
        k.timers.advance(0.1)
        k.woken(eid)
        final = k.status_is(eid, "failed")
        assert final["error"]["type"] == "WorkflowTimeout"
        assert final["results"]["w"]["status"] == "cancelled"


@settings(max_examples=15, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 12), st.booleans()), max_size=6))
def test_a_wait_step_runs_for_exactly_its_seconds_of_unpaused_time(
    script: list[tuple[int, bool]],
) -> None:
    for k in _kit():
        eid = k.start(wf(wait_step("w", 40)))
        k.step_is(eid, "w", "running")
        ran, paused = 0, False
        for dt, toggle in script:
            if not paused and ran + dt >= 40:
                break
            k.timers.advance(dt)
            ran += 0 if paused else dt
            if toggle:
                call = k.engine.resume_workflow if paused else k.engine.pause_workflow
                call(eid).result(WAIT)
                paused = not paused
        if paused:
            k.engine.resume_workflow(eid).result(WAIT)
        k.timers.advance(40 - ran - 0.5)
        assert k.record(eid)["status"] == "running"
        k.timers.advance(0.5)
        k.status_is(eid, "completed")
