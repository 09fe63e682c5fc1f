"""A real ``tamma-node run`` process for the benchmarks, and a SUB socket on its events.

The node runs on a temporary data directory with fsync on (``--durability full``), quiet
logs (they go to ``node.log`` in the data directory), and is stopped by whoever started it:
``NodeProcess`` is a context manager and ``close()`` is idempotent.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import IO, Any, Self

import zmq

from benchmarks._signals import signals_deferred
from tamma_actors import Client
from tamma_actors._codec import unpack
from tamma_actors._errors import TammaError
from tamma_actors._eventbus import PUBLISH_TIME

__all__ = ["BenchmarkError", "EventTap", "NodeProcess"]

TERMINAL = frozenset({"workflow.completed", "workflow.failed", "workflow.aborted"})
_START_TIMEOUT = 60.0
_STOP_TIMEOUT = 30.0


class BenchmarkError(RuntimeError):
    """The benchmark itself could not run (the node did not start, a workflow failed...)."""


class NodeProcess:
    """``tamma-node run`` on ``data_dir`` with ``workers`` local workers."""

    def __init__(
        self,
        data_dir: Path,
        *,
        workers: int = 2,
        durability: str = "full",
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.workers = workers
        self.durability = durability
        # Each event carries when the node sent it: W7 times publish -> subscriber.
        self.env = {**os.environ, "TAMMA_EVENTS_PUBLISH_TIME": "true", **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.control = f"ipc://{data_dir / 'control.sock'}"
        self.events = f"ipc://{data_dir / 'events.sock'}"

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:  # not serving in time, SIGTERM, Ctrl-C: it must not outlive us
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise BenchmarkError("the node is not running")
        return self.proc.pid

    def start(self, timeout: float = _START_TIMEOUT) -> float:
        """Start the node and wait until it answers ``health``; returns the seconds that
        took (from spawning the process)."""
        if self.proc is not None:
            raise BenchmarkError("the node is already running")
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        cmd = [
            sys.executable, "-m", "tamma_actors._cli_node", "run",
            "--data-dir", str(self.data_dir),
            "--workers", str(self.workers),
            "--durability", self.durability,
            "--log-level", "WARNING",
        ]  # fmt: skip
        self._log = open(self.data_dir / "node.log", "ab")  # noqa: SIM115 - closed in close()
        began = time.perf_counter()
        with signals_deferred():  # a SIGTERM inside Popen would leave its node unknown
            self.proc = subprocess.Popen(
                cmd,
                stdout=subprocess.DEVNULL,
                stderr=self._log,
                env=self.env,
                start_new_session=True,
            )
        self.wait_serving(began + timeout - time.perf_counter())
        return time.perf_counter() - began

    def wait_serving(self, timeout: float) -> None:
        """Until the node answers ``health`` with its workers joined."""
        deadline = time.monotonic() + max(0.0, timeout)
        with Client(self.control, timeout=1.0) as client:
            while True:
                if self.proc is not None and self.proc.poll() is not None:
                    raise BenchmarkError(
                        f"the node exited with {self.proc.returncode}: {self.log_tail()}"
                    )
                try:
                    health = client.health()
                    workers = (health.get("workers") or {}).get("workers") or []
                    if len(workers) >= self.workers:
                        return
                except TammaError:
                    pass
                if time.monotonic() >= deadline:
                    raise BenchmarkError(
                        f"the node did not serve within {timeout:.0f}s: {self.log_tail()}"
                    )
                time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL the node (its managed workers die with it) and reap it."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=_STOP_TIMEOUT)

    def close(self) -> None:
        """SIGTERM, wait; SIGKILL if it does not stop in time. Idempotent."""
        proc, self.proc = self.proc, None
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=_STOP_TIMEOUT)
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, lines: int = 5) -> str:
        path = self.data_dir / "node.log"
        if not path.exists():
            return "(no log)"
        text = path.read_text(errors="replace").strip().splitlines()
        return " | ".join(text[-lines:]) or "(empty log)"


class EventTap:
    """A SUB socket on the node's events, read by a thread of its own: terminal events by
    execution id, and the latency of every event: from its transition (receive time minus
    the event's own timestamp) and, when the node stamps them, from its publishing (minus
    the third frame's send time). Its own thread, so that an event is timed when it
    arrives, not when the benchmark's main thread next looks (it may be busy submitting a
    burst of starts).

    The socket is made here and then used by that thread only."""

    _POLL_MS = 50  # how soon the thread notices ``close``

    def __init__(self, endpoint: str, prefixes: Iterable[bytes] = (b"workflow.",)) -> None:
        self._ctx: zmq.Context[Any] = zmq.Context()
        self.sock: zmq.Socket[Any] = self._ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVHWM, 0)  # keep everything: we count every event
        for prefix in prefixes:
            self.sock.setsockopt(zmq.SUBSCRIBE, prefix)
        self.sock.connect(endpoint)
        self.terminal: dict[str, tuple[str, float]] = {}  # id -> (type, perf_counter)
        self.lags_ms: list[float] = []
        self.publish_lags_ms: list[float] = []
        self.record_lags = False
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._listen, name="event-tap", daemon=True)
        self._thread.start()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if not self._stop.is_set():
            self._stop.set()
            self._thread.join()
            self.sock.close(linger=0)
            self._ctx.term()

    def _listen(self) -> None:
        try:
            while not self._stop.is_set():
                if self.sock.poll(self._POLL_MS, zmq.POLLIN):
                    self._drain()
        except BaseException as exc:  # a broken socket or frame: wait_for reports it
            with self._cond:
                self._failure = exc
                self._cond.notify_all()

    def _drain(self) -> None:
        """Everything queued on the socket, each event timed as it is taken."""
        while True:
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            now_wall, now = time.time(), time.perf_counter()
            event = unpack(frames[1])
            with self._cond:
                if self.record_lags:
                    self.lags_ms.append((now_wall - float(event["timestamp"])) * 1000.0)
                    if len(frames) == 3:
                        sent = PUBLISH_TIME.unpack(frames[2])[0]
                        self.publish_lags_ms.append((now_wall - sent) * 1000.0)
                if event["type"] in TERMINAL:
                    self.terminal[event["execution_id"]] = (event["type"], now)
                    self._cond.notify_all()

    def wait_for(
        self, ids: Iterable[str], timeout: float, progress: Callable[[int], None] | None = None
    ) -> dict[str, tuple[str, float]]:
        """Until every id has a terminal event; returns ``{id: (type, perf_counter)}``."""
        wanted = set(ids)
        deadline = time.monotonic() + timeout
        while True:
            with self._cond:
                if self._failure is not None:
                    raise BenchmarkError(f"the event subscriber failed: {self._failure!r}")
                done = wanted & self.terminal.keys()
                if len(done) == len(wanted):
                    return {i: self.terminal[i] for i in wanted}
                left = deadline - time.monotonic()
                if left > 0:
                    self._cond.wait(min(0.2, left))
            if progress is not None:
                progress(len(done))
            if left <= 0:
                raise BenchmarkError(
                    f"{len(wanted) - len(done)} of {len(wanted)} executions did not end "
                    f"within {timeout:.0f}s"
                )

    def sync(self, client: Client, workflow: Mapping[str, Any], timeout: float = 30.0) -> None:
        """Beat the PUB/SUB slow joiner: run probe workflows until one's end is seen."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            started = client.start_workflow(workflow)
            with contextlib.suppress(BenchmarkError):
                self.wait_for([started.id], 1.0)
                return
        raise BenchmarkError(f"no event reached the subscriber within {timeout:.0f}s")

    def forget(self) -> None:
        with self._cond:
            self.terminal.clear()
            self.lags_ms.clear()
            self.publish_lags_ms.clear()

    def lags(self) -> list[float]:
        """The latencies from each event's transition recorded so far (a copy)."""
        with self._cond:
            return list(self.lags_ms)

    def publish_lags(self) -> list[float]:
        """The latencies from each event's publishing recorded so far (a copy)."""
        with self._cond:
            return list(self.publish_lags_ms)
