"""How a client knows that its node went away under a request: the request socket's
monitor reports each established connection that dropped, and the reply of a request sent
on it is lost with it (a ROUTER routes it to that connection alone). ``changes_nothing``
says which requests may then be sent again."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import zmq

from tamma_actors._zmq_monitor import close_monitor, pending_events

__all__ = ["DROPPED", "MOST_RESENDS", "Drops", "changes_nothing"]

# Requests that change nothing on the node, and a start that names its execution's id (the
# same start again returns that execution): asked again when their connection drops.
_READS = frozenset({"get", "status", "list", "events", "wait", "health", "explain", "admin.verify"})
# How many times one request is sent again after drops (a node that keeps dying).
MOST_RESENDS = 3
# What _receive_any returns when the connection dropped before the reply came.
DROPPED: dict[str, Any] = {}


def changes_nothing(op: str, args: Mapping[str, Any]) -> bool:
    """Whether sending this request twice does what sending it once does."""
    return op in _READS or (op == "start" and args.get("id") is not None)


class Drops:
    """A socket's established connections that dropped, as its monitor reports them. A
    connection counts once its handshake succeeded: one refused during the handshake (a
    wrong CURVE key) carried no request. Its events are read at each request and while a
    reply is awaited: a monitor whose queue fills (some thousand events) holds up the
    context's I/O thread."""

    def __init__(self, sock: zmq.Socket[Any]) -> None:
        self.monitor: zmq.Socket[Any] = sock.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED
        )
        self._sock = sock
        self._established = False

    def read(self) -> bool:
        """Read the events waiting; whether an established connection dropped."""
        dropped = False
        for event in pending_events(self.monitor):
            if event["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._established = True
            elif self._established:
                self._established = False
                dropped = True
        return dropped

    def close(self) -> None:
        close_monitor(self._sock, self.monitor)
