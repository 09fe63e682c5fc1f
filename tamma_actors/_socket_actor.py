"""SocketActor: a pykka actor whose own thread polls its ZeroMQ sockets and its inbox.

A ZeroMQ socket must only ever be used by one thread. A SocketActor's thread is the only
one that touches the sockets it owns: one ``zmq.Poller`` waits on those sockets, on plain
file descriptors (pipes, pidfds), on a wake-up fd signalled by the inbox, and until the
next timer deadline. Nothing polls on a fixed tick.

Each loop iteration handles at most ``inbox_batch`` messages, calls each readable socket's
callback at most ``socket_batch`` times and runs at most ``timer_batch`` due timers, so a
busy socket cannot starve the inbox nor the other way round.

Failure semantics are pykka's (see :mod:`tamma_actors._envelope`). A watch callback or a
timer callback that raises is treated exactly like a tell'd message that raised: the error
is logged by ``_handle_failure``, ``on_failure`` runs and the actor stops.

Life cycle: subclasses create and bind their sockets in ``on_start`` (on the actor thread)
and ``watch()`` them; they close them in ``on_stop``. ``start()`` returns at once and an
``on_start`` that raises is logged as pykka logs it; ``start_and_wait()`` returns once
``on_start`` has run and raises what it raised instead (a socket that cannot be bound is
the caller's error to report, not an unhandled failure), the actor then being gone.
Sockets still watched when the actor stops are closed with linger 0 here; watched plain
fds are only forgotten (their owner closes them). ``ActorRef.stop()`` returns once the
thread has closed those sockets and answered every pending ask (with ``ActorDeadError``),
i.e. just before the thread exits.
"""

from __future__ import annotations

import itertools
import logging
import math
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Self, cast

import pykka
import zmq
from pykka import ActorRegistry, ThreadingFuture
from pykka._envelope import Envelope
from pykka.messages import _ActorStop

from tamma_actors._envelope import (
    fail_actor,
    handle_envelope,
    reject_envelope,
    run_callback,
    run_setup,
)
from tamma_actors._errors import SupervisionError
from tamma_actors._socket_inbox import SocketInbox, Urgent
from tamma_actors._timers import TimerHandle, TimerHeap

if TYPE_CHECKING:
    from pykka._actor import ActorInbox

__all__ = ["SocketActor", "Urgent", "send_frames"]

logger = logging.getLogger(__name__)

_thread_counter = itertools.count()

Watchable = zmq.Socket[Any] | int


# The flags as plain ints (an enum.Flag "|" costs more than the send) and the backend's
# send (pyzmq's Python-level Socket.send wrapper only adds routing_id/group handling, which
# we never use): 0.45 instead of 3.7 us for a two-frame message.
_NOBLOCK = int(zmq.NOBLOCK)
_MORE = int(zmq.NOBLOCK | zmq.SNDMORE)
_send = zmq.backend.Socket.send


def send_frames(sock: zmq.Socket[Any], frames: Sequence[bytes]) -> None:
    """Send one multipart message without blocking (``zmq.Again`` when it cannot go).

    pyzmq's ``send_multipart`` checks every part in Python first and costs about four
    times as much as the sends themselves; the parts here are always bytes."""
    last = len(frames) - 1
    for i, frame in enumerate(frames):
        _send(sock, frame, _MORE if i < last else _NOBLOCK)


class SocketActor(pykka.Actor):
    """A pykka actor on its own thread that owns ZeroMQ sockets: one loop polls the sockets it
    watches and a wake-up fd for its inbox, so a socket is only ever used by its actor's
    thread."""

    inbox_batch: ClassVar[int] = 64
    socket_batch: ClassVar[int] = 64
    timer_batch: ClassVar[int] = 64

    zmq_context: zmq.Context[Any]

    def __init__(self, zmq_context: zmq.Context[Any], *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.zmq_context = zmq_context
        self._inbox = cast(SocketInbox, self.actor_inbox)
        self._inbox.actor = self
        self._poller = zmq.Poller()
        self._watched: dict[Watchable, Callable[[], None]] = {}
        self._drains: set[Watchable] = set()  # callbacks that read a whole batch themselves
        self._timers = TimerHeap()
        self._timer_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop_replies: list[pykka.Future[Any]] = []
        self._started: ThreadingFuture[None] | None = None  # set by start_and_wait

    @classmethod
    def start_and_wait(cls, *args: Any, timeout: float, **kwargs: Any) -> pykka.ActorRef[Self]:
        """``start()``, then wait until ``on_start`` has run; what it raised is raised here
        (and not logged), and the actor is gone. An ``on_start`` still running after
        ``timeout`` seconds: the actor is told to stop and ``SupervisionError`` is raised."""
        actor = cls(*args, **kwargs)
        started: ThreadingFuture[None] = ThreadingFuture()
        actor._started = started  # before its thread exists: that thread reads it
        ActorRegistry.register(actor.actor_ref)
        actor._start_actor_loop()
        try:
            started.get(timeout=timeout)
        except pykka.Timeout:
            actor.actor_ref.stop(block=False)
            raise SupervisionError(f"{actor} did not start within {timeout:.0f}s") from None
        return actor.actor_ref

    @staticmethod
    def _create_actor_inbox() -> ActorInbox:
        return SocketInbox()

    @staticmethod
    def _create_future() -> pykka.Future[Any]:
        return ThreadingFuture()

    def _start_actor_loop(self) -> None:
        self._thread = threading.Thread(
            target=self._actor_loop,
            name=f"{self.__class__.__name__}-{next(_thread_counter)}",
            daemon=False,
        )
        self._thread.start()

    # -- the API for subclasses (call these on the actor thread) ---------------------------

    def watch(
        self, sock: Watchable, on_readable: Callable[[], None], *, drains: bool = False
    ) -> None:
        """Call ``on_readable()`` on the actor thread whenever ``sock`` is readable.

        Readiness is level-triggered: the callback should read without blocking (one
        message is fine: it is called again while the socket stays readable). A callback
        watched with ``drains=True`` reads up to ``socket_batch`` messages itself (until
        ``zmq.Again``) and is called once per loop turn: no readiness query per message
        (``ZMQ_EVENTS`` costs as much as the read). Watching an already watched socket
        replaces its callback.
        """
        self._check_thread("watch")
        if sock not in self._watched:
            self._poller.register(sock, zmq.POLLIN)
        self._watched[sock] = on_readable
        if drains:
            self._drains.add(sock)
        else:
            self._drains.discard(sock)

    def unwatch(self, sock: Watchable) -> None:
        """Stop watching ``sock`` (it is not closed); unknown sockets are ignored."""
        self._check_thread("unwatch")
        self._drains.discard(sock)
        if self._watched.pop(sock, None) is not None:
            self._poller.unregister(sock)

    def call_later(self, delay: float, fn: Callable[[], None]) -> TimerHandle:
        """Run ``fn()`` on the actor thread after ``delay`` seconds; may be called from any
        thread. If ``fn`` raises, the actor fails as if a tell'd message had raised."""
        deadline = time.monotonic() + max(0.0, delay)
        with self._timer_lock:
            handle = self._timers.push(deadline, fn)
        if threading.current_thread() is not self._thread:
            self._inbox.waker.signal()  # the loop may be sleeping past this new deadline
        return handle

    def _check_thread(self, what: str) -> None:
        if self._thread is not None and threading.current_thread() is not self._thread:
            raise SupervisionError(f"{what}() must be called on {self}'s own thread")

    # -- the loop ---------------------------------------------------------------------------

    def _actor_loop(self) -> None:
        try:
            self._poller.register(self._inbox.waker.fileno(), zmq.POLLIN)
            self._setup()
            while not self.actor_stopped.is_set():
                self._iterate()
        finally:
            self._teardown()

    def _setup(self) -> None:
        started = self._started
        if started is None:
            run_setup(self)
            return
        try:
            self.on_start()
        except Exception:
            # What pykka's failed setup does, less the log: start_and_wait raises it.
            ActorRegistry.unregister(self.actor_ref)
            self.actor_stopped.set()
            started.set_exception()
            return
        except BaseException:
            started.set_exception()
            raise
        started.set(None)

    def _iterate(self) -> None:
        try:
            events = self._poller.poll(self._poll_timeout())
        except zmq.ZMQError:
            fail_actor(self, sys.exc_info())
            return
        waker_fd = self._inbox.waker.fileno()
        ready = [sock for sock, _ in events if sock != waker_fd]
        if len(ready) < len(events):
            self._inbox.acknowledge()
        self._handle_inbox()
        for sock in ready:
            self._handle_readable(sock)
        self._handle_timers()

    def _poll_timeout(self) -> int | None:
        """Milliseconds until something is due: 0 with messages waiting, None when idle."""
        if not self._inbox.empty():
            return 0
        with self._timer_lock:
            deadline = self._timers.next_deadline()
        if deadline is None:
            return None
        # Round up: waking a fraction of a millisecond early would spin until the deadline.
        return max(0, math.ceil((deadline - time.monotonic()) * 1000))

    def _handle_inbox(self) -> None:
        for _ in range(self.inbox_batch):
            if self.actor_stopped.is_set():
                return
            envelope = self._inbox.pop()
            if envelope is None:
                return
            if isinstance(envelope.message, _ActorStop) and envelope.reply_to is not None:
                # Answer the stop only once the thread has let go of its sockets.
                self._stop_replies.append(envelope.reply_to)
                envelope = Envelope(envelope.message)
            handle_envelope(self, envelope)

    def _handle_readable(self, sock: Watchable) -> None:
        if sock in self._drains:
            callback = self._watched.get(sock)
            if callback is not None and not self.actor_stopped.is_set():
                run_callback(self, callback)
            return
        for _ in range(self.socket_batch):
            callback = self._watched.get(sock)
            if callback is None or self.actor_stopped.is_set():
                return
            run_callback(self, callback)
            if not self._still_readable(sock):
                return

    def _still_readable(self, sock: Watchable) -> bool:
        if isinstance(sock, int) or sock.closed or sock not in self._watched:
            return False  # plain fds: the next poll says whether more is waiting
        try:
            return bool(cast(int, sock.get(zmq.EVENTS)) & zmq.POLLIN)
        except zmq.ZMQError:
            return False

    def _handle_timers(self) -> None:
        now = time.monotonic()
        for _ in range(self.timer_batch):
            if self.actor_stopped.is_set():
                return
            with self._timer_lock:
                handle = self._timers.pop_due(now)
            if handle is None:
                return
            if not handle.cancelled:
                run_callback(self, handle.fn)

    def _teardown(self) -> None:
        with self._timer_lock:
            self._timers.clear()
        for sock in list(self._watched):
            if not isinstance(sock, int):
                sock.close(linger=0)
        self._watched.clear()
        self._drains.clear()
        for envelope in self._inbox.close():
            reject_envelope(self, envelope)
        for reply in self._stop_replies:
            reply.set(None)
        self._stop_replies.clear()
