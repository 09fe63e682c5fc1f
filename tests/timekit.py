"""A kit for execution tests on manual time: ManualTimers, a holding pool, the memory store.

Time moves only when a test calls ``kit.timers.advance``; the executions' clock is the same
manual clock, so deadlines recorded in events are exact. Every report the pool would send
(started, progress, result) is sent by the test, which waits for the execution to have
recorded it before moving time (a bounded wait on committed state).
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pykka

from tamma_actors._dispatch import Dispatcher
from tamma_actors._engine import Engine, EngineParts
from tamma_actors._execution import ExecutionDeps
from tamma_actors._store import MemoryStore
from tamma_actors._timers import ManualTimers
from tamma_actors._workerpool import Cancel, Dispatch, TaskFinished, TaskStarted, Undelivered
from tamma_actors._writer import StoreWriter

__all__ = ["WAIT", "HoldingPool", "Kit", "finished", "make_kit", "step", "wait_step", "wf"]

WAIT = 10.0


class HoldingPool(pykka.ThreadingActor):
    """Keeps every Dispatch for the test; records cancels, and results handed back."""

    def __init__(
        self,
        held: queue.Queue[Dispatch],
        cancels: queue.Queue[str],
        handed_back: queue.Queue[TaskFinished] | None = None,
    ) -> None:
        super().__init__()
        self.held, self.cancels = held, cancels
        self.handed_back: queue.Queue[TaskFinished] = handed_back or queue.Queue()

    def on_receive(self, message: Any) -> None:
        if isinstance(message, Dispatch):
            self.held.put(message)
        elif isinstance(message, Cancel):
            self.cancels.put(message.task_id)
        elif isinstance(message, Undelivered):
            self.handed_back.put(message.finished)


@dataclass
class Kit:
    engine: Engine
    store: MemoryStore
    timers: ManualTimers
    held: queue.Queue[Dispatch]
    cancels: queue.Queue[str]
    handed_back: queue.Queue[TaskFinished] = field(default_factory=queue.Queue)

    def start(self, spec: dict[str, Any]) -> str:
        return str(self.engine.start_workflow(spec, {}).result(WAIT)["id"])

    def record(self, eid: str) -> dict[str, Any]:
        return self.engine.get_workflow(eid).result(WAIT)

    def woken(self, eid: str) -> None:
        """After a resting execution's wake timer fired (a manual advance runs it on this
        thread and tells the engine's waker): once the waker made its supervisor, a read
        queued behind the supervisor's first turn proves its deadlines are re-armed; then
        fire those already due, as the real timer service would at once."""
        deadline = time.monotonic() + WAIT
        while self.engine._is_resting(eid):
            assert time.monotonic() < deadline, f"{eid} was not woken"
            time.sleep(0.001)
        self.record(eid)
        self.timers.advance(0)

    def until(self, eid: str, pred: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """The first committed record that satisfies ``pred`` (bounded)."""
        deadline = time.monotonic() + WAIT
        while True:
            rec = self.record(eid)
            if pred(rec):
                return rec
            if time.monotonic() > deadline:
                raise AssertionError(f"condition never held; last record: {rec}")
            time.sleep(0.002)

    def step_is(self, eid: str, name: str, *status: str) -> dict[str, Any]:
        return self.until(eid, lambda r: r["results"][name]["status"] in status)

    def status_is(self, eid: str, *status: str) -> dict[str, Any]:
        return self.until(eid, lambda r: r["status"] in status)

    def next_held(self) -> Dispatch:
        return self.held.get(timeout=WAIT)

    def events(self, eid: str) -> list[dict[str, Any]]:
        return self.engine.get_events(eid).result(WAIT)

    def started(self, eid: str, d: Dispatch) -> None:
        d.reply_to.tell(TaskStarted(d.task["task_id"], "w-1"))
        self.step_is(eid, d.task["step"], "running")


def make_kit(
    store: MemoryStore | None = None,
    start: float = 1000.0,
    watchdog: float = 0.0,
    start_hold: float = 0.0,
    rest_after: float | None = None,
) -> Iterator[Kit]:
    store = store or MemoryStore()
    held: queue.Queue[Dispatch] = queue.Queue()
    cancels: queue.Queue[str] = queue.Queue()
    handed_back: queue.Queue[TaskFinished] = queue.Queue()
    pool = HoldingPool.start(held, cancels, handed_back)
    writer = StoreWriter(store)
    writer.start()
    dispatcher = Dispatcher(threads=2)
    timers = ManualTimers(start)
    deps = ExecutionDeps(
        writer=writer,
        pool=pool,
        timers=timers,  # type: ignore[arg-type]
        clock=timers.now,
        rand=lambda: 0.5,
        start_hold=start_hold,
    )
    engine = Engine(
        EngineParts(
            store=store,
            dispatcher=dispatcher,
            deps=deps,
            implementations=lambda: {"noop"},
            watchdog_interval=watchdog,
            rest_after=rest_after,
        )
    )
    try:
        yield Kit(engine, store, timers, held, cancels, handed_back)
    finally:
        engine.close()
        pool.stop()
        writer.close()
        timers.close()
        dispatcher.close()


def wf(*steps: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"name": "wf", "steps": list(steps), **extra}


def step(name: str, *deps: str, impl: str = "noop", **extra: Any) -> dict[str, Any]:
    return {"name": name, "implementation": impl, "dependencies": list(deps), **extra}


def wait_step(name: str, seconds: float, *deps: str) -> dict[str, Any]:
    return step(name, *deps, impl="wait", config={"seconds": seconds})


def finished(d: Dispatch, output: Any = None, error: dict[str, Any] | None = None) -> TaskFinished:
    return TaskFinished(d.task["task_id"], error is None, output, error, 1.0)
