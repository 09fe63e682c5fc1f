"""Node: the coordinator process — builds the supervision tree, recovers, serves.

Start order (and the reverse for shutdown) follows ``supervisors/node.toml``; around the
declared children sit the pieces every child relies on::

    start:  data dir + lock → LMDB store → dispatcher, timers → [store_writer, event_bus,
            worker_pool] → engine → [control_server] → recovery (requests for executions
            not yet recovered activate them first), retention cleanup
    drain:  (graceful shutdown, before stop) new work refused, new dispatches held back
            (they stay committed as dispatched), running steps get ``shutdown_grace`` to
            finish and commit their results
    stop:   control_server → engine (execution supervisors) → worker_pool (workers told to
            stop, then killed) → event_bus → store_writer (drains, commits; its process
            exits) → timers, dispatcher → store → lock

Every stop has a timeout; closing twice is harmless. A full store (``StoreFull``: the map
ceiling or the disk) makes the node refuse new work until it is restarted; what was
committed stays, and the executions it stopped are recovered on the next start. When the
store writer process dies, the supervision tree starts another, and the executions whose
commits it had not confirmed are re-read from the store (``reactivate_unconfirmed``, from
the supervision loop once every child runs again); one that liblmdb killed (a damaged
file) is not replaced: ``run`` raises its ``StoreCorrupted``.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any, Self

import pykka
import zmq
from pykka.messages import ProxyCall

from tamma_actors import _affinity
from tamma_actors._config import NodeConfig
from tamma_actors._data_dir import lock_data_dir
from tamma_actors._dispatch import Dispatcher
from tamma_actors._engine import Engine, EngineParts
from tamma_actors._errors import (
    ConfigError,
    StoreClosed,
    StoreFull,
    StoreUnwritable,
    StoreWriterLost,
    SupervisionError,
    TammaError,
)
from tamma_actors._execution import ExecutionDeps
from tamma_actors._gc import frozen_by_tamma
from tamma_actors._lmdb_store import LmdbStore
from tamma_actors._node_children import NodeChildren
from tamma_actors._plugins import PluginRegistry, check_modules, gated_enabled, load_registry
from tamma_actors._socket_actor import Urgent
from tamma_actors._store import Write
from tamma_actors._subflows import WorkflowFiles
from tamma_actors._supervision import ChildSpec, RestartIntensity, SupervisorSpec, load_tree
from tamma_actors._timers import TimerService
from tamma_actors._workerpool import Dispatch, HoldQueue
from tamma_actors._writer import QueuedWriter

__all__ = ["EXIT_ESCALATED", "EXIT_OK", "Node"]

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_ESCALATED = 70  # a child failed more often than the tree's restart intensity allows


class _ActorSlot:
    """The current actor of a restartable child: users keep the slot, not the ref."""

    def __init__(self) -> None:
        self.ref: pykka.ActorRef[Any] | None = None
        self.hold_dispatch = False  # draining: new steps stay committed as dispatched
        # the worker pool's: what its connected workers offer (a remote worker's --allow)
        self.offered: frozenset[str] = frozenset()

    def set_offered(self, names: frozenset[str]) -> None:
        self.offered = names

    def stats(self, timeout: float = 2.0, *, urgent: bool = False) -> dict[str, Any] | None:
        """The actor's ``stats()``, or None if it is not running or does not answer in
        time. ``urgent`` asks ahead of the messages waiting in its inbox (a SocketActor's):
        the answer then leaves out what they hold (``health`` under load waited 80-110 ms
        behind them at p50, 370-650 at p99); without it, it comes after all of them
        (draining counts the steps still on their way)."""
        ref = self.ref
        if ref is None:
            return None
        call = ProxyCall(attr_path=("stats",), args=(), kwargs={})  # no proxy to build
        try:
            reply = ref.ask(Urgent(call) if urgent else call, block=False)
            stats: dict[str, Any] = reply.get(timeout=timeout)
        except (pykka.ActorDeadError, pykka.Timeout):
            return None
        return stats

    def tell(self, message: Any) -> None:
        if self.ref is None:
            raise pykka.ActorDeadError("the child is not running")
        if self.hold_dispatch and isinstance(message, Dispatch):
            log.debug("draining: %s is left for the next start", message.task["task_id"])
            return
        self.ref.tell(message)


class _WriterSlot:
    def __init__(self) -> None:
        self.writer: QueuedWriter | None = None
        # The first StoreFull or StoreUnwritable a commit met: from then on, no new work.
        self.full: StoreFull | StoreUnwritable | None = None

    def submit(
        self, write: Write, done: Callable[[BaseException | None], None] | None = None
    ) -> None:
        """Submit to the current writer. A refusal because it is closing, by a writer this
        slot no longer holds, is a writer being replaced: ``StoreWriterLost``, which has
        the execution re-read once the new one is ready (a plain ``StoreClosed`` stopped
        it until the node's next start)."""
        writer = self.writer  # read once: the supervision loop may swap it meanwhile
        if writer is None:
            raise StoreWriterLost("the store writer is not running (it is being restarted)")

        def observed(exc: BaseException | None) -> None:
            if isinstance(exc, StoreFull | StoreUnwritable) and self.full is None:
                self.full = exc
                log.critical("the store takes no writes; the node refuses new work: %s", exc)
            if done is not None:
                done(exc)
            elif exc is not None:
                log.error("store write for %s failed: %s", write.execution_id, exc)

        try:
            writer.submit(write, observed)
        except StoreWriterLost:
            raise
        except StoreClosed as exc:
            if self.writer is writer:  # closed and not replaced: the node is stopping
                raise
            raise StoreWriterLost(f"the store writer is being restarted ({exc})") from exc

    def refusal(self) -> TammaError | None:
        if self.full is None:
            return None
        if isinstance(self.full, StoreUnwritable):
            return StoreUnwritable(
                f"the node accepts no new work: its disk refused a write ({self.full}). "
                "Check the disk and restart the node; everything committed is kept"
            )
        return StoreFull(
            f"the node accepts no new work: its store is full ({self.full}). Free space "
            "(tamma admin cleanup, more disk or a larger max_map_size) and restart the node; "
            "everything committed is kept"
        )


class Node(NodeChildren):
    def __init__(self, config: NodeConfig, *, tree: SupervisorSpec | None = None) -> None:
        self.config = config
        self.tree = tree or load_tree(config.supervision)
        self.registry: PluginRegistry = load_registry(
            enabled=gated_enabled(config), allowlist=config.plugins
        )
        # The CPUs given to this process, before pin_coordinator narrows its own threads':
        # its children keep all of them.
        self.cpus = _affinity.allowed()
        self.pinned_cpu: int | None = None
        try:  # a CPU named in the configuration must be one this node may use
            _affinity.check(config.coordinator_cpu, self.cpus)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        self._zmq = zmq.Context()
        # This run's worker token for its own local workers (a node with tokens admits
        # only workers holding one, or an admin token): nothing for the operator to hand
        # out, and nothing on the control socket.
        self._worker_token = secrets.token_urlsafe(32)
        self._lock_fd: int | None = None
        self._store: LmdbStore | None = None
        self._dispatcher: Dispatcher | None = None
        self._timers: TimerService | None = None
        self._writer = _WriterSlot()
        self._bus = _ActorSlot()
        self._pool = _ActorSlot()
        self._control = _ActorSlot()
        self._engine: Engine | None = None
        self._running: list[ChildSpec] = []
        self._intensity = RestartIntensity(self.tree.max_restarts, self.tree.within_seconds)
        self._closed = False
        self.recovered = 0

    # -- life cycle ------------------------------------------------------------------------

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            raise SupervisionError("the node is not started")
        return self._engine

    def start(self) -> Self:
        cfg = self.config
        check_modules(cfg.plugins)  # refused now, not at each step that names one
        try:
            self._lock_fd = lock_data_dir(cfg.data_dir)
            self._store = LmdbStore(
                cfg.data_dir / "store",
                durability=cfg.durability,
                map_size=cfg.map_size,
                max_map_size=cfg.max_map_size,
            )
            self._dispatcher = Dispatcher(threads=cfg.dispatcher_threads)
            self._timers = TimerService()
            for spec in self.tree.children:
                if spec.kind != "control_server":
                    self._start_child(spec)
            self._engine = Engine(self._engine_parts())
            for spec in self.tree.children:  # requests are served while recovery runs
                if spec.kind == "control_server":
                    self._start_child(spec)
            self.recovered = self._recover()
            self._retention()
        except BaseException:
            self.close()
            raise
        log.info(
            "node up: data %s, control %s, %d local workers, %d executions recovered "
            "(%d resting until their timer or a request)",
            cfg.data_dir,
            cfg.control_address,
            cfg.workers,
            self.recovered,
            self._engine.resting_count,
        )
        return self

    def _recover(self) -> int:
        """The engine's recovery, with Python's cyclic GC paused: recovery allocates every
        live execution at once, and collections over that growing heap cost more than
        the work (creating a supervisor: ~56 µs with it, ~21 µs without, at 10,000)."""
        assert self._engine is not None
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            return self._engine.recover()
        finally:
            if was_enabled:
                gc.enable()

    def pin_coordinator(self) -> int | None:
        """Pin every thread of this process to one CPU, as ``coordinator_cpu`` says (see
        ``_affinity``); returns the CPU, or None. For a process that is the node and
        nothing else (``tamma-node run``), once recovery is done."""
        cpu = _affinity.choose(self.config.coordinator_cpu, self.cpus)
        if cpu is None:
            return None
        threads = _affinity.pin_threads(cpu)
        self.pinned_cpu = cpu
        log.info("coordinator: %d threads pinned to CPU %d; children may use CPUs %s",
                 threads, cpu, _affinity.format_cpus(self.cpus))  # fmt: skip
        return cpu

    def run(self, stop: threading.Event, check_interval: float = 0.1) -> int:
        """Supervise the children until ``stop`` is set; returns the exit code. Raises
        the StoreCorrupted of a store writer that a damaged file killed."""
        next_cleanup = time.monotonic() + self.config.retention_interval
        while not stop.wait(check_interval):
            if time.monotonic() >= next_cleanup:
                next_cleanup = time.monotonic() + self.config.retention_interval
                self._retention_in_background()
            for index, spec in enumerate(self._running):
                if not self._child_alive(spec):
                    writer = self._writer.writer
                    if spec.kind == "store_writer" and writer and (fatal := writer.fatal):
                        log.critical("%s; the node stops", fatal)
                        raise fatal
                    if not self._restart(index, spec):
                        return EXIT_ESCALATED
                    break
            else:  # every child runs: bring back what a lost writer stopped since, once
                # the new writer is ready (its first commit makes the dead one's visible)
                writer = self._writer.writer
                if writer is not None and writer.ready:
                    self.engine.reactivate_unconfirmed()
        return EXIT_OK

    def drain(self, grace: float, hurry: threading.Event | None = None) -> bool:
        """Graceful shutdown, before ``close``: refuse new work, hold new dispatches back,
        and give the running steps up to ``grace`` seconds (or until ``hurry`` is set) to
        finish and commit. True when nothing was left running."""
        self.engine.drain()
        self._pool.hold_dispatch = True
        with contextlib.suppress(pykka.ActorDeadError):  # it holds its queue from now on
            self._pool.tell(HoldQueue())
        deadline = time.monotonic() + grace
        waiter = hurry if hurry is not None else threading.Event()
        while (busy := self._steps_in_pool()) > 0:
            if time.monotonic() >= deadline or waiter.is_set():
                log.warning("shutting down with %d step(s) still running", busy)
                return False
            waiter.wait(0.05)
        log.info("drained: no step is running")
        return True

    def _steps_in_pool(self) -> int:
        """The steps on workers (those still queued wait for the next start)."""
        stats = self._pool.stats()
        return 0 if stats is None else int(stats["running"])

    def _retention(self) -> None:
        days = self.config.retention_days
        if days is None or self._engine is None:
            return
        try:  # through the engine, which must know what was deleted (subflow names)
            self._engine.admin_cleanup(days).result()
        except TammaError as exc:
            log.error("retention cleanup failed: %s", exc)

    def _retention_in_background(self) -> None:
        days = self.config.retention_days
        if days is None or self._engine is None:
            return

        def report(fut: Any) -> None:
            if fut.exception() is not None:
                log.error("retention cleanup failed: %s", fut.exception())

        self._engine.admin_cleanup(days).add_done_callback(report)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for spec in reversed(list(self._running)):
            if spec.kind == "control_server":
                self._stop_child(spec)
        if self._engine is not None:
            self._engine.close()
        self._settle_commits()
        for spec in reversed(list(self._running)):
            self._stop_child(spec)
        for closer in (self._timers, self._dispatcher, self._store):
            if closer is not None:
                closer.close()
        self._zmq.term()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _settle_commits(self, timeout: float = 5.0) -> None:
        """Let the commits in flight end, and their effects (tells to the worker pool and
        the event bus) run while those children still do: a node closed just after it
        recovered executions stopped them under their recovery commits, and each effect
        logged a traceback."""
        writer = self._writer.writer
        if writer is not None:
            with contextlib.suppress(TammaError):  # a writer lost or slow: stop anyway
                writer.flush(timeout)

    # -- helpers (the children themselves: NodeChildren) -----------------------------------

    def _engine_parts(self) -> EngineParts:
        assert self._store is not None and self._dispatcher is not None
        assert self._timers is not None
        deps = ExecutionDeps(
            writer=self._writer,  # type: ignore[arg-type]
            pool=self._pool,  # type: ignore[arg-type]
            timers=self._timers,
            bus=self._bus,  # type: ignore[arg-type]
            snapshot_every=self.config.snapshot_every,
            start_hold=self.config.start_notice_hold,
            max_frame_bytes=self.config.max_frame_bytes,
        )
        return EngineParts(
            store=self._store,
            dispatcher=self._dispatcher,
            deps=deps,
            implementations=self._implementations,
            health_extra=self._health,
            write_block=self._writer.refusal,
            watchdog_interval=self.config.watchdog_interval,
            rest_after=self.config.rest_after,
            workflow_files=WorkflowFiles(self.config.workflow_file_dirs),
        )

    def _implementations(self) -> list[str]:
        """What a workflow may name: this node's registry, and what its connected workers
        offer besides (a worker elsewhere started with ``--allow NAME=MODULE:ATTR``). A name
        the node gates by its own settings (``shell`` without allow_shell) is never among
        the offers: the pool's admission withholds it (``_worker_admission``)."""
        return [*self.registry.names(), *self._pool.offered]

    def _health(self) -> dict[str, Any]:
        report: dict[str, Any] = {
            "node": {
                "pid": os.getpid(),
                "data_dir": str(self.config.data_dir),
                "cpu": self.pinned_cpu,  # the CPU its threads are pinned to, if any
                "gc": {
                    "threshold": list(gc.get_threshold()),
                    "frozen": frozen_by_tamma(),
                    "collections": [s["collections"] for s in gc.get_stats()],
                },
            }
        }
        report["workers"] = self._pool.stats(urgent=True)
        if report["workers"] is None:
            report["status"] = "degraded"
        # published, dropped (over the frame cap), in-process subscribers, and refused:
        # subscriptions on the events socket without a known token (a node with tokens)
        report["events"] = self._bus.stats(urgent=True)
        writer = self._writer.writer
        report["store"] = self._store.stats() if self._store else None
        report["writer"] = writer.stats() if writer else None
        report["children"] = {s.name: self._child_alive(s) for s in self._running}
        if self._writer.full is not None:
            report["status"] = "degraded"
            report["store_refuses_writes"] = str(self._writer.full)
        return report
