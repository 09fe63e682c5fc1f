"""TimerService and its twin ManualTimers: one behavioural suite, plus properties."""

from __future__ import annotations

import gc
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Protocol

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tamma_actors._errors import SupervisionError
from tamma_actors._timers import ManualTimers, TimerHandle, TimerHeap, TimerService

WAIT = 10.0


class Timers(Protocol):
    def call_at(self, deadline: float, fn: Callable[[], None]) -> TimerHandle: ...
    def call_later(self, delay: float, fn: Callable[[], None]) -> TimerHandle: ...
    def now(self) -> float: ...
    def close(self, timeout: float = 10.0) -> None: ...


class Harness:
    """Drives either implementation: ``settle(seconds)`` lets that much time pass and waits
    until the callbacks due by then have run (a marker timer scheduled last proves it)."""

    def __init__(self, timers: Timers, manual: bool) -> None:
        self.timers = timers
        self.manual = manual

    def settle(self, seconds: float) -> None:
        if isinstance(self.timers, ManualTimers):
            self.timers.advance(seconds)
            return
        done = threading.Event()
        # Same deadline as anything due at +seconds, inserted later: runs after all of them.
        self.timers.call_later(seconds, done.set)
        assert done.wait(WAIT)


@pytest.fixture(params=["real", "manual"])
def harness(request: pytest.FixtureRequest) -> Iterator[Harness]:
    timers: Timers = TimerService() if request.param == "real" else ManualTimers()
    try:
        yield Harness(timers, request.param == "manual")
    finally:
        timers.close()


def test_callbacks_fire_in_deadline_then_insertion_order(harness: Harness) -> None:
    fired: list[str] = []
    base = harness.timers.now()
    gate = threading.Event()
    # The first callback holds the real timer thread until everything is scheduled.

    def first() -> None:
        gate.wait(WAIT)
        fired.append("first")

    harness.timers.call_at(base, first)
    for name, offset in [("c", 0.03), ("a", 0.01), ("b1", 0.02), ("b2", 0.02)]:
        harness.timers.call_at(base + offset, lambda name=name: fired.append(name))  # type: ignore[misc]
    gate.set()
    harness.settle(0.03)
    assert fired == ["first", "a", "b1", "b2", "c"]


def test_a_cancelled_timer_never_fires(harness: Harness) -> None:
    fired: list[str] = []
    handle = harness.timers.call_later(0.01, lambda: fired.append("no"))
    harness.timers.call_later(0.02, lambda: fired.append("yes"))
    handle.cancel()
    handle.cancel()  # idempotent
    assert handle.cancelled
    harness.settle(0.02)
    assert fired == ["yes"]


def test_a_raising_callback_is_logged_and_the_service_carries_on(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    fired: list[str] = []

    def broken() -> None:
        raise RuntimeError("bad timer")

    harness.timers.call_later(0.0, broken)
    harness.timers.call_later(0.001, lambda: fired.append("after"))
    harness.settle(0.001)
    assert fired == ["after"]
    assert "bad timer" in caplog.text


def test_close_is_idempotent_and_refuses_new_timers(harness: Harness) -> None:
    fired: list[str] = []
    harness.timers.call_later(3600, lambda: fired.append("never"))
    harness.timers.close()
    harness.timers.close()
    with pytest.raises(SupervisionError):
        harness.timers.call_later(0, lambda: None)
    assert fired == []


def test_handle_exposes_its_deadline(harness: Harness) -> None:
    handle = harness.timers.call_at(harness.timers.now() + 5, lambda: None)
    assert handle.deadline == pytest.approx(harness.timers.now() + 5, abs=1)
    assert "deadline=" in repr(handle)
    handle.cancel()
    assert "cancelled" in repr(handle)


def test_timer_service_uses_the_injected_clock() -> None:
    with TimerService(clock=lambda: 1000.0) as timers:
        assert timers.now() == 1000.0
        fired = threading.Event()
        handle = timers.call_later(-1.0, fired.set)
        assert handle.deadline == 999.0
        assert fired.wait(WAIT)


def test_timer_service_callback_runs_on_its_thread() -> None:
    names: list[str] = []
    done = threading.Event()
    with TimerService(name="tick") as timers:

        def record() -> None:
            names.append(threading.current_thread().name)
            done.set()

        timers.call_later(0, record)
        assert done.wait(WAIT)
    assert names == ["tick"]


def test_timer_service_close_from_a_callback_does_not_deadlock() -> None:
    timers = TimerService()
    closed = threading.Event()

    def close_now() -> None:
        timers.close()
        closed.set()

    timers.call_later(0, close_now)
    assert closed.wait(WAIT)
    timers._thread.join(WAIT)
    assert not timers._thread.is_alive()


def test_manual_callbacks_see_their_own_deadline_and_can_schedule_more() -> None:
    timers = ManualTimers(start=100.0)
    seen: list[tuple[str, float]] = []

    def first() -> None:
        seen.append(("first", timers.now()))
        timers.call_later(2, lambda: seen.append(("chained", timers.now())))

    timers.call_later(1, first)
    assert timers.pending() == 1
    assert timers.advance(5) == 2
    assert seen == [("first", 101.0), ("chained", 103.0)]
    assert timers.now() == 105.0
    assert timers.pending() == 0
    with pytest.raises(ValueError):
        timers.advance(-1)


def test_manual_timers_as_context_manager() -> None:
    with ManualTimers() as timers:
        timers.call_later(1, lambda: None)
    with pytest.raises(SupervisionError):
        timers.call_later(1, lambda: None)


def test_heap_compacts_when_cancelled_entries_dominate() -> None:
    heap = TimerHeap()
    handles = [heap.push(float(i), lambda: None) for i in range(200)]
    for handle in handles[1:150]:
        handle.cancel()
    assert heap.next_deadline() == 0.0
    assert len(heap) == 51  # cancelled entries were dropped in one pass
    first = heap.pop_due(0.0)
    assert first is handles[0]
    first.cancel()  # a fired handle's cancel does not count against the heap
    assert heap.next_deadline() == 150.0
    assert heap.pop_due(149.0) is None


def test_a_cancelled_handle_left_in_the_heap_keeps_nothing_alive() -> None:
    class Owner:  # what a callback closes over: an actor and all it holds
        def due(self) -> None:
            raise AssertionError("a cancelled timer fired")

    heap = TimerHeap()
    owner = Owner()
    gone = weakref.ref(owner)
    handle = heap.push(10.0, owner.due)
    heap.push(5.0, lambda: None)
    handle.cancel()
    del owner
    gc.collect()
    assert gone() is None and len(heap) == 2  # still in the heap (not compacted yet)
    handle.fn()  # fired as it was cancelled: nothing happens


delays = st.lists(
    st.tuples(st.integers(min_value=0, max_value=50), st.booleans()), min_size=0, max_size=40
)


@settings(max_examples=200, deadline=None)
@given(delays, st.lists(st.integers(min_value=0, max_value=20), min_size=1, max_size=6))
def test_manual_fires_exactly_the_due_uncancelled_in_order(
    timers_spec: list[tuple[int, bool]], steps: list[int]
) -> None:
    timers = ManualTimers()
    fired: list[int] = []
    for index, (delay, cancel) in enumerate(timers_spec):
        handle = timers.call_later(delay, lambda index=index: fired.append(index))  # type: ignore[misc]
        if cancel:
            handle.cancel()
    elapsed = 0
    for step in steps:
        elapsed += step
        timers.advance(step)
        expected = sorted(
            (delay, index)
            for index, (delay, cancel) in enumerate(timers_spec)
            if not cancel and delay <= elapsed
        )
        assert fired == [index for _, index in expected]
