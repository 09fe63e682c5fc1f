"""The request layer under :class:`~tamma_actors._client.Client`: one DEALER socket to a
node's control ROUTER.

:class:`ClientSocket` owns the socket and the request ids: it sends a request (waiting as
long as for a reply when there is no connection yet), matches replies to requests by id,
pipelines many requests over the one socket (``request_many``) and turns an error reply
into the matching ``TammaError``. It knows no operation; ``Client`` builds those on it.

A client is **not thread-safe**: its socket may only be used by one thread at a time (give
each thread its own client). A reply with a foreign id (a late answer to a request that
timed out) is discarded. After a timeout the socket is replaced, so a late reply can never
be taken for the answer to the next request.

A node that goes away under a request (stopped, restarted, killed) takes the request's
reply with the connection: the socket's monitor says so (``Drops``). A request that
changes nothing (``changes_nothing``) is then sent again, to the node that comes back on
the endpoint, with its whole timeout (at most ``MOST_RESENDS`` times); any other ends at
once with ``TransportError`` (it may or may not have been done), instead of waiting out its
timeout for a reply that cannot come.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any, Self

import zmq

from tamma_actors._client_drops import DROPPED, MOST_RESENDS, Drops, changes_nothing
from tamma_actors._codec import pack, unpack
from tamma_actors._curve import curve_client
from tamma_actors._errors import (
    FrameTooLarge,
    ProtocolError,
    RequestTimeout,
    TammaError,
    TransportError,
    error_from_code,
)
from tamma_actors._protocol import make_request
from tamma_actors._server_socket import ipc_path

__all__ = ["ClientSocket"]

# A request of this size or more that gets no reply in time says how big it was, and why
# that may matter (see ``_size_hint``).
_HINT_FROM_BYTES = 1 << 20

# How long a call waits at a time before it looks whether the client was closed.
_POLL_SLICE_S = 0.1

# Under the client's name: that is the logger users configure for its warnings.
log = logging.getLogger("tamma_actors._client")


class ClientSocket:
    """Requests over one socket; a context manager (``close()`` is idempotent)."""

    def __init__(
        self,
        endpoint: str,
        *,
        token: str | None,
        timeout: float,
        max_frame_bytes: int,
        curve_server_key: str | None,
    ) -> None:
        self.endpoint = endpoint
        self.token = token
        # The node's CURVE public key, for a tcp:// endpoint served with CURVE.
        self.curve_server_key = curve_server_key
        self.timeout = timeout
        self.max_frame_bytes = max_frame_bytes
        self._ids = itertools.count(1)
        self._sent_bytes = 0  # the size of the last request sent
        self._context: zmq.Context[Any] = zmq.Context()
        self._sock: zmq.Socket[Any] | None = None
        self._drops: Drops | None = None
        self._closed = False
        # Taken, never waited for, by each exchange: a second thread meanwhile is refused
        # (ZeroMQ sockets are not thread-safe: shared, libzmq asserts or replies go astray).
        self._in_use = threading.Lock()
        self._sock = self._connect()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the socket; if another thread's call is under way, that call ends with
        ``TransportError`` within ``_POLL_SLICE_S`` and closes it (a ZeroMQ socket is
        closed by the thread using it, never under it)."""
        if self._closed:
            return
        self._closed = True
        self._close_if_free()

    def _close_if_free(self) -> None:
        """Close the socket unless a call holds it (that call closes it as it ends: it
        looks at ``_closed`` after it lets go, so one of the two always closes it)."""
        if not self._in_use.acquire(blocking=False):
            return
        try:
            self._close_socket()
        finally:
            self._in_use.release()

    def _close_socket(self) -> None:
        self._drop_socket()
        self._context.term()  # again is nothing; a socket a failed _reset left unmade too

    def _connect(self) -> zmq.Socket[Any]:
        sock: zmq.Socket[Any] = self._context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, self.max_frame_bytes)
        drops = Drops(sock)  # before connect: its first connection is seen too
        try:
            curve_client(sock, self.endpoint, self.curve_server_key)
            sock.connect(self.endpoint)
        except zmq.ZMQError as exc:
            drops.close()
            sock.close(linger=0)
            raise TransportError(f"cannot connect to {self.endpoint}: {exc}") from exc
        except TammaError:
            drops.close()
            sock.close(linger=0)
            raise
        self._drops = drops
        return sock

    def _drop_socket(self) -> None:
        if self._drops is not None:
            self._drops.close()
            self._drops = None
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None

    def _reset(self) -> None:
        """Replace the socket: whatever the old one might still receive is dropped."""
        self._drop_socket()
        self._sock = self._connect()

    def request(self, op: str, args: Mapping[str, Any], *, timeout: float | None = None) -> Any:
        """Send one request and return its ``result``; an error reply raises the matching
        ``TammaError`` (always also a ``RemoteError``); no reply in time raises
        ``RequestTimeout``."""
        with self._exclusive():
            limit = self.timeout if timeout is None else timeout
            reply = self._ask(op, args, limit)
            if reply is None:
                self._reset()
                raise RequestTimeout(
                    f"no reply to {op!r} from {self.endpoint} within {limit:g}s"
                    f"{self._size_hint()}{self._absent_hint()}"
                )
        return self._result(reply)

    def _ask(self, op: str, args: Mapping[str, Any], limit: float) -> dict[str, Any] | None:
        """Send one request and wait ``limit`` for its reply (None: none came); a request
        whose connection dropped before its reply is sent again if ``changes_nothing``."""
        for _ in range(MOST_RESENDS + 1):
            self._forget_drops()
            request_id = self._send_request(op, args, limit)
            reply = self._receive(request_id, time.monotonic() + limit)
            if reply is not DROPPED:
                return reply
            if not changes_nothing(op, args):
                self._reset()
                raise TransportError(
                    f"the connection to {self.endpoint} dropped before {op!r} was answered"
                    f"{self._drop_cause()}: it may or may not have been done"
                )
            log.info("the connection to %s dropped: asking %r again", self.endpoint, op)
        self._reset()
        raise TransportError(
            f"the connection to {self.endpoint} dropped {MOST_RESENDS + 1} times before "
            f"{op!r} was answered{self._drop_cause()}"
        )

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        if not self._in_use.acquire(blocking=False):
            raise TransportError(
                "this client is in use by another thread: a Client is not thread-safe "
                "(give each thread its own)"
            )
        try:
            if self._closed or self._sock is None:
                raise TransportError("the client is closed")
            yield
        finally:
            self._in_use.release()
            if self._closed:  # closed by another thread meanwhile (or just now)
                self._close_if_free()

    def _forget_drops(self) -> None:
        """Read the drops seen so far: they took no reply of the requests about to go."""
        assert self._drops is not None
        self._drops.read()

    def _drop_cause(self) -> str:
        return self._size_hint() or " (the node stopped or restarted)"

    def _absent_hint(self) -> str:
        """Why an ``ipc://`` node did not answer, when its socket file is not there."""
        path = ipc_path(self.endpoint)
        if path is None or path.exists():
            return ""
        return f" (there is no socket file {path}: no node is running there)"

    def _size_hint(self) -> str:
        """Why a big request may have had no reply: a node drops, unread, a frame over
        twice its own cap, which may be smaller than this client's."""
        if self._sent_bytes < _HINT_FROM_BYTES:
            return ""
        return (
            f" (the request was {self._sent_bytes:,} bytes: a node drops one over twice its "
            "max_frame_bytes unanswered, and its cap may be smaller than this client's)"
        )

    def request_many(
        self,
        op: str,
        args_list: Iterable[Mapping[str, Any]],
        *,
        window: int = 256,
        timeout: float | None = None,
    ) -> list[Any]:
        """Pipeline one request per ``args_list`` entry over the one socket, at most
        ``window`` in flight; return the results in order. Every reply is collected before
        the first error reply is raised. ``timeout`` bounds the wait for *each next* reply."""
        replies = self.exchange_many(op, args_list, window=window, timeout=timeout)
        return [self._result(reply) for reply in replies]

    def exchange_many(
        self,
        op: str,
        args_list: Iterable[Mapping[str, Any]],
        *,
        window: int = 256,
        timeout: float | None = None,
    ) -> list[dict[str, Any]]:
        """As :meth:`request_many`, but return the replies themselves, errors included
        (``{"ok": false, "error": {...}}``), for a caller that handles each one."""
        with self._exclusive():
            return self._exchange_many(op, args_list, window, timeout)

    def _exchange_many(
        self,
        op: str,
        args_list: Iterable[Mapping[str, Any]],
        window: int,
        timeout: float | None,
    ) -> list[dict[str, Any]]:
        if window < 1:
            raise ValueError("window must be at least 1")
        limit = self.timeout if timeout is None else timeout
        self._forget_drops()
        pending = iter(args_list)
        index_of: dict[int, int] = {}
        replies: list[dict[str, Any] | None] = []
        exhausted = False
        while True:
            while not exhausted and len(index_of) < window:
                args = next(pending, None)
                if args is None:
                    exhausted = True
                    break
                request_id = self._send_request(op, args, limit)
                index_of[request_id] = len(replies)
                replies.append(None)
            if not index_of:
                break
            reply = self._receive_any(index_of, time.monotonic() + limit)
            if reply is DROPPED:
                self._reset()
                raise TransportError(
                    f"the connection to {self.endpoint} dropped with {len(index_of)} {op!r} "
                    f"request(s) unanswered{self._drop_cause()}: they may or may not have "
                    "been done"
                )
            if reply is None:
                self._reset()
                raise RequestTimeout(
                    f"{len(index_of)} {op!r} request(s) unanswered by {self.endpoint} "
                    f"within {limit:g}s"
                )
            replies[index_of.pop(reply["id"])] = reply
        return [reply for reply in replies if reply is not None]

    def _send_request(self, op: str, args: Mapping[str, Any], limit: float) -> int:
        assert self._sock is not None
        request_id = next(self._ids)
        data = pack(make_request(request_id, op, args, self.token))
        self._sent_bytes = len(data)
        if len(data) > self.max_frame_bytes:
            raise FrameTooLarge(
                f"{op} request of {len(data)} bytes exceeds the {self.max_frame_bytes}-byte cap"
            )
        try:
            try:
                self._sock.send(data, zmq.NOBLOCK)
            except zmq.Again:
                # No connection to the node right now (it is starting, restarting, or
                # refused our handshake): wait for one as long as for a reply.
                if not self._poll(zmq.POLLOUT, time.monotonic() + limit):
                    self._reset()
                    why = self._absent_hint() or (
                        " (is the node up, and is its CURVE key the one given?)"
                    )
                    raise RequestTimeout(
                        f"no connection to {self.endpoint} within {limit:g}s to send {op!r}{why}"
                    ) from None
                self._sock.send(data, zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            self._reset()
            raise TransportError(f"cannot send to {self.endpoint}: {exc}") from exc
        return request_id

    def _receive_any(self, wanted: Mapping[int, int], deadline: float) -> dict[str, Any] | None:
        """A reply to one of ``wanted``; None when none came by ``deadline``; ``DROPPED``
        when the connection they went out on dropped and no reply is waiting."""
        assert self._sock is not None and self._drops is not None
        while True:
            try:  # a reply already queued needs no poll (a pipelined batch's do)
                frames = self._sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                if not self._poll(zmq.POLLIN, deadline, self._drops.monitor):
                    return None
                if not self._sock.poll(0, zmq.POLLIN) and self._drops.read():
                    return DROPPED
                continue  # a reply came (read above), a connection made, a handshake refused
            try:
                reply = unpack(frames[-1], self.max_frame_bytes)
            except TammaError as exc:
                log.warning("discarding an undecodable reply from %s: %s", self.endpoint, exc)
                continue
            if isinstance(reply, dict) and reply.get("id") in wanted:
                return reply
            # A late reply to an earlier request: not ours, keep waiting.

    def _poll(self, events: int, deadline: float, monitor: zmq.Socket[Any] | None = None) -> bool:
        """Whether ``events`` (or an event of ``monitor``) came before ``deadline``; polled
        in slices, so that a ``close()`` from another thread ends the wait
        (``TransportError``)."""
        assert self._sock is not None
        poller = zmq.Poller()
        poller.register(self._sock, events)
        if monitor is not None:
            poller.register(monitor, zmq.POLLIN)
        while True:
            if self._closed:
                raise TransportError(f"the client was closed while it waited for {self.endpoint}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return bool(poller.poll(0))
            if poller.poll(int(min(remaining, _POLL_SLICE_S) * 1000) or 1):
                return True

    def _receive(self, request_id: int, deadline: float) -> dict[str, Any] | None:
        return self._receive_any({request_id: 0}, deadline)

    @staticmethod
    def _result(reply: dict[str, Any]) -> Any:
        if reply.get("ok") is True:
            return reply.get("result")
        error = reply.get("error")
        if not isinstance(error, dict):
            raise ProtocolError(f"malformed error reply: {reply!r}")
        raise error_from_code(
            str(error.get("code", "internal")),
            str(error.get("message", "")),
            error.get("details"),
        )
