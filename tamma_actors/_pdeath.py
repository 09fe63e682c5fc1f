"""Linux's parent-death signal: ``die_with_parent(sig)`` asks the kernel to send ``sig`` to
the calling process when its parent dies (a worker whose node was killed, a shell step's
guard whose worker was). ``prctl`` is resolved once, at import, before any fork: a forked
child (a ``preexec_fn``) may only call it."""

from __future__ import annotations

import ctypes
from typing import Any

__all__ = ["AVAILABLE", "die_with_parent"]

_PR_SET_PDEATHSIG = 1
try:
    _PRCTL: Any = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux
    _PRCTL = None
AVAILABLE = _PRCTL is not None


def die_with_parent(sig: int) -> int:
    """0 when the kernel will send ``sig`` once the parent dies; else an errno (or -1
    where there is no ``prctl``)."""
    if _PRCTL is None:
        return -1
    if _PRCTL(_PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
        return ctypes.get_errno() or -1
    return 0
