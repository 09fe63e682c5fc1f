"""The worker pool's local worker processes: spawned, watched through a pidfd, restarted.

A mixin of :class:`~tamma_actors._workerpool.WorkerPool` (it runs on the pool's thread).
A local worker that exits is restarted with a backoff (0.1 s doubling up to 5 s; a worker
that lived 10 s resets it), so a crash loop does not spin. Signals go through the pidfd,
never to a pid that may have been recycled.

Each process is given a routing id of its own (a secret, in its environment), and the pool
takes the worker connecting under it for that process: not whoever names itself after the
process's worker id, which ``tamma health`` shows and a peer could take once the process is
gone, or before it joins. Children are kept by that routing id.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tamma_actors import _wire as wire

if TYPE_CHECKING:
    from tamma_actors._socket_actor import Watchable
    from tamma_actors._timers import TimerHandle

__all__ = ["STOP_EXTRA", "Child", "LocalWorkers"]

log = logging.getLogger("tamma_actors._workerpool")

STOP_EXTRA = 2.0  # beyond cancel_grace, for a stopping worker to say bye and exit
_RESTART_BASE = 0.1
_RESTART_MAX = 5.0
_STABLE_UPTIME = 10.0  # a local worker that lived this long resets its crash backoff


@dataclass(eq=False)
class Child:
    worker_id: str
    route: bytes = field(repr=False)  # the routing id it connects under: a secret
    proc: subprocess.Popen[bytes]
    pidfd: int
    started: float
    failures: int


class LocalWorkers:
    """Spawning, reaping and restarting the pool's local worker processes."""

    if TYPE_CHECKING:
        _children: dict[bytes, Child]  # by the routing id each was given
        _endpoint: str
        _worker_slots: int
        _hb_interval: float
        _max_frame: int
        _cancel_grace: float
        _worker_args: list[str]
        _env: dict[str, str]
        _restarts: int
        _spawned: int
        _stopping: bool
        _routes: dict[bytes, Any]  # the workers that joined, by routing id

        def watch(
            self, sock: Watchable, on_readable: Callable[[], None], *, drains: bool = False
        ) -> None: ...
        def unwatch(self, sock: Watchable) -> None: ...
        def call_later(self, delay: float, fn: Callable[[], None]) -> TimerHandle: ...
        def _worker_lost(self, worker: Any, reason: str, *, kill: bool) -> None: ...

    def _spawn(self, failures: int) -> None:
        self._spawned += 1
        worker_id = f"local-{os.getpid()}-{self._spawned}"
        cmd = [
            sys.executable, "-m", "tamma_actors._worker",
            "--connect", self._endpoint,
            "--managed", "--parent-pid", str(os.getpid()),
            "--worker-id", worker_id,
            "--slots", str(self._worker_slots),
            "--heartbeat-interval", str(self._hb_interval),
            "--max-frame-bytes", str(self._max_frame),
            "--stop-grace", str(self._cancel_grace),
            *self._worker_args,
        ]  # fmt: skip
        route = secrets.token_urlsafe(24)
        env = {**self._env, wire.ROUTE_ENV: route}  # not argv: ps shows it
        try:
            proc = subprocess.Popen(cmd, env=env, start_new_session=True)
        except OSError:
            log.exception("cannot start a local worker")
            self._schedule_restart(failures + 1)
            return
        pidfd = os.pidfd_open(proc.pid)
        child = Child(worker_id, route.encode(), proc, pidfd, time.monotonic(), failures)
        self._children[child.route] = child
        self.watch(child.pidfd, lambda: self._on_child_exit(child))

    def _on_child_exit(self, child: Child) -> None:
        code = child.proc.wait(timeout=STOP_EXTRA)  # the pidfd says it exited: reap it
        self._forget_child(child)
        worker = self._routes.get(child.route)
        if worker is not None:
            self._worker_lost(worker, f"worker {child.worker_id} exited ({code})", kill=False)
        lived = time.monotonic() - child.started
        failures = 0 if lived >= _STABLE_UPTIME else child.failures + 1
        log.warning("local worker %s exited with %s; restarting", child.worker_id, code)
        self._schedule_restart(failures)

    def _schedule_restart(self, failures: int) -> None:
        self._restarts += 1
        delay = min(_RESTART_MAX, _RESTART_BASE * 2 ** min(failures, 10)) if failures else 0.0
        self.call_later(delay, lambda: None if self._stopping else self._spawn(failures))

    def _stop_unjoined(self) -> None:
        """SIGTERM the local workers that have not joined (still starting): no stop
        message can reach them and they run nothing, so they need not be waited for."""
        for child in self._children.values():
            if child.route not in self._routes:
                with contextlib.suppress(ProcessLookupError, OSError):
                    signal.pidfd_send_signal(child.pidfd, signal.SIGTERM)

    def _stop_children(self, grace: float) -> None:
        """Wait up to ``grace`` seconds for the children (told to stop), then kill the rest."""
        deadline = time.monotonic() + grace
        for child in list(self._children.values()):
            try:
                child.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("local worker %s did not stop; killing it", child.worker_id)
                self._kill(child)
                child.proc.wait(timeout=STOP_EXTRA)
            self._forget_child(child)

    def _forget_child(self, child: Child) -> None:
        if self._children.pop(child.route, None) is not None:
            self.unwatch(child.pidfd)
            os.close(child.pidfd)

    @staticmethod
    def _kill(child: Child) -> None:
        # Through the pidfd: never signals a recycled pid.
        with contextlib.suppress(ProcessLookupError, OSError):
            signal.pidfd_send_signal(child.pidfd, signal.SIGKILL)
