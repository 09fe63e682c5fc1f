"""StepProbe against a recording pool and manual timers: results, expiry, stop."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

import pytest

from tamma_actors._dispatch import Dispatcher
from tamma_actors._errors import RequestTimeout
from tamma_actors._probe import StepProbe, probe_task_id
from tamma_actors._timers import ManualTimers
from tamma_actors._workerpool import (
    Cancel,
    Dispatch,
    TaskFinished,
    TaskProgress,
    TaskRedispatched,
    TaskStarted,
)

WAIT = 10.0


class RecordingPool:
    def __init__(self) -> None:
        self.messages: queue.Queue[Any] = queue.Queue()

    def tell(self, message: Any) -> None:
        self.messages.put(message)

    def next(self) -> Any:
        return self.messages.get(timeout=WAIT)


@pytest.fixture
def dispatcher() -> Iterator[Dispatcher]:
    d = Dispatcher(threads=2)
    yield d
    d.close()


def task(step: str = "s") -> dict[str, Any]:
    return {"task_id": probe_task_id("e1", step), "execution_id": "e1", "step": step}


def start(
    dispatcher: Dispatcher, timers: ManualTimers, timeout: float = 5.0
) -> tuple[Any, RecordingPool, Future[dict[str, Any]], dict[str, Any]]:
    pool, reply, t = RecordingPool(), Future[dict[str, Any]](), task()
    clock = iter(float(i) for i in range(100, 200))
    ref = StepProbe.start(dispatcher, pool, timers, t, reply, timeout, clock=lambda: next(clock))
    sent = pool.next()
    assert isinstance(sent, Dispatch) and sent.task is t and sent.reply_to == ref
    return ref, pool, reply, t


def test_task_ids_are_unique_and_never_an_attempt_number() -> None:
    first, second = probe_task_id("e", "s"), probe_task_id("e", "s")
    assert first != second
    assert first.startswith("e/s/probe-") and not first.rsplit("/", 1)[1].isdigit()


def test_a_success_resolves_with_a_step_result(dispatcher: Dispatcher) -> None:
    ref, _pool, reply, t = start(dispatcher, ManualTimers())
    ref.tell(TaskStarted(t["task_id"], "w1"))
    ref.tell(TaskProgress(t["task_id"], {"pct": 50}))
    ref.tell(TaskRedispatched(t["task_id"], "worker lost"))  # it waits on
    ref.tell(TaskStarted(t["task_id"], "w2"))
    ref.tell(TaskFinished(t["task_id"], True, {"out": 1}, None, 12.5))
    result = reply.result(WAIT)
    assert result["status"] == "succeeded" and result["data"] == {"out": 1}
    assert (result["worker"], result["duration_ms"], result["attempts"]) == ("w2", 12.5, 1)
    assert result["started_at"] < result["ended_at"]
    ref.actor_stopped.wait(WAIT)


def test_a_failure_resolves_with_its_error(dispatcher: Dispatcher) -> None:
    ref, _pool, reply, t = start(dispatcher, ManualTimers())
    error = {"type": "Boom", "message": "no", "retryable": False}
    ref.tell(TaskFinished(t["task_id"], False, None, error, 3.0))
    result = reply.result(WAIT)
    assert result["status"] == "failed" and result["data"] is None
    assert result["error"] == error
    assert result["started_at"] == result["ended_at"]  # never reported as started


def test_an_overrun_is_cancelled_and_times_out(dispatcher: Dispatcher) -> None:
    timers = ManualTimers()
    ref, pool, reply, t = start(dispatcher, timers, timeout=2.0)
    ref.tell(TaskStarted(t["task_id"], "w1"))
    timers.advance(1.9)
    assert not reply.done()
    timers.advance(0.2)
    result = reply.result(WAIT)  # answered: the step timed out, the request did not
    assert (result["status"], result["data"], result["worker"]) == ("timed_out", None, "w1")
    assert result["error"] == {
        "type": "StepTimeout",
        "message": "step 's' did not finish within 2s; it was cancelled",
        "retryable": True,
        "kind": "run",
    }
    assert pool.next() == Cancel(t["task_id"])
    ref.actor_stopped.wait(WAIT)


def test_an_overrun_before_any_worker_started_it_says_so(dispatcher: Dispatcher) -> None:
    timers = ManualTimers()
    ref, pool, reply, t = start(dispatcher, timers, timeout=1.0)
    timers.advance(1.1)
    result = reply.result(WAIT)
    assert result["status"] == "timed_out" and result["error"]["kind"] == "queue"
    assert result["error"]["message"] == (
        "step 's' was not started by a worker within 1s; it was cancelled"
    )
    assert pool.next() == Cancel(t["task_id"])
    ref.actor_stopped.wait(WAIT)


def test_a_stopped_probe_cancels_its_task(dispatcher: Dispatcher) -> None:
    ref, pool, reply, t = start(dispatcher, ManualTimers())
    ref.stop()
    with pytest.raises(RequestTimeout, match="node stopped"):
        reply.result(WAIT)
    assert pool.next() == Cancel(t["task_id"])
