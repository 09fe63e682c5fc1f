"""Signals held while a child process is spawned (the suite and ``sidebyside``)."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator

__all__ = ["signals_deferred"]

_DEFERRED = (signal.SIGTERM, signal.SIGINT)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """SIGTERM and SIGINT held until the block ends, then delivered. The suite turns them
    into SystemExit and KeyboardInterrupt, which may be raised at any line: raised inside
    ``subprocess.Popen`` after the fork, they leave a child nobody knows of (a node, in its
    own session) to run on. Only the main thread handles signals; elsewhere, nothing is
    held."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    old = {sig: signal.signal(sig, lambda n, _f: held.append(n)) for sig in _DEFERRED}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        for sig in dict.fromkeys(held):
            os.kill(os.getpid(), sig)  # to the handler restored above
