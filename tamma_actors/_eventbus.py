"""EventBus: fans committed events out to in-process handlers and a ZeroMQ PUB socket.

Only events that are already committed to the store are published (durability before
progress), so a subscriber never sees an event that recovery would not replay.

Patterns are globs over the event type (``step.*``, ``workflow.completed``, ``*``); a pattern
``<type-glob>@<execution-id>`` follows one execution. Handlers run on the bus thread and must
be quick (typically a ``tell``); one that raises is logged and stays subscribed, and the other
handlers still receive the event.

On the PUB socket each event is two frames, ``[type, msgpack(event)]``, so a ZeroMQ subscriber
filters by type prefix with ``SUBSCRIBE``. With ``publish_time`` (the node's
``events_publish_time``) a third frame follows: when the bus sent the event (Unix seconds, a
little-endian float64), so a subscriber can tell how long delivery took (the event's own
``timestamp`` is its transition's, before the commit).

A node with ``tokens`` keeps its events for callers holding one (any role may watch, as
any may read an execution's events): the socket is an XPUB in manual mode, and a
subscription takes effect only when it reads ``TOKEN NUL PREFIX`` with a known token,
which the bus applies as a subscription to ``PREFIX`` for that connection alone. Anything
else subscribes to nothing (it is counted, ``refused``). A SUB socket cannot send such a
subscription (it would also filter what comes back by it): such a subscriber uses an XSUB
socket and sends ``b"\x01" + TOKEN + b"\x00" + PREFIX`` itself, as ``tamma watch`` does.
"""

from __future__ import annotations

import fnmatch
import itertools
import logging
import re
import struct
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import zmq

from tamma_actors import _codec
from tamma_actors._errors import CodecError, Forbidden, TransportError
from tamma_actors._protocol import authorize
from tamma_actors._server_socket import bind_server, forget_ipc_file
from tamma_actors._socket_actor import SocketActor, send_frames

__all__ = ["PUBLISH_TIME", "EventBus", "Publish"]

logger = logging.getLogger(__name__)

# The optional third frame: when the bus sent the event (Unix seconds, little-endian).
PUBLISH_TIME = struct.Struct("<d")

Event = dict[str, Any]
Handler = Callable[[Event], None]


@dataclass(frozen=True)
class Publish:
    """Tell the bus to publish these committed events, in order. ``packed``: the same
    events already msgpack-encoded (as the store encoded them), sent as they are."""

    events: Sequence[Event]
    packed: Sequence[bytes] | None = None


@dataclass(frozen=True)
class _Subscription:
    sub_id: str
    pattern: str
    type_re: re.Pattern[str]
    execution_id: str | None
    handler: Handler

    def matches(self, event: Event) -> bool:
        if self.execution_id is not None and event.get("execution_id") != self.execution_id:
            return False
        return self.type_re.fullmatch(str(event.get("type", ""))) is not None


def _compile(pattern: str) -> tuple[re.Pattern[str], str | None]:
    type_glob, sep, execution_id = pattern.partition("@")
    if sep and not execution_id:
        raise ValueError(f"pattern {pattern!r} names no execution after '@'")
    return re.compile(fnmatch.translate(type_glob or "*")), execution_id or None


class EventBus(SocketActor):
    """A SocketActor owning the events PUB socket (when ``endpoint`` is given)."""

    def __init__(
        self,
        zmq_context: zmq.Context[Any],
        endpoint: str | None,
        *,
        max_frame_bytes: int = 8 << 20,
        curve_secret_key: str | None = None,
        publish_time: bool = False,
        tokens: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(zmq_context)
        self._curve_secret = curve_secret_key
        self._tokens = dict(tokens or {})  # token -> role: a subscription needs one
        self._refused = 0
        self.endpoint = endpoint
        self.max_frame_bytes = max_frame_bytes
        self.publish_time = publish_time
        self._pub: zmq.Socket[Any] | None = None
        self._bound = ""  # the events endpoint as bound (its real port for tcp://...:*)
        self._ipc_file: tuple[int, int] | None = None  # its socket file (ipc://)
        self._subs: dict[str, _Subscription] = {}
        self._ids = itertools.count(1)
        self._published = 0
        self._dropped = 0

    def on_start(self) -> None:
        if self.endpoint is None:
            return
        # With tokens, subscriptions come to us, and only those we apply count (XPUB_MANUAL).
        kind, options = (zmq.PUB, {zmq.LINGER: 0})
        if self._tokens:
            kind, options = (zmq.XPUB, {zmq.LINGER: 0, zmq.XPUB_MANUAL: 1})
        self._pub, self._bound, self._ipc_file = bind_server(
            self.zmq_context, kind, self.endpoint, options, self._curve_secret,
            "the events socket",
        )  # fmt: skip
        if self._tokens:
            self.watch(self._pub, self._on_subscriptions, drains=True)

    def on_stop(self) -> None:
        if self._pub is not None:
            self._pub.close(linger=0)
            self._pub = None
            forget_ipc_file(self._bound, self._ipc_file)

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Publish):
            self._publish(message.events, message.packed)
            return None
        return super().on_receive(message)

    # -- proxy API ---------------------------------------------------------------------------

    def subscribe(self, pattern: str, handler: Handler) -> str:
        """Call ``handler(event)`` on the bus thread for every matching event; returns an id."""
        type_re, execution_id = _compile(pattern)
        sub_id = f"sub-{next(self._ids)}"
        self._subs[sub_id] = _Subscription(sub_id, pattern, type_re, execution_id, handler)
        return sub_id

    def unsubscribe(self, sub_id: str) -> bool:
        return self._subs.pop(sub_id, None) is not None

    def stats(self) -> dict[str, Any]:
        return {
            "published": self._published,
            "dropped": self._dropped,
            "subscribers": len(self._subs),
            "endpoint": self.endpoint,
            "refused": self._refused,
            "tokens": bool(self._tokens),  # whether a subscription must carry one
        }

    # -- subscriptions on a node with tokens ------------------------------------------------

    def _on_subscriptions(self) -> None:
        """Apply each ``TOKEN NUL PREFIX`` (un)subscription with a known token to the
        connection it came from (the XPUB's last pipe, so each is applied as it is read);
        ignore the rest."""
        assert self._pub is not None
        for _ in range(self.socket_batch):
            try:
                message = self._pub.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            prefix = self._admitted(message)
            if prefix is None:
                # an unsubscription applies nothing either way (libzmq sends one for each
                # subscription of a connection that closes): only subscriptions count
                if message[:1] == b"\x01":
                    self._refused += 1
                    logger.debug("an events subscription without a known token was ignored")
                continue
            option = zmq.SUBSCRIBE if message[0] == 1 else zmq.UNSUBSCRIBE
            self._pub.setsockopt(option, prefix)

    def _admitted(self, message: bytes) -> bytes | None:
        """The prefix a (un)subscription message asks for, if it carries a known token."""
        if len(message) < 2 or message[0] not in (0, 1):
            return None
        token, sep, prefix = message[1:].partition(b"\x00")
        if not sep:
            return None
        try:
            authorize(token.decode(), self._tokens)
        except (UnicodeDecodeError, Forbidden):
            return None
        return prefix

    # -- publishing --------------------------------------------------------------------------

    def _publish(self, events: Sequence[Event], packed: Sequence[bytes] | None = None) -> None:
        for i, event in enumerate(events):
            self._published += 1
            for sub in list(self._subs.values()):
                if sub.matches(event):
                    self._deliver(sub, event)
            if self._pub is not None:
                self._send(event, None if packed is None else packed[i])

    def _deliver(self, sub: _Subscription, event: Event) -> None:
        try:
            sub.handler(event)
        except Exception:
            logger.exception(
                "event handler %s (%s) raised on %s seq %s; it stays subscribed",
                sub.sub_id,
                sub.pattern,
                event.get("type"),
                event.get("seq"),
            )

    def _send(self, event: Event, payload: bytes | None = None) -> None:
        assert self._pub is not None
        event_type = str(event.get("type", ""))
        try:
            if payload is None:
                payload = _codec.pack(event)
        except CodecError:
            self._dropped += 1
            logger.exception("event %s seq %s cannot be encoded", event_type, event.get("seq"))
            return
        if len(payload) > self.max_frame_bytes:
            self._dropped += 1
            logger.error(
                "event %s seq %s is %d bytes, over the %d-byte cap; not sent on %s",
                event_type,
                event.get("seq"),
                len(payload),
                self.max_frame_bytes,
                self.endpoint,
            )
            return
        try:
            # PUB never blocks: a slow subscriber past its high-water mark loses messages,
            # and catches up from the store with getEvents.
            if self.publish_time:
                stamp = PUBLISH_TIME.pack(time.time())
                send_frames(self._pub, (event_type.encode(), payload, stamp))
            else:
                send_frames(self._pub, (event_type.encode(), payload))
        except zmq.ZMQError as exc:
            raise TransportError(f"cannot publish on {self.endpoint}: {exc}") from exc
