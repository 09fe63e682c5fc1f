"""The worker process: runs step implementations for a node over ZeroMQ.

``python -m tamma_actors._worker --connect ENDPOINT [--slots N] [--managed] ...``

This module sets the process up around a :class:`~tamma_actors._worker_loop.Worker` (its
socket loop, threads and shutdown order are described there): the command line, the
signals and the exit code. An unmanaged worker stops gracefully on SIGTERM/SIGINT; a
managed one (spawned by the node) ignores SIGINT, is told by the node when to stop, and
dies with its parent: PR_SET_PDEATHSIG plus a parent check on every heartbeat. Its token
(a worker token, for a node with tokens) comes from ``TAMMA_WORKER_TOKEN`` (not the
command line, which ps shows), and is taken out of the environment before any step runs;
so does the routing id a node gives each of its own local workers (``TAMMA_WORKER_ROUTE``).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Collection, Mapping, Sequence
from types import FrameType
from typing import Any

import zmq

from tamma_actors import _pdeath as pdeath
from tamma_actors import _wire as wire
from tamma_actors._affinity import parse_cpus, restore
from tamma_actors._curve import is_curve_key
from tamma_actors._errors import TammaError, TransportError
from tamma_actors._gc import tune_gc
from tamma_actors._plugins import add_gated_flags, allow_entry, check_modules, gated_enabled
from tamma_actors._worker_loop import (
    EXIT_OK,
    EXIT_PARENT_DIED,
    EXIT_REFUSED,
    EXIT_TRANSPORT,
    EXIT_USAGE,
    CurveKeys,
    Worker,
)

__all__ = [
    "EXIT_OK",
    "EXIT_PARENT_DIED",
    "EXIT_REFUSED",
    "EXIT_TRANSPORT",
    "EXIT_USAGE",
    "CurveKeys",
    "Worker",
    "main",
    "run_worker",
]

log = logging.getLogger(__name__)


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL us when the parent dies (best effort elsewhere)."""
    if not pdeath.AVAILABLE:
        log.warning("prctl unavailable; relying on the heartbeat parent check")
    elif (errno := pdeath.die_with_parent(signal.SIGKILL)) != 0:
        log.warning("prctl(PR_SET_PDEATHSIG) failed: errno %d", errno)


def _install_signals(worker: Worker) -> dict[int, Any]:
    """Signal set-up for the worker's main thread; returns what to restore."""
    previous: dict[int, Any] = {}
    if threading.current_thread() is not threading.main_thread():
        return previous
    if worker.managed:
        # The node tells a managed worker when to stop; a terminal's Ctrl-C is not for us.
        previous[signal.SIGINT] = signal.signal(signal.SIGINT, signal.SIG_IGN)
        return previous

    def on_signal(signum: int, frame: FrameType | None) -> None:
        worker.request_stop()

    for signum in (signal.SIGTERM, signal.SIGINT):
        previous[signum] = signal.signal(signum, on_signal)
    return previous


def run_worker(
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
) -> int:
    """Run a worker until it is stopped; returns an exit code (``EXIT_*``).

    ``token``: what it says hello with (a node with tokens admits only a worker token or
    an admin's); by default the environment's ``TAMMA_WORKER_TOKEN``, which is taken out of
    ``os.environ`` either way, so that the commands its steps start do not inherit it (a
    step's own code runs in this process, and /proc keeps the environment the process
    started with).

    Arguments it cannot start with raise ``ValueError`` (no slots, a heartbeat interval
    under ``MIN_HEARTBEAT`` or not finite, an endpoint or a CURVE key that ZeroMQ refuses)
    or ``ConfigError`` (an allowlist entry that is malformed or, for a worker not managed
    by a node, whose module cannot be found: a node's own ``plugins`` are its operator's,
    given to its workers).
    """
    from_env = os.environ.pop(wire.TOKEN_ENV, None)
    if token is None:
        token = from_env or None
    route = os.environ.pop(wire.ROUTE_ENV, None)  # the node drew it for a local worker
    if curve is not None:
        _check_curve_keys(curve)
    if managed:
        _die_with_parent()
        if parent_pid is not None and os.getppid() != parent_pid:
            return EXIT_PARENT_DIED  # the node died before we could ask to die with it
    else:
        check_modules(allowlist or {})
    try:
        worker = Worker(
            endpoint,
            slots=slots,
            worker_id=worker_id,
            heartbeat_interval=heartbeat_interval,
            enabled=enabled,
            allowlist=allowlist,
            managed=managed,
            parent_pid=parent_pid,
            max_frame_bytes=max_frame_bytes,
            curve=curve,
            stop_grace=stop_grace,
            token=token,
            routing_id=route.encode() if route else None,
        )
    except TransportError as exc:
        # connect() is asynchronous: what fails at once is the endpoint itself
        raise ValueError(_endpoint_refusal(endpoint, exc)) from exc
    with worker:
        previous = _install_signals(worker)
        try:
            return worker.run()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


def _check_curve_keys(curve: CurveKeys) -> None:
    for what, key in (
        ("the node's CURVE public key", curve.server_key),
        ("the worker's CURVE public key", curve.public_key),
        ("the worker's CURVE secret key", curve.secret_key),
    ):
        if not is_curve_key(key):
            raise ValueError(f"{what} is not a CURVE key (40 z85 characters)")


def _endpoint_refusal(endpoint: str, exc: TransportError) -> str:
    cause = exc.__cause__
    if isinstance(cause, zmq.ZMQError) and cause.errno is not None:
        reason = zmq.strerror(cause.errno)
    else:
        reason = str(exc)
    return f"cannot connect to {endpoint!r}: {reason} (expected tcp://HOST:PORT or ipc://PATH)"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tamma-node worker", description=__doc__.split("\n")[0])
    p.add_argument("--connect", required=True, help="the node's workers endpoint")
    p.add_argument("--slots", type=int, default=wire.DEFAULT_WORKER_SLOTS)
    p.add_argument("--worker-id")
    p.add_argument("--heartbeat-interval", type=float, default=1.0)
    p.add_argument("--managed", action="store_true", help="spawned by the node (its parent)")
    p.add_argument("--parent-pid", type=int)
    add_gated_flags(p)
    p.add_argument(
        "--allow",
        type=allow_entry,
        action="append",
        default=[],
        metavar="NAME=module:attr",
        help="an extra step implementation",
    )
    p.add_argument("--max-frame-bytes", type=int, default=8 << 20)
    p.add_argument("--stop-grace", type=float, default=5.0)
    p.add_argument("--curve-server-key")
    p.add_argument("--curve-public-key")
    p.add_argument("--curve-secret-key")
    p.add_argument("--log-level", default="INFO")
    p.add_argument("--cpus", type=parse_cpus, help="the CPUs to run on (as in 0,1)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    restore(args.cpus)  # started by a pinned thread of the node, it may run anywhere again
    tune_gc()  # tamma started this process: its collector is ours to set
    logging.basicConfig(
        level=args.log_level.upper(),
        format=f"%(asctime)s worker[{os.getpid()}] %(levelname)s %(name)s: %(message)s",
    )
    try:
        curve = (
            CurveKeys(args.curve_server_key, args.curve_public_key, args.curve_secret_key)
            if args.curve_server_key
            else None
        )
        return run_worker(
            args.connect,
            slots=args.slots,
            worker_id=args.worker_id,
            heartbeat_interval=args.heartbeat_interval,
            enabled=gated_enabled(args),
            allowlist=dict(args.allow),
            managed=args.managed,
            parent_pid=args.parent_pid,
            max_frame_bytes=args.max_frame_bytes,
            curve=curve,
            stop_grace=args.stop_grace,
        )
    except (TammaError, ValueError) as exc:
        log.error("worker: %s", exc)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
