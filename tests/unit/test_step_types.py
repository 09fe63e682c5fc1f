"""Decision, parallel and subflow steps on the engine, a scripted pool and ManualTimers.

The pool twin answers each Dispatch with ``script(task)`` or holds it for the test; time
moves only when a test advances the ManualTimers, so retry waits and their freezing under
pause are checked without sleeping.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pykka
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from tamma_actors._dispatch import Dispatcher
from tamma_actors._engine import Engine, EngineParts
from tamma_actors._errors import StoreWriterLost, UnknownExecution, WorkflowValidationError
from tamma_actors._execution import ExecutionDeps
from tamma_actors._status import StepStatus
from tamma_actors._step_types import join
from tamma_actors._store import MemoryStore
from tamma_actors._subflows import EngineChildren, WorkflowNames
from tamma_actors._timers import ManualTimers
from tamma_actors._workerpool import Cancel, Dispatch, TaskFinished, TaskRedispatched, TaskStarted
from tamma_actors._writer import StoreWriter

# every scheduler test runs with both of its books (conftest.either_book)
pytestmark = pytest.mark.usefixtures("either_book")

WAIT = 10.0
Script = Callable[[dict[str, Any]], "TaskFinished | None"]


def ok(task: dict[str, Any], output: Any) -> TaskFinished:
    return TaskFinished(task["task_id"], True, output, None, 1.0)


def err(task: dict[str, Any], retryable: bool | None = None) -> TaskFinished:
    error = {"type": "Boom", "message": f"item {task['item_index']} broke", "retryable": retryable}
    return TaskFinished(task["task_id"], False, None, error, 1.0)


def doubled(task: dict[str, Any]) -> TaskFinished:
    value = task["input"]
    return ok(task, value * 2 if isinstance(value, int) else {"echo": value})


class FakePool(pykka.ThreadingActor):
    def __init__(
        self, script: Script, held: queue.Queue[Dispatch], cancels: queue.Queue[str], log: list
    ) -> None:
        super().__init__()
        self.script, self.held, self.cancels, self.log = script, held, cancels, log

    def on_receive(self, message: Any) -> None:
        if isinstance(message, Dispatch):
            self.log.append(message.task)
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
    timers: ManualTimers
    held: queue.Queue[Dispatch]
    cancels: queue.Queue[str]
    dispatched: list[dict[str, Any]]

    def start(self, spec: dict[str, Any], inputs: dict[str, Any] | None = None, **kw: Any) -> str:
        return str(self.engine.start_workflow(spec, inputs or {}, **kw).result(WAIT)["id"])

    def finish(self, eid: str) -> dict[str, Any]:
        return self.engine.wait(eid).result(WAIT)

    def get(self, eid: str) -> dict[str, Any]:
        return self.engine.get_workflow(eid).result(WAIT)

    def events(self, eid: str) -> list[dict[str, Any]]:
        return self.engine.get_events(eid).result(WAIT)

    def types(self, eid: str) -> list[str]:
        return [e["type"] for e in self.events(eid)]

    def next_held(self) -> Dispatch:
        return self.held.get(timeout=WAIT)


@contextlib.contextmanager
def _kit(
    script: Script, store: MemoryStore | None = None, max_frame: int = 8 << 20
) -> Iterator[Kit]:
    store = store or MemoryStore()
    held: queue.Queue[Dispatch] = queue.Queue()
    cancels: queue.Queue[str] = queue.Queue()
    log: list[dict[str, Any]] = []
    pool = FakePool.start(script, held, cancels, log)
    writer = StoreWriter(store)
    writer.start()
    dispatcher = Dispatcher(threads=2)
    timers = ManualTimers(start=1000.0)
    deps = ExecutionDeps(
        writer=writer,  # type: ignore[arg-type]
        pool=pool,
        timers=timers,
        clock=timers.now,
        rand=lambda: 0.5,
        max_frame_bytes=max_frame,
    )
    engine = Engine(
        EngineParts(
            store=store,
            dispatcher=dispatcher,
            deps=deps,
            implementations=lambda: {"noop", "fail", "echo"},
        )
    )
    try:
        yield Kit(engine, store, timers, held, cancels, log)
    finally:
        engine.close()
        pool.stop()
        writer.close()
        dispatcher.close()


@pytest.fixture
def kit() -> Iterator[Kit]:
    with _kit(doubled) as k:
        yield k


def wf(*steps: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"name": "wf", "steps": list(steps), **extra}


def step(name: str, *deps: str, impl: str = "noop", **extra: Any) -> dict[str, Any]:
    return {"name": name, "implementation": impl, "dependencies": list(deps), **extra}


def decision(name: str, *deps: str, branches: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "name": name,
        "type": "decision",
        "dependencies": list(deps),
        "config": {"branches": branches},
    }


def fan(name: str, *deps: str, items: Any, **config: Any) -> dict[str, Any]:
    top = {k: config.pop(k) for k in ("retry_policy", "timeout") if k in config}
    return {
        "name": name,
        "type": "parallel",
        "implementation": "noop",
        "dependencies": list(deps),
        "config": {"items": items, **config},
        **top,
    }


FAST = {"max_attempts": 3, "base_delay": 100, "max_delay": 100, "jitter": 0}


# -- join semantics -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("deps", "verdict"),
    [
        ([], "ready"),
        (["succeeded", "succeeded"], "ready"),
        (["succeeded", "skipped"], "ready"),
        (["skipped", "skipped"], "skipped"),
        (["skipped", "failed"], "cancelled"),
        (["succeeded", "cancelled"], "cancelled"),
        (["succeeded", "running"], None),
        (["skipped", "pending"], None),
    ],
)
def test_join_semantics(deps: list[str], verdict: str | None) -> None:
    assert join(deps) == verdict


@given(st.lists(st.sampled_from([s.value for s in StepStatus]), max_size=6))
def test_join_follows_its_rules_for_any_dependency_statuses(deps: list[str]) -> None:
    if any(s in ("failed", "cancelled") for s in deps):
        expected: str | None = "cancelled"
    elif not all(s in ("succeeded", "skipped") for s in deps):
        expected = None
    elif deps and all(s == "skipped" for s in deps):
        expected = "skipped"
    else:
        expected = "ready"
    assert join(deps) == expected
    assert join(iter(deps)) == expected  # one pass over any iterable


# -- decision -------------------------------------------------------------------------------

BRANCHY = wf(
    step("src", impl="echo"),
    decision(
        "pick",
        "src",
        branches=[
            {"when": "inputs.mode == 'go' and steps.src.output.n > 1", "then": ["yes", "yes2"]},
            {"otherwise": ["no"]},
        ],
    ),
    step("yes", "pick"),
    step("yes2", "pick"),
    step("yes_tail", "yes"),
    step("no", "pick"),
    step("no_tail", "no"),
    step("join", "yes_tail", "no_tail"),
    step("always", "pick"),
)


def _echo_src(task: dict[str, Any]) -> TaskFinished:
    if task["step"] == "src":
        return ok(task, {"n": 2})
    return ok(task, {"step": task["step"], "input": task["input"]})


@pytest.mark.parametrize(("mode", "ran", "skipped"), [("go", "yes", "no"), ("stop", "no", "yes")])
def test_a_decision_runs_one_branch_and_skips_the_other_downstream(
    mode: str, ran: str, skipped: str
) -> None:
    with _kit(_echo_src) as k:
        final = k.finish(k.start(BRANCHY, {"mode": mode}))
        assert final["status"] == "completed", final["error"]
        res = final["results"]
        status = {name: r["status"] for name, r in res.items()}
        assert status[ran] == status[f"{ran}_tail"] == "succeeded"
        assert status[skipped] == status[f"{skipped}_tail"] == "skipped"
        # a join over one taken and one skipped branch runs; a step outside the branches too
        assert status["join"] == status["always"] == "succeeded"
        chosen = res["pick"]["data"]
        assert chosen["branch"] == (0 if mode == "go" else 1)
        assert chosen["steps"] == (["yes", "yes2"] if mode == "go" else ["no"])
        assert chosen["input"] == {"n": 2}
        assert res["pick"]["attempts"] == 1
        assert all(t["step"] != "pick" for t in k.dispatched)  # never sent to a worker
        assert "step.skipped" in k.types(final["id"])


def test_no_matching_branch_skips_every_branch_and_all_skipped_deps_skip_the_join(kit: Kit) -> None:
    spec = wf(
        decision(
            "pick",
            branches=[{"when": "inputs.n > 5", "then": ["a"]}, {"when": "false", "then": ["b"]}],
        ),
        step("a", "pick"),
        step("b", "pick"),
        step("after", "a", "b"),
    )
    final = kit.finish(kit.start(spec, {"n": 1}))
    assert final["status"] == "completed"
    assert [final["results"][n]["status"] for n in ("a", "b", "after")] == ["skipped"] * 3
    assert final["results"]["pick"]["data"]["branch"] is None


def test_decisions_chain_and_file_order_need_not_be_dependency_order(kit: Kit) -> None:
    spec = wf(
        step("tail", "second_yes"),
        step("second_yes", "second"),
        decision("second", "first_yes", branches=[{"when": "true", "then": ["second_yes"]}]),
        step("first_yes", "first"),
        step("first_no", "first"),
        step("no_tail", "first_no"),
        decision(
            "first", branches=[{"when": "true", "then": ["first_yes"]}, {"otherwise": ["first_no"]}]
        ),
    )
    final = kit.finish(kit.start(spec))
    assert final["status"] == "completed"
    assert final["results"]["tail"]["status"] == "succeeded"
    assert final["results"]["no_tail"]["status"] == "skipped"


def test_a_skip_reaches_dependents_listed_before_it_in_the_file(kit: Kit) -> None:
    spec = wf(
        step("tail2", "tail1"),
        step("tail1", "left_out"),
        step("left_out", "pick"),
        step("src"),
        decision("pick", "src", branches=[{"when": "false", "then": ["left_out"]}]),
    )
    final = kit.finish(kit.start(spec))
    assert final["status"] == "completed"
    statuses = [final["results"][n]["status"] for n in ("left_out", "tail1", "tail2")]
    assert statuses == ["skipped"] * 3


def test_a_decision_whose_condition_fails_at_run_time_fails_with_an_expression_error(
    kit: Kit,
) -> None:
    spec = wf(
        decision("pick", branches=[{"when": "inputs.n > 'x'", "then": ["a"]}]),
        step("a", "pick"),
    )
    final = kit.finish(kit.start(spec, {"n": 1}))
    assert final["status"] == "failed"
    error = final["results"]["pick"]["error"]
    assert error["type"] == "ExpressionError" and "cannot order" in error["message"]
    assert error["retryable"] is False
    assert final["results"]["a"]["status"] == "cancelled"
    # The message names the branch, and says what the value is without repeating it (an
    # input of megabytes would otherwise be copied into the step's and the execution's error).
    spec2 = wf(
        decision("pick", branches=[{"when": "false", "then": []}, {"when": "inputs.n", "then": []}])
    )
    final = kit.finish(kit.start(spec2, {"n": ["x" * 100_000]}))
    assert final["results"]["pick"]["error"]["message"] == (
        "branches[1].when: a decision's 'when' must be true or false, not a list"
    )


def test_bad_step_type_configs_are_validation_problems_with_locations(kit: Kit) -> None:
    spec = wf(
        step("src"),
        decision("pick", "src", branches=[{"when": "steps.src.output ==", "then": ["x"]}]),
        step("x"),
        fan("f", items="steps.ghost.output"),
        {"name": "sub", "type": "subflow", "config": {"inputs": {"a": "item"}}},
    )
    with pytest.raises(WorkflowValidationError) as info:
        kit.start(spec)
    where = {p.loc: p.message for p in info.value.problems}
    assert "invalid expression" in where["steps[1].config.branches[0].when"]
    assert "must depend directly" in where["steps[1].config.branches[0].then[0]"]
    assert "not upstream" in where["steps[3].config.items"]
    assert where["steps[4].config.workflow"] == "field required"


# -- parallel -------------------------------------------------------------------------------


def test_a_parallel_step_fans_out_in_one_batch_and_joins_in_item_order() -> None:
    with _kit(lambda t: None) as k:
        eid = k.start(
            wf(step("src"), fan("f", "src", items="inputs.xs", label="L"), step("after", "f")),
            {"xs": [3, 1, 2]},
        )
        src = k.next_held()
        src.reply_to.tell(ok(src.task, "s"))
        held = [k.next_held() for _ in range(3)]
        assert [h.task["item_index"] for h in held] == [0, 1, 2]
        assert [h.task["input"] for h in held] == [3, 1, 2]
        assert held[1].task["task_id"] == f"{eid}/f[1]/1" == held[1].task["idempotency_key"]
        assert held[0].task["upstream"] == {"src": "s"}
        # the step's other config keys go to every item; its items and cap do not
        assert all(h.task["config"] == {"label": "L"} for h in held)
        types = k.types(eid)
        assert types.count("step.items_dispatched") == 1  # one event, one batch
        for h in reversed(held):  # answers arrive out of order
            h.reply_to.tell(ok(h.task, h.task["input"] * 10))
        after = k.next_held()
        assert after.task["input"] == [30, 10, 20]
        after.reply_to.tell(ok(after.task, "done"))
        final = k.finish(eid)
        assert final["status"] == "completed"
        assert final["results"]["f"]["data"] == [30, 10, 20]
        assert final["results"]["f"]["attempts"] == 1
        assert final["results"]["f"]["detail"] == {"items": 3, "succeeded": 3}
        assert "detail" not in final["results"]["after"]


def test_an_empty_list_succeeds_at_once_with_an_empty_output(kit: Kit) -> None:
    final = kit.finish(kit.start(wf(fan("f", items=[]), step("after", "f"))))
    assert final["status"] == "completed"
    assert final["results"]["f"]["data"] == [] and final["results"]["after"]["data"] == {"echo": []}
    assert all(t["step"] != "f" for t in kit.dispatched)


def test_items_that_are_not_a_list_fail_the_step(kit: Kit) -> None:
    final = kit.finish(kit.start(wf(fan("f", items="inputs.xs")), {"xs": None}))
    assert final["status"] == "failed"
    message = final["results"]["f"]["error"]["message"]
    assert message == "parallel items must be a list; inputs.xs is null"
    final = kit.finish(kit.start(wf(fan("f", items="inputs.xs[3]")), {"xs": [1]}))
    assert final["results"]["f"]["error"]["message"].startswith("items: ")


def test_max_concurrency_caps_the_items_in_flight() -> None:
    with _kit(lambda t: None) as k:
        eid = k.start(wf(fan("f", items=list(range(5)), max_concurrency=2)))
        first = [k.next_held(), k.next_held()]
        assert k.held.empty()
        assert first[0].task["config"] == {}  # a literal list of items stays with the step
        first[0].reply_to.tell(ok(first[0].task, 0))
        third = k.next_held()
        assert third.task["item_index"] == 2 and k.held.empty()
        rest = [first[1], third]
        for h in rest:
            h.reply_to.tell(ok(h.task, h.task["input"]))
        for _ in range(2):
            h = k.next_held()
            h.reply_to.tell(ok(h.task, h.task["input"]))
        assert k.finish(eid)["results"]["f"]["data"] == [0, 1, 2, 3, 4]


def test_items_retry_on_their_own_before_the_join() -> None:
    def script(task: dict[str, Any]) -> TaskFinished:
        if task["item_index"] == 1 and task["attempt"] < 3:
            return err(task)
        return ok(task, task["input"])

    with _kit(script) as k:
        eid = k.start(wf(fan("f", items=["a", "b", "c"], retry_policy=FAST)))
        for attempt in (1, 2):
            _until(lambda a=attempt: _item(k, eid, 1) | {"error": None} == _waiting(a))
            k.timers.advance(0.1)
        final = k.finish(eid)
        assert final["status"] == "completed" and final["results"]["f"]["data"] == ["a", "b", "c"]
        ids = [t["task_id"] for t in k.dispatched]
        assert ids.count(f"{eid}/f[0]/1") == 1 and f"{eid}/f[1]/3" in ids
        assert [
            e["data"]["delay_s"] for e in k.events(eid) if e["type"] == "step.item_retry_scheduled"
        ] == [0.1, 0.1]


def test_fail_fast_cancels_the_other_items_and_fails_the_step() -> None:
    with _kit(lambda t: err(t, retryable=False) if t["item_index"] == 0 else None) as k:
        eid = k.start(wf(fan("f", items=[0, 1, 2]), step("after", "f")))
        final = k.finish(eid)
        assert final["status"] == "failed"
        f = final["results"]["f"]
        assert f["status"] == "failed" and f["error"]["type"] == "ItemsFailed"
        assert "3 of 3 items did not succeed" in f["error"]["message"]
        assert "item 0: Boom: item 0 broke" in f["error"]["message"]
        cancelled = {k.cancels.get(timeout=WAIT) for _ in range(2)}
        assert cancelled == {f"{eid}/f[1]/1", f"{eid}/f[2]/1"}
        late = k.next_held()
        with contextlib.suppress(pykka.ActorDeadError):  # the execution may be gone
            late.reply_to.tell(ok(late.task, "late"))  # discarded: the step is over
        assert final["results"]["after"]["status"] == "cancelled"
        assert k.get(eid)["results"]["f"]["status"] == "failed"


def test_under_continue_every_item_finishes_before_the_step_fails() -> None:
    def script(task: dict[str, Any]) -> TaskFinished:
        if task["item_index"] is None:
            return ok(task, "free")
        return err(task, retryable=False) if task["input"] % 2 else ok(task, task["input"])

    with _kit(script) as k:
        eid = k.start(wf(fan("f", items=[0, 1, 2, 3]), step("free"), error_handling="continue"))
        final = k.finish(eid)
        assert final["status"] == "failed" and final["results"]["free"]["status"] == "succeeded"
        assert (
            "2 of 4 items did not succeed (items 1, 3)" in final["results"]["f"]["error"]["message"]
        )
        assert final["results"]["f"]["detail"] == {"items": 4, "succeeded": 2, "failed": 2}
        evs = k.events(eid)
        assert sorted(e["data"]["index"] for e in evs if e["type"] == "step.item_completed") == [
            0,
            2,
        ]
        assert sorted(e["data"]["index"] for e in evs if e["type"] == "step.item_failed") == [1, 3]
        assert "step.items_cancelled" not in [e["type"] for e in evs]


def test_pause_holds_new_items_and_freezes_item_retry_waits() -> None:
    def script(task: dict[str, Any]) -> TaskFinished | None:
        if task["item_index"] == 0 and task["attempt"] == 1:
            return err(task)
        return None if task["item_index"] in (1, 2) else ok(task, task["input"])

    with _kit(script) as k:
        spec = wf(fan("f", items=[0, 1, 2, 3], max_concurrency=2, retry_policy=FAST))
        eid = k.start(spec)
        item1 = k.next_held()
        item2 = k.next_held()  # went out when item 0 began its retry wait
        assert (item1.task["item_index"], item2.task["item_index"]) == (1, 2)
        assert _item(k, eid, 0)["status"] == "retry_wait"
        assert k.engine.pause_workflow(eid).result(WAIT)["status"] == "paused"
        k.timers.advance(0.05)
        item1.reply_to.tell(ok(item1.task, "one"))  # a result during pause is recorded
        _until(lambda: _item(k, eid, 1)["status"] == "succeeded")
        k.timers.advance(5.0)  # frozen: neither the retry nor item 3 goes out
        assert _item(k, eid, 0)["status"] == "retry_wait"
        assert _item(k, eid, 3)["status"] == "pending"
        k.engine.resume_workflow(eid).result(WAIT)
        _until(lambda: _item(k, eid, 3)["status"] == "succeeded")  # pumped on resume
        k.timers.advance(0.099)
        assert _item(k, eid, 0)["status"] == "retry_wait"  # its whole 0.1 s wait was left
        k.timers.advance(0.002)
        _until(lambda: _item(k, eid, 0)["status"] == "succeeded")
        item2.reply_to.tell(ok(item2.task, "two"))
        assert k.finish(eid)["results"]["f"]["data"] == [0, "one", "two", 3]


def test_an_item_failing_during_pause_begins_its_retry_wait_on_resume() -> None:
    policy = {"max_attempts": 2, "base_delay": 5000, "max_delay": 5000, "jitter": 0}
    with _kit(lambda t: None) as k:
        eid = k.start(wf(fan("f", items=[0], retry_policy=policy)))
        item = k.next_held()
        assert k.engine.pause_workflow(eid).result(WAIT)["status"] == "paused"
        item.reply_to.tell(err(item.task))
        _until(lambda: _item(k, eid, 0)["status"] == "retry_wait")
        k.timers.advance(100.0)  # longer than its wait, all of it paused
        assert k.held.empty()
        k.engine.resume_workflow(eid).result(WAIT)
        k.timers.advance(4.9)  # the whole 5 s wait is left after resume
        assert k.held.empty() and _item(k, eid, 0)["status"] == "retry_wait"
        k.timers.advance(0.2)
        again = k.next_held()
        assert again.task["attempt"] == 2
        again.reply_to.tell(ok(again.task, "fine"))
        assert k.finish(eid)["results"]["f"]["data"] == ["fine"]


def test_abort_cancels_items_in_flight() -> None:
    with _kit(lambda t: None) as k:
        eid = k.start(wf(fan("f", items=[0, 1])))
        held = {k.next_held().task["task_id"], k.next_held().task["task_id"]}
        rec = k.engine.abort_workflow(eid, "stop").result(WAIT)
        assert rec["status"] == "aborted" and rec["results"]["f"]["status"] == "cancelled"
        assert {k.cancels.get(timeout=WAIT) for _ in range(2)} == held


def test_a_lost_worker_redispatches_an_item_without_using_an_attempt() -> None:
    with _kit(lambda t: None) as k:
        eid = k.start(wf(fan("f", items=[7])))
        h = k.next_held()
        h.reply_to.tell(TaskRedispatched(h.task["task_id"], "worker w-1 died"))
        h.reply_to.tell(ok(h.task, "fine"))
        final = k.finish(eid)
        assert final["results"]["f"]["data"] == ["fine"]
        assert "step.item_redispatched" in k.types(eid)


def test_an_item_that_keeps_losing_its_worker_fails_retryably() -> None:
    with _kit(lambda t: None) as k:
        eid = k.start(wf(fan("f", items=[7], retry_policy={"max_attempts": 1})))
        h = k.next_held()
        for _ in range(3):
            h.reply_to.tell(TaskRedispatched(h.task["task_id"], "gone"))
        final = k.finish(eid)
        assert "WorkerLost" in final["results"]["f"]["error"]["message"]
        assert k.cancels.get(timeout=WAIT) == h.task["task_id"]


def test_recovery_resumes_a_half_done_fan_out_without_rerunning_committed_items() -> None:
    store = MemoryStore()
    with _kit(lambda t: None, store) as k:
        eid = k.start(wf(fan("f", items=[0, 1, 2, 3], max_concurrency=2)))
        first, second = k.next_held(), k.next_held()
        first.reply_to.tell(ok(first.task, "zero"))
        third = k.next_held()
        assert third.task["item_index"] == 2
    # the node is gone with items 1 and 2 in flight; a new one on the same store resumes
    with _kit(doubled, store) as k:
        assert k.engine.recover() == 1
        final = k.finish(eid)
        assert final["status"] == "completed"
        assert final["results"]["f"]["data"] == ["zero", 2, 4, 6]
        again = sorted(t["task_id"] for t in k.dispatched)
        # the same idempotency keys for what was in flight; item 0 is not run again
        assert again == [f"{eid}/f[1]/1", f"{eid}/f[2]/1", f"{eid}/f[3]/1"]
        assert second.task["task_id"] == f"{eid}/f[1]/1"


def test_a_manual_retry_reruns_only_the_items_that_did_not_succeed() -> None:
    def script(task: dict[str, Any]) -> TaskFinished:
        first_try = task["item_index"] == 1 and task["attempt"] == 1
        return err(task, retryable=False) if first_try else ok(task, task["input"])

    with _kit(script) as k:
        eid = k.start(wf(fan("f", items=[0, 1, 2])))
        assert k.finish(eid)["status"] == "failed"
        before = len(k.dispatched)
        k.engine.retry_step(eid, "f").result(WAIT)
        final = k.finish(eid)
        assert final["status"] == "completed" and final["results"]["f"]["data"] == [0, 1, 2]
        # item 1 failed, item 2 was cancelled by fail_fast; item 0 is not run again
        again = k.dispatched[before:]
        assert [(t["item_index"], t["attempt"]) for t in again] == [(1, 2), (2, 2)]


# -- subflow --------------------------------------------------------------------------------


def _write(path: Path, spec: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(spec))
    return path


CHILD = {
    "name": "child",
    "steps": [
        {"name": "c1", "implementation": "noop"},
        {"name": "c2", "implementation": "echo", "dependencies": ["c1"]},
    ],
}


def _child_echo(task: dict[str, Any]) -> TaskFinished:
    return ok(task, {"step": task["step"], "input": task["input"]})


def test_a_subflow_runs_a_child_and_its_results_become_the_output(tmp_path: Path) -> None:
    _write(tmp_path / "child.yaml", CHILD)
    parent = _write(
        tmp_path / "parent.yaml",
        wf(
            step("src"),
            {
                "name": "sub",
                "type": "subflow",
                "dependencies": ["src"],
                "config": {"workflow": "child.yaml", "inputs": {"topic": "inputs.topic", "n": 3}},
            },
            step("after", "sub"),
        ),
    )
    with _kit(_child_echo) as k:
        spec = yaml.safe_load(parent.read_text())
        eid = k.start(spec, {"topic": "t"}, source=str(parent))
        final = k.finish(eid)
        assert final["status"] == "completed", final["error"]
        out = final["results"]["sub"]["data"]
        assert out["c1"] == {"step": "c1", "input": {"topic": "t", "n": 3}}
        assert final["results"]["after"]["data"]["input"] == out
        started = [e for e in k.events(eid) if e["type"] == "step.child_started"]
        child_id = started[0]["data"]["child"]
        assert final["results"]["sub"]["detail"]["child"] == child_id
        child = k.get(child_id)
        assert child["status"] == "completed" and child["context"] == {"topic": "t", "n": 3}


def test_max_parallel_counts_a_running_subflow_and_never_holds_back_a_decision_or_a_wait(
    tmp_path: Path,
) -> None:
    _write(tmp_path / "one.yaml", {"name": "one", "steps": [step("c")]})
    sub = {"type": "subflow", "config": {"workflow": str(tmp_path / "one.yaml")}}
    spec = wf(
        {"name": "sub1", **sub},
        {"name": "sub2", **sub},
        step("t"),
        {"name": "w", "implementation": "wait", "config": {"seconds": 5}},
        decision("d", branches=[{"otherwise": ["e"]}]),
        step("e", "d"),
        max_parallel=1,
    )
    with _kit(lambda t: None) as k:  # every task is held
        eid = k.start(spec)
        first = k.next_held()  # the first child's step: its subflow holds the one slot
        _until(lambda: k.get(eid)["results"]["d"]["status"] == "succeeded")
        status = {name: r["status"] for name, r in k.get(eid)["results"].items()}
        assert status == {
            "sub1": "running",
            "sub2": "ready",
            "t": "ready",
            "w": "running",  # no slot, so it went although the cap was reached
            "d": "succeeded",  # the same
            "e": "ready",
        }
        assert k.held.empty()
        first.reply_to.tell(ok(first.task, "done"))  # the first child ends ...
        second = k.next_held()  # ... and only then does the next step take the slot
        assert (second.task["execution_id"], second.task["step"]) != (eid, "t")
        assert k.held.empty() and k.get(eid)["results"]["t"]["status"] == "ready"


def test_a_failed_child_fails_the_step_and_is_retried_per_policy(tmp_path: Path) -> None:
    _write(
        tmp_path / "child.yaml",
        {"name": "child", "steps": [{"name": "c", "implementation": "fail"}]},
    )

    def script(task: dict[str, Any]) -> TaskFinished:
        error = {"type": "Boom", "message": "child step broke", "retryable": False}
        return TaskFinished(task["task_id"], False, None, error, 1.0)

    with _kit(script) as k:
        spec = wf(
            {
                "name": "sub",
                "type": "subflow",
                "retry_policy": FAST | {"max_attempts": 2},
                "config": {"workflow": str(tmp_path / "child.yaml")},
            }
        )
        eid = k.start(spec)
        _until(lambda: k.get(eid)["results"]["sub"]["status"] == "retry_wait")
        k.timers.advance(0.1)
        final = k.finish(eid)
        assert final["status"] == "failed"
        error = final["results"]["sub"]["error"]
        assert error["type"] == "SubflowFailed" and "child step broke" in error["message"]
        children = [e["data"]["child"] for e in k.events(eid) if e["type"] == "step.child_started"]
        assert len(set(children)) == 2  # each attempt its own child
        assert all(k.get(c)["status"] == "failed" for c in children)


def test_pause_and_abort_of_the_parent_reach_the_child(tmp_path: Path) -> None:
    _write(
        tmp_path / "child.yaml",
        {
            "name": "child",
            "steps": [
                {"name": "c", "implementation": "noop"},
                {"name": "d", "implementation": "noop", "dependencies": ["c"]},
            ],
        },
    )
    with _kit(lambda t: None) as k:
        eid = k.start(
            wf(
                {
                    "name": "sub",
                    "type": "subflow",
                    "config": {"workflow": str(tmp_path / "child.yaml")},
                }
            )
        )
        held = k.next_held()  # the child's first step
        child = held.task["execution_id"]
        k.engine.pause_workflow(eid).result(WAIT)
        _until(lambda: k.get(child)["status"] == "paused")
        held.reply_to.tell(ok(held.task, 1))
        _until(lambda: k.get(child)["results"]["c"]["status"] == "succeeded")
        assert k.held.empty()  # the paused child dispatches nothing new
        k.engine.resume_workflow(eid).result(WAIT)
        second = k.next_held()
        assert second.task["execution_id"] == child
        rec = k.engine.abort_workflow(eid, "enough").result(WAIT)
        assert rec["status"] == "aborted"
        _until(lambda: k.get(child)["status"] == "aborted")
        assert k.cancels.get(timeout=WAIT) == second.task["task_id"]


def test_a_subflow_by_name_and_a_missing_workflow(kit: Kit) -> None:
    kit.finish(kit.start(CHILD))  # the node now knows "child"
    final = kit.finish(
        kit.start(wf({"name": "sub", "type": "subflow", "config": {"workflow": "child"}}))
    )
    assert final["status"] == "completed" and set(final["results"]["sub"]["data"]) == {"c1", "c2"}
    final = kit.finish(
        kit.start(wf({"name": "sub", "type": "subflow", "config": {"workflow": "nobody"}}))
    )
    assert final["status"] == "failed"
    assert "neither a workflow file" in final["results"]["sub"]["error"]["message"]
    final = kit.finish(
        kit.start(
            wf({"name": "sub", "type": "subflow", "config": {"workflow": "/nonexistent/x.yaml"}})
        )
    )
    assert "cannot read file" in final["results"]["sub"]["error"]["message"]


class _CountingStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.passes = 0

    def iter_summaries(self, *, after: str | None = None) -> Iterator[dict[str, Any]]:
        self.passes += 1
        return super().iter_summaries(after=after)


def test_a_subflow_by_name_takes_the_latest_start_and_cleanup_forgets_it() -> None:
    store = _CountingStore()
    by_name = wf({"name": "sub", "type": "subflow", "config": {"workflow": "child"}})
    with _kit(doubled, store) as k:
        k.finish(k.start(CHILD))
        second = {**CHILD, "steps": [*CHILD["steps"], {"name": "c3", "implementation": "noop"}]}
        k.finish(k.start(second))
        final = k.finish(k.start(by_name))
        assert set(final["results"]["sub"]["data"]) == {"c1", "c2", "c3"}
        k.finish(k.start({**CHILD, "steps": CHILD["steps"][:1]}))  # known without a pass
        final = k.finish(k.start(by_name))
        assert set(final["results"]["sub"]["data"]) == {"c1"}
        assert store.passes == 1
        assert len(k.engine.admin_cleanup(1.0).result(WAIT)["deleted"]) == 7
        final = k.finish(k.start(by_name))  # every "child" was deleted
        assert "neither a workflow file" in final["results"]["sub"]["error"]["message"]
        assert store.passes == 2


class _SlowNames(WorkflowNames):
    """Finding a name waits until the test lets it go (a big store's first pass)."""

    def __init__(self, store: MemoryStore) -> None:
        super().__init__(store)
        self.asked, self.go = threading.Event(), threading.Event()

    def digest(self, name: str) -> str | None:
        self.asked.set()
        assert self.go.wait(WAIT)
        return super().digest(name)


def test_a_slow_subflow_start_holds_no_other_commit_and_a_pause_waits_for_it() -> None:
    with _kit(doubled) as k:
        k.finish(k.start(CHILD))
        slow = _SlowNames(k.store)
        k.engine._children.names = slow
        parent = k.start(wf({"name": "sub", "type": "subflow", "config": {"workflow": "child"}}))
        assert slow.asked.wait(WAIT)
        # meanwhile other executions commit and end: the writer's callbacks go on
        assert k.finish(k.start(wf(step("a"), step("b", "a"))))["status"] == "completed"
        k.engine.pause_workflow(parent).result(WAIT)  # asked before the child exists
        slow.go.set()
        child = k.get(parent)["results"]["sub"]["detail"]["child"]  # committed, not started

        def child_status() -> str | None:
            try:
                return str(k.get(child)["status"])
            except UnknownExecution:  # the subflows thread has not started it yet
                return None

        _until(lambda: child_status() == "paused")  # the pause reached it
        k.engine.resume_workflow(parent).result(WAIT)
        final = k.finish(parent)
        assert final["status"] == "completed" and set(final["results"]["sub"]["data"]) == {
            "c1",
            "c2",
        }


class _BrokenNames(WorkflowNames):
    def digest(self, name: str) -> str | None:
        raise RuntimeError("the store broke")


def test_a_subflow_whose_workflow_cannot_be_read_fails_instead_of_waiting(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with _kit(doubled) as k:
        k.engine._children.names = _BrokenNames(k.store)
        eid = k.start(wf({"name": "sub", "type": "subflow", "config": {"workflow": "child"}}))
        final = k.finish(eid)
    assert final["status"] == "failed"
    message = final["results"]["sub"]["error"]["message"]
    assert "subflow workflow 'child' could not be read: RuntimeError('the store broke')" in message
    assert "its workflow 'child' could not be read" in caplog.text  # with its traceback


class _BrokenEngine:
    def pause_workflow(self, execution_id: str, reason: str | None = None) -> Any:
        raise RuntimeError(f"cannot pause {execution_id}")


def test_a_failing_steer_is_logged_and_none_runs_after_close(
    caplog: pytest.LogCaptureFixture,
) -> None:
    children = EngineChildren(_BrokenEngine(), MemoryStore(), ManualTimers(start=0.0))  # type: ignore[arg-type]
    with caplog.at_level(logging.INFO, logger="tamma_actors._subflows"):
        children.control("c1", "pause")
        _until(lambda: "child c1: start or steering failed" in caplog.text)
        assert "cannot pause c1" in caplog.text  # with its traceback
        children.close()
        children.control("c2", "pause")
        assert "child c2: not started or steered now (shutting down)" in caplog.text
    assert "cannot pause c2" not in caplog.text


def test_recovery_reattaches_to_the_same_child(tmp_path: Path) -> None:
    _write(
        tmp_path / "child.yaml",
        {"name": "child", "steps": [{"name": "c", "implementation": "noop"}]},
    )
    store = MemoryStore()
    with _kit(lambda t: None, store) as k:
        eid = k.start(
            wf(
                {
                    "name": "sub",
                    "type": "subflow",
                    "config": {"workflow": str(tmp_path / "child.yaml")},
                }
            )
        )
        child = k.next_held().task["execution_id"]
    with _kit(lambda t: ok(t, "again"), store) as k:
        assert k.engine.recover() == 2
        final = k.finish(eid)
        assert final["status"] == "completed" and final["results"]["sub"]["data"] == {"c": "again"}
        assert [e["data"]["child"] for e in k.events(eid) if e["type"] == "step.child_started"] == [
            child
        ]


def _parent_and_child(k: Kit, tmp_path: Path) -> tuple[str, str]:
    """A parent whose subflow's child holds its first step on a worker: their ids."""
    _write(tmp_path / "child.yaml", CHILD)
    sub = {"name": "sub", "type": "subflow", "config": {"workflow": str(tmp_path / "child.yaml")}}
    eid = k.start(wf(sub))
    return eid, str(k.next_held().task["execution_id"])


def test_recovery_passes_a_paused_parents_pause_on_to_a_child_it_had_not_reached(
    tmp_path: Path,
) -> None:
    # The node stopped after the parent's pause was committed, before it was passed on.
    store = MemoryStore()
    with _kit(lambda t: None, store) as k:
        eid, child = _parent_and_child(k, tmp_path)
        k.engine.pause_workflow(eid).result(WAIT)
        _until(lambda: k.get(child)["status"] == "paused")
        assert k.get(child)["reason"] == f"its parent {eid} is paused"
        k.engine.resume_workflow(child).result(WAIT)  # as if the pause had not reached it
    with _kit(lambda t: None, store) as k:  # the child's step stays on its worker
        assert k.engine.recover() == 2
        _until(lambda: k.get(child)["status"] == "paused")
        assert k.get(child)["reason"] == f"its parent {eid} is paused"
        assert k.get(eid)["status"] == "paused"


@pytest.mark.parametrize("paused_by", ["parent", "someone else"])
def test_recovery_resumes_a_child_only_from_its_running_parents_own_pause(
    tmp_path: Path, paused_by: str
) -> None:
    # The node stopped after the parent's resume was committed, before it was passed on:
    # the child, paused by the parent, would hold the parent's step for ever.
    store = MemoryStore()
    with _kit(lambda t: None, store) as k:
        eid, child = _parent_and_child(k, tmp_path)
        reason = f"its parent {eid} is paused" if paused_by == "parent" else "on hold"
        k.engine.pause_workflow(child, reason).result(WAIT)
    with _kit(doubled, store) as k:
        children, steered = k.engine._children, []
        real = children._control

        def control(child_id: str, action: str, why: str | None) -> None:
            real(child_id, action, why)
            steered.append(action)

        children._control = control
        assert k.engine.recover() == 2
        if paused_by == "parent":
            assert k.finish(eid)["status"] == "completed"
        else:
            _until(lambda: steered == ["resume_if_paused_by"])  # asked, and not resumed
            assert k.get(eid)["status"] == "running"
            assert k.get(child)["status"] == "paused" and k.get(child)["reason"] == "on hold"


def test_a_subflow_whose_inputs_no_longer_evaluate_at_recovery_fails_and_aborts_its_child(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An execution made under rules since changed (its inputs read a step that is not
    # upstream through a computed index) re-evaluates them when it is brought back: the
    # step was left running, watching nothing, its child running on.
    from tamma_actors._errors import ExpressionError
    from tamma_actors._subflow_steps import SubflowSteps

    _write(
        tmp_path / "child.yaml",
        {"name": "child", "steps": [{"name": "c", "implementation": "noop"}]},
    )
    sub = {"name": "sub", "type": "subflow", "config": {"workflow": str(tmp_path / "child.yaml")}}
    store = MemoryStore()
    with _kit(lambda t: None, store) as k:
        eid = k.start(wf(sub))
        child = k.next_held().task["execution_id"]
    monkeypatch.setattr(
        SubflowSteps, "_child_inputs", lambda self, name, plan: ExpressionError("len() of null")
    )
    with _kit(lambda t: None, store) as k:
        assert k.engine.recover() == 2
        final = k.finish(eid)
        assert final["status"] == "failed"
        error = final["results"]["sub"]["error"]
        assert error["type"] == "ExpressionError" and error["message"] == "len() of null"
        assert k.finish(child)["status"] == "aborted"


# -- helpers --------------------------------------------------------------------------------


def _waiting(attempt: int) -> dict[str, Any]:
    return {
        "status": "retry_wait",
        "attempts": attempt,
        "output": None,
        "error": None,
        "retry_at": 1000.0 + 0.1 * attempt,
    }


def _item(k: Kit, eid: str, index: int) -> dict[str, Any]:
    snapshot = _state(k, eid)
    return snapshot.steps["f"].detail["state"][index]  # type: ignore[no-any-return]


def _state(k: Kit, eid: str) -> Any:
    from tamma_actors._state import replay

    k.get(eid)  # after the pending writes commit
    return replay(eid, k.store.read_events(eid))


def _until(cond: Callable[[], bool], timeout: float = WAIT) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)


def test_step_type_config_mistakes_each_have_a_clear_problem(kit: Kit) -> None:
    spec = wf(
        step("src"),
        decision(
            "pick",
            "src",
            branches=[
                {"when": "true", "then": ["a"], "otherwise": ["b"]},
                {"then": ["a"]},
                {"when": "item == 1 and steps.src.output", "then": ["a", "b"]},
                {"when": "true", "then": ["b"]},
            ],
        ),
        step("a", "pick"),
        step("b", "pick"),
        {"name": "f", "type": "parallel", "implementation": "noop"},
        {"name": "s", "type": "subflow", "config": {"workflow": "x.yaml", "bogus": 1}},
        fan("g", items=[1], max_concurrency=True),  # YAML `yes`: a mistake, not 1
        {**decision("d", branches=[{"otherwise": []}]), "implementation": "noop"},
        {"name": "t", "type": "subflow", "implementation": "echo", "config": {"workflow": "x"}},
    )
    with pytest.raises(WorkflowValidationError) as info:
        kit.start(spec)
    text = "\n".join(str(p) for p in info.value.problems)
    assert "steps[1].config.branches[0]: an otherwise branch has no 'when' or 'then'" in text
    assert "steps[1].config.branches[1]: a branch needs 'when'" in text
    assert "steps[4].config.items: field required" in text
    assert "steps[5].config.bogus: unknown field" in text
    assert "steps[6].config.max_concurrency: expected a number, not a boolean" in text
    # Accepted and ignored before: the coordinator runs these steps, no implementation.
    assert "steps[7].implementation: a decision step has no implementation" in text
    assert "steps[8].implementation: a subflow step has no implementation" in text


def test_a_parallel_steps_own_keys_stay_out_of_its_items_config_in_either_spelling() -> None:
    with _kit(lambda t: None) as k:
        k.start(wf(fan("f", items=[1], maxConcurrency=1, retries=2)))
        assert k.next_held().task["config"] == {"retries": 2}


def test_item_and_repeated_branch_steps_are_refused(kit: Kit) -> None:
    spec = wf(
        decision(
            "pick",
            branches=[{"when": "item == 1", "then": ["a"]}, {"when": "true", "then": ["a"]}],
        ),
        step("a", "pick"),
    )
    with pytest.raises(WorkflowValidationError) as info:
        kit.start(spec)
    text = "\n".join(str(p) for p in info.value.problems)
    assert "'item' is only available inside a parallel step's tasks" in text
    assert "step 'a' is already in branch 0" in text


def test_subflow_inputs_that_fail_to_evaluate_fail_the_step(kit: Kit, tmp_path: Path) -> None:
    _write(tmp_path / "child.yaml", CHILD)
    sub = {
        "name": "sub",
        "type": "subflow",
        "config": {"workflow": str(tmp_path / "child.yaml"), "inputs": {"x": "inputs.n.deep"}},
    }
    final = kit.finish(kit.start(wf(sub), {"n": 1}))
    assert final["status"] == "failed"
    assert final["results"]["sub"]["error"]["type"] == "ExpressionError"
    assert final["results"]["sub"]["error"]["message"].startswith("inputs.x: inputs.n is a number")


def test_what_a_step_puts_together_from_many_parts_must_fit_in_one_frame(
    tmp_path: Path,
) -> None:
    # Each item's or child step's data fits the cap; together they may not, and stored they
    # would be an event no reply could carry: the execution's history unreadable, the
    # event never published. So such a step fails, naming the size, and nothing is retried.
    def big(task: dict[str, Any]) -> TaskFinished:
        return ok(task, "y" * 3000)

    many = {
        "name": "child",
        "steps": [{"name": f"c{i}", "implementation": "noop"} for i in range(6)],
    }
    child = _write(tmp_path / "child.yaml", many)
    s = "x" * 3000

    def sub(**inputs: str) -> dict[str, Any]:
        config = {"workflow": str(child), "inputs": inputs}
        return {"name": "sub", "type": "subflow", "retry_policy": FAST, "config": config}

    three, two = "[inputs.s, inputs.s, inputs.s]", "[inputs.s, inputs.s]"
    with _kit(big, max_frame=16384) as k:
        cases = {
            "outputs": (wf(fan("f", items=list(range(8)), retry_policy=FAST)), "f"),
            "items": (wf(fan("f", items=f"[{three}, {two}]")), "f"),
            "child inputs": (wf(sub(a=three, b=two)), "sub"),
            "child output": (wf(sub()), "sub"),
        }
        errors = {}
        for case, (spec, name) in cases.items():
            final = k.finish(k.start(spec, {"s": s}))
            assert final["status"] == "failed", case
            assert final["results"][name]["attempts"] == 1, case
            errors[case] = final["results"][name]["error"]
        fits = k.finish(k.start(wf(fan("f", items=list(range(3))))))
        assert fits["results"]["f"]["data"] == ["y" * 3000] * 3
    assert all(e["type"] == "FrameTooLarge" and not e["retryable"] for e in errors.values())
    assert errors["outputs"]["message"] == (
        "the output of its 8 items together: more than 12,288 bytes (the 16,384-byte frame "
        "cap, max_frame_bytes, less 4,096 for the event around it)"
    )
    assert errors["items"]["message"].startswith("the list of its 2 items: more than 12,288")
    assert errors["child inputs"]["message"].startswith("the child's inputs: more than 12,288")
    assert errors["child inputs"]["message"].endswith("; the largest is inputs.a")
    assert errors["child output"]["message"].startswith("the output of child execution ")


def test_a_child_start_refused_while_the_store_writer_restarts_is_made_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The store writer died under the child's start (StoreWriterLost: its commit was not
    # confirmed, or a writer was not back yet). That is no failure of the subflow step: the
    # start is asked again under the same child id (it may have landed: the same start
    # under an id makes one execution), and no attempt is spent.
    child = _write(tmp_path / "child.yaml", CHILD)
    sub = {
        "name": "sub",
        "type": "subflow",
        "retry_policy": FAST,
        "config": {"workflow": str(child)},
    }
    refused = threading.Event()
    with _kit(doubled) as k:
        commit = k.store.commit

        def writer_dies_once(writes: Any) -> None:
            creates = any(
                e["type"] == "workflow.created" and "parent" in e["data"]  # the child's
                for w in writes
                for e in w.events
            )
            if creates and not refused.is_set():
                if len(writes) == 1:  # (a batch is tried again write by write)
                    refused.set()
                raise StoreWriterLost("the store writer process died")
            commit(writes)

        # in place before the start: the child's may come before this thread runs again
        monkeypatch.setattr(k.store, "commit", writer_dies_once)
        eid = k.start(wf(step("before"), {**sub, "dependencies": ["before"]}))
        assert refused.wait(WAIT)
        _until(lambda: k.timers.pending() > 0)  # the start asked again once the writer is back
        assert k.get(eid)["results"]["sub"]["status"] == "running"
        k.timers.advance(1.0)
        final = k.finish(eid)
    assert final["status"] == "completed"
    assert final["results"]["sub"]["attempts"] == 1
    assert final["results"]["sub"]["data"] == {"c1": {"echo": {}}, "c2": {"echo": {"echo": {}}}}


def test_an_invalid_child_workflow_fails_the_step_without_retrying(tmp_path: Path) -> None:
    _write(
        tmp_path / "child.yaml",
        {"name": "child", "steps": [{"name": "c", "implementation": "nope"}]},
    )
    with _kit(doubled) as k:
        sub = {
            "name": "sub",
            "type": "subflow",
            "retry_policy": FAST,
            "config": {"workflow": str(tmp_path / "child.yaml")},
        }
        final = k.finish(k.start(wf(sub)))
        assert final["status"] == "failed"
        error = final["results"]["sub"]["error"]
        assert error["type"] == "WorkflowValidationError" and "nope" in error["message"]
        assert final["results"]["sub"]["attempts"] == 1


def test_a_workflow_that_runs_itself_stops_at_the_nesting_limit(tmp_path: Path) -> None:
    me = tmp_path / "me.yaml"
    _write(
        me,
        {
            "name": "me",
            "steps": [{"name": "again", "type": "subflow", "config": {"workflow": "me.yaml"}}],
        },
    )
    with _kit(doubled) as k:
        final = k.finish(k.start(yaml.safe_load(me.read_text()), source=str(me)))
        assert final["status"] == "failed"
        error = final["results"]["again"]["error"]
        assert error["type"] == "SubflowTooDeep" and error["retryable"] is False
        assert final["results"]["again"]["attempts"] == 1  # not retried at any level
        # the parent and 16 nested children; the 17th was refused
        assert len(k.engine.list_workflows(workflow_id="me").result(WAIT)) == 17


def test_the_nesting_limit_holds_across_a_restart(tmp_path: Path) -> None:
    # each child's first event names its parent: a node restarted midway counts the line
    # its children already made, where it began again from 0 (17 more levels a restart)
    me = tmp_path / "me.yaml"
    steps = [
        {"name": "hold", "implementation": "echo"},
        {"name": "again", "type": "subflow", "dependencies": ["hold"],
         "config": {"workflow": "me.yaml"}},
    ]  # fmt: skip
    _write(me, {"name": "me", "steps": steps})
    store = MemoryStore()
    with _kit(lambda t: None, store) as k:
        root = k.start(yaml.safe_load(me.read_text()), source=str(me))
        for _ in range(5):  # five levels made before the node stops
            held = k.next_held()
            held.reply_to.tell(ok(held.task, 1))
        _until(lambda: len(k.engine.list_workflows(workflow_id="me").result(WAIT)) == 6)
    with _kit(doubled, store) as k:
        k.engine.recover()
        final = k.finish(root)
        assert final["status"] == "failed"
        assert len(k.engine.list_workflows(workflow_id="me").result(WAIT)) == 17


def test_an_execution_started_under_older_rules_is_brought_back_explained_and_aborted() -> None:
    # its definition breaks rules made since (a name with '/', a wait over 10 years): it
    # was left running, neither explained nor aborted, after an upgrade
    from tamma_actors._model_fields import judged_as_stored

    older = {
        "name": "team/loop",
        "steps": [{"name": "w", "implementation": "wait", "config": {"seconds": 1e12}}],
    }
    store = MemoryStore()
    with _kit(doubled, store) as k, judged_as_stored():  # as the version before made it
        eid = k.start(older)
    with _kit(doubled, store) as k:
        assert k.engine.recover() == 1
        why = k.engine.explain(eid).result(WAIT)["steps"]["w"]["waiting_for"]
        assert why.startswith("wait step: until")
        assert k.engine.abort_workflow(eid, "upgrade").result(WAIT)["status"] == "aborted"
        assert k.engine.health().result(WAIT)["recovery"]["unrecoverable"] == {}


def test_a_parallel_step_timeout_bounds_the_whole_fan_out() -> None:
    for_items = {"max_attempts": 2, "base_delay": 100, "max_delay": 100, "jitter": 0}
    with _kit(lambda t: ok(t, "quick") if t["item_index"] == 0 else None) as k:
        eid = k.start(wf(fan("f", items=[0, 1], timeout=5, retry_policy=for_items)))
        first = k.next_held()  # item 1, attempt 1, never answers
        _until(lambda: _item(k, eid, 0)["status"] == "succeeded")
        k.timers.advance(5.0)  # the step's start-to-close deadline
        assert k.cancels.get(timeout=WAIT) == first.task["task_id"]
        _until(lambda: k.get(eid)["results"]["f"]["status"] == "retry_wait")
        k.timers.advance(0.1)
        second = k.next_held()  # only the item that did not succeed runs again
        assert (second.task["item_index"], second.task["attempt"]) == (1, 2)
        second.reply_to.tell(ok(second.task, "late but fine"))
        final = k.finish(eid)
        assert final["status"] == "completed"
        assert final["results"]["f"]["data"] == ["quick", "late but fine"]
        assert "step.timed_out" in k.types(eid)


def test_a_subflow_timeout_aborts_the_child(tmp_path: Path) -> None:
    _write(
        tmp_path / "child.yaml",
        {"name": "child", "steps": [{"name": "c", "implementation": "noop"}]},
    )
    with _kit(lambda t: None) as k:
        sub = {
            "name": "sub",
            "type": "subflow",
            "timeout": 2,
            "retry_policy": {"max_attempts": 1},
            "config": {"workflow": str(tmp_path / "child.yaml")},
        }
        eid = k.start(wf(sub))
        child = k.next_held().task["execution_id"]
        k.timers.advance(2.0)
        final = k.finish(eid)
        assert final["status"] == "failed"
        assert final["results"]["sub"]["error"]["type"] == "StepTimeout"
        _until(lambda: k.get(child)["status"] == "aborted")


def test_task_timeouts_on_coordinator_types_are_refused(kit: Kit) -> None:
    spec = wf(
        decision("d", branches=[{"otherwise": []}]) | {"timeout": 3},
        fan("f", items=[1]) | {"queue_timeout": 1, "heartbeat_timeout": 1},
    )
    with pytest.raises(WorkflowValidationError) as info:
        kit.start(spec)
    text = "\n".join(str(p) for p in info.value.problems)
    assert "steps[0].timeout: a decision step has no timeout" in text
    assert "steps[1].queue_timeout: a parallel step has no queue_timeout" in text
    assert "steps[1].heartbeat_timeout: a parallel step has no heartbeat_timeout" in text


def test_a_retry_policy_that_could_never_act_is_refused(kit: Kit) -> None:
    spec = wf(
        decision("d", branches=[{"otherwise": []}]) | {"retry_policy": {"max_attempts": 4}},
        {"name": "w", "implementation": "wait", "config": {"seconds": 1}}
        | {"retryPolicy": {"max_attempts": 2}},
        fan("f", items=[1]) | {"retry_policy": {"max_attempts": 2}},
    )
    with pytest.raises(WorkflowValidationError) as info:
        kit.start(spec)
    problems = {p.loc: p.message for p in info.value.problems}
    assert "expressions would fail the same way again" in problems.pop("steps[0].retry_policy")
    assert "a wait step is not retried" in problems.pop("steps[1].retry_policy")
    assert problems == {}  # a parallel step's retry policy retries its items


def test_a_child_the_node_could_not_start_is_retried_per_policy(tmp_path: Path) -> None:
    from tamma_actors._errors import StoreFull

    _write(tmp_path / "child.yaml", CHILD)
    with _kit(_child_echo) as k:
        real = k.engine.start_workflow
        refused: list[str] = []

        def flaky_start(definition: Any, inputs: Any, **kw: Any) -> Any:
            if kw.get("execution_id") and not refused:
                refused.append(kw["execution_id"])
                raise StoreFull("the disk is full")
            return real(definition, inputs, **kw)

        k.engine.start_workflow = flaky_start  # type: ignore[method-assign]
        sub = {
            "name": "sub",
            "type": "subflow",
            "retry_policy": FAST,
            "config": {"workflow": str(tmp_path / "child.yaml")},
        }
        eid = k.start(wf(sub))
        _until(lambda: k.get(eid)["results"]["sub"]["status"] == "retry_wait")
        assert k.get(eid)["results"]["sub"]["error"]["type"] == "StoreFull"
        k.timers.advance(0.1)
        final = k.finish(eid)
        assert final["status"] == "completed" and final["results"]["sub"]["attempts"] == 2
        assert refused and final["results"]["sub"]["detail"]["children"][0] == refused[0]


def test_a_decision_waits_out_a_pause_and_abort_cancels_it() -> None:
    spec = wf(
        step("src"),
        decision("pick", "src", branches=[{"when": "steps.src.output == 'go'", "then": ["a"]}]),
        step("a", "pick"),
    )
    with _kit(lambda t: None) as k:
        eid = k.start(spec)
        src = k.next_held()
        k.engine.pause_workflow(eid).result(WAIT)
        src.reply_to.tell(ok(src.task, "go"))  # recorded while paused ...
        _until(lambda: k.get(eid)["results"]["src"]["status"] == "succeeded")
        assert k.get(eid)["results"]["pick"]["status"] == "pending"  # ... nothing decided
        k.engine.resume_workflow(eid).result(WAIT)
        a = k.next_held()
        assert a.task["step"] == "a"
        assert k.get(eid)["results"]["pick"]["data"]["branch"] == 0
        a.reply_to.tell(ok(a.task, "done"))
        assert k.finish(eid)["status"] == "completed"
    with _kit(lambda t: None) as k:
        eid = k.start(spec)
        k.next_held()
        rec = k.engine.abort_workflow(eid, "stop").result(WAIT)
        assert rec["status"] == "aborted"
        assert [rec["results"][n]["status"] for n in ("src", "pick", "a")] == ["cancelled"] * 3


def test_an_empty_fan_out_after_a_pause_completes_on_resume() -> None:
    with _kit(lambda t: None) as k:
        eid = k.start(wf(step("src"), fan("f", "src", items=[])))
        src = k.next_held()
        k.engine.pause_workflow(eid).result(WAIT)
        src.reply_to.tell(ok(src.task, "x"))
        _until(lambda: k.get(eid)["results"]["src"]["status"] == "succeeded")
        assert k.get(eid)["results"]["f"]["status"] == "pending"
        k.engine.resume_workflow(eid).result(WAIT)
        final = k.finish(eid)
        assert final["status"] == "completed" and final["results"]["f"]["data"] == []


def test_a_condition_can_read_whether_an_upstream_step_was_skipped(kit: Kit) -> None:
    spec = wf(
        step("src"),
        decision("first", "src", branches=[{"when": "false", "then": ["a"]}]),
        step("a", "first"),
        decision(
            "second",
            "a",
            "src",
            branches=[{"when": "steps.a.status == 'skipped'", "then": ["fallback"]}],
        ),
        step("fallback", "second"),
    )
    final = kit.finish(kit.start(spec))
    assert final["status"] == "completed"
    assert final["results"]["a"]["status"] == "skipped"
    assert final["results"]["second"]["data"]["branch"] == 0
    assert final["results"]["fallback"]["status"] == "succeeded"


def test_expressions_see_only_the_steps_upstream_of_their_own() -> None:
    # Validation refuses steps.slow below (not upstream); a computed index, len(steps) or
    # steps whole must not see it either, or the course would depend on timing: 'slow' is
    # held running while 'pick' and 'f' evaluate.
    def hold_slow(task: dict[str, Any]) -> TaskFinished | None:
        return None if task["step"] == "slow" else doubled(task)

    spec = wf(
        step("slow"),
        step("src"),
        decision(
            "pick",
            "src",
            branches=[{"when": "steps[inputs.which] == null and len(steps) == 1", "then": ["a"]}],
        ),
        step("a", "pick"),
        fan("f", "src", items="[len(steps), steps[inputs.which], steps.src.status]"),
    )
    with _kit(hold_slow) as k:
        eid = k.start(spec, {"which": "slow"})
        held = k.next_held()
        assert held.task["step"] == "slow"
        assert k.get(eid)["results"]["slow"]["status"] in ("dispatched", "running")
        held.reply_to.tell(ok(held.task, 1))
        final = k.finish(eid)
    assert final["status"] == "completed"
    assert final["results"]["pick"]["data"]["branch"] == 0
    assert final["results"]["a"]["status"] == "succeeded"
    assert final["results"]["f"]["data"] == [2, {"echo": None}, {"echo": "succeeded"}]


def test_a_fan_out_is_snapshot_every_as_many_events_as_it_has_items(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A snapshot copies every item: a 300-item fan-out is not copied every 100 events
    # (the default) but every 300 (a restart replays at most that many); a workflow
    # without items keeps the default.
    store = MemoryStore()
    taken: list[tuple[str, int, str]] = []  # execution, seq, status
    commit = store.commit

    def counting(writes: Any) -> None:
        taken.extend(
            (w.execution_id, w.snapshot["seq"], w.snapshot["status"]) for w in writes if w.snapshot
        )
        commit(writes)

    monkeypatch.setattr(store, "commit", counting)
    chain = [step(f"s{i}", *([f"s{i - 1}"] if i else [])) for i in range(40)]
    with _kit(doubled, store) as k:
        fanned = k.start(wf(step("src"), fan("f", "src", items=list(range(300)))))
        assert k.finish(fanned)["results"]["f"]["data"] == [2 * i for i in range(300)]
        chained = k.start(wf(*chain))
        assert k.finish(chained)["status"] == "completed"
        assert len(k.types(fanned)) > 300  # (so every 100 would have taken three)

    def midway(eid: str) -> list[int]:
        return [seq for e, seq, status in taken if e == eid and status == "running"]

    seqs = [0, *midway(fanned)]
    assert all(b - a >= 300 for a, b in itertools.pairwise(seqs))
    assert midway(chained) and all(seq >= 100 for seq in midway(chained))
    for eid in (fanned, chained):  # each ends with a snapshot of its end
        records = store.read_execution(eid)
        assert records is not None and records.snapshot is not None
        assert records.snapshot["status"] == "completed" and records.events == []


def test_a_fan_out_over_too_many_items_fails_clearly(kit: Kit) -> None:
    from tamma_actors._parallel import MAX_ITEMS

    final = kit.finish(kit.start(wf(fan("f", items="inputs.xs")), {"xs": [0] * (MAX_ITEMS + 1)}))
    assert final["status"] == "failed"
    assert "more than the limit of 10000" in final["results"]["f"]["error"]["message"]
    with pytest.raises(WorkflowValidationError, match="at most 10000 items"):
        kit.start(wf(fan("f", items=[0] * (MAX_ITEMS + 1))))
