"""Timers: a heap of deadlines served by one thread, and a manual twin for tests.

Callbacks must be quick: they exist to ``tell`` an actor that its time has come, never to do
the work themselves. A callback that raises is logged and the service carries on.

Cancelling is O(1): the handle is only marked (and lets go of its callback), and the heap
drops it when it reaches the top (or when cancelled entries outnumber live ones, so a heap
of abandoned step timeouts cannot grow without bound).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Self

from tamma_actors._errors import SupervisionError

__all__ = ["ManualTimers", "TimerHandle", "TimerHeap", "TimerService"]

logger = logging.getLogger(__name__)

# Compact the heap only when it is worth it: at least this many cancelled entries, and more
# cancelled than live ones (so compaction is amortised O(1) per cancel).
_COMPACT_MIN = 64


def _nothing() -> None:
    """What a cancelled handle calls, if it fired as it was cancelled."""


class TimerHandle:
    """A scheduled callback; ``cancel()`` may be called from any thread, any number of times."""

    __slots__ = ("_heap", "_seq", "cancelled", "deadline", "fn")

    def __init__(
        self, deadline: float, fn: Callable[[], None], seq: int, heap: TimerHeap | None
    ) -> None:
        self.deadline = deadline
        self.fn = fn
        self.cancelled = False
        self._seq = seq
        self._heap = heap

    def cancel(self) -> None:
        if self.cancelled:
            return
        self.cancelled = True
        # The heap may keep the handle until its deadline: keep nothing alive through it
        # (a callback holds its actor, and the actor all it holds).
        self.fn = _nothing
        heap, self._heap = self._heap, None
        if heap is not None:
            heap.note_cancelled()

    def __lt__(self, other: TimerHandle) -> bool:
        return (self.deadline, self._seq) < (other.deadline, other._seq)

    def __repr__(self) -> str:
        state = " cancelled" if self.cancelled else ""
        return f"<TimerHandle deadline={self.deadline:.6f}{state}>"


class TimerHeap:
    """A min-heap of handles ordered by (deadline, insertion); not thread-safe by itself.

    Owners serialise access with their own lock (or use it from one thread only); only
    ``note_cancelled`` may race, and it merely adjusts a counter used as a compaction hint.
    """

    __slots__ = ("_cancelled", "_heap", "_seq")

    def __init__(self) -> None:
        self._heap: list[TimerHandle] = []
        self._seq = itertools.count()
        self._cancelled = 0

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, deadline: float, fn: Callable[[], None]) -> TimerHandle:
        handle = TimerHandle(deadline, fn, next(self._seq), self)
        heapq.heappush(self._heap, handle)
        return handle

    def note_cancelled(self) -> None:
        self._cancelled += 1

    def next_deadline(self) -> float | None:
        """The earliest live deadline, dropping cancelled entries from the top."""
        self._maybe_compact()
        heap = self._heap
        while heap and heap[0].cancelled:
            heapq.heappop(heap)
            # cancel() runs on other threads without our owner's lock: the count is a
            # hint that may drift, so never let it go negative.
            self._cancelled = max(0, self._cancelled - 1)
        return heap[0].deadline if heap else None

    def pop_due(self, now: float) -> TimerHandle | None:
        """Remove and return the earliest live handle due at ``now``, or None."""
        deadline = self.next_deadline()
        if deadline is None or deadline > now:
            return None
        handle = heapq.heappop(self._heap)
        handle._heap = None  # fired: a later cancel() must not count it as a heap entry
        return handle

    def clear(self) -> None:
        for handle in self._heap:
            handle._heap = None
        self._heap.clear()
        self._cancelled = 0

    def _maybe_compact(self) -> None:
        if self._cancelled >= _COMPACT_MIN and self._cancelled * 2 > len(self._heap):
            self._heap = [h for h in self._heap if not h.cancelled]
            heapq.heapify(self._heap)
            self._cancelled = 0


def _run_callback(handle: TimerHandle) -> None:
    try:
        handle.fn()
    except Exception:
        logger.exception("timer callback %r raised; the timer service carries on", handle.fn)


class TimerService:
    """One thread sleeping until the earliest deadline; a context manager."""

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, name: str = "tamma-timers"
    ) -> None:
        self._clock = clock
        self._heap = TimerHeap()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=False)
        self._thread.start()

    def now(self) -> float:
        return self._clock()

    def call_at(self, deadline: float, fn: Callable[[], None]) -> TimerHandle:
        with self._cond:
            if self._closed:
                raise SupervisionError("the timer service is closed")
            earliest = self._heap.next_deadline()
            handle = self._heap.push(deadline, fn)
            if earliest is None or deadline < earliest:
                self._cond.notify()
        return handle

    def call_later(self, delay: float, fn: Callable[[], None]) -> TimerHandle:
        return self.call_at(self._clock() + delay, fn)

    def close(self, timeout: float = 10.0) -> None:
        """Stop the thread; timers not yet due never fire. Idempotent."""
        with self._cond:
            self._closed = True
            self._heap.clear()
            self._cond.notify()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)
            if self._thread.is_alive():
                logger.warning("timer thread did not stop within %.1fs", timeout)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _next_due(self) -> TimerHandle | None:
        """Wait for the next due handle; None once closed."""
        with self._cond:
            while not self._closed:
                now = self._clock()
                handle = self._heap.pop_due(now)
                if handle is not None:
                    return handle
                deadline = self._heap.next_deadline()
                self._cond.wait(None if deadline is None else deadline - now)
            return None

    def _run(self) -> None:
        while (handle := self._next_due()) is not None:
            # Cancelled between the pop and now: the canceller expects it not to run.
            if not handle.cancelled:
                _run_callback(handle)


class ManualTimers:
    """The test twin of :class:`TimerService`: time moves only when ``advance`` is called.

    ``advance`` runs every due, uncancelled callback synchronously, in (deadline, insertion)
    order, with ``now()`` equal to that callback's deadline, so callbacks that schedule more
    timers see the same clock they would under the real service.
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._heap = TimerHeap()
        self._lock = threading.Lock()
        self._closed = False

    def now(self) -> float:
        return self._now

    def call_at(self, deadline: float, fn: Callable[[], None]) -> TimerHandle:
        with self._lock:
            if self._closed:
                raise SupervisionError("the timer service is closed")
            return self._heap.push(deadline, fn)

    def call_later(self, delay: float, fn: Callable[[], None]) -> TimerHandle:
        return self.call_at(self._now + delay, fn)

    def advance(self, seconds: float) -> int:
        """Move the clock forward and fire what is due; returns how many callbacks ran."""
        if seconds < 0:
            raise ValueError("time only moves forward")
        target = self._now + seconds
        fired = 0
        while True:
            with self._lock:
                handle = self._heap.pop_due(target)
            if handle is None:
                break
            self._now = max(self._now, handle.deadline)
            _run_callback(handle)
            fired += 1
        self._now = target
        return fired

    def pending(self) -> int:
        """How many uncancelled timers are waiting."""
        with self._lock:
            return sum(1 for h in self._heap._heap if not h.cancelled)

    def close(self, timeout: float = 10.0) -> None:
        del timeout  # same signature as TimerService.close; nothing to join here
        with self._lock:
            self._closed = True
            self._heap.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
