"""The node's server sockets: bind one (options, CURVE on ``tcp://``, closed on any
failure), and keep its ``ipc://`` socket file private (0600), free of a stale one left by
a killed node, and removed on close only if it is still the file this socket made. Used by
the control server, the event bus and the worker pool."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import zmq

from tamma_actors._curve import curve_server
from tamma_actors._errors import TransportError

__all__ = [
    "bind_server",
    "forget_ipc_file",
    "ipc_path",
    "make_ipc_private",
    "prepare_ipc_endpoint",
]


def ipc_path(endpoint: str) -> Path | None:
    """The socket file of an ``ipc://`` endpoint; None for tcp and abstract sockets."""
    if not endpoint.startswith("ipc://") or endpoint.startswith("ipc://@"):
        return None  # tcp, or Linux's abstract namespace: no file involved
    return Path(endpoint.removeprefix("ipc://"))


def prepare_ipc_endpoint(endpoint: str) -> None:
    """For ``ipc://PATH``: create PATH's directory (mode 0700) if missing and remove a
    stale socket file; refuse a path that a live server, or a non-socket, occupies."""
    path = ipc_path(endpoint)
    if path is None:
        return
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise TransportError(f"cannot create the directory of {endpoint}: {exc.strerror}") from exc
    if not path.exists() and not path.is_symlink():
        return
    if not path.is_socket():
        raise TransportError(f"{path} exists and is not a socket")
    if _socket_is_live(path):
        raise TransportError(f"{endpoint} is already served by another process")
    path.unlink(missing_ok=True)


def make_ipc_private(bound: str) -> tuple[int, int] | None:
    """For a bound ``ipc://PATH``: make PATH's socket file 0600, and return which file it is
    (device, inode: see ``forget_ipc_file``). It was made with the mode the umask left
    (0777 under umask 000), and whoever can connect to a node's control socket without
    tokens is admin. Narrowing the umask around the bind is no better: it is the whole
    process's, and the node's other threads create files and processes meanwhile."""
    path = ipc_path(bound)
    if path is None:
        return None
    try:
        os.chmod(path, 0o600)
        found = os.stat(path)
    except OSError as exc:
        raise TransportError(f"cannot make {bound} private: {exc.strerror}") from exc
    return found.st_dev, found.st_ino


def bind_server(
    zmq_context: zmq.Context[Any],
    kind: int,
    endpoint: str,
    options: Mapping[zmq.SocketOption, int],
    curve_secret: str | None,
    what: str,
) -> tuple[zmq.Socket[Any], str, tuple[int, int] | None]:
    """A socket of ``kind`` with ``options``, bound to ``endpoint`` (a CURVE server on
    ``tcp://`` with ``curve_secret``): the socket, the endpoint as bound (its real port for
    ``tcp://...:*``) and its socket file (``make_ipc_private``). Any failure closes it (left
    open, it would block ``Context.term()`` for ever); ZeroMQ's is a ``TransportError``
    naming ``what``."""
    sock: zmq.Socket[Any] = zmq_context.socket(kind)
    try:
        for option, value in options.items():
            sock.setsockopt(option, value)
        curve_server(sock, endpoint, curve_secret)
        sock.bind(endpoint)
        bound = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        return sock, bound, make_ipc_private(bound)
    except zmq.ZMQError as exc:
        sock.close(linger=0)
        raise TransportError(f"cannot bind {what} {endpoint}: {exc}") from exc
    except BaseException:
        sock.close(linger=0)
        raise


def forget_ipc_file(bound: str, made: tuple[int, int] | None) -> None:
    """For a closed ``ipc://PATH`` socket: remove PATH now (libzmq unlinks it later, on its
    own thread, or, if the process exits first, never; a restart must not race it), if it
    is still the file this socket made (``made``, from ``make_ipc_private``): a successor
    bound in the meantime keeps its own."""
    path = ipc_path(bound)
    if path is None or made is None:
        return
    with contextlib.suppress(OSError):  # gone already
        found = os.stat(path)
        if (found.st_dev, found.st_ino) == made:
            path.unlink()


def _socket_is_live(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except OSError:
        # Refused or gone: stale. Anything else (a path too long...): bind will say.
        return False
    finally:
        probe.close()
    return True
