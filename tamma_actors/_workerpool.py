"""WorkerPool: the node's side of the worker protocol (a SocketActor owning the ROUTER).

It keeps a FIFO queue of tasks and hands each to a live worker that offers the task's
implementation and has a free slot (the least busy one). It spawns ``local_workers``
managed worker processes, watches each through a pidfd and restarts it when it dies (with
a backoff, so a crash loop does not spin). A worker that misses heartbeats for
``heartbeat_timeout`` is declared dead (a local one is SIGKILLed and replaced). A dead or
departing worker's in-flight tasks are queued again, unchanged, and their owners are told
:class:`TaskRedispatched`: killing a worker never loses a step.

Cancel: a queued task is dropped and answered at once; a running one gets ``cancel``, and
if no result comes within ``cancel_grace`` the worker is killed (local) or dropped and
told to stop (remote); the task is reported StepCancelled, its neighbours re-dispatched.

What each frame from a worker does: :mod:`._pool_frames`.

The workers socket hands a worker's routing id over to a new connection made under it
(``ROUTER_HANDOVER``): a routing id is a secret only its worker holds, so that is the same
worker connecting again, while the node may still hold its old connection (one dead
without a FIN or an RST reaching the node lingers until TCP gives up on it, minutes to
hours). Without it, libzmq ignored the new connection, and every frame on it, for as long
as the old one lingered. ZMTP heartbeats close a connection that brought nothing for
``heartbeat_timeout`` after a PING, and give workers that time-to-live for their side;
what an old connection lost is run again (:mod:`._pool_workers`).

A result whose owner had stopped, unless the owner had cancelled the task, is kept by
task id, as is one an owner hands back (:class:`Undelivered`), for the supervisor brought
back from the store, which dispatches the same attempt again (:mod:`._pool_kept`).

Shutdown order (on_stop): ``stop`` to every worker -> wait up to ``cancel_grace`` + 2 s
for local children -> SIGKILL leftovers -> close pidfds -> close the ROUTER (linger 1 s).
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import pykka
import zmq

from tamma_actors import _wire as wire
from tamma_actors._errors import TammaError
from tamma_actors._pool_admission import RefusalLog, Refused, WorkerAdmission
from tamma_actors._pool_frames import WorkerFrames
from tamma_actors._pool_kept import KeptResults
from tamma_actors._pool_messages import (
    Cancel,
    Dispatch,
    HoldQueue,
    TaskFinished,
    TaskProgress,
    TaskRedispatched,
    TaskStarted,
    Undelivered,
    cancelled_error,
    notify,
)
from tamma_actors._pool_shared import Encoded, SharedPayloads
from tamma_actors._pool_workers import ConnectedWorkers, PoolWorker
from tamma_actors._server_socket import bind_server, forget_ipc_file
from tamma_actors._socket_actor import SocketActor, send_frames
from tamma_actors._timers import TimerHandle
from tamma_actors._worker_children import STOP_EXTRA, Child, LocalWorkers

__all__ = [
    "Cancel",
    "Dispatch",
    "HoldQueue",
    "TaskFinished",
    "TaskProgress",
    "TaskRedispatched",
    "TaskStarted",
    "Undelivered",
    "WorkerPool",
]

log = logging.getLogger(__name__)

_LINGER_MS = 1000
_MAX_TTL_MS = 6_553_500  # ZMTP carries a heartbeat's time-to-live in 16 bits of 0.1 s


def _ms(seconds: float) -> int:
    return max(1, min(round(seconds * 1000), 2**31 - 1))


@dataclass(eq=False)
class _Task:
    task_id: str
    implementation: str
    encoded: Encoded = field(repr=False)  # its run frame (and a fan-out item's blob)
    reply_to: pykka.ActorRef[Any]
    worker_id: str | None = None
    cancel_timer: TimerHandle | None = None
    started: bool = False  # the worker's start notice came (a fast step's may not)


def _load(w: PoolWorker) -> tuple[float, int]:
    return len(w.tasks) / w.slots, len(w.tasks)


def _least_busy(workers: list[PoolWorker], implementation: str) -> PoolWorker | None:
    return min((w for w in workers if implementation in w.plugins), key=_load, default=None)


def _without_settings(environ: Mapping[str, str]) -> dict[str, str]:
    """The node's environment for its local workers, less the ``TAMMA_*`` variables: those
    are the node's settings (``TAMMA_TOKENS``, ``TAMMA_CURVE_SECRET_KEY``...), which a
    worker does not need and every step it runs could read; its own token comes apart."""
    return {k: v for k, v in environ.items() if not k.upper().startswith("TAMMA_")}


class WorkerPool(WorkerFrames, ConnectedWorkers, LocalWorkers, SocketActor):
    """Owns the workers ROUTER socket, the local worker processes and task dispatch.

    What each frame from a worker does: :class:`WorkerFrames`; who has joined and who is
    lost: :class:`ConnectedWorkers`; the local processes: :class:`LocalWorkers`."""

    def __init__(
        self,
        zmq_context: zmq.Context[Any],
        *,
        endpoint: str,
        local_workers: int,
        worker_slots: int = wire.DEFAULT_WORKER_SLOTS,
        heartbeat_interval: float = 1.0,
        heartbeat_timeout: float = 5.0,
        cancel_grace: float = 5.0,
        max_frame_bytes: int = 8 << 20,
        worker_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        max_worker_rss: int | None = None,
        curve_secret_key: str | None = None,
        on_offered: Callable[[frozenset[str]], None] | None = None,
        admission: WorkerAdmission | None = None,
    ) -> None:
        super().__init__(zmq_context)
        # who may join, and what they may offer (none given: anyone, anything)
        self._admission = admission if admission is not None else WorkerAdmission()
        self._endpoint = endpoint
        self._n_local = local_workers
        self._worker_slots = worker_slots
        self._hb_interval = heartbeat_interval
        self._hb_timeout = heartbeat_timeout
        self._cancel_grace = cancel_grace
        self._max_frame = max_frame_bytes
        self._worker_args = list(worker_args)
        self._env = {**_without_settings(os.environ), **(env or {})}
        self._max_rss = max_worker_rss  # bytes; a worker above it is replaced
        self._curve_secret = curve_secret_key
        self._on_offered = on_offered  # told what the workers offer, whenever that changes
        self._offered: frozenset[str] = frozenset()
        self._sock: zmq.Socket[bytes] | None = None
        self._ipc_file: tuple[int, int] | None = None  # its socket file (ipc://)
        self._workers: dict[str, PoolWorker] = {}
        self._routes: dict[bytes, PoolWorker] = {}  # the same, by routing id (a secret)
        self._refusals = RefusalLog()
        self._refused = Refused()
        self._children: dict[bytes, Child] = {}  # by the routing id each was given
        self._tasks: dict[str, _Task] = {}
        self._queue: deque[str] = deque()
        self._undelivered = KeptResults()  # what stopped owners were to be told
        self._shared = SharedPayloads()  # the data fan-out items share, sent once a worker
        self._dispatched_total = 0
        self._restarts = 0
        self._spawned = 0
        self._stopping = False
        self._holding = False  # draining: queued tasks stay queued (see HoldQueue)
        self._waiters: list[tuple[int, Future[None]]] = []

    # -- life cycle ------------------------------------------------------------------------

    def on_start(self) -> None:
        self._sock = self._bind()
        self.watch(self._sock, self._on_readable, drains=True)
        for _ in range(self._n_local):
            self._spawn(failures=0)
        self.call_later(self._hb_interval, self._check_heartbeats)

    def _bind(self) -> zmq.Socket[bytes]:
        if self._endpoint.startswith("ipc://"):
            parent = os.path.dirname(self._endpoint[len("ipc://") :])
            if parent and not os.path.isdir(parent):
                os.makedirs(parent, mode=0o700, exist_ok=True)
        options = {
            zmq.LINGER: _LINGER_MS,
            zmq.MAXMSGSIZE: self._max_frame,
            zmq.ROUTER_MANDATORY: 1,  # a send to a connection that is gone fails
            zmq.ROUTER_HANDOVER: 1,  # see the module docstring
            zmq.HEARTBEAT_IVL: _ms(self._hb_interval),
            zmq.HEARTBEAT_TIMEOUT: _ms(self._hb_timeout),
            zmq.HEARTBEAT_TTL: min(_ms(self._hb_timeout), _MAX_TTL_MS),
        }
        sock, self._endpoint, self._ipc_file = bind_server(
            self.zmq_context, zmq.ROUTER, self._endpoint, options, self._curve_secret,
            "the workers socket",
        )  # fmt: skip
        return sock

    def on_stop(self) -> None:
        self._stopping = True
        # Only our own workers are told to stop. One started elsewhere (tamma-node worker)
        # stays: it joins the node that comes back, as after a crash (told to stop, it
        # exited 0, and a node's restart took every remote worker down for good).
        for w in list(self._workers.values()):
            if w.local:
                self._send(w.identity, wire.stop())
        self._stop_unjoined()
        self._stop_children(self._cancel_grace + STOP_EXTRA)
        for _, fut in self._waiters:
            fut.cancel()
        if self._sock is not None:
            self.unwatch(self._sock)
            self._sock.close(_LINGER_MS)
            # (the connections made keep their frames)
            forget_ipc_file(self._endpoint, self._ipc_file)

    # -- messages from executions ----------------------------------------------------------

    def on_receive(self, message: Any) -> None:
        if isinstance(message, Dispatch):
            self._on_dispatch(message)
        elif isinstance(message, Cancel):
            self._on_cancel(message.task_id)
        elif isinstance(message, Undelivered):
            self._undelivered.keep((message.finished,))
        elif isinstance(message, HoldQueue):
            self._holding = True
        else:
            log.warning("WorkerPool ignores unexpected message %r", message)

    def _on_dispatch(self, msg: Dispatch) -> None:
        task_id = msg.task.get("task_id")
        impl = msg.task.get("implementation")
        if not isinstance(task_id, str) or not isinstance(impl, str):
            log.error("dispatch without a task_id/implementation dropped: %r", msg.task)
            return
        kept = self._undelivered.take(task_id)
        if kept is not None and task_id not in self._tasks:
            log.info("task %s finished while its owner was gone; its result goes to the new one",
                     task_id)  # fmt: skip
            for report in kept:
                notify(msg.reply_to, report)
            return
        known = self._tasks.get(task_id)
        if known is not None:
            # The same attempt from a supervisor re-activated while it ran (its writer was
            # restarted): it runs once, and its reports now go to the new supervisor.
            log.info("task %s is already queued or running; it now reports to its new owner",
                     task_id)  # fmt: skip
            known.reply_to = msg.reply_to
            if known.started and known.worker_id is not None:
                notify(msg.reply_to, TaskStarted(task_id, known.worker_id))
            return
        try:
            encoded = self._shared.encode(msg.task)
        except TammaError as exc:
            self._finish_with(msg.reply_to, task_id, {"type": "CodecError", "message": str(exc)})
            return
        if encoded.size > self._max_frame:
            if encoded.key is not None:
                self._shared.release(encoded.key)
            self._finish_with(msg.reply_to, task_id, self._too_large(encoded.size))
            return
        task = _Task(task_id, impl, encoded, msg.reply_to)
        self._tasks[task_id] = task
        self._queue.append(task_id)
        self._pump()

    def _too_large(self, size: int) -> dict[str, Any]:
        return {
            "type": "FrameTooLarge",
            "message": f"the step's run frame is {size:,} bytes, over the "
            f"{self._max_frame:,}-byte cap (max_frame_bytes): its input, the workflow's "
            "inputs and its dependencies' outputs travel in it",
        }

    @staticmethod
    def _finish_with(reply_to: pykka.ActorRef[Any], task_id: str, error: dict[str, Any]) -> None:
        full = {"retryable": False, "retry_after": None, **error}
        notify(reply_to, TaskFinished(task_id, False, None, full, 0.0))

    def _on_cancel(self, task_id: str) -> None:
        task = self._tasks.get(task_id)
        if task is None:
            return
        if task.worker_id is None:
            self._queue.remove(task_id)
            self._task_gone(task)
            notify(
                task.reply_to,
                TaskFinished(task_id, False, None, cancelled_error("cancelled while queued"), 0.0),
            )
        elif task.cancel_timer is None:
            self._send(self._workers[task.worker_id].identity, wire.cancel(task_id))
            task.cancel_timer = self.call_later(
                self._cancel_grace, lambda: self._cancel_overdue(task_id)
            )

    def _cancel_overdue(self, task_id: str) -> None:
        task = self._tasks.get(task_id)
        if task is None or task.worker_id is None:
            return
        self._task_gone(task)
        message = f"no result {self._cancel_grace}s after cancel; worker {task.worker_id} killed"
        notify(task.reply_to, TaskFinished(task_id, False, None, cancelled_error(message), 0.0))
        worker = self._workers.get(task.worker_id)
        if worker is not None:
            worker.tasks.discard(task_id)
            self._worker_lost(worker, f"worker {worker.worker_id} ignored a cancel", kill=True)

    # -- dispatch ----------------------------------------------------------------------------

    def _pump(self) -> None:
        """Hand queued tasks (oldest first) to the least busy worker able to run each.

        It stops as soon as no worker has a free slot: with thousands of tasks queued, a
        result costs one dispatch, not a walk over the whole queue. Tasks that no free
        worker offers keep their place at the head of the queue."""
        if not self._queue or self._holding:
            return
        now = time.monotonic()
        free = [w for w in self._workers.values() if len(w.tasks) < w.slots and not w.leaving(now)]
        skipped: list[str] = []
        broken: list[PoolWorker] = []
        while self._queue and free:
            task = self._tasks[self._queue.popleft()]
            worker = _least_busy(free, task.implementation)
            if worker is None:
                skipped.append(task.task_id)
            elif not worker.shared and self._too_big_whole(task):
                continue  # finished: FrameTooLarge for a worker that takes whole tasks only
            elif not self._send_task(worker, task):
                broken.append(worker)  # unroutable or a full pipe: that worker is lost
                free.remove(worker)
                skipped.append(task.task_id)
            else:
                task.worker_id = worker.worker_id
                worker.tasks.add(task.task_id)
                self._dispatched_total += 1
                if len(worker.tasks) >= worker.slots:
                    free.remove(worker)
        self._queue.extendleft(reversed(skipped))
        for worker in broken:
            self._worker_lost(worker, f"worker {worker.worker_id} unreachable", kill=True)

    def _send_task(self, worker: PoolWorker, task: _Task) -> bool:
        """Send ``task``'s run frame, after the blob it names if ``worker`` lacks it (a
        worker that does not take shared runs gets the whole task)."""
        encoded = task.encoded
        if encoded.blob is None or encoded.key is None:
            return self._send(worker.identity, encoded.frame)
        if not worker.shared:
            return self._send(worker.identity, encoded.whole_frame())
        for frame in self._shared.frames_for(worker.blobs, encoded.key, encoded.blob):
            if not self._send(worker.identity, frame):
                return False
        return self._send(worker.identity, encoded.frame)

    def _too_big_whole(self, task: _Task) -> bool:
        """Whether ``task``, sent whole (to an older worker), is over the frame cap: then
        it is finished with FrameTooLarge, as it would have been before blobs."""
        if task.encoded.blob is None or len(task.encoded.whole_frame()) <= self._max_frame:
            return False
        self._task_gone(task)
        size = len(task.encoded.whole_frame())
        self._finish_with(task.reply_to, task.task_id, self._too_large(size))
        return True

    def _task_gone(self, task: _Task) -> None:
        """``task`` leaves the pool for good: the last task of a blob takes it along,
        from the workers holding it too."""
        self._tasks.pop(task.task_id, None)
        key = task.encoded.key
        if key is None or not self._shared.release(key):
            return
        for worker in self._workers.values():
            if key in worker.blobs:
                del worker.blobs[key]
                self._send(worker.identity, wire.forget(key))

    def _send(self, identity: bytes, msg: dict[str, Any] | bytes) -> bool:
        assert self._sock is not None
        frame = msg if isinstance(msg, bytes) else wire.encode(msg)
        try:
            send_frames(self._sock, (identity, frame))
            return True
        except zmq.ZMQError as exc:
            worker = self._routes.get(identity)  # its routing id is a secret: not logged
            who = "an unknown peer" if worker is None else f"worker {worker.worker_id}"
            log.warning("cannot send to %s: %s", who, exc)
            return False

    # -- queries (ask / proxy) ---------------------------------------------------------------

    def endpoint(self) -> str:
        """The bound endpoint (a ``tcp://...:*`` wildcard resolved to its port)."""
        return self._endpoint

    def stats(self) -> dict[str, Any]:
        offered = {p for w in self._workers.values() for p in w.plugins}
        unserved: dict[str, int] = {}
        for task_id in self._queue:
            impl = self._tasks[task_id].implementation
            if impl not in offered:
                unserved[impl] = unserved.get(impl, 0) + 1
        return {
            "workers": [self._worker_stats(w) for w in self._workers.values()],
            "queued": len(self._queue),
            "waiting_for_implementation": unserved,
            "running": sum(len(w.tasks) for w in self._workers.values()),
            "dispatched_total": self._dispatched_total,
            "results_kept": len(self._undelivered),  # for owners that had stopped
            "results_kept_bytes": self._undelivered.size,
            "shared_blobs": len(self._shared),  # fan-outs whose shared data is held apart
            "restarts": self._restarts,
            "local_pids": sorted(c.proc.pid for c in self._children.values()),
            "refused": self._refused.report(),  # hellos not admitted since it started
        }
