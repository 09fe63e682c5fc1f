"""A ZeroMQ socket's monitor, read and closed as its users here need: the events waiting
(never blocking), and a close that drains the monitor first: a monitor whose queue is full
holds the context's I/O thread, which holds the lock that ``disable_monitor`` takes.

zmq only: the worker process imports it (no pydantic, no client)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import zmq
from zmq.utils.monitor import recv_monitor_message

if TYPE_CHECKING:
    from zmq.utils.monitor import _MonitorMessage

__all__ = ["close_monitor", "pending_events"]


def pending_events(monitor: zmq.Socket[Any]) -> Iterator[_MonitorMessage]:
    """The monitor's events waiting now, oldest first (``event``, ``value``, ...)."""
    while True:
        try:
            event = recv_monitor_message(monitor, zmq.NOBLOCK)
        except zmq.Again:
            return
        assert isinstance(event, dict)  # a plain socket, not an asyncio one
        yield event


def close_monitor(sock: zmq.Socket[Any], monitor: zmq.Socket[Any]) -> None:
    """Stop ``sock``'s monitor and close it (``sock`` may be closed already)."""
    for _ in pending_events(monitor):
        pass
    with contextlib.suppress(zmq.ZMQError):
        sock.disable_monitor()
    monitor.close(linger=0)
