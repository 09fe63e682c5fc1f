"""``ProcessStoreWriter``: group commit in a process of its own (the node's default).

py-lmdb gives up the GIL around every put, get and cursor step, not only around the
fsync: a writer thread inside the busy node waits for the GIL again at each of a commit's
puts, and its commits took 5-25 ms under load for ~1 ms of work. Here the node's writer
thread only sends each batch, as stored bytes (``_store_wire``), over a socket pair to
``python -m tamma_actors._writer_main``, which owns every commit to the LMDB file and
answers with the outcome of each write; the node reads the same file through its own
environment (LMDB serves readers in any process). The queue, the batching, submit-order
callbacks and the statistics are :class:`~tamma_actors._writer.QueuedWriter`'s.

The writer process ends when the node closes its end of the socket (a node killed with
SIGKILL closes it too): it finishes the commit in progress and exits. It keeps the fds it
is given open (the node passes its data-directory lock), so a node started on the same
directory knows when the last writer is gone. If the process dies, the writes it had not
confirmed fail with a StoreError (whether their commit happened is for the store to
say: an execution whose commit failed stops and is re-read from the store), later
submits raise StoreClosed, and the writer is no longer ``alive``: the node's supervision
tree restarts it — unless liblmdb killed it (an assertion's SIGABRT, a SIGBUS past the end
of a truncated file): then the file is damaged, every new writer would die the same way,
and ``fatal`` says so for the node to stop.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from tamma_actors._affinity import format_cpus
from tamma_actors._codec import pack, unpack
from tamma_actors._errors import CodecError, StoreCorrupted, StoreError, StoreWriterLost
from tamma_actors._lmdb_env import DATA_FILE
from tamma_actors._store import Write
from tamma_actors._store_check import damage_signal
from tamma_actors._store_wire import error_from_wire, write_to_wire
from tamma_actors._writer import Done, QueuedWriter, _Pending

__all__ = ["ProcessStoreWriter"]

_log = logging.getLogger(__name__)
_EXIT_WAIT = 10.0  # for the process to exit once its socket is closed
_DEATH_WAIT = 0.5  # for the exit status of a process whose socket failed
# What says the process can no longer be talked to (or answered nonsense).
_BROKEN = (OSError, EOFError, CodecError, StoreError)


@dataclass(slots=True)
class _InFlight:
    """A batch handed to the process: which of its writes went (``sent``) as which
    ``number``, and each write's outcome."""

    batch: list[_Pending]
    outcomes: list[BaseException | None]
    sent: list[int] = field(default_factory=list)
    number: int | None = None  # None: nothing of it reached the process


class ProcessStoreWriter(QueuedWriter):
    """Commits to the LMDB store at ``path`` from a child process; see the module doc."""

    def __init__(
        self,
        path: Path,
        *,
        durability: str = "full",
        map_size: int,
        max_map_size: int | None = None,
        max_batch: int = 1024,
        hold_fds: tuple[int, ...] = (),
        cpus: frozenset[int] = frozenset(),  # the process runs on these (see _affinity)
        name: str = "tamma-store-writer",
    ) -> None:
        super().__init__(max_batch=max_batch, name=name)
        self._file = Path(path) / DATA_FILE
        self._command = [
            sys.executable, "-m", "tamma_actors._writer_main",
            "--path", str(path), "--durability", durability, "--map-size", str(map_size),
        ]  # fmt: skip
        if max_map_size is not None:
            self._command += ["--max-map-size", str(max_map_size)]
        if cpus:
            self._command += ["--cpus", format_cpus(cpus)]
        self._hold_fds = hold_fds
        self._conn: Connection | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._batches = 0
        self._ready = False  # the process said ready (after its first commit: mark_writer)
        self._in_flight = False  # a batch is at the process (or being sent to it)
        self._flight: _InFlight | None = None  # sent, not yet answered

    @property
    def alive(self) -> bool:
        """The thread runs and so does the process (a dead one is noticed at once, not
        only at the next write)."""
        return super().alive and self._proc is not None and self._proc.poll() is None

    @property
    def ready(self) -> bool:
        return self._ready and self.alive

    @property
    def fatal(self) -> StoreCorrupted | None:
        """The damaged file, when the process died of it (see the module doc)."""
        killed = self._killed()
        if killed is None:
            return None
        return StoreCorrupted(f"the store writer process (pid {self.pid}) {killed}")

    def _killed(self) -> str | None:
        """How the process died of its file, if it did."""
        dead = damage_signal(None if self._proc is None else self._proc.poll())
        if dead is None:
            return None
        return f"was killed while it used the LMDB file {self._file}: it is damaged ({dead})"

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def start(self) -> None:
        """Spawn the writer process, then the thread that feeds it. The thread, not this
        call, waits for the process to say its store is open: writes queue meanwhile."""
        with self._cond:
            spawn = self._proc is None and not self._closing
        if spawn:
            ours, theirs = socket.socketpair()
            with ours, theirs:
                fd = theirs.fileno()
                try:
                    self._proc = subprocess.Popen(
                        [*self._command, "--fd", str(fd)],
                        pass_fds=(fd, *self._hold_fds),
                        stdin=subprocess.DEVNULL,
                        start_new_session=True,  # a terminal's Ctrl-C is the node's to handle
                    )
                except OSError as exc:
                    raise StoreError(f"cannot start the store writer process: {exc}") from exc
                self._conn = Connection(os.dup(ours.fileno()))
        super().start()

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "process": self.pid}

    def submit(self, write: Write, done: Done | None = None) -> None:
        """Queue ``write``; when no batch is at the process, send it from this thread at
        once (the writer thread need not wake for it)."""
        with self._cond:
            self._enqueue(write, done)
            if self._in_flight:
                return  # the writer thread sends it with the next batch
            self._in_flight = True
            batch = self._take()
        self._dispatch(batch)

    def _dispatch(self, batch: list[_Pending]) -> None:
        """Send ``batch`` (only the holder of ``_in_flight`` does) for the thread to answer."""
        flight = self._send(batch)
        with self._cond:
            self._flight = flight
            self._cond.notify_all()

    def _loop(self) -> None:
        """Wait for each batch's answer; then send what queued meanwhile *before* running
        the answered batch's callbacks, so the process commits while this thread (and
        the GIL it waits for) runs them. One batch is at the process at a time."""
        self._hello()
        while True:
            with self._cond:
                while self._flight is None and not (
                    (self._closing or self._lost is not None) and not self._in_flight
                ):
                    self._cond.wait()
                flight, self._flight = self._flight, None
            if flight is None:
                return  # closing (or lost), and nothing left
            answered = self._answer(flight)
            confirmed = time.perf_counter()
            with self._cond:
                queued = self._take()
                self._in_flight = bool(queued)
            if queued:
                self._dispatch(queued)
            self._settle(answered.batch, answered.outcomes, confirmed)

    def _hello(self) -> None:
        if self._conn is None:
            return
        try:
            self._await_ready(self._conn)
            self._ready = True
        except _BROKEN as exc:
            self._lost_because(exc)

    def _send(self, batch: list[_Pending]) -> _InFlight:
        flight = _InFlight(batch, [None] * len(batch))
        wires = []
        for i, pending in enumerate(batch):
            try:
                wires.append(write_to_wire(pending.write))
                flight.sent.append(i)
            except StoreError as exc:  # this record cannot be stored: only its write fails
                flight.outcomes[i] = exc
        if wires and self._lost is None:
            try:
                if self._conn is None:
                    raise StoreError("the store writer process was never started")
                self._batches += 1
                self._conn.send_bytes(pack([self._batches, wires]))
                flight.number = self._batches
            except _BROKEN as exc:
                self._lost_because(exc)
        return flight

    def _answer(self, flight: _InFlight) -> _InFlight:
        """``flight`` with the outcome of each write it sent (errors if the process is
        gone before it answered)."""
        if flight.number is not None:
            try:
                for i, outcome in zip(flight.sent, self._receive(flight), strict=True):
                    flight.outcomes[i] = outcome
                return flight
            except _BROKEN as exc:
                self._lost_because(exc)
        if flight.sent:
            lost = StoreWriterLost(f"{self._lost}; this write was not confirmed")
            for i in flight.sent:
                flight.outcomes[i] = lost
        return flight

    def _receive(self, flight: _InFlight) -> list[BaseException | None]:
        assert self._conn is not None
        reply = unpack(self._conn.recv_bytes())
        if not (isinstance(reply, list) and len(reply) == 3 and reply[0] == flight.number):
            raise StoreError(f"the store writer process answered out of turn: {reply!r:.200}")
        _, commits, outcomes = reply
        with self._cond:
            for size, seconds in commits:
                self._stats.committed(int(size), float(seconds))
        if outcomes is None:
            return [None] * len(flight.sent)
        if not isinstance(outcomes, list) or len(outcomes) != len(flight.sent):
            raise StoreError("the store writer process did not send one outcome per write")
        return [None if o is None else error_from_wire(o) for o in outcomes]

    def _await_ready(self, conn: Connection) -> None:
        hello = unpack(conn.recv_bytes())
        if hello == ["ready", self.pid]:
            return
        if isinstance(hello, list) and hello[:1] == ["failed"]:
            raise StoreError(f"the store writer process cannot open the store: {hello[1]}")
        raise StoreError(f"the store writer process said {hello!r:.200} instead of ready")

    def _lost_because(self, exc: BaseException) -> None:
        """The process cannot be talked to any more: say why, and ``_lose`` the writer."""
        code = self._exit_code()
        if isinstance(exc, StoreError):
            why = str(exc)
        elif (killed := self._killed()) is not None:
            why = f"it {killed}"
        elif code is None:
            why = f"its socket failed ({exc or type(exc).__name__})"
        else:
            why = f"it exited with code {code}"
        _log.error("the store writer process (pid %s) is lost: %s", self.pid, why)
        self._lose(StoreWriterLost(f"the store writer process (pid {self.pid}) is lost: {why}"))

    def _exit_code(self) -> int | None:
        """The process's exit code, waiting a moment for a process that is exiting: its
        socket closes before its exit status is there to read."""
        if self._proc is None:
            return None
        try:
            return self._proc.wait(timeout=_DEATH_WAIT)
        except subprocess.TimeoutExpired:
            return None

    def _run(self) -> None:
        try:
            super()._run()
        finally:
            self._stop_process()

    def _stop_process(self) -> None:
        """Close our end (the process commits nothing more, exits), then reap it."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
        proc = self._proc
        if proc is None:
            return
        try:
            proc.wait(timeout=_EXIT_WAIT)
        except subprocess.TimeoutExpired:
            _log.error("the store writer process %d did not exit; killing it", proc.pid)
            proc.kill()
            proc.wait()
