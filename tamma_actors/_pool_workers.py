"""The worker pool's connected workers: who has joined, who is still alive, who is lost.

A mixin of :class:`~tamma_actors._workerpool.WorkerPool` (it runs on the pool's thread). A
worker joins with ``hello`` (one that says it again keeps its tasks) and is answered
``welcome`` if the node admits it (:class:`WorkerAdmission`: with tokens, only a worker
holding a worker token or an admin one), else ``refused``. One that misses heartbeats for
``heartbeat_timeout``, or grows above the memory limit, is lost; so is one that leaves
(``bye``), exits, cannot be sent to or ignores a cancel. A lost worker is forgotten, killed
when it is ours (a remote one is told to stop), and its tasks are queued again at the head
of the queue, their owners told ``TaskRedispatched``: killing a worker never loses a step.

A worker is known by its connection's routing id, a secret it draws for itself (at least
``MIN_ROUTE_BYTES``, never its worker id, which ``tamma health`` shows to every viewer):
the ROUTER sends to and hears from whoever connects under a routing id, so a peer that
could name a worker's (a worker whose connection dropped frees it) would be sent that
worker's steps and be heard on their behalf. A worker that reconnects keeps its routing id,
and so its tasks: only it holds that secret. A hello under a worker id that another
connection holds is not answered while that connection is there (a rehello tells: ROUTER
sends to a gone one fail), so a peer cannot push a live worker out by naming it; once the
holder is gone, the newcomer takes the name, and the holder's tasks are queued again.
The node's own local workers connect under routing ids it drew for them: a worker is one
of them (``local``: killed and restarted by the node, measured by it) by that alone, and
the worker id of one is its own: another connection naming it is refused, and one that
claimed it before that process joined gives it up.

A connection can lose frames when it dies: a ``run`` sent into it, a result sent out of
it. A worker says hello again on each new connection it makes; the tasks the pool had on
it then are checked against its next heartbeat, which it sends once welcomed again, so
after every frame the pool sent it before the welcome: a task it neither holds nor has
reported by then was lost, and is queued again; a cancel may have been lost too, and is
sent again. (A heartbeat on its own tells nothing: a run frame may be on its way. So the
hellos are numbered, and a heartbeat says which one was last welcomed: one a worker sent
after the welcome of an earlier hello, which it said again before that welcome came, does
not count.)
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import psutil

from tamma_actors import _wire as wire
from tamma_actors._pool_admission import RefusalLog, Refused, WorkerAdmission, public_route
from tamma_actors._pool_messages import TaskFinished, TaskRedispatched, cancelled_error, notify

if TYPE_CHECKING:
    from tamma_actors._timers import TimerHandle
    from tamma_actors._worker_children import Child
    from tamma_actors._workerpool import _Task

__all__ = ["ConnectedWorkers", "PoolWorker"]

log = logging.getLogger("tamma_actors._workerpool")

MIB = 1 << 20
_OURS = "its worker id is one of this node's own local workers'"
_CATCH_UP_BATCHES = 16  # socket batches read before a heartbeat check


@dataclass(eq=False)
class PoolWorker:
    """A worker that said hello, as the pool sees it."""

    worker_id: str
    identity: bytes = field(repr=False)  # its connection's routing id: a secret
    pid: int
    host: str
    slots: int
    plugins: frozenset[str]
    local: bool
    last_seen: float
    last_seen_wall: float
    rss: int = 0
    tasks: set[str] = field(default_factory=set)
    # it gave back a step unasked: it is likely leaving, so it is sent nothing until then
    # (monotonic; a step that raised StepCancelled itself looks the same: see leaving)
    sent_nothing_until: float | None = None
    # the tasks it had when it said hello again (a new connection, most likely): those its
    # next heartbeat does not list were lost with the old connection
    checking: frozenset[str] = frozenset()
    # that hello's number (hello_seq): only a heartbeat sent after its welcome (naming it,
    # or a later one) says which tasks the worker holds; None: a worker that does not
    # number its hellos, whose next heartbeat is taken
    check_after: int | None = None
    # it takes runs whose fan-out data comes in a blob of its own (wire.run_shared), and
    # the blobs it holds now, least recently used first (see _pool_shared)
    shared: bool = False
    blobs: OrderedDict[str, None] = field(default_factory=OrderedDict)

    def leaving(self, now: float) -> bool:
        """Whether it gave a step back unasked a short while ago, so is most likely
        stopping: its other steps come back the same way or at its bye, or it falls
        silent. Until then it is sent nothing (a step sent back to it would be lost twice);
        one still here after that was not leaving (a step raised StepCancelled itself)."""
        return self.sent_nothing_until is not None and now < self.sent_nothing_until


class ConnectedWorkers:
    """Joining, heartbeat and memory checks, losing a worker, and what the pool reports of
    its workers."""

    if TYPE_CHECKING:
        socket_batch: int
        _admission: WorkerAdmission  # who may join, and which offers count
        _workers: dict[str, PoolWorker]
        _routes: dict[bytes, PoolWorker]  # the same workers, by their routing id
        _refusals: RefusalLog  # which hellos not admitted get a log line
        _refused: Refused  # and how many there were
        _children: dict[bytes, Child]  # our local workers, by the routing id each was given
        _tasks: dict[str, _Task]
        _queue: deque[str]
        _hb_interval: float
        _hb_timeout: float
        _max_rss: int | None
        _waiters: list[tuple[int, Future[None]]]
        _offered: frozenset[str]
        _on_offered: Callable[[frozenset[str]], None] | None

        def call_later(self, delay: float, fn: Callable[[], None]) -> TimerHandle: ...
        def _read_batch(self) -> int: ...
        def _send(self, identity: bytes, msg: dict[str, Any] | bytes) -> bool: ...
        def _pump(self) -> None: ...
        def _task_gone(self, task: _Task) -> None: ...
        @staticmethod
        def _kill(child: Child) -> None: ...

    def _on_hello(self, identity: bytes, msg: dict[str, Any]) -> None:
        worker_id = msg["worker_id"]
        if msg["slots"] < 1:
            log.warning("hello from worker %r with no slots dropped", worker_id)
            return
        child = self._children.get(identity)  # one of ours, under the route it was given
        reason = public_route(identity, worker_id)
        if reason is None and child is None and self._names_a_child(worker_id):
            reason = _OURS
        if reason is None:
            reason = self._admission.refusal(msg.get("token"))
        if reason is not None:
            self._refuse(identity, worker_id, reason)
            return
        current = self._routes.get(identity)  # this connection's worker, if it joined
        if not self._take_name(worker_id, current, ours=child is not None):
            return
        plugins = self._admission.offer(msg["plugins"])
        withheld = sorted(set(msg["plugins"]) - plugins)
        if withheld:
            log.info("worker %s offers %s: not on this node (not enabled)",
                     worker_id, ", ".join(withheld))  # fmt: skip
        worker = PoolWorker(
            worker_id=worker_id,
            identity=identity,
            pid=msg["pid"],
            host=msg["host"],
            slots=msg["slots"],
            plugins=plugins,
            local=child is not None,
            last_seen=time.monotonic(),
            last_seen_wall=time.time(),
            tasks=current.tasks if current is not None else set(),
            checking=frozenset(current.tasks) if current is not None else frozenset(),
            check_after=msg.get("hello_seq"),
            shared=msg.get("shared") is True,
        )
        self._workers[worker_id] = worker
        self._routes[identity] = worker
        self._offered_changed()
        self._send(identity, wire.welcome(self._hb_interval, msg.get("hello_seq")))
        log.info("worker %s joined (%d slots, local=%s)", worker_id, worker.slots, worker.local)
        self._notify_waiters()
        self._pump()

    def _names_a_child(self, worker_id: str) -> bool:
        return any(child.worker_id == worker_id for child in self._children.values())

    def _take_name(self, worker_id: str, current: PoolWorker | None, *, ours: bool) -> bool:
        """Whether an admitted hello under ``worker_id`` (on the connection of ``current``,
        if it had joined; from a local worker of ours if ``ours``) may have that name; the
        one it takes it from is lost."""
        holder = self._workers.get(worker_id)
        if holder is not None and holder is not current:
            if ours:  # claimed before our process joined: refused now, it gives it up
                self._refuse(holder.identity, worker_id, _OURS)
            elif self._send(holder.identity, wire.rehello()):
                # still connected (a live holder answers with a hello on its own connection)
                self._not_admitted(worker_id, "its worker id is held by another connection")
                return False
            else:
                self._worker_lost(holder, f"worker {worker_id} is gone from its connection",
                                  kill=False)  # fmt: skip
        if current is not None and current.worker_id != worker_id:
            self._worker_lost(current, f"worker {current.worker_id} took another name "
                              f"({worker_id})", kill=False)  # fmt: skip
        return True

    def _refuse(self, identity: bytes, worker_id: str, reason: str) -> None:
        self._send(identity, wire.refused(reason))
        self._not_admitted(worker_id, reason)
        joined = self._routes.get(identity)
        if joined is not None:
            # A worker that had joined on this connection: refused now, it exits.
            self._worker_lost(joined, f"worker {joined.worker_id} refused: {reason}", kill=False)

    def _not_admitted(self, worker_id: str, reason: str) -> None:
        self._refused.add(worker_id, reason, time.time())
        left_out = self._refusals.line(worker_id, time.monotonic())
        if left_out is not None:
            more = f" ({left_out} more refused hellos not logged)" if left_out else ""
            log.warning("worker %r refused: %s%s", worker_id, reason, more)

    def _worker_lost(self, worker: PoolWorker, reason: str, *, kill: bool) -> None:
        """Forget ``worker``, queue its tasks again, and kill it if it is ours."""
        if self._workers.get(worker.worker_id) is not worker:
            return  # lost already (and its name perhaps taken since)
        del self._workers[worker.worker_id]
        del self._routes[worker.identity]
        self._offered_changed()
        log.warning("%s; re-dispatching %d task(s)", reason, len(worker.tasks))
        child = self._children.get(worker.identity)
        if kill and child is not None:
            self._kill(child)
        elif kill:
            self._send(worker.identity, wire.stop())
        lost = [self._tasks.pop(t) for t in sorted(worker.tasks) if t in self._tasks]
        worker.tasks.clear()
        self._requeue(lost, reason)
        self._pump()

    def _check_tasks(self, worker: PoolWorker, hb: dict[str, Any]) -> None:
        """At ``worker``'s first heartbeat since the welcome of its hello again (``hb``:
        what it holds, and which hello was last welcomed), queue again the tasks it had
        then and neither holds nor has reported (see the module docstring), and send again
        the cancels of those it still holds."""
        if worker.check_after is not None and hb.get("hello_seq", 0) < worker.check_after:
            return  # sent after an earlier welcome: run frames may be on their way still
        running: list[str] = hb["running"]
        checking, worker.checking = worker.checking, frozenset()
        held = set(running)
        lost: list[_Task] = []
        for task_id in sorted(checking & worker.tasks):
            task = self._tasks[task_id]
            if task_id not in held:
                worker.tasks.discard(task_id)
                lost.append(self._tasks.pop(task_id))
            elif task.cancel_timer is not None:
                self._send(worker.identity, wire.cancel(task_id))
        if lost:
            reason = (
                f"worker {worker.worker_id} connected again without them: lost with its connection"
            )
            log.warning("%s; re-dispatching %d task(s)", reason, len(lost))
            self._requeue(lost, reason)
            self._pump()

    def _offered_changed(self) -> None:
        """Tell whoever asked what the connected workers offer now, if that changed."""
        offered = frozenset(p for w in self._workers.values() for p in w.plugins)
        if offered != self._offered:
            self._offered = offered
            if self._on_offered is not None:
                self._on_offered(offered)

    def _requeue(self, tasks: list[_Task], reason: str, *, tell_owner: bool = True) -> None:
        """Put tasks back at the head of the queue (they were first in line once already).

        Also for the tasks of a worker that answers a cancel the pool did not ask for:
        it is stopping on its own, and they run again elsewhere as after a crash.
        ``tell_owner=False``: a task its worker never ran (it lacked the blob it names)
        goes back with its owner none the wiser: no worker lost, no attempt spent."""
        again: list[str] = []
        for task in tasks:
            if task.cancel_timer is not None:
                # It was being cancelled: losing its worker settles that.
                task.cancel_timer.cancel()
                error = cancelled_error(reason)
                notify(task.reply_to, TaskFinished(task.task_id, False, None, error, 0.0))
                self._task_gone(task)
                continue
            task.worker_id = None
            task.started = False  # the next worker announces its own start
            self._tasks[task.task_id] = task
            again.append(task.task_id)
            if tell_owner:
                notify(task.reply_to, TaskRedispatched(task.task_id, reason))
        self._queue.extendleft(reversed(again))

    def _check_heartbeats(self) -> None:
        # Frames already waiting count: when this thread itself was held up (a long GC
        # pause, a saturated GIL), the heartbeats are in the socket, not missing.
        for _ in range(_CATCH_UP_BATCHES):
            if self._read_batch() < self.socket_batch:
                break
        now = time.monotonic()
        for worker in list(self._workers.values()):
            if now - worker.last_seen > self._hb_timeout:
                silent = now - worker.last_seen
                reason = f"worker {worker.worker_id} silent for {silent:.1f}s"
                self._worker_lost(worker, reason, kill=True)
            elif self._max_rss is not None:
                self._check_memory(worker, self._max_rss)
        self.call_later(self._hb_interval, self._check_heartbeats)

    def _check_memory(self, worker: PoolWorker, limit: int) -> None:
        """Replace a worker whose memory is above ``limit``; its steps run again elsewhere.

        A local worker is measured here (psutil), so a worker too busy or too broken to
        report still gets caught; a remote one by the RSS its heartbeats report."""
        child = self._children.get(worker.identity)
        if child is not None:
            try:
                worker.rss = psutil.Process(child.proc.pid).memory_info().rss
            except psutil.Error:
                return  # it is exiting: the pidfd reports that
        if worker.rss > limit:
            reason = (
                f"worker {worker.worker_id} uses {worker.rss / MIB:.0f} MiB, "
                f"above the {limit / MIB:.0f} MiB limit"
            )
            self._worker_lost(worker, reason, kill=True)

    @staticmethod
    def _worker_stats(w: PoolWorker) -> dict[str, Any]:
        return {
            "worker_id": w.worker_id,
            "pid": w.pid,
            "host": w.host,
            "local": w.local,
            "slots": w.slots,
            "busy": len(w.tasks),
            "plugins": sorted(w.plugins),
            "rss": w.rss,
            "last_seen": w.last_seen_wall,
        }

    def when_workers(self, count: int) -> Future[None]:
        """A future resolved once at least ``count`` workers have said hello (for tests)."""
        fut: Future[None] = Future()
        self._waiters.append((count, fut))
        self._notify_waiters()
        return fut

    def _notify_waiters(self) -> None:
        ready = [(n, f) for n, f in self._waiters if len(self._workers) >= n]
        for item in ready:
            self._waiters.remove(item)
            item[1].set_result(None)
