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
"""

from __future__ import annotations

import hmac
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import psutil

from tamma_actors import _wire as wire
from tamma_actors._errors import Forbidden
from tamma_actors._pool_messages import TaskFinished, TaskRedispatched, cancelled_error, notify
from tamma_actors._protocol import Role, authorize

if TYPE_CHECKING:
    from tamma_actors._timers import TimerHandle
    from tamma_actors._worker_children import Child
    from tamma_actors._workerpool import _Task

__all__ = ["ConnectedWorkers", "PoolWorker", "RefusalLog", "Refused", "WorkerAdmission"]

log = logging.getLogger("tamma_actors._workerpool")

MIB = 1 << 20
# The shortest routing id a worker may name its connection by (see the module docstring).
MIN_ROUTE_BYTES = 16
_NEEDED = "a worker needs a worker token or an admin token"
_OURS = "its worker id is one of this node's own local workers'"
_SHOWN = 200  # characters of a peer's worker id (and of a reason naming it) health shows
_CATCH_UP_BATCHES = 16  # socket batches read before a heartbeat check


class RefusalLog:
    """Which refused hellos get a log line: the first of each worker id, then one every
    ``every`` seconds for that id (a peer may repeat itself), and at most ``most`` lines in
    any ``every`` seconds in all (a peer may take a new id each time); a line counts the
    refusals left out before it. Pure: the caller says what time it is."""

    def __init__(self, every: float = 60.0, most: int = 10, ids: int = 1024) -> None:
        self._every = every
        self._most = most
        self._ids = ids
        self._last: OrderedDict[str, float] = OrderedDict()  # worker id -> its last line
        self._lines: deque[float] = deque()  # when the lines of the last ``every`` s were
        self._left_out = 0

    def line(self, worker_id: str, now: float) -> int | None:
        """None: leave this refusal out; else log it, with how many were left out before."""
        while self._lines and self._lines[0] <= now - self._every:
            self._lines.popleft()
        last = self._last.get(worker_id)
        if (last is not None and now - last < self._every) or len(self._lines) >= self._most:
            self._left_out += 1
            return None
        self._last[worker_id] = now
        self._last.move_to_end(worker_id)
        while len(self._last) > self._ids:
            self._last.popitem(last=False)
        self._lines.append(now)
        left_out, self._left_out = self._left_out, 0
        return left_out


@dataclass
class Refused:
    """The hellos not admitted since the pool started, for ``tamma health``: how many,
    and the last one (worker id, reason, wall-clock time): a rogue or misconfigured
    worker, which the log only samples (:class:`RefusalLog`)."""

    count: int = 0
    last: dict[str, Any] | None = None

    def add(self, worker_id: str, reason: str, at: float) -> None:
        self.count += 1
        self.last = {"worker_id": worker_id[:_SHOWN], "reason": reason[:_SHOWN], "at": at}

    def report(self) -> dict[str, Any]:
        return {"count": self.count, "last": self.last}


def _public_route(identity: bytes, worker_id: str) -> str | None:
    """Why a worker's routing id is no secret (a worker of an older version names its
    connection by its worker id), or None."""
    if identity == worker_id.encode() or len(identity) < MIN_ROUTE_BYTES:
        return (
            "its connection's routing id is not a secret of its own (a worker older than "
            "this node names it by its worker id): others could take its place"
        )
    return None


@dataclass
class WorkerAdmission:
    """Who the node admits as a worker, and which of the names a worker offers count.

    A worker sees every step's inputs and decides every step's result. With
    ``worker_tokens`` (secrets that grant nothing else) or ``tokens`` (control tokens:
    token -> role name), a hello must carry one of the worker tokens or an admin token
    (which a worker needed before worker tokens existed); without either, every worker
    that reaches the socket joins (a local ipc socket is guarded by its 0700 directory).
    ``withheld``: names the node gates by its own settings and has not enabled (``shell``,
    ``record``): a worker offering them is sent no such step, and they do not become names
    a workflow may use."""

    tokens: Mapping[str, str] = field(default_factory=dict)
    withheld: frozenset[str] = frozenset()
    worker_tokens: frozenset[str] = frozenset()

    def refusal(self, token: str | None) -> str | None:
        """Why a hello with ``token`` is not admitted, or None. Tokens are compared in
        constant time (each of them, whichever matches)."""
        if not self.tokens and not self.worker_tokens:
            return None
        if token is None:
            return f"a token is required ({_NEEDED})"
        given = token.encode()
        matches = [hmac.compare_digest(known.encode(), given) for known in self.worker_tokens]
        if any(matches):
            return None
        if not self.tokens:  # (authorize would take any token for an admin's)
            return f"unknown token ({_NEEDED})"
        try:
            role = authorize(token, self.tokens)
        except Forbidden as exc:
            return f"{exc} ({_NEEDED})"
        if role < Role.admin:
            return f"{_NEEDED}, not a token of role {role.name!r}"
        return None

    def offer(self, plugins: Iterable[str]) -> frozenset[str]:
        return frozenset(plugins) - self.withheld


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

    def leaving(self, now: float) -> bool:
        """Whether it gave a step back unasked a short while ago, so is most likely
        stopping: its other steps come back the same way or at its bye, or it falls
        silent. Until then it is sent nothing (a step sent back to it would be lost twice);
        one still here after that was not leaving (a step raised StepCancelled itself)."""
        return self.sent_nothing_until is not None and now < self.sent_nothing_until


class ConnectedWorkers:
    """Joining, heartbeat and memory checks, losing a worker, and what the pool reports of
    its workers."""

    # Who may join, and which offers count (the node's settings); None admits every worker
    # and takes every offer (a pool on its own, as in tests).
    _admission: WorkerAdmission | None = None

    if TYPE_CHECKING:
        socket_batch: int
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
        @staticmethod
        def _kill(child: Child) -> None: ...

    def _on_hello(self, identity: bytes, msg: dict[str, Any]) -> None:
        worker_id = msg["worker_id"]
        if msg["slots"] < 1:
            log.warning("hello from worker %r with no slots dropped", worker_id)
            return
        admission = self._admission
        plugins = frozenset(msg["plugins"])
        child = self._children.get(identity)  # one of ours, under the route it was given
        reason = _public_route(identity, worker_id)
        if reason is None and child is None and self._names_a_child(worker_id):
            reason = _OURS
        if reason is None and admission is not None:
            reason = admission.refusal(msg.get("token"))
        if reason is not None:
            self._refuse(identity, worker_id, reason)
            return
        current = self._routes.get(identity)  # this connection's worker, if it joined
        if not self._take_name(worker_id, current, ours=child is not None):
            return
        if admission is not None:
            plugins = admission.offer(plugins)
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
        )
        self._workers[worker_id] = worker
        self._routes[identity] = worker
        self._offered_changed()
        self._send(identity, wire.welcome(self._hb_interval))
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

    def _offered_changed(self) -> None:
        """Tell whoever asked what the connected workers offer now, if that changed."""
        offered = frozenset(p for w in self._workers.values() for p in w.plugins)
        if offered != self._offered:
            self._offered = offered
            if self._on_offered is not None:
                self._on_offered(offered)

    def _requeue(self, tasks: list[_Task], reason: str) -> None:
        """Put tasks back at the head of the queue (they were first in line once already).

        Also for the tasks of a worker that answers a cancel the pool did not ask for:
        it is stopping on its own, and they run again elsewhere as after a crash."""
        again: list[str] = []
        for task in tasks:
            if task.cancel_timer is not None:
                # It was being cancelled: losing its worker settles that.
                task.cancel_timer.cancel()
                error = cancelled_error(reason)
                notify(task.reply_to, TaskFinished(task.task_id, False, None, error, 0.0))
                continue
            task.worker_id = None
            task.started = False  # the next worker announces its own start
            self._tasks[task.task_id] = task
            again.append(task.task_id)
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
