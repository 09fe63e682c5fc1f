"""The engine and its execution supervisors over the in-memory store and a scripted pool.

The worker pool is a twin here (a pykka actor that answers Dispatch messages by script or
holds them for the test to answer); the store is the MemoryStore. The same supervisors run
against real workers and LMDB in tests/integration.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pykka
import pytest

from tamma_actors._dispatch import Dispatcher, PoolActor
from tamma_actors._engine import Engine, EngineParts
from tamma_actors._errors import (
    FrameTooLarge,
    IllegalTransition,
    SupervisionError,
    UnknownExecution,
    UnknownStep,
    WorkflowValidationError,
)
from tamma_actors._execution import ExecutionDeps, ExecutionSupervisor
from tamma_actors._state import replay
from tamma_actors._store import MemoryStore, Write
from tamma_actors._timers import TimerService
from tamma_actors._workerpool import (
    Cancel,
    Dispatch,
    TaskFinished,
    TaskRedispatched,
    TaskStarted,
)
from tamma_actors._writer import StoreWriter

# every scheduler test runs with both of its books (conftest.either_book)
pytestmark = pytest.mark.usefixtures("either_book")

WAIT = 10.0
Script = Callable[[dict[str, Any]], "TaskFinished | None"]


def ok(task: dict[str, Any], output: Any) -> TaskFinished:
    return TaskFinished(task["task_id"], True, output, None, 1.0)


def err(
    task: dict[str, Any],
    etype: str = "Boom",
    retryable: bool | None = None,
    retry_after: float | None = None,
) -> TaskFinished:
    error = {
        "type": etype,
        "message": f"{task['step']} broke",
        "retryable": retryable,
        "retry_after": retry_after,
    }
    return TaskFinished(task["task_id"], False, None, error, 1.0)


def echo_input(task: dict[str, Any]) -> TaskFinished:
    return ok(task, {"step": task["step"], "input": task["input"]})


class FakePool(pykka.ThreadingActor):
    """Answers each Dispatch with ``script(task)``; None holds it for the test."""

    def __init__(
        self,
        script: Script,
        held: queue.Queue[Dispatch],
        cancels: queue.Queue[str],
        report_started: bool = True,
    ) -> None:
        super().__init__()
        self.script, self.held, self.cancels = script, held, cancels
        self.report_started = report_started

    def on_receive(self, message: Any) -> None:
        if isinstance(message, Dispatch):
            if self.report_started:
                message.reply_to.tell(TaskStarted(message.task["task_id"], "w-1"))
            answer = self.script(message.task)
            if answer is None:
                self.held.put(message)
            else:
                message.reply_to.tell(answer)
        elif isinstance(message, Cancel):
            self.cancels.put(message.task_id)


@dataclass
class Kit:
    engine: Engine
    store: MemoryStore
    held: queue.Queue[Dispatch]
    cancels: queue.Queue[str]
    script: list[Script] = field(default_factory=list)

    def start(self, wf: dict[str, Any], inputs: dict[str, Any] | None = None) -> dict[str, Any]:
        return self.engine.start_workflow(wf, inputs or {}).result(WAIT)

    def finish(self, eid: str) -> dict[str, Any]:
        return self.engine.wait(eid, WAIT).result(WAIT + 1)

    def next_held(self) -> Dispatch:
        return self.held.get(timeout=WAIT)

    def events(self, eid: str) -> list[str]:
        return [e["type"] for e in self.engine.get_events(eid).result(WAIT)]


def _kit(
    script: Script,
    store: MemoryStore | None = None,
    dispatcher: Dispatcher | None = None,
    report_started: bool = True,
) -> Iterator[Kit]:
    store = store or MemoryStore()
    held: queue.Queue[Dispatch] = queue.Queue()
    cancels: queue.Queue[str] = queue.Queue()
    pool = FakePool.start(script, held, cancels, report_started)
    writer = StoreWriter(store)
    writer.start()
    dispatcher = dispatcher or Dispatcher(threads=2)
    timers = TimerService()
    deps = ExecutionDeps(writer=writer, pool=pool, timers=timers, snapshot_every=5)
    engine = Engine(
        EngineParts(
            store=store,
            dispatcher=dispatcher,
            deps=deps,
            implementations=lambda: {"noop", "fail", "echo", "hang"},
        )
    )
    try:
        yield Kit(engine, store, held, cancels)
    finally:
        engine.close()
        pool.stop()
        writer.close()
        timers.close()
        dispatcher.close()


@pytest.fixture
def kit() -> Iterator[Kit]:
    yield from _kit(echo_input)


def wf(*steps: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"name": "wf", "steps": list(steps), **extra}


def step(name: str, *deps: str, impl: str = "noop", **extra: Any) -> dict[str, Any]:
    return {"name": name, "implementation": impl, "dependencies": list(deps), **extra}


DIAMOND = wf(step("a"), step("b", "a"), step("c", "a"), step("d", "b", "c"))


def test_a_diamond_completes_with_the_right_data_flow(kit: Kit) -> None:
    started = kit.start(DIAMOND, {"topic": "demo"})
    assert started["status"] in ("running", "completed") and started["workflow_id"] == "wf"
    final = kit.finish(started["id"])
    assert final["status"] == "completed" and final["end_time"] >= final["start_time"]
    res = final["results"]
    assert res["a"]["data"] == {"step": "a", "input": {"topic": "demo"}}
    assert res["b"]["data"]["input"] == res["a"]["data"]
    assert res["d"]["data"]["input"] == {"b": res["b"]["data"], "c": res["c"]["data"]}
    assert all(r["attempts"] == 1 and r["status"] == "succeeded" for r in res.values())
    types = kit.events(started["id"])
    assert (
        types[:2] == ["workflow.created", "workflow.started"] and types[-1] == "workflow.completed"
    )
    assert types.index("step.completed") < types.index("step.dispatched", 4)
    seqs = [e["seq"] for e in kit.engine.get_events(started["id"]).result(WAIT)]
    assert seqs == list(range(1, len(seqs) + 1))
    assert final["metrics"]["steps_succeeded"] == 4


class _WritesSeen(MemoryStore):
    """The event types of each write, in commit order."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[list[str]] = []

    def commit(self, writes: Sequence[Write]) -> None:
        super().commit(writes)
        self.writes.extend([e["type"] for e in w.events] for w in writes)


class _Gate(PoolActor):
    def on_receive(self, message: Any) -> None:
        message.wait(WAIT)


def test_the_reports_handled_in_one_turn_are_committed_in_one_write() -> None:
    store = _WritesSeen()
    dispatcher = Dispatcher(threads=1)  # the gate below holds the only thread
    for kit in _kit(lambda task: None, store, dispatcher, report_started=False):
        started = kit.start(wf(step("a"), step("b", "a")))
        task = kit.next_held()
        gate = threading.Event()
        _Gate.start(dispatcher).tell(gate)
        task.reply_to.tell(TaskStarted(task.task["task_id"], "w-1"))
        task.reply_to.tell(ok(task.task, {"a": 1}))
        gate.set()
        kit.next_held()  # b was dispatched after the commit
        assert ["step.started", "step.completed", "step.ready", "step.dispatched"] in (
            [t for t in w if t.startswith("step.")] for w in store.writes
        )
        assert kit.events(started["id"]).count("step.started") == 1


class _SnapshotsSeen(MemoryStore):
    """Per write: its execution, the stored bytes of its events and of its snapshot (0:
    none), and the seq of that snapshot."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[tuple[str, int, int, int | None]] = []

    def commit(self, writes: Sequence[Write]) -> None:
        super().commit(writes)
        for w in writes:
            assert w.encoded is not None
            snap = w.encoded.snapshot
            seq = None if w.snapshot is None else int(w.snapshot["seq"])
            self.writes.append(
                (w.execution_id, sum(map(len, w.encoded.events)), len(snap or b""), seq)
            )

    def of(self, eid: str) -> list[tuple[int, int, int | None]]:
        return [(ev, snap, seq) for e, ev, snap, seq in self.writes if e == eid]


def test_a_big_state_is_snapshot_for_no_more_bytes_than_its_events(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A snapshot copies all the data the steps returned so far: a chain passing big data
    # along wrote each step's data again at every snapshot and at the end. Once a snapshot
    # is big, the next one waits until the events since add up to its size; a big state
    # whose events add little (a big context, a step retried again and again) is still
    # snapshot every 4 times as many events. Reads give the whole state either way.
    from tamma_actors import _execution_commit

    monkeypatch.setattr(_execution_commit, "BIG_SNAPSHOT", 16_000)
    blob = "x" * 4_000
    store = _SnapshotsSeen()
    chain = wf(*[step(f"s{i}", *([f"s{i - 1}"] if i else [])) for i in range(30)])
    policy = {"max_attempts": 10, "base_delay": 1, "max_delay": 1, "jitter": 0}
    retried = wf(step("flaky", retry_policy=policy), step("after", "flaky"))

    def script(task: dict[str, Any]) -> TaskFinished:
        if task["step"] == "flaky":
            return err(task, "Flaky") if task["attempt"] < 10 else ok(task, task["attempt"])
        return ok(task, {"n": task["step"], **({} if task["inputs"] else {"blob": blob})})

    for kit in _kit(script, store):
        carried = kit.start(chain)["id"]  # each step returns 4 KB
        context = kit.start(retried, {"big": "y" * 40_000})["id"]  # events of a few bytes
        finals = {eid: kit.finish(eid) for eid in (carried, context)}
    assert finals[carried]["results"]["s29"]["data"] == {"n": "s29", "blob": blob}
    assert finals[context]["results"]["flaky"]["attempts"] == 10
    assert finals[context]["results"]["after"]["data"] == {"n": "after"}

    writes = store.of(carried)
    events, snapshots = sum(w[0] for w in writes), [w[1] for w in writes if w[1]]
    assert len(snapshots) >= 2  # the state outgrew 16 KB after four steps
    assert sum(snapshots[1:]) <= events  # (every 30 events, and at the end: ~3.5 times)
    for eid in (carried, context):  # the state a read rebuilds is the whole log's
        records = store.read_execution(eid)
        assert records is not None and records.snapshot is not None
        assert (
            replay(eid, records.events, records.snapshot).to_dict()
            == replay(eid, store.read_events(eid)).to_dict()
        )
    # ``retried`` has 2 steps: a snapshot every 5 events (the kit's), waiting up to 20
    # (a write of several events may go past either)
    seqs = [0, *(w[2] for w in store.of(context) if w[2] is not None)]
    assert len(seqs) > 2 and all(b - a < 4 * 5 + 5 for a, b in itertools.pairwise(seqs))
    assert any(b - a > 5 for a, b in itertools.pairwise(seqs[1:]))


def test_a_read_in_the_same_turn_waits_for_the_commit_of_that_turn() -> None:
    store = _WritesSeen()
    dispatcher = Dispatcher(threads=1)
    for kit in _kit(lambda task: None, store, dispatcher):
        started = kit.start(wf(step("a"), step("b", "a")))
        task = kit.next_held()
        gate = threading.Event()
        _Gate.start(dispatcher).tell(gate)
        task.reply_to.tell(ok(task.task, {"a": 1}))
        read = kit.engine.get_workflow(started["id"])  # behind the result, same turn
        stored_at_reply: list[list[str]] = []
        read.add_done_callback(lambda _, seen=stored_at_reply: seen.extend(store.writes))
        gate.set()
        record = read.result(WAIT)
        assert record["results"]["a"]["status"] == "succeeded"
        assert any("step.completed" in w for w in stored_at_reply)


def test_a_failing_step_is_retried_with_backoff_until_it_succeeds() -> None:
    def script(task: dict[str, Any]) -> TaskFinished:
        return ok(task, task["attempt"]) if task["attempt"] >= 3 else err(task, "Flaky")

    for k in _kit(script):
        policy = {"max_attempts": 3, "base_delay": 1, "max_delay": 5, "jitter": 0}
        final = k.finish(k.start(wf(step("x", retry_policy=policy)))["id"])
        assert final["status"] == "completed"
        assert final["results"]["x"] | {"started_at": None, "ended_at": None} == {
            "status": "succeeded",
            "data": 3,
            "error": None,
            "attempts": 3,
            "started_at": None,
            "ended_at": None,
        }
        assert final["metrics"]["retries"] == 2
        evs = k.engine.get_events(final["id"]).result(WAIT)
        delays = [e["data"]["delay_s"] for e in evs if e["type"] == "step.retry_scheduled"]
        assert delays == [0.001, 0.002]


def test_retryable_errors_and_attempt_budget_decide_failure() -> None:
    for k in _kit(lambda t: err(t, "ValueError")):
        policy = {"max_attempts": 5, "base_delay": 1, "retryable_errors": ["Timeout*"]}
        final = k.finish(k.start(wf(step("x", retry_policy=policy)))["id"])
        assert final["status"] == "failed" and final["results"]["x"]["attempts"] == 1
        assert final["error"]["step"] == "x" and "x broke" in final["error"]["message"]
    for k in _kit(lambda t: err(t, "TimeoutError")):
        policy = {"max_attempts": 2, "base_delay": 1, "retryable_errors": ["Timeout*"]}
        final = k.finish(k.start(wf(step("x", retry_policy=policy)))["id"])
        assert final["status"] == "failed" and final["results"]["x"]["attempts"] == 2


def test_an_explicit_retry_after_is_honoured() -> None:
    for k in _kit(lambda t: ok(t, 1) if t["attempt"] > 1 else err(t, retry_after=0.02)):
        final = k.finish(k.start(wf(step("x", retry_policy={"base_delay": 5000})))["id"])
        evs = k.engine.get_events(final["id"]).result(WAIT)
        assert [e["data"]["delay_s"] for e in evs if e["type"] == "step.retry_scheduled"] == [0.02]
        assert final["status"] == "completed"


def test_fail_fast_cancels_the_rest_and_names_the_failure() -> None:
    for k in _kit(lambda t: err(t, retryable=False) if t["step"] == "bad" else None):
        eid = k.start(wf(step("slow"), step("bad"), step("after", "slow")))["id"]
        held = k.next_held()
        final = k.finish(eid)
        assert final["status"] == "failed"
        assert final["results"]["slow"]["status"] == "cancelled"
        assert final["results"]["after"]["status"] == "cancelled"
        assert k.cancels.get(timeout=WAIT) == held.task["task_id"]
        with contextlib.suppress(pykka.ActorDeadError):  # the finished execution may be gone
            held.reply_to.tell(ok(held.task, "late"))  # a late result changes nothing
        assert k.engine.get_workflow(eid).result(WAIT)["results"]["slow"]["data"] is None


def test_continue_lets_independent_branches_finish() -> None:
    for k in _kit(lambda t: err(t, retryable=False) if t["step"] == "bad" else echo_input(t)):
        spec = wf(
            step("bad"),
            step("child", "bad"),
            step("free"),
            step("free2", "free"),
            error_handling="continue",
        )
        final = k.finish(k.start(spec)["id"])
        assert final["status"] == "failed"
        res = final["results"]
        assert (res["free2"]["status"], res["child"]["status"]) == ("succeeded", "cancelled")


def test_a_failure_cancels_its_dependents_whatever_their_order_in_the_file() -> None:
    for k in _kit(lambda t: err(t, retryable=False) if t["step"] == "a" else echo_input(t)):
        # Listed against dependency order: c waits for b, which waits for a (which fails).
        # No other step ends afterwards: the failure's own turn must settle both.
        spec = wf(step("c", "b"), step("b", "a"), step("a"), error_handling="continue")
        final = k.finish(k.start(spec)["id"])
        res = final["results"]
        assert final["status"] == "failed"
        assert [res[n]["status"] for n in ("a", "b", "c")] == ["failed", "cancelled", "cancelled"]


def test_pause_holds_dispatch_and_resume_continues(kit: Kit) -> None:
    for k in _kit(lambda t: None):
        eid = k.start(wf(step("a"), step("b", "a")))["id"]
        first = k.next_held()
        paused = k.engine.pause_workflow(eid).result(WAIT)
        assert paused["status"] == "paused"
        assert k.engine.pause_workflow(eid).result(WAIT)["status"] == "paused"  # idempotent
        first.reply_to.tell(ok(first.task, 1))
        # the result is recorded, the next step waits
        rec = k.engine.wait(eid, 0.2).result(WAIT)
        assert (
            rec["results"]["a"]["status"] == "succeeded"
            and rec["results"]["b"]["status"] == "pending"
        )
        assert k.held.empty()
        assert k.engine.resume_workflow(eid).result(WAIT)["status"] == "running"
        second = k.next_held()
        assert second.task["step"] == "b" and second.task["input"] == 1
        second.reply_to.tell(ok(second.task, 2))
        assert k.finish(eid)["status"] == "completed"
        with pytest.raises(IllegalTransition, match="completed"):
            k.engine.pause_workflow(eid).result(WAIT)


def test_resume_of_a_running_execution_is_a_no_op_and_pending_retry_waits_freeze() -> None:
    calls: list[int] = []

    def script(task: dict[str, Any]) -> TaskFinished:
        calls.append(task["attempt"])
        return err(task) if task["attempt"] == 1 else ok(task, "done")

    for k in _kit(script):
        eid = k.start(wf(step("x", retry_policy={"base_delay": 300, "jitter": 0})))["id"]
        assert k.engine.resume_workflow(eid).result(WAIT)["status"] == "running"
        rec = k.engine.pause_workflow(eid).result(WAIT)
        assert rec["results"]["x"]["status"] in ("retry_wait", "dispatched", "running")
        rec = k.engine.wait(eid, 0.6).result(WAIT)  # longer than the retry delay
        assert rec["status"] == "paused" and calls == [1]
        k.engine.resume_workflow(eid).result(WAIT)
        assert k.finish(eid)["status"] == "completed" and calls == [1, 2]


def test_abort_cancels_running_steps(kit: Kit) -> None:
    for k in _kit(lambda t: None):
        eid = k.start(wf(step("h", impl="hang"), step("next", "h")))["id"]
        held = k.next_held()
        rec = k.engine.abort_workflow(eid, "operator said so").result(WAIT)
        assert rec["status"] == "aborted" and rec["reason"] == "operator said so"
        assert rec["results"]["h"]["status"] == "cancelled"
        assert k.cancels.get(timeout=WAIT) == held.task["task_id"]
        assert k.engine.abort_workflow(eid).result(WAIT)["status"] == "aborted"  # idempotent
        with pytest.raises(IllegalTransition):
            k.engine.resume_workflow(eid).result(WAIT)
        assert k.events(eid)[-1] == "workflow.aborted"


def test_retry_step_revives_a_failed_execution() -> None:
    def script(t: dict[str, Any]) -> TaskFinished:
        first_a = t["step"] == "a" and t["attempt"] == 1
        return err(t, retryable=False) if first_a else echo_input(t)

    for k in _kit(script):
        eid = k.start(wf(step("a"), step("b", "a")))["id"]
        assert k.finish(eid)["status"] == "failed"
        with pytest.raises(IllegalTransition, match="dependency 'a'"):
            k.engine.retry_step(eid, "b").result(WAIT)
        # the supervisor made to revive it refused and retires: nothing of it stays live
        deadline = time.monotonic() + WAIT
        while eid in k.engine._live:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        revived = k.engine.retry_step(eid, "a").result(WAIT)
        assert revived["status"] == "running" and revived["error"] is None
        final = k.finish(eid)
        assert final["status"] == "completed"
        assert final["results"]["a"]["attempts"] == 2 and final["results"]["b"]["attempts"] == 1
        assert final["metrics"]["retries"] == 1  # as the in-memory twin counts it
        with pytest.raises(UnknownStep):
            k.engine.retry_step(eid, "zzz").result(WAIT)
        with pytest.raises(IllegalTransition, match="completed"):
            k.engine.retry_step(eid, "a").result(WAIT)


def test_a_redispatched_task_is_recorded_and_a_stale_result_is_fenced(kit: Kit) -> None:
    for k in _kit(lambda t: None):
        eid = k.start(wf(step("a")))["id"]
        held = k.next_held()
        held.reply_to.tell(TaskRedispatched(held.task["task_id"], "worker w-1 died"))
        held.reply_to.tell(TaskFinished("nonsense/a/7", True, "stale", None, 1.0))
        held.reply_to.tell(ok(held.task, "fresh"))
        final = k.finish(eid)
        assert final["results"]["a"]["data"] == "fresh"
        assert "step.redispatched" in k.events(eid)


def test_unknown_executions_and_invalid_workflows_are_refused(kit: Kit) -> None:
    for call in (
        kit.engine.get_workflow,
        kit.engine.get_workflow_status,
        kit.engine.pause_workflow,
        kit.engine.get_events,
        kit.engine.wait,
    ):
        with pytest.raises(UnknownExecution):
            call("missing").result(WAIT)
    with pytest.raises(WorkflowValidationError) as info:
        kit.engine.start_workflow(wf(step("a", "ghost", impl="teleport")), {}).result(WAIT)
    text = str(info.value)
    assert "ghost" in text and "teleport" in text


def test_list_status_and_health(kit: Kit) -> None:
    a = kit.finish(kit.start(DIAMOND)["id"])
    b = kit.finish(kit.start(wf(step("z")) | {"name": "other"})["id"])
    listed = kit.engine.list_workflows().result(WAIT)
    assert [r["id"] for r in listed] == [a["id"], b["id"]]
    only = kit.engine.list_workflows(workflow_id="other").result(WAIT)
    assert [r["id"] for r in only] == [b["id"]]
    assert kit.engine.list_workflows(status=["failed"]).result(WAIT) == []
    assert len(kit.engine.list_workflows(limit=1, offset=1).result(WAIT)) == 1
    status = kit.engine.get_workflow_status(a["id"]).result(WAIT)
    assert status["progress"]["succeeded"] == 4 and status["steps"]["d"] == "succeeded"
    assert kit.engine.health().result(WAIT)["status"] == "ok"


def test_an_ended_execution_is_freed_at_once_not_left_to_the_collector() -> None:
    # Its last batch (kept to chain later replies) held effects that close over the
    # supervisor: every ended execution's ~60 objects waited for a full collection, and
    # a node's memory grew by ~30 MiB per 30,000 steps between them.
    def script(task: dict[str, Any]) -> TaskFinished:
        return err(task) if task["step"] == "f" else ok(task, 1)

    for k in _kit(script):
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            failing = wf(step("f"), step("g", "f"), retry_policy={"max_attempts": 1})
            ended = {k.finish(k.start(spec)["id"])["id"] for spec in [DIAMOND] * 10 + [failing]}
            k.finish(k.start(wf(step("t")))["id"])  # one more: the writer lets go of the last
            left = [o for o in gc.get_objects() if isinstance(o, ExecutionSupervisor)]
            assert [o.state.id for o in left if o.state.id in ended] == []
        finally:
            if was_enabled:
                gc.enable()


def test_a_list_is_built_off_the_caller_s_thread_and_stops_at_its_page(
    kit: Kit, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = [kit.finish(kit.start(wf(step("z")) | {"name": f"w{i}"})["id"])["id"] for i in range(5)]
    seen: list[tuple[str, str]] = []
    store_ids, summaries = kit.engine._store.iter_execution_ids, kit.engine._store.iter_summaries

    def ids_read_where() -> Iterator[str]:
        for eid in store_ids():
            seen.append((threading.current_thread().name, eid))
            yield eid

    monkeypatch.setattr(kit.engine._store, "iter_execution_ids", ids_read_where)
    monkeypatch.setattr(kit.engine._store, "iter_summaries", lambda: pytest.fail("decoded"))
    assert [r["id"] for r in kit.engine.list_workflows(limit=2, offset=1).result(WAIT)] == ids[1:3]
    assert [eid for _, eid in seen] == ids[:3]  # no further than the page
    assert {name.split("_")[0] for name, _ in seen} == {"tamma-list"}
    with pytest.raises(FrameTooLarge, match="more than 3 executions match"):
        kit.engine.list_workflows(most=3).result(WAIT)
    monkeypatch.setattr(kit.engine._store, "iter_summaries", summaries)
    assert [r["id"] for r in kit.engine.list_workflows(workflow_id="w4").result(WAIT)] == ids[4:]


def test_a_list_asked_of_a_closed_engine_fails() -> None:
    for k in _kit(lambda t: None, MemoryStore()):
        k.engine.close()
        with pytest.raises(SupervisionError, match="shutting down"):
            k.engine.list_workflows().result(WAIT)


def test_a_list_still_queued_when_the_engine_closes_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    reading, release = threading.Event(), threading.Event()

    def slow_ids() -> Iterator[str]:
        reading.set()
        release.wait(WAIT)
        yield from ()

    for k in _kit(lambda t: None, MemoryStore()):
        monkeypatch.setattr(k.engine._store, "iter_execution_ids", slow_ids)
        first = k.engine.list_workflows()
        assert reading.wait(WAIT)  # the list thread is busy with the first
        queued = k.engine.list_workflows()
        k.engine.close()
        release.set()
        assert first.result(WAIT) == []  # the one being built is finished
        with pytest.raises(SupervisionError, match="shutting down"):
            queued.result(WAIT)


def test_recovery_redispatches_in_flight_steps_with_the_same_attempt() -> None:
    store = MemoryStore()
    for k in _kit(lambda t: None, store):
        eid = k.start(wf(step("a"), step("b", "a")))["id"]
        first = k.next_held()
    # the first node is gone; a second one on the same store re-activates the execution
    for k in _kit(echo_input, store):
        assert k.engine.recover() == 1
        final = k.finish(eid)
        assert final["status"] == "completed"
        assert final["results"]["a"]["attempts"] == 1  # same attempt, same idempotency key
        assert first.task["idempotency_key"] == f"{eid}/a/1"
        assert "step.redispatched" in k.events(eid) or k.events(eid).count("step.dispatched") == 2
