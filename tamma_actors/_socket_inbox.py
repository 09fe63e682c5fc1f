"""A SocketActor's inbox: a thread-safe FIFO whose waker (an eventfd) the actor's poller
waits on, and the :class:`Urgent` lane that goes ahead of it."""

from __future__ import annotations

import os
import queue
import threading
from collections import deque
from typing import Any, NamedTuple

import pykka
from pykka._envelope import Envelope

from tamma_actors._envelope import reject_envelope

__all__ = ["SocketInbox", "Urgent", "Waker"]


class Waker:
    """A file descriptor that becomes readable when signalled: an eventfd, or a pipe.

    The lock keeps a late ``signal()`` from another thread from writing to a descriptor
    number that ``close()`` has just released (and the OS may already have reused).
    """

    __slots__ = ("_lock", "_read_fd", "_write_fd")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        if hasattr(os, "eventfd"):
            fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            self._read_fd, self._write_fd = fd, fd
        else:  # pragma: no cover - non-Linux fallback
            self._read_fd, self._write_fd = os.pipe()
            os.set_blocking(self._read_fd, False)
            os.set_blocking(self._write_fd, False)

    def fileno(self) -> int:
        return self._read_fd

    def signal(self) -> None:
        with self._lock:
            if self._write_fd < 0:
                return  # closed: the actor is gone, nobody is waiting
            try:
                if self._read_fd == self._write_fd:
                    os.eventfd_write(self._write_fd, 1)
                else:  # pragma: no cover - non-Linux fallback
                    os.write(self._write_fd, b"\x01")
            except BlockingIOError:  # pragma: no cover - a full pipe is already readable
                pass

    def drain(self) -> None:
        try:
            if self._read_fd == self._write_fd:
                os.eventfd_read(self._read_fd)
            else:  # pragma: no cover - non-Linux fallback
                while os.read(self._read_fd, 4096):
                    pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        with self._lock:
            fds = {self._read_fd, self._write_fd} - {-1}
            self._read_fd = self._write_fd = -1
        for fd in fds:
            os.close(fd)


class Urgent(NamedTuple):
    """A message that goes ahead of the others waiting in a SocketActor's inbox (urgent ones
    keep their order among themselves): for a read that must not wait behind a backlog, and
    need not see what that backlog holds (a node's health, under load)."""

    message: Any


class SocketInbox:
    """A thread-safe FIFO that signals its waker on the empty → non-empty edge only; an
    :class:`Urgent` message goes into a lane of its own, taken first.

    The consumer calls ``acknowledge()`` when the waker fired and then pops; a put that lands
    after the acknowledgement signals again, and the loop never sleeps while items remain, so
    no wake-up is lost and an idle actor costs no CPU.
    """

    __slots__ = ("_closed", "_items", "_lock", "_signalled", "_urgent", "actor", "waker")

    def __init__(self) -> None:
        self._items: deque[Envelope[Any]] = deque()
        self._urgent: deque[Envelope[Any]] = deque()
        self._lock = threading.Lock()
        self._closed = False
        self._signalled = False
        self.waker = Waker()
        self.actor: pykka.Actor | None = None

    def put(self, envelope: Envelope[Any], /) -> None:
        with self._lock:
            closed = self._closed
            if not closed:
                if isinstance(envelope.message, Urgent):
                    self._urgent.append(Envelope(envelope.message.message, envelope.reply_to))
                else:
                    self._items.append(envelope)
                wake = not self._signalled
                self._signalled = True
        if closed:
            # The actor is gone (pykka would leave this ask hanging forever).
            if self.actor is not None:
                reject_envelope(self.actor, envelope)
        elif wake:
            self.waker.signal()

    def get(self) -> Envelope[Any]:
        envelope = self.pop()
        if envelope is None:
            raise queue.Empty
        return envelope

    def pop(self) -> Envelope[Any] | None:
        with self._lock:
            if self._urgent:
                return self._urgent.popleft()
            return self._items.popleft() if self._items else None

    def empty(self) -> bool:
        return not self._items and not self._urgent

    def acknowledge(self) -> None:
        self.waker.drain()
        with self._lock:
            self._signalled = False

    def close(self) -> list[Envelope[Any]]:
        """Refuse further messages; return those still waiting."""
        with self._lock:
            self._closed = True
            left = [*self._urgent, *self._items]
            self._urgent.clear()
            self._items.clear()
        self.waker.close()
        return left
