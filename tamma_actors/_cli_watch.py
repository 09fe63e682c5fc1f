"""``tamma watch``: follow a node's live events over its PUB socket and print them.

It reads them with an XSUB socket, which sends its subscriptions as messages: a plain one
for each pattern's literal head, and, with a token (``--token``, ``TAMMA_TOKEN``), one that
carries it (``TOKEN NUL HEAD``), which a node with tokens requires (see
``tamma_actors._eventbus``). It matches every event against the patterns itself. Such a
node sends a subscription without a known token nothing, and cannot say so on the events
socket: the watch first asks the node's control socket for its health (any token may),
and a refusal there ends it at once; the health also says whether the events socket wants
tokens, and the watch sends only the subscriptions that node takes (both when it could
not ask).

It waits for the node as long as a request would (``--timeout``): a node that does not take
its connection in that time is reported as one that does not answer (``[timeout]``, exit 3),
not watched in silence for ever.
"""

from __future__ import annotations

import argparse
import json
import sys
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import zmq

from tamma_actors._cli_output import DEFAULT_TIMEOUT, EVENT_FIELDS, ExitCode, Output
from tamma_actors._client import Client, ClientSettings, resolve_endpoint
from tamma_actors._codec import unpack
from tamma_actors._curve import curve_client
from tamma_actors._errors import RequestTimeout, TammaError, TransportError
from tamma_actors._models import WorkflowEvent
from tamma_actors._server_socket import ipc_path
from tamma_actors._zmq_monitor import close_monitor

__all__ = ["cmd_watch"]


def _events_endpoint(args: argparse.Namespace) -> str:
    if args.events_endpoint:
        return str(args.events_endpoint)
    data_dir = getattr(args, "data_dir", None) or ClientSettings().data_dir or Path("var")
    return f"ipc://{Path(data_dir) / 'events.sock'}"


def _tokens_needed(args: argparse.Namespace, timeout: float) -> bool | None:
    """Whether the node's events socket wants a token in each subscription (its health
    says; a refusal of the caller's token there, ``Forbidden``, ends the watch at once).
    None when there is no control socket to ask (an ``ipc://`` file that is not there:
    the events endpoint was given on its own), or it cannot be reached."""
    endpoint = resolve_endpoint(getattr(args, "endpoint", None), getattr(args, "data_dir", None))
    path = ipc_path(endpoint)
    if path is not None and not path.exists():
        return None
    token, server_key = getattr(args, "token", None), getattr(args, "curve_server_key", None)
    with Client(endpoint, token=token, timeout=timeout, curve_server_key=server_key) as client:
        try:
            events = client.health().get("events")
        except RequestTimeout:
            raise  # (a TransportError too) no answer: the watch waits no second time
        except TransportError:
            return None
    return bool(events.get("tokens")) if isinstance(events, dict) else None


def cmd_watch(args: argparse.Namespace, out: Output) -> int:
    patterns = args.patterns or ["*"]
    timeout = getattr(args, "timeout", None) or DEFAULT_TIMEOUT
    token = getattr(args, "token", None) or ClientSettings().token
    needed = _tokens_needed(args, timeout)
    context: zmq.Context[Any] = zmq.Context()
    sub: zmq.Socket[Any] = context.socket(zmq.XSUB)
    try:
        sub.setsockopt(zmq.LINGER, 0)
        for pattern in patterns:
            # A subscription matches prefixes only: subscribe to the literal head of each
            # glob and let fnmatch decide the rest. XSUB keeps them for its connection.
            head = pattern.split("*")[0].split("?")[0].split("[")[0].encode()
            if not needed or token is None:  # a node without tokens (or not known)
                sub.send(b"\x01" + head)
            if needed is not False and token is not None:
                sub.send(b"\x01" + token.encode() + b"\x00" + head)
        endpoint = _events_endpoint(args)
        server_key = getattr(args, "curve_server_key", None) or ClientSettings().curve_server_key
        curve_client(sub, endpoint, server_key)
        _connect(sub, endpoint, timeout)
        seen = 0
        while args.count is None or seen < args.count:
            frames = sub.recv_multipart()
            event = _decode_event(frames)
            if event is None or not any(fnmatchcase(event.type, p) for p in patterns):
                continue
            seen += 1
            _print_event(out, event)
    except KeyboardInterrupt:
        pass  # Ctrl-C is how a watch normally ends
    finally:
        sub.close(linger=0)
        context.term()
    return ExitCode.OK


def _connect(sub: zmq.Socket[Any], endpoint: str, timeout: float) -> None:
    """Connect ``sub`` and wait until the node has taken the connection (its handshake is
    done, CURVE's too): ZeroMQ would otherwise retry for ever, unseen, while nothing is
    there. The wait ends with ``RequestTimeout``, an endpoint ZeroMQ refuses is a
    ``TransportError``, as a request's would be."""
    monitor: zmq.Socket[Any] = sub.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
    try:
        try:
            sub.connect(endpoint)
        except zmq.ZMQError as exc:
            raise TransportError(f"cannot connect to {endpoint}: {exc}") from exc
        # the one event it reports is the handshake; -1 would be no limit at all
        if not monitor.poll(max(0, int(timeout * 1000))):
            raise RequestTimeout(
                f"no connection to {endpoint} within {timeout:g}s to watch its events "
                "(is the node up, and is its CURVE key the one given?)"
            )
    finally:
        close_monitor(sub, monitor)


def _decode_event(frames: list[bytes]) -> WorkflowEvent | None:
    """``[type, msgpack(event)]``, or with a third frame (its publish time) from a node with
    ``events_publish_time``; anything else is reported and skipped."""
    if len(frames) not in (2, 3):
        print(f"skipping a malformed event: {len(frames)} frame(s)", file=sys.stderr)
        return None
    try:
        return WorkflowEvent.model_validate(unpack(frames[1]))
    except (TammaError, ValueError) as exc:
        print(f"skipping a malformed event: {exc}", file=sys.stderr)
        return None


def _print_event(out: Output, event: WorkflowEvent) -> None:
    dumped = event.model_dump(mode="json", include=EVENT_FIELDS)
    if out.as_json:
        print(json.dumps(dumped, default=str), flush=True)  # one JSON object per line
        return
    out.console.print(
        f"{dumped['timestamp']} {dumped['execution_id']} #{dumped['seq']} {dumped['type']} "
        f"{json.dumps(dumped['data'], default=str)}",
        markup=False,
    )
