"""Who the worker pool admits, and what it says of those it does not.

:class:`WorkerAdmission` decides on a hello's token and which offered names count;
:func:`public_route` refuses a connection whose routing id is no secret (see
``_pool_workers``); :class:`RefusalLog` picks the refusals that get a log line, and
:class:`Refused` keeps what ``tamma health`` shows of them. Pure: no socket, no clock of
its own.
"""

from __future__ import annotations

import hmac
from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tamma_actors._errors import Forbidden
from tamma_actors._protocol import Role, authorize

__all__ = ["MIN_ROUTE_BYTES", "RefusalLog", "Refused", "WorkerAdmission", "public_route"]

# The shortest routing id a worker may name its connection by (see ``_pool_workers``).
MIN_ROUTE_BYTES = 16
_NEEDED = "a worker needs a worker token or an admin token"
_SHOWN = 200  # characters of a peer's worker id (and of a reason naming it) health shows


class RefusalLog:
    """Which refused hellos get a log line: the first of each worker id, then one every
    ``every`` seconds for that id (a peer may repeat itself), and at most ``most`` lines in
    any ``every`` seconds in all (a peer may take a new id each time); a line counts the
    refusals left out before it. Pure: the caller says what time it is."""

    def __init__(self, every: float = 60.0, most: int = 10, ids: int = 1024) -> None:
        self._every = every
        self._most = most
        self._ids = ids
        self._last: OrderedDict[str, float] = OrderedDict()  # worker id -> its last line
        self._lines: deque[float] = deque()  # when the lines of the last ``every`` s were
        self._left_out = 0

    def line(self, worker_id: str, now: float) -> int | None:
        """None: leave this refusal out; else log it, with how many were left out before."""
        while self._lines and self._lines[0] <= now - self._every:
            self._lines.popleft()
        last = self._last.get(worker_id)
        if (last is not None and now - last < self._every) or len(self._lines) >= self._most:
            self._left_out += 1
            return None
        self._last[worker_id] = now
        self._last.move_to_end(worker_id)
        while len(self._last) > self._ids:
            self._last.popitem(last=False)
        self._lines.append(now)
        left_out, self._left_out = self._left_out, 0
        return left_out


@dataclass
class Refused:
    """The hellos not admitted since the pool started, for ``tamma health``: how many,
    and the last one (worker id, reason, wall-clock time): a rogue or misconfigured
    worker, which the log only samples (:class:`RefusalLog`)."""

    count: int = 0
    last: dict[str, Any] | None = None

    def add(self, worker_id: str, reason: str, at: float) -> None:
        self.count += 1
        self.last = {"worker_id": worker_id[:_SHOWN], "reason": reason[:_SHOWN], "at": at}

    def report(self) -> dict[str, Any]:
        return {"count": self.count, "last": self.last}


def public_route(identity: bytes, worker_id: str) -> str | None:
    """Why a worker's routing id is no secret (a worker of an older version names its
    connection by its worker id), or None."""
    if identity == worker_id.encode() or len(identity) < MIN_ROUTE_BYTES:
        return (
            "its connection's routing id is not a secret of its own (a worker older than "
            "this node names it by its worker id): others could take its place"
        )
    return None


@dataclass
class WorkerAdmission:
    """Who the node admits as a worker, and which of the names a worker offers count.

    A worker sees every step's inputs and decides every step's result. With
    ``worker_tokens`` (secrets that grant nothing else) or ``tokens`` (control tokens:
    token -> role name), a hello must carry one of the worker tokens or an admin token
    (which a worker needed before worker tokens existed); without either, every worker
    that reaches the socket joins (a local ipc socket is guarded by its 0700 directory).
    ``withheld``: names the node gates by its own settings and has not enabled (``shell``,
    ``record``): a worker offering them is sent no such step, and they do not become names
    a workflow may use."""

    tokens: Mapping[str, str] = field(default_factory=dict)
    withheld: frozenset[str] = frozenset()
    worker_tokens: frozenset[str] = frozenset()

    def refusal(self, token: str | None) -> str | None:
        """Why a hello with ``token`` is not admitted, or None. Tokens are compared in
        constant time (each of them, whichever matches)."""
        if not self.tokens and not self.worker_tokens:
            return None
        if token is None:
            return f"a token is required ({_NEEDED})"
        given = token.encode()
        matches = [hmac.compare_digest(known.encode(), given) for known in self.worker_tokens]
        if any(matches):
            return None
        if not self.tokens:  # (authorize would take any token for an admin's)
            return f"unknown token ({_NEEDED})"
        try:
            role = authorize(token, self.tokens)
        except Forbidden as exc:
            return f"{exc} ({_NEEDED})"
        if role < Role.admin:
            return f"{_NEEDED}, not a token of role {role.name!r}"
        return None

    def offer(self, plugins: Iterable[str]) -> frozenset[str]:
        return frozenset(plugins) - self.withheld
