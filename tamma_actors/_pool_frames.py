"""The worker pool's frames from workers: reading the socket, and what each frame does.

A mixin of :class:`~tamma_actors._workerpool.WorkerPool` (it runs on the pool's thread).
A ``hello`` goes to :class:`~tamma_actors._pool_workers.ConnectedWorkers`; any other frame
counts only from a connection whose worker joined (by its routing id), and is about that
worker's own tasks. Frames from an identity the pool does not know, other than ``hello``,
are answered with ``rehello``: the node may have restarted under a worker that kept its
connection. A ``StepCancelled`` result the pool did not ask for (the worker is stopping on
its own, e.g. SIGTERM) is re-dispatched rather than reported, for the same reason as a
crash.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import zmq

from tamma_actors import _wire as wire
from tamma_actors._codec import peek
from tamma_actors._errors import TammaError
from tamma_actors._pool_messages import (
    TaskFinished,
    TaskProgress,
    TaskStarted,
    notify,
)

if TYPE_CHECKING:
    import threading

    from tamma_actors._pool_kept import KeptResults
    from tamma_actors._pool_workers import PoolWorker
    from tamma_actors._timers import TimerHandle
    from tamma_actors._workerpool import _Task

__all__ = ["WorkerFrames"]

log = logging.getLogger("tamma_actors._workerpool")


class WorkerFrames:
    """Reading the workers socket, and what each frame from a worker does."""

    if TYPE_CHECKING:
        socket_batch: int
        actor_stopped: threading.Event
        _sock: zmq.Socket[bytes] | None
        _max_frame: int
        _cancel_grace: float
        _hb_timeout: float
        _routes: dict[bytes, PoolWorker]
        _tasks: dict[str, _Task]
        _undelivered: KeptResults

        def call_later(self, delay: float, fn: Callable[[], None]) -> TimerHandle: ...
        def _send(self, identity: bytes, msg: dict[str, Any] | bytes) -> bool: ...
        def _pump(self) -> None: ...
        def _on_hello(self, identity: bytes, msg: dict[str, Any]) -> None: ...
        def _worker_lost(self, worker: PoolWorker, reason: str, *, kill: bool) -> None: ...
        def _requeue(self, tasks: list[_Task], reason: str, *, tell_owner: bool = True) -> None: ...
        def _check_tasks(self, worker: PoolWorker, hb: dict[str, Any]) -> None: ...
        def _task_gone(self, task: _Task) -> None: ...

    def _on_readable(self) -> None:
        self._read_batch()  # watched with ``drains=True``

    def _read_batch(self) -> int:
        """Read up to a batch of frames; returns how many."""
        for count in range(self.socket_batch):
            if self._sock is None or self.actor_stopped.is_set():
                return count
            try:
                parts = self._sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return count
            self._on_frames(parts)
        return self.socket_batch

    def _on_frames(self, parts: list[bytes]) -> None:
        if len(parts) != 2:
            log.warning("dropped a %d-part message on the workers socket", len(parts))
            return
        identity, data = parts
        worker = self._routes.get(identity)
        try:
            msg = wire.decode_worker_frame(data, self._max_frame)
        except TammaError as exc:
            who = "an unknown peer" if worker is None else f"worker {worker.worker_id}"
            log.warning("dropped a bad frame from %s: %s", who, exc)  # (not its routing id)
            if worker is not None:
                self._unreadable_result(worker, data, exc)
            return
        if msg["t"] == "hello":
            self._on_hello(identity, msg)
        elif worker is None:
            if msg["t"] != "bye":
                self._send(identity, wire.rehello())
        else:
            worker.last_seen, worker.last_seen_wall = time.monotonic(), time.time()
            self._on_worker_frame(worker, msg)

    def _unreadable_result(self, worker: PoolWorker, data: bytes, exc: TammaError) -> None:
        """A result the node cannot read, of one of ``worker``'s tasks: its step fails
        (a worker checks what it sends; an older or foreign one may not, and the step would
        wait for good)."""
        task_id = peek(data, "task_id") if peek(data, "t") == "result" else None
        task = self._tasks.get(task_id) if isinstance(task_id, str) else None
        if task is None or task.worker_id != worker.worker_id:
            return
        error = {
            "type": "ProtocolError",
            "message": f"the worker's result for this step could not be read: {exc}",
            "retryable": False,
            "retry_after": None,
        }
        self._on_result(worker, task, wire.result_error(task.task_id, error, 0.0, started=True))

    def _on_worker_frame(self, worker: PoolWorker, msg: dict[str, Any]) -> None:
        kind = msg["t"]
        if kind == "hb":
            worker.rss = msg["rss"]
            if worker.checking:
                self._check_tasks(worker, msg)
        elif kind == "bye":
            self._worker_lost(worker, f"worker {worker.worker_id} left", kill=False)
        else:
            task = self._tasks.get(msg["task_id"])
            if task is None or task.worker_id != worker.worker_id:
                log.info(
                    "frame for unknown task %s from %s ignored", msg["task_id"], worker.worker_id
                )
            elif kind == "started":
                task.started = True
                ran = msg.get("ran_ms", 0.0) / 1000.0
                notify(task.reply_to, TaskStarted(task.task_id, worker.worker_id, ran))
            elif kind == "progress":
                notify(task.reply_to, TaskProgress(task.task_id, msg["progress"]))
            else:
                self._on_result(worker, task, msg)

    @staticmethod
    def _lacked_blob(task: _Task, msg: dict[str, Any], error: dict[str, Any] | None) -> bool:
        """Whether the worker answered that it lacks the blob ``task`` names: its own
        answer, before any step ran (a step's error of that name says it ran)."""
        missing = error is not None and error["type"] == wire.SHARED_DATA_MISSING
        return missing and task.encoded.key is not None and not msg.get("started")

    def _on_result(self, worker: PoolWorker, task: _Task, msg: dict[str, Any]) -> None:
        worker.tasks.discard(task.task_id)
        del self._tasks[task.task_id]
        reports: tuple[Any, ...] = ()
        if not task.started and msg.get("started"):  # the start notice came with it
            reports = (TaskStarted(task.task_id, worker.worker_id),)
        error = msg.get("error") if not msg["ok"] else None
        if self._lacked_blob(task, msg, error):
            worker.blobs.pop(task.encoded.key or "", None)  # its frame went with a connection
            self._requeue([task], "cancelled before it started", tell_owner=False)
            self._pump()
            return
        if error is not None and error["type"] == "StepCancelled" and task.cancel_timer is None:
            for report in reports:
                notify(task.reply_to, report)
            window = self._cancel_grace + self._hb_timeout  # see PoolWorker.leaving
            worker.sent_nothing_until = time.monotonic() + window
            self.call_later(window, self._pump)  # then it may get work again
            self._requeue([task], f"worker {worker.worker_id} is stopping")
        else:
            if task.cancel_timer is not None:
                task.cancel_timer.cancel()
            output = msg.get("output") if msg["ok"] else None
            duration = float(msg["duration_ms"])
            reports += (TaskFinished(task.task_id, msg["ok"], output, error, duration),)
            delivered = all([notify(task.reply_to, report) for report in reports])
            if not delivered and task.cancel_timer is None:  # not one its owner cancelled
                self._undelivered.keep(reports)
            self._task_gone(task)
        self._pump()
