"""``StoreWriter``: the single writer thread with group commit.

Transitions are queued by any thread and never wait for I/O. The writer thread takes
everything queued (up to ``max_batch``), commits it in one ``Store.commit`` — one
transaction, one fsync — and only then calls each write's ``done`` callback, in submit
order: durability before progress. A failed batch is retried write by write so only the
faulty writes see the error.

:class:`QueuedWriter` is that queue and thread; ``StoreWriter`` commits in this process,
``ProcessStoreWriter`` (``_writer_process``) hands the batches to a process of its own.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

from tamma_actors._errors import StoreClosed, StoreError, StoreWriterLost
from tamma_actors._store import Store, Write

__all__ = ["Done", "QueuedWriter", "StoreWriter", "commit_or_each"]

_log = logging.getLogger(__name__)

Done = Callable[[BaseException | None], None]
_RESERVOIR = 1024  # most recent commit latencies kept for the percentiles


@dataclass(slots=True)
class _Pending:
    write: Write
    done: Done | None
    queued: float  # perf_counter at submit: a transition's wait for durability starts here


def _percentile(sorted_ms: list[float], q: float) -> float | None:
    if not sorted_ms:
        return None
    return sorted_ms[max(0, math.ceil(q * len(sorted_ms)) - 1)]  # nearest rank


def commit_or_each(
    commit: Callable[[list[Write]], Exception | None], writes: list[Write]
) -> list[Exception | None]:
    """Each write's outcome: ``writes`` commit in one transaction; if that fails, each
    commits on its own, so only the faulty ones fail (the others must not pay for them)."""
    outcome = commit(writes)
    if outcome is None:
        return [None] * len(writes)
    if len(writes) == 1:
        return [outcome]
    return [commit([w]) for w in writes]


class _Stats:
    def __init__(self) -> None:
        self.commits = 0
        self.writes = 0
        self.failed = 0
        self.last_batch = 0
        self.latencies: deque[float] = deque(maxlen=_RESERVOIR)
        self.waits: deque[float] = deque(maxlen=_RESERVOIR)

    def committed(self, size: int, seconds: float) -> None:
        self.commits += 1
        self.writes += size
        self.last_batch = size
        self.latencies.append(seconds * 1000.0)

    def snapshot(self) -> dict[str, Any]:
        ordered = sorted(self.latencies)
        waits = sorted(self.waits)
        return {
            "commits": self.commits,
            "writes": self.writes,
            "failed_writes": self.failed,
            "last_batch": self.last_batch,
            "average_batch": self.writes / self.commits if self.commits else 0.0,
            "commit_ms_p50": _percentile(ordered, 0.50),
            "commit_ms_p99": _percentile(ordered, 0.99),
            # submit -> committed (queueing behind the batch in progress + its commit)
            "transition_ms_p50": _percentile(waits, 0.50),
            "transition_ms_p99": _percentile(waits, 0.99),
        }


class QueuedWriter(ABC):
    """The submit queue and the one thread that commits batches of it (``_loop``)."""

    def __init__(self, *, max_batch: int, name: str) -> None:
        if max_batch < 1:
            raise StoreError(f"max_batch must be at least 1, not {max_batch}")
        self._max_batch = max_batch
        self._name = name
        self._cond = threading.Condition()
        self._queue: deque[_Pending] = deque()
        self._submitted = 0
        self._finished = 0  # processed in submit order, so this is a watermark
        self._closing = False
        self._stopped = False
        self._thread: threading.Thread | None = None
        self._stats = _Stats()
        # Why writes are refused before closing (the writer can no longer commit).
        self._lost: StoreWriterLost | None = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def ready(self) -> bool:
        """Alive, and what earlier writers committed is what the store's readers see."""
        return self.alive

    @property
    def fatal(self) -> StoreError | None:
        """Why a writer that is no longer alive must not be replaced (its store file is
        damaged: another would die the same way), or None."""
        return None

    def start(self) -> None:
        """Start the writer thread; starting a running writer does nothing."""
        with self._cond:
            if self._closing:
                raise StoreClosed("the store writer is closed")
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()

    def submit(self, write: Write, done: Done | None = None) -> None:
        """Queue ``write``; ``done(None)`` runs after it is committed, ``done(exc)`` if not."""
        with self._cond:
            self._enqueue(write, done)

    def _enqueue(self, write: Write, done: Done | None) -> None:
        """Under ``_cond``: queue ``write`` (or refuse it) and wake the thread."""
        if self._lost is not None:  # before closing: a lost writer's callers re-read
            raise StoreWriterLost(str(self._lost))
        if self._closing:
            raise StoreClosed("the store writer is closed")
        self._queue.append(_Pending(write, done, time.perf_counter()))
        self._submitted += 1
        self._cond.notify_all()

    def flush(self, timeout: float | None = None) -> None:
        """Return once every write submitted before this call is processed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            target = self._submitted
            while self._finished < target:
                if self._thread is None or self._stopped:
                    raise StoreError(
                        f"the store writer is not running; {target - self._finished} "
                        "write(s) are not committed"
                    )
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise StoreError(f"flush timed out after {timeout}s")
                self._cond.wait(remaining)

    def close(self, timeout: float = 10) -> None:
        """Commit what is queued, then stop. Idempotent; later submits raise StoreClosed."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            thread = self._thread
        if thread is None:
            self._run()  # never started: drain the queue on this thread
            return
        if thread is threading.current_thread():
            return  # called from a done callback: the loop drains and exits by itself
        thread.join(timeout)
        if thread.is_alive():
            raise StoreError(f"the store writer did not stop within {timeout}s")

    def stats(self) -> dict[str, Any]:
        with self._cond:
            return {**self._stats.snapshot(), "queued": len(self._queue), "alive": self.alive}

    def _run(self) -> None:
        try:
            self._loop()
        finally:
            with self._cond:
                self._stopped = True
                self._cond.notify_all()

    @abstractmethod
    def _loop(self) -> None:
        """Commit batch after batch (``_next_batch``), each in one transaction if it can,
        and ``_settle`` each, in order; return once closing (or lost) and drained."""

    def _next_batch(self) -> list[_Pending]:
        """Everything queued (up to max_batch); empty once closing and drained."""
        with self._cond:
            while not self._queue and not self._closing:
                self._cond.wait()
            return self._take()

    def _take(self) -> list[_Pending]:
        """Under ``_cond``: everything queued, up to max_batch."""
        size = min(len(self._queue), self._max_batch)
        return [self._queue.popleft() for _ in range(size)]

    def _lose(self, error: StoreWriterLost) -> None:
        """The writer can no longer commit: refuse new writes; the loop fails what is
        still to commit and ends."""
        with self._cond:
            if self._lost is None:
                self._lost = error
            self._cond.notify_all()

    def _settle(
        self,
        batch: list[_Pending],
        outcomes: Sequence[BaseException | None],
        committed: float | None = None,
    ) -> None:
        """Run each write's callback with its outcome, in submit order. ``committed``:
        when the commit was known done (perf_counter; now if None)."""
        committed = time.perf_counter() if committed is None else committed
        with self._cond:
            self._stats.waits.extend((committed - p.queued) * 1000.0 for p in batch)
        for pending, result in zip(batch, outcomes, strict=True):
            if result is not None:
                self._stats.failed += 1
            self._notify(pending, result)
        with self._cond:
            self._finished += len(batch)
            self._cond.notify_all()

    def _notify(self, pending: _Pending, result: BaseException | None) -> None:
        if pending.done is None:
            if result is not None:
                _log.error("store write for %s failed: %s", pending.write.execution_id, result)
            return
        try:
            pending.done(result)
        except Exception:
            _log.exception("a store writer callback raised (it is ignored)")


class StoreWriter(QueuedWriter):
    """One thread that owns every commit to ``store`` (which it does not close)."""

    def __init__(
        self, store: Store, *, max_batch: int = 1024, name: str = "tamma-store-writer"
    ) -> None:
        super().__init__(max_batch=max_batch, name=name)
        self._store = store

    def _loop(self) -> None:
        while batch := self._next_batch():
            self._process(batch)

    def _process(self, batch: list[_Pending]) -> None:
        self._settle(batch, commit_or_each(self._commit, [p.write for p in batch]))

    def _commit(self, writes: list[Write]) -> Exception | None:
        started = time.perf_counter()
        try:
            self._store.commit(writes)
        except Exception as exc:
            return exc
        elapsed = time.perf_counter() - started
        with self._cond:
            self._stats.committed(len(writes), elapsed)
        return None
