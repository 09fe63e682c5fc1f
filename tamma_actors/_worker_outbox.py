"""What a worker's step runners want sent, on its way to the socket thread.

Runner threads post; the socket thread drains, and only it sends. Start notices may be
*held*: a run frame's ``start_hold`` (seconds, set by the execution that owns the step)
lets the worker keep a step's ``started`` notice that long. A step that finishes within
its hold sends no notice at all (its result says ``started``): the node handles one
report and one commit per step instead of two. A notice whose hold ends goes out with
``ran_ms`` (how long the step has been running), so the node dates the step's run and
heartbeat deadlines from its real start. A progress report sends a held notice first: the
node never hears of a runner's step's progress before its start. An inline step (run by the
socket thread itself) posts no start notice, only its result, which says ``started``; a
progress report it makes goes out just before that result, and the node, which takes
progress as liveness of a running step only, has nothing to do with it.

A hold of 0 still folds the notice into a result drained in the same batch.
"""

from __future__ import annotations

import contextlib
import os
import queue
import time
from typing import NamedTuple

from tamma_actors import _wire as wire

__all__ = ["Outbox", "Outgoing"]


class _Posted(NamedTuple):
    kind: str  # "start", "progress", "result" (frees a runner) or "answer" (frees none)
    task_id: str
    frame: bytes  # empty for "start": the notice is encoded when it is sent
    at: float = 0.0  # "start": when the step began (time.monotonic)
    hold: float = 0.0  # "start": how long the notice may wait for the result


class Outgoing(NamedTuple):
    """A frame to send now; ``finished`` names the task whose runner is free again."""

    frame: bytes
    finished: str | None = None


class Outbox:
    """A queue from runner threads plus an eventfd that wakes the socket thread; the held
    start notices belong to the socket thread (``drain`` and ``next_due``)."""

    def __init__(self) -> None:
        self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._items: queue.SimpleQueue[_Posted] = queue.SimpleQueue()
        self._held: dict[str, tuple[float, float]] = {}  # task -> (due, began)
        self._closed = False

    # -- runner threads --------------------------------------------------------------------

    def started(self, task_id: str, hold: float) -> None:
        """The step ``task_id`` began; its notice may wait ``hold`` seconds."""
        self._post(_Posted("start", task_id, b"", time.monotonic(), hold))

    def progress(self, task_id: str, frame: bytes) -> None:
        self._post(_Posted("progress", task_id, frame))

    def result(self, task_id: str, frame: bytes) -> None:
        """The step's result: its runner is free once this is sent."""
        self._post(_Posted("result", task_id, frame))

    def answer(self, task_id: str, frame: bytes, *, wake: bool = True) -> None:
        """A result for a task no runner took (cancelled while queued, or an inline step's,
        posted by the socket thread itself: no wake-up needed, see ``pending``)."""
        self._post(_Posted("answer", task_id, frame), wake)

    def _post(self, item: _Posted, wake: bool = True) -> None:
        self._items.put(item)
        if wake:
            self.wake()

    def wake(self) -> None:
        if not self._closed:
            with contextlib.suppress(OSError):  # a counter overflow still leaves it readable
                os.eventfd_write(self.fd, 1)

    # -- the socket thread -----------------------------------------------------------------

    @property
    def pending(self) -> bool:
        """Whether anything is posted and not drained yet."""
        return not self._items.empty()

    def drain(self, now: float | None = None) -> list[Outgoing]:
        """The frames to send now, in order: everything posted, less the start notices still
        held or made needless by their result, plus the held notices now due."""
        with contextlib.suppress(BlockingIOError, OSError):
            os.eventfd_read(self.fd)
        out: list[Outgoing] = []
        while True:
            try:
                item = self._items.get_nowait()
            except queue.Empty:
                break
            if item.kind == "start":
                self._held[item.task_id] = (item.at + item.hold, item.at)
            elif item.kind == "progress":
                self._release(item.task_id, out, time.monotonic() if now is None else now)
                out.append(Outgoing(item.frame))
            elif item.kind == "result":
                self._held.pop(item.task_id, None)  # the result says started
                out.append(Outgoing(item.frame, item.task_id))
            else:
                out.append(Outgoing(item.frame))
        now = time.monotonic() if now is None else now  # after the posts: a 0 hold is due
        for task_id in [t for t, (due, _) in self._held.items() if due <= now]:
            self._release(task_id, out, now)
        return out

    def _release(self, task_id: str, out: list[Outgoing], now: float) -> None:
        held = self._held.pop(task_id, None)
        if held is not None:
            ran_ms = max(0.0, (now - held[1]) * 1000.0)
            out.append(Outgoing(wire.encode(wire.started(task_id, ran_ms))))

    def next_due(self) -> float | None:
        """When the earliest held notice must go out (``time.monotonic``), if any."""
        return min((due for due, _ in self._held.values()), default=None)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            os.close(self.fd)
