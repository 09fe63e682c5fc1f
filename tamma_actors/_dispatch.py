"""Actors are cheap: pykka actors that share a small pool of threads.

A :class:`PoolActor` has no thread of its own. Its inbox schedules it on a
:class:`Dispatcher` when a message arrives on an idle actor; one of the dispatcher's threads
then runs a *turn*: at most ``batch`` messages, after which the actor goes back to the end
of the run queue if more are waiting (so a chatty actor cannot starve the others). An actor
is queued at most once, so it never runs on two threads at once, and its messages are
handled in the order they were put.

Per idle actor we keep what pykka itself allocates (urn, stop Event, ActorRef) plus a
slotted inbox whose deque exists only while messages are waiting. The scheduling state is
guarded by one lock per dispatcher rather than a lock per actor.

Message semantics are pykka's (see :mod:`tamma_actors._envelope`), except that a
``BaseException`` asks the other actors to stop without waiting for them: a pool thread
waiting there could be waiting for itself.

PoolActors are not in pykka's ``ActorRegistry``: it is a list, so each stop would scan every
live actor (with 100,000 executions waiting, one stop took tens of milliseconds). The
dispatcher keeps its actors in a set instead (``Dispatcher.actors()``); a ``BaseException``
still stops them, through ``_envelope.STOP_ALL_HOOKS``.

Shutdown order: stop the actors, then close the dispatcher. ``Dispatcher.close()`` never
hangs: it lets running turns finish (bounded by ``timeout``), and actors still alive after
that are abandoned: unregistered, marked stopped, their pending asks failed with
``ActorDeadError``; their ``on_stop`` does not run. A tell'd message still queued when an
actor stops (abandoned, or a turn raised) goes to its ``on_dropped``, which answers
whatever reply the message carries itself.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import random
import sys
import threading
import uuid
from collections import deque
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, cast

import pykka
from pykka import ThreadingFuture
from pykka.messages import _ActorStop

from tamma_actors._envelope import (
    STOP_ALL_HOOKS,
    handle_envelope,
    reject_envelope,
    run_callback,
    run_setup,
)

if TYPE_CHECKING:
    from pykka._actor import ActorInbox
    from pykka._envelope import Envelope

__all__ = ["Dispatcher", "PoolActor"]

logger = logging.getLogger(__name__)

# Inbox states; an int field keeps the slotted inbox small.
_IDLE, _QUEUED, _DEAD = 0, 1, 2


class Dispatcher:
    """A shared pool of ``threads`` OS threads running actor turns; a context manager."""

    def __init__(self, threads: int = 2, batch: int = 64, name: str = "tamma-dispatch") -> None:
        if threads < 1 or batch < 1:
            raise ValueError("a dispatcher needs at least one thread and a batch of one")
        self.batch = batch
        self.lock = threading.Lock()
        self._runq: queue.SimpleQueue[_PoolInbox | None] = queue.SimpleQueue()
        self._closed = False
        self._actors: set[PoolActor] = set()  # live ones, under ``lock``
        STOP_ALL_HOOKS.append(self._stop_all)
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=False)
            for i in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    @property
    def closed(self) -> bool:
        return self._closed

    def actors(self) -> list[pykka.ActorRef[Any]]:
        """Refs of the live actors on this dispatcher."""
        with self.lock:
            return [a.actor_ref for a in self._actors]

    def _adopt(self, actor: PoolActor) -> None:
        with self.lock:
            self._actors.add(actor)

    def _forget(self, actor: PoolActor) -> None:
        with self.lock:
            self._actors.discard(actor)

    def _stop_all(self) -> None:
        for ref in self.actors():
            ref.stop(block=False)

    def schedule(self, inbox: _PoolInbox) -> None:
        """Queue an actor for a turn; the caller holds ``lock`` and has marked it queued."""
        self._runq.put(inbox)

    def close(self, timeout: float = 10.0) -> None:
        """Stop the threads after their current turns; idempotent. See the module doc."""
        with self.lock:
            if self._closed:
                return
            self._closed = True
        with contextlib.suppress(ValueError):
            STOP_ALL_HOOKS.remove(self._stop_all)
        for _ in self._threads:
            self._runq.put(None)
        current = threading.current_thread()
        for thread in self._threads:
            if thread is not current:
                thread.join(timeout)
                if thread.is_alive():
                    logger.warning("%s did not finish its turn within %.1fs", thread.name, timeout)
        self._abandon_live_actors()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _work(self) -> None:
        while not self._closed:
            inbox = self._runq.get()
            if inbox is None or self._closed:
                return
            inbox.run_turn()

    def _abandon_live_actors(self) -> None:
        for ref in self.actors():
            inbox = ref.actor_inbox
            assert isinstance(inbox, _PoolInbox)
            inbox.abandon()


class _PoolInbox:
    """The inbox of one PoolActor: a lazily created deque plus scheduling state."""

    __slots__ = ("_gone", "_items", "_started", "_state", "actor", "dispatcher")

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher
        self.actor: PoolActor | None = None
        self._items: deque[Envelope[Any]] | None = None
        self._state = _QUEUED  # until start() queues the first turn, nothing else may
        self._started = False
        self._gone: str | None = None  # the stopped actor's name, once it is let go of

    def put(self, envelope: Envelope[Any], /) -> None:
        dispatcher = self.dispatcher
        who: PoolActor | str | None = None
        with dispatcher.lock:
            dead = self._state == _DEAD or dispatcher.closed
            if not dead:
                if self._items is None:
                    self._items = deque()
                self._items.append(envelope)
                if self._state == _IDLE:
                    self._state = _QUEUED
                    dispatcher.schedule(self)
            else:  # under the lock: _teardown names it before it lets go of the actor
                who = self._gone or self.actor
        if dead:
            assert who is not None  # set before start() made the actor reachable
            reject_envelope(who, envelope)

    def get(self) -> Envelope[Any]:
        with self.dispatcher.lock:
            if not self._items:
                raise queue.Empty
            return self._items.popleft()

    def empty(self) -> bool:
        return not self._items

    def start(self) -> None:
        """Queue the first turn, which runs ``on_start``."""
        with self.dispatcher.lock:
            closed = self.dispatcher.closed
            if not closed:
                self.dispatcher.schedule(self)
        if closed:
            self.abandon()

    def run_turn(self) -> None:
        actor = self.actor
        assert actor is not None
        stopped = actor.actor_stopped
        if not self._started:
            self._started = True
            run_setup(actor)
        items = self._items
        for _ in range(self.dispatcher.batch):
            # Only this turn pops and only the end of a turn drops the deque, so reading
            # without the lock is safe; puts append under it.
            if stopped.is_set() or not items or self.dispatcher.closed:
                break
            handle_envelope(actor, items.popleft(), block_stop_all=False)
        if not stopped.is_set():
            run_callback(actor, actor.on_turn_end, block_stop_all=False)
        if stopped.is_set():
            self._teardown(actor)
            return
        with self.dispatcher.lock:
            if self._items:
                self.dispatcher.schedule(self)  # more waiting: back of the queue
            else:
                self._state = _IDLE
                self._items = None  # an idle actor holds no deque

    def _teardown(self, actor: PoolActor) -> None:
        with self.dispatcher.lock:
            self._state = _DEAD
            self._gone = str(actor.actor_ref)
            left = list(self._items or ())
            if self._items is not None:
                self._items.clear()  # a turn still running must not see these
            self._items = None
        for envelope in left:
            if envelope.reply_to is None and not isinstance(envelope.message, _ActorStop):
                try:
                    actor.on_dropped(envelope.message)
                except Exception:  # it has stopped already: nothing more to fail
                    logger.exception("%s could not answer a message it dropped", actor)
            reject_envelope(actor, envelope)
        # The actor and its inbox no longer hold each other: once nothing else holds it,
        # reference counting frees the actor at once (no cycle left for the collector).
        self.actor = None

    def abandon(self) -> None:
        """Dispatcher closed under a live actor: stop it without running it."""
        with self.dispatcher.lock:
            if self._state == _DEAD:
                return
            actor = self.actor
        assert actor is not None  # set by PoolActor.__init__, before start() registers it
        self.dispatcher._forget(actor)
        actor.actor_stopped.set()
        logger.warning("%s abandoned: its dispatcher was closed", actor)
        self._teardown(actor)


# An actor's URN only has to be unique within this process: a generator seeded once from
# the OS, where pykka draws a ``uuid4`` per actor, whose ``os.urandom`` gives up the GIL:
# each start then waited to get it back behind every busy thread of the node.
_urns = random.Random(os.urandom(16))


class PoolActor(pykka.Actor):
    """A pykka actor with no thread of its own: its inbox schedules it on a Dispatcher when a
    message arrives; a turn processes at most `batch` messages, then the actor is re-queued
    if more are waiting. An actor never runs on two threads at once."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        # What pykka's ``Actor.__init__`` sets, but for the URN (see ``_urns``); the inbox
        # needs the dispatcher first.
        self._dispatcher = dispatcher
        self.actor_urn = uuid.UUID(int=_urns.getrandbits(128), version=4).urn
        self.actor_inbox = self._create_actor_inbox()
        self.actor_stopped = threading.Event()
        self._actor_ref = pykka.ActorRef(self)
        cast(_PoolInbox, self.actor_inbox).actor = self

    def on_turn_end(self) -> None:
        """After a turn's messages (unless the actor stopped): work the messages of one
        turn can share, such as one commit of their events. A failure here fails the
        actor like a failing tell'd message."""

    def on_dropped(self, message: Any) -> None:
        """A tell'd message left in the inbox when the actor stopped (a turn raised, or
        a stop came first): answer what it carries its own reply in, if anything."""

    def _create_actor_inbox(self) -> ActorInbox:  # type: ignore[override]
        return _PoolInbox(self._dispatcher)

    @staticmethod
    def _create_future() -> pykka.Future[Any]:
        return ThreadingFuture()

    def _start_actor_loop(self) -> None:
        cast(_PoolInbox, self.actor_inbox).start()

    # pykka's start/_stop/_handle_failure, with the dispatcher's set for its registry.

    @classmethod
    def start(cls, *args: Any, **kwargs: Any) -> pykka.ActorRef[Self]:
        return cls(*args, **kwargs).started()

    def started(self) -> pykka.ActorRef[Self]:
        """Start an actor made with ``cls(...)`` (``start`` does both): it is registered
        with its dispatcher and takes messages from now on."""
        self._dispatcher._adopt(self)
        self._start_actor_loop()
        return self.actor_ref

    def _stop(self) -> None:
        self._dispatcher._forget(self)
        self.actor_stopped.set()
        try:
            self.on_stop()
        except Exception:
            self._handle_failure(*sys.exc_info())

    def _handle_failure(
        self,
        exception_type: type[BaseException] | None,
        exception_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        logger.error(
            "Unhandled exception in %s:",
            self,
            exc_info=(exception_type, exception_value, traceback),  # type: ignore[arg-type]
        )
        self._dispatcher._forget(self)
        self.actor_stopped.set()
