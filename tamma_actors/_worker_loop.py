"""The worker's main thread: the DEALER socket to its node, and the loop that serves it.

Threads: the main thread owns the DEALER socket and is the only one to touch it. It polls
the socket and an eventfd. ``slots`` step runners (pykka ThreadingActors, one step at a
time each: ``_worker_runners``) run the steps; whatever they need sent (``started``,
``progress``, ``result``) is encoded on their thread, put on the outbox queue, and the
eventfd wakes the main thread, which sends it (a start notice may be held a while: see
``_worker_outbox``). An inline step (``noop``, ``echo``, ``fail``, or a plugin marked with
``inline_step``) runs on the main thread as its frame is read, and its result goes out
with the others read in the same batch: no thread hand-off. Until a welcome comes the
worker says hello again every few heartbeat intervals; once welcomed it sends heartbeats.
A managed worker whose parent is gone exits (``EXIT_PARENT_DIED``).
The socket's routing id, by which the node knows this worker, is a secret drawn for each
Worker (never its worker id, which anyone may read in ``tamma health``), or the one a node
drew for a local worker of its own: whoever connects under a worker's routing id is sent
its steps and heard on their behalf. A reconnection keeps it, so the node goes on taking
this worker's results; on each new connection (a dead one is found by ZMTP heartbeats:
``_worker_connection``) the worker says hello again at once. A node not up yet (or
restarting) is waited for, as ZeroMQ reconnects; a handshake the node will never accept (a
wrong CURVE key, CURVE on one side only), seen by the socket's monitor, ends the worker
(``EXIT_TRANSPORT``), and so does a hello the node refuses (``EXIT_REFUSED``: a node with
tokens admits only a worker holding a worker token or an admin one; saying hello again
cannot help).

Shutdown order: stop requested (``stop`` frame, or :meth:`Worker.request_stop`) ->
queued tasks answered as cancelled -> running steps' cancel events set -> wait up to
``stop_grace`` for their results and send them -> ``bye`` -> runners stopped -> socket
closed. :meth:`Worker.run` returns the process exit code (``EXIT_*``).
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import socket
import threading
import time
import uuid
from collections.abc import Collection, Mapping
from typing import Any

import zmq

from tamma_actors import _wire as wire
from tamma_actors._errors import Forbidden, TammaError, TransportError
from tamma_actors._plugins import load_registry
from tamma_actors._worker_connection import CurveKeys, connect
from tamma_actors._worker_outbox import Outbox
from tamma_actors._worker_runners import RunnerPool, Task

__all__ = [
    "EXIT_OK",
    "EXIT_PARENT_DIED",
    "EXIT_REFUSED",
    "EXIT_TRANSPORT",
    "EXIT_USAGE",
    "CurveKeys",
    "Worker",
]

log = logging.getLogger("tamma_actors._worker")

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_PARENT_DIED = 3
EXIT_TRANSPORT = 4
EXIT_REFUSED = 5  # the node refused its hello (its token)
# A shorter heartbeat interval would say hello (or beat) in a busy loop.
MIN_HEARTBEAT = 0.01

# Without a welcome after this many heartbeat intervals, say hello again: the node may
# have restarted (ZeroMQ reconnects silently) or not have been up yet.
HELLO_RETRY_INTERVALS = 3
_LINGER_MS = 1000
# In a long batch of frames, send the inline steps' results at least this often.
_INLINE_FLUSH = 64

_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    """This process's resident memory, as psutil reads it on Linux (``/proc/self/statm``),
    without psutil's import (~20 ms) on a worker's way to joining; psutil elsewhere."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        import psutil

        try:
            return int(psutil.Process().memory_info().rss)
        except psutil.Error:
            return 0


class Worker:
    """One worker: a DEALER socket to the node and ``slots`` step runners."""

    def __init__(
        self,
        endpoint: str,
        *,
        slots: int = wire.DEFAULT_WORKER_SLOTS,
        worker_id: str | None = None,
        heartbeat_interval: float = 1.0,
        enabled: Collection[str] = (),
        allowlist: Mapping[str, str] | None = None,
        managed: bool = False,
        parent_pid: int | None = None,
        max_frame_bytes: int = 8 << 20,
        curve: CurveKeys | None = None,
        stop_grace: float = 5.0,
        token: str | None = None,
        routing_id: bytes | None = None,
    ) -> None:
        if slots < 1:
            raise ValueError("slots must be >= 1")
        if not MIN_HEARTBEAT <= heartbeat_interval < math.inf:  # (a comparison NaN fails)
            raise ValueError(
                f"the heartbeat interval must be {MIN_HEARTBEAT} s or more, and finite, not "
                f"{heartbeat_interval}"
            )
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.managed = managed
        self._parent_pid = parent_pid if parent_pid is not None else os.getppid()
        self._hb_interval = heartbeat_interval
        self._max_frame = max_frame_bytes
        self._stop_grace = stop_grace
        self._token = token
        self._route = routing_id or secrets.token_urlsafe(24).encode()  # see above
        self._registry = load_registry(enabled=enabled, allowlist=allowlist)
        self._stop_requested = False
        self._stopping_since: float | None = None
        self._welcomed = False
        self._last_hello = 0.0
        self._hello_seq = 0  # hellos said; the welcome of each says its number back
        # the inputs and upstream outputs fan-out items share (wire.blob), by key: what
        # the node sent and has not told us to forget since its last welcome
        self._blobs: dict[str, tuple[Any, Any]] = {}
        self._welcomed_seq = 0  # the last hello welcomed, which each heartbeat names
        self._next_hb = 0.0
        self._closed = False
        self._ctx = zmq.Context()
        self._outbox = Outbox()
        try:
            self._sock, self._handshakes = connect(
                self._ctx, endpoint, self._route, max_frame_bytes, curve, heartbeat_interval
            )
        except BaseException:
            self._outbox.close()
            self._ctx.term()
            raise
        self._poller = zmq.Poller()
        self._poller.register(self._sock, zmq.POLLIN)
        self._poller.register(self._handshakes.monitor, zmq.POLLIN)
        self._poller.register(self._outbox.fd, zmq.POLLIN)
        self._runners = RunnerPool(slots, self._registry, self._outbox, max_frame_bytes)

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the runners, close the socket and the context; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._runners.close()
        self._handshakes.close()
        self._sock.close(_LINGER_MS)
        self._outbox.close()
        self._ctx.term()

    def request_stop(self) -> None:
        """Ask the main loop to stop gracefully; safe from signal handlers and threads."""
        self._stop_requested = True
        self._outbox.wake()

    @property
    def slots(self) -> int:
        return self._runners.slots

    def run(self) -> int:
        """Serve until stopped; returns the process exit code."""
        try:
            return self._serve()
        except TransportError as exc:  # a known failure: one line says it, no traceback
            log.error("worker %s: transport failed: %s", self.worker_id, exc)
            return EXIT_TRANSPORT
        except Forbidden as exc:
            hint = "" if self._token is not None else f"; it was given none ({wire.TOKEN_ENV})"
            log.error("worker %s: the node refused it: %s%s", self.worker_id, exc, hint)
            return EXIT_REFUSED

    def _serve(self) -> int:
        self._say_hello(time.monotonic())
        while True:
            now = time.monotonic()
            if self._stop_requested and self._stopping_since is None:
                self._begin_stop(now)
            if self._stopping_since is not None and self._stop_done(now):
                self._send(wire.bye(self.worker_id))
                return EXIT_OK
            if not self._on_timers(now):
                return EXIT_PARENT_DIED
            timeout_ms = int(max(0.0, self._next_deadline() - time.monotonic()) * 1000) + 1
            events = dict(self._poller.poll(timeout_ms))
            due = self._outbox.next_due()  # a held start notice, even while frames flow in
            if self._outbox.fd in events or (due is not None and due <= time.monotonic()):
                self._flush_outbox()
            if self._sock in events:
                self._drain_socket()
            if self._handshakes.monitor in events and self._handshakes.read():
                self._on_new_connection()

    def _stop_done(self, now: float) -> bool:
        assert self._stopping_since is not None
        if not self._runners.running_ids():
            return True
        if now - self._stopping_since >= self._stop_grace:
            log.warning("worker %s: steps ignored cancel, exiting anyway", self.worker_id)
            return True
        return False

    def _next_deadline(self) -> float:
        if not self._welcomed:
            deadline = self._last_hello + HELLO_RETRY_INTERVALS * self._hb_interval
        else:
            deadline = self._next_hb
        if self._stopping_since is not None:
            deadline = min(deadline, self._stopping_since + self._stop_grace)
        held = self._outbox.next_due()  # a held start notice
        return deadline if held is None else min(deadline, held)

    def _on_timers(self, now: float) -> bool:
        """Heartbeat and hello retries; False when the managing parent is gone."""
        if self.managed and os.getppid() != self._parent_pid:
            log.error("worker %s: parent node died, exiting", self.worker_id)
            return False
        if not self._welcomed:
            if now - self._last_hello >= HELLO_RETRY_INTERVALS * self._hb_interval:
                self._say_hello(now)
        elif now >= self._next_hb:
            running = self._runners.running_ids()
            self._send(wire.hb(self.worker_id, running, rss_bytes(), self._welcomed_seq))
            self._next_hb = now + self._hb_interval
        return True

    def _say_hello(self, now: float) -> None:
        self._welcomed = False
        self._last_hello = now
        self._hello_seq += 1
        host = socket.gethostname()
        names = self._registry.names()
        hello = wire.hello(
            self.worker_id,
            os.getpid(),
            host,
            self.slots,
            names,
            self._token,
            self._hello_seq,
            shared=True,
        )
        self._send(hello)

    def _on_new_connection(self) -> None:
        """Say hello again at once: the node then checks which of this worker's tasks the
        old connection lost (a run frame sent into it, a result sent out of it) against
        its next heartbeat, and runs those again; a node that restarted meanwhile learns
        of it without waiting for a rehello."""
        if not self._stop_requested and self._stopping_since is None:
            log.info("worker %s: connected to the node again", self.worker_id)
            self._say_hello(time.monotonic())

    def _begin_stop(self, now: float) -> None:
        log.info("worker %s: stopping", self.worker_id)
        self._stopping_since = now
        self._runners.cancel_all()
        self._flush_outbox()

    def _send(self, msg: Mapping[str, Any]) -> None:
        self._send_bytes(wire.encode(msg))

    def _send_bytes(self, frame: bytes) -> None:
        try:
            self._sock.send(frame, zmq.NOBLOCK)
        except zmq.Again:
            # Only when the node has been gone long enough to fill the pipe; the node
            # re-dispatches whatever it did not hear about.
            log.warning("worker %s: node unreachable, frame dropped", self.worker_id)
        except zmq.ZMQError as exc:
            raise TransportError(f"worker send failed: {exc}") from exc

    def _flush_outbox(self) -> None:
        for frame, finished in self._outbox.drain():
            self._send_bytes(frame)
            if finished is not None:
                self._runners.finished(finished)

    def _drain_socket(self) -> None:
        """Handle every frame queued on the socket, then send what inline steps answered
        (also every ``_INLINE_FLUSH`` frames, so a long batch does not hold them back)."""
        received = 0
        while True:
            try:
                parts = self._sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                if self._outbox.pending:
                    self._flush_outbox()
                return
            except zmq.ZMQError as exc:
                raise TransportError(f"worker receive failed: {exc}") from exc
            received += 1
            if received % _INLINE_FLUSH == 0 and self._outbox.pending:
                self._flush_outbox()
            if len(parts) != 1:
                log.warning("worker %s: dropped a %d-part message", self.worker_id, len(parts))
                continue
            try:
                msg = wire.decode_node_frame(parts[0], self._max_frame)
            except TammaError as exc:
                log.warning("worker %s: dropped a bad frame: %s", self.worker_id, exc)
                continue
            self._handle(msg)

    def _handle(self, msg: dict[str, Any]) -> None:
        kind = msg["t"]
        if kind == "welcome":
            self._welcomed = True
            self._blobs.clear()  # the node sends those it means again, after its welcome
            # a node that does not number its welcomes answers the last hello
            self._welcomed_seq = msg.get("hello_seq", self._hello_seq)
            if msg["heartbeat_interval"] > 0:
                self._hb_interval = float(msg["heartbeat_interval"])
            self._next_hb = time.monotonic()
        elif kind == "rehello":
            if not self._stop_requested and self._stopping_since is None:
                self._say_hello(time.monotonic())  # a stopping worker does not join again
        elif kind == "run":
            self._on_run(msg)
        elif kind == "blob":
            self._blobs[msg["key"]] = (msg["inputs"] or {}, msg["upstream"] or {})
        elif kind == "forget":
            self._blobs.pop(msg["key"], None)
        elif kind == "cancel":
            self._runners.cancel(msg["task_id"])
        elif kind == "stop":
            self._stop_requested = True
        elif kind == "refused":
            raise Forbidden(msg["reason"])

    def _on_run(self, msg: dict[str, Any]) -> None:
        if self._stopping_since is not None or self._stop_requested:
            # Not started and never answered: the node re-dispatches it after our bye.
            log.info("worker %s: stopping, not running %s", self.worker_id, msg["task_id"])
            return
        key = msg.get("shared")
        if key is not None:
            shared = self._blobs.get(key)
            if shared is None:  # its blob went with a dead connection: the node resends both
                error = {
                    "type": wire.SHARED_DATA_MISSING,
                    "message": f"this worker does not hold the shared data {key!r}",
                    "retryable": True,
                    "retry_after": None,
                }
                self._send(wire.result_error(msg["task_id"], error, 0.0))
                return
            msg["inputs"], msg["upstream"] = shared
        self._runners.submit(Task(msg, threading.Event()))
