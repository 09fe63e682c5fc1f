"""The node's data directory: created private (0700) and locked by one node at a time.

A directory that is there already keeps its mode: it may be shared on purpose (``/tmp``
is 1777), and changing it would change it for everyone else too. One open to group or
others is named in a warning: the store and the sockets are then within their reach.

``node.lock`` holds an exclusive ``flock`` and names the node's pid. The node's store
writer process holds the same lock (it inherits the descriptor), so after a node was
killed its writer may hold it a moment longer while it finishes the commit in progress: a
new node waits for that, and refuses at once when the named node still runs.
"""

from __future__ import annotations

import argparse
import fcntl
import logging
import os
import time
from pathlib import Path

from tamma_actors._errors import ConfigError

__all__ = ["directory_arg", "lock_data_dir"]

log = logging.getLogger(__name__)

_LOCK_WAIT = 10.0  # for a dead node's store writer process to finish its last commit


def directory_arg(text: str) -> Path:
    """A command line's data or backup directory (an argparse type): ``~`` is the home
    directory, and an empty one is refused (it would have been the current directory),
    as the node's own ``data_dir`` setting does."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path names no directory")
    return Path(os.path.expanduser(text))


def _lock(fd: int, data_dir: Path) -> None:
    """Lock the lock file open as ``fd``, waiting for a dead node's writer, or say who
    holds it."""
    deadline = time.monotonic() + _LOCK_WAIT
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            holder = _pid_in(fd)
        alive = holder is not None and _alive(holder)
        if holder is None or alive or time.monotonic() >= deadline:
            if holder is None:
                who = ""
            elif alive:
                who = f" (pid {holder})"
            else:
                who = f" (the store writer of node {holder}, which is gone)"
            raise ConfigError(f"another node is running on {data_dir}{who}")
        time.sleep(0.02)


def _pid_in(fd: int) -> int | None:
    text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    return int(text) if text.isdigit() else None


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, killed and not yet reaped, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def _make(data_dir: Path) -> None:
    """Create ``data_dir`` with mode 0700, or warn of an existing one that is not private."""
    try:
        data_dir.mkdir(mode=0o700, parents=True)
    except FileExistsError:
        if not data_dir.is_dir():
            raise
        mode = data_dir.stat().st_mode & 0o7777
        if mode & 0o077:
            log.warning(
                "data_dir %s is open to group or others (mode %04o): the node's store and "
                "sockets are meant to be private; give the node a directory of its own "
                "(it creates a missing one with mode 0700) or chmod 700 it",
                data_dir,
                mode,
            )
        return
    os.chmod(data_dir, 0o700)  # mkdir's mode went through the umask


def lock_data_dir(data_dir: Path) -> int:
    """Create ``data_dir`` (0700) if missing, lock its ``node.lock`` and write our pid in
    it; returns the lock's descriptor (the lock lasts while it, or a copy of it, is open)."""
    try:
        _make(data_dir)
        fd = os.open(data_dir / "node.lock", os.O_RDWR | os.O_CREAT, 0o600)
    except FileExistsError as exc:  # mkdir's word for a path that is there but no directory
        raise ConfigError(f"data_dir '{data_dir}': it exists and is not a directory") from exc
    except OSError as exc:
        raise ConfigError(f"data_dir '{data_dir}': {exc.strerror or exc}") from exc
    try:
        _lock(fd, data_dir)
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd
