"""The worker's connection to its node: the DEALER socket, and its handshakes.

:func:`connect` makes the socket: its routing id (by which the node knows this worker: a
secret, see ``_worker_loop``), the frame cap, CURVE on ``tcp://`` when given the node's
key (:class:`CurveKeys`), ZMTP heartbeats, and :class:`Handshakes`, which reads the
socket's monitor: a handshake the node will never accept (a wrong CURVE key, CURVE on one
side only) is a ``TransportError``; a node that is not there is not (ZeroMQ reconnects).

A TCP connection can die without a FIN or an RST reaching either end (a network cut, a NAT
that forgot it): the socket would go on sending into it, for ever, and hear nothing. ZMTP
heartbeats (PING, answered by the node's I/O thread whatever its Python threads do) find
such a connection dead after ``DEAD_AFTER_INTERVALS`` heartbeat intervals (at least
``DEAD_AFTER_MIN`` seconds) without a byte from the node, or the time-to-live the node's
own PINGs carry (its heartbeat timeout), and ZeroMQ connects again. The worker says hello
on every new connection (:meth:`Handshakes.read` tells it one came): see ``_pool_workers``
for what the node makes of that.
"""

from __future__ import annotations

import zmq

from tamma_actors._errors import TransportError
from tamma_actors._zmq_monitor import close_monitor, pending_events

__all__ = [
    "DEAD_AFTER_INTERVALS",
    "DEAD_AFTER_MIN",
    "HANDSHAKE_FAILURES_FATAL",
    "CurveKeys",
    "Handshakes",
    "connect",
]

# A node that closes the connection during the handshake (NO_DETAIL) is what a CURVE server
# does to a client holding the wrong server key, and once in a while what a node going away
# mid-handshake looks like: only this many in a row, with none succeeding, are fatal.
HANDSHAKE_FAILURES_FATAL = 3
_HANDSHAKE_EVENTS = (
    zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)
_LINGER_MS = 1000
# A connection that brought nothing from the node for this long, after a PING, is dead.
DEAD_AFTER_INTERVALS = 3
DEAD_AFTER_MIN = 1.0


class CurveKeys:
    """CURVE keys (z85) for a TCP connection: the node's public key, and ours."""

    def __init__(
        self, server_key: str, public_key: str | None = None, secret_key: str | None = None
    ):
        if (public_key is None) != (secret_key is None):
            raise TransportError("CURVE needs both the public and the secret key, or neither")
        self.server_key = server_key
        if public_key is None or secret_key is None:
            pub, sec = zmq.curve_keypair()
            public_key, secret_key = pub.decode(), sec.decode()
        self.public_key = public_key
        self.secret_key = secret_key


class Handshakes:
    """The handshakes of a socket with its node, as the socket's monitor reports them.

    :meth:`read` raises TransportError, naming the likely cause, for a handshake the node
    will never accept; a node that is not there (refused or dropped connections) is not
    a handshake failure: ZeroMQ reconnects. It says whether the socket has a new
    connection after an earlier one (one of them may have lost frames)."""

    def __init__(self, sock: zmq.Socket[bytes], endpoint: str, curve: bool) -> None:
        self.monitor: zmq.Socket[bytes] = sock.get_monitor_socket(_HANDSHAKE_EVENTS)
        self._sock = sock
        self._endpoint = endpoint
        self._curve = curve
        self._failures = 0
        self._connections = 0  # handshakes that succeeded

    def read(self) -> bool:
        """Read the events waiting; whether a handshake succeeded after an earlier one (a
        new connection: the old one may have lost frames either way)."""
        again = False
        for event in pending_events(self.monitor):
            kind = event["event"]
            if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._failures = 0
                self._connections += 1
                again = again or self._connections > 1
                continue
            self._failures += 1
            closed = kind == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
            if not closed or self._failures >= HANDSHAKE_FAILURES_FATAL:
                raise TransportError(self._problem(kind, event["value"]))
        return again

    def _problem(self, kind: int, value: int) -> str:
        where = f"no handshake with the node at {self._endpoint}"
        if kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            return f"{where}: it refused this worker's CURVE key (status {value})"
        if kind == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
            if value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
                return (
                    f"{where}: it uses another security mechanism (a node with CURVE keys "
                    "needs --curve-server-key KEY; one without, none)"
                )
            return f"{where}: protocol error {value:#x} (is it a node's workers endpoint?)"
        closed = f"{where}: it closed the connection during {self._failures} handshakes in a row"
        if self._curve:
            return f"{closed} (is --curve-server-key the node's public key?)"
        if self._endpoint.startswith("tcp://"):
            return f"{closed} (a node with CURVE keys needs --curve-server-key KEY)"
        return closed

    def close(self) -> None:
        close_monitor(self._sock, self.monitor)


def connect(
    ctx: zmq.Context[zmq.Socket[bytes]],
    endpoint: str,
    route: bytes,
    max_frame: int,
    curve: CurveKeys | None,
    heartbeat_interval: float,
) -> tuple[zmq.Socket[bytes], Handshakes]:
    """A DEALER socket connecting to ``endpoint`` under routing id ``route``, and its
    :class:`Handshakes`; a ``TransportError`` if ZeroMQ refuses the endpoint or a key."""
    dead_after = max(DEAD_AFTER_INTERVALS * heartbeat_interval, DEAD_AFTER_MIN)
    sock: zmq.Socket[bytes] = ctx.socket(zmq.DEALER)
    handshakes: Handshakes | None = None
    try:
        sock.setsockopt(zmq.LINGER, _LINGER_MS)
        sock.setsockopt(zmq.IDENTITY, route)
        sock.setsockopt(zmq.MAXMSGSIZE, max_frame)
        sock.setsockopt(zmq.HEARTBEAT_IVL, max(1, round(heartbeat_interval * 1000)))
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, round(dead_after * 1000))
        secured = curve is not None and endpoint.startswith("tcp://")  # as the node
        if secured:
            assert curve is not None
            sock.curve_serverkey = curve.server_key.encode()
            sock.curve_publickey = curve.public_key.encode()
            sock.curve_secretkey = curve.secret_key.encode()
        handshakes = Handshakes(sock, endpoint, secured)  # before the first one starts
        sock.connect(endpoint)
    except zmq.ZMQError as exc:
        if handshakes is not None:
            handshakes.close()
        sock.close(0)
        raise TransportError(f"worker cannot connect to {endpoint}: {exc}") from exc
    return sock, handshakes
