"""The node's supervised children (a mixin of :class:`~tamma_actors._node.Node`).

The children that ``supervisors/node.toml`` declares (``store_writer``, ``event_bus``,
``worker_pool``, ``control_server``) each live behind a slot that the rest of the node
holds, so a restart only swaps what is in the slot. Here they are started, stopped (each
within its ``shutdown_timeout``) and checked, and a failed one is restarted together with
the children the tree's strategy takes along, as long as the tree's restart intensity
allows; beyond it the node stops. A socket child is waited for until it has bound its
endpoint: at the node's start, one that cannot bind (a port in use, a host that does not
resolve) fails the start with the setting and the endpoint named, as restarting it would
only fail again; at a restart, it counts as another failure of that child.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pykka
import zmq

from tamma_actors import _wire as wire
from tamma_actors._affinity import format_cpus
from tamma_actors._control import ControlServer
from tamma_actors._errors import TransportError
from tamma_actors._eventbus import EventBus
from tamma_actors._plugins import GATED_BUILTINS, gated_enabled
from tamma_actors._pool_admission import WorkerAdmission
from tamma_actors._supervision import children_to_restart
from tamma_actors._workerpool import WorkerPool
from tamma_actors._writer import QueuedWriter, StoreWriter
from tamma_actors._writer_process import ProcessStoreWriter

if TYPE_CHECKING:
    from tamma_actors._config import NodeConfig
    from tamma_actors._engine import Engine
    from tamma_actors._lmdb_store import LmdbStore
    from tamma_actors._node import _ActorSlot, _WriterSlot
    from tamma_actors._supervision import ChildSpec, RestartIntensity, SupervisorSpec

__all__ = ["NodeChildren"]

log = logging.getLogger("tamma_actors._node")

# How long a socket child's on_start (binding; the pool also spawns its local workers)
# may take before the node gives up on it.
_START_TIMEOUT = 30.0


def _bound(
    setting: str, endpoint: str, start: Callable[..., pykka.ActorRef[Any]], /, *args: Any, **kw: Any
) -> pykka.ActorRef[Any]:
    """Start a socket child and wait for its bind: a refusal is raised naming the setting
    and the endpoint, once (a child that cannot bind would only fail again if restarted)."""
    try:
        return start(*args, timeout=_START_TIMEOUT, **kw)
    except TransportError as exc:
        raise TransportError(f"{setting} {endpoint!r}: cannot bind: {_reason(exc)}") from exc


def _reason(exc: TransportError) -> str:
    cause = exc.__cause__
    if not isinstance(cause, zmq.ZMQError) or cause.errno is None:
        return str(exc)
    if cause.errno == errno.ENODEV:  # what libzmq says of a host it cannot resolve
        return "no such host or network interface"
    return zmq.strerror(cause.errno)


class NodeChildren:
    """Start, stop, check and restart the node's children."""

    if TYPE_CHECKING:
        config: NodeConfig
        cpus: frozenset[int]
        tree: SupervisorSpec
        _zmq: zmq.Context[Any]
        _worker_token: str
        _lock_fd: int | None
        _store: LmdbStore | None
        _writer: _WriterSlot
        _bus: _ActorSlot
        _pool: _ActorSlot
        _control: _ActorSlot
        _running: list[ChildSpec]
        _intensity: RestartIntensity

        @property
        def engine(self) -> Engine: ...

    def _start_child(self, spec: ChildSpec) -> None:
        cfg = self.config
        if spec.kind == "store_writer":
            assert self._store is not None
            writer: QueuedWriter
            if cfg.store_writer == "thread":
                writer = StoreWriter(self._store, max_batch=cfg.group_commit_max)
            else:
                writer = ProcessStoreWriter(
                    cfg.data_dir / "store",
                    durability=cfg.durability,
                    map_size=cfg.map_size,
                    max_map_size=cfg.max_map_size,
                    max_batch=cfg.group_commit_max,
                    # it keeps the data-directory lock until its last commit is done
                    hold_fds=() if self._lock_fd is None else (self._lock_fd,),
                    cpus=self.cpus,
                )
            writer.start()
            self._writer.writer = writer
        elif spec.kind == "event_bus":
            self._bus.ref = _bound(
                "events_endpoint",
                cfg.events_address,
                EventBus.start_and_wait,
                self._zmq,
                cfg.events_address,
                max_frame_bytes=cfg.max_frame_bytes,
                curve_secret_key=cfg.curve_secret_key,
                publish_time=cfg.events_publish_time,
                tokens=cfg.tokens,
            )
        elif spec.kind == "worker_pool":
            self._pool.ref = _bound(
                "workers_endpoint",
                cfg.workers_address,
                WorkerPool.start_and_wait,
                self._zmq,
                admission=self._worker_admission(),
                env={wire.TOKEN_ENV: self._worker_token},  # not argv: ps shows it
                endpoint=cfg.workers_address,
                local_workers=cfg.workers,
                worker_slots=cfg.worker_slots,
                heartbeat_interval=cfg.heartbeat_interval,
                heartbeat_timeout=cfg.heartbeat_timeout,
                cancel_grace=cfg.cancel_grace,
                max_frame_bytes=cfg.max_frame_bytes,
                worker_args=self._worker_args(),
                max_worker_rss=None
                if cfg.worker_max_memory_mb is None
                else cfg.worker_max_memory_mb << 20,
                curve_secret_key=cfg.curve_secret_key,
                on_offered=self._pool.set_offered,
            )
        else:
            self._control.ref = _bound(
                "control_endpoint",
                cfg.control_address,
                ControlServer.start_and_wait,
                self._zmq,
                self.engine,
                endpoint=cfg.control_address,
                tokens=cfg.tokens,
                max_frame_bytes=cfg.max_frame_bytes,
                curve_secret_key=cfg.curve_secret_key,
            )
        self._running.append(spec)

    def _worker_admission(self) -> WorkerAdmission:
        """With tokens or worker tokens, a worker needs a worker token (the operator's, or
        this run's own that the local workers are given: no control role) or an admin
        token. The gated built-ins count only when enabled here."""
        cfg = self.config
        guarded = bool(cfg.tokens or cfg.worker_tokens)
        return WorkerAdmission(
            tokens=cfg.tokens,
            withheld=frozenset(GATED_BUILTINS) - gated_enabled(cfg),
            worker_tokens=frozenset([*cfg.worker_tokens, self._worker_token] if guarded else []),
        )

    def _worker_args(self) -> list[str]:
        args = ["--log-level", self.config.log_level]
        if self.cpus:  # a worker restarted by a pinned thread runs on all of them again
            args += ["--cpus", format_cpus(self.cpus)]
        args += [f"--allow-{name}" for name in sorted(gated_enabled(self.config))]
        for name, target in self.config.plugins.items():  # one argument each, as below
            args.append(f"--allow={name}={target}")
        if self.config.curve_public_key and self.config.workers_address.startswith("tcp://"):
            # one argument: a z85 key may begin with "-", which argparse takes for an option
            args.append(f"--curve-server-key={self.config.curve_public_key}")
        return args

    def _stop_child(self, spec: ChildSpec) -> None:
        if spec in self._running:
            self._running.remove(spec)
        if spec.kind == "store_writer":
            writer, self._writer.writer = self._writer.writer, None
            if writer is not None:
                writer.close(timeout=spec.shutdown_timeout)
            return
        slot = {"event_bus": self._bus, "worker_pool": self._pool}.get(spec.kind, self._control)
        ref, slot.ref = slot.ref, None
        if ref is not None:
            try:
                ref.stop(block=True, timeout=spec.shutdown_timeout)
            except (pykka.ActorDeadError, pykka.Timeout):
                log.warning("%s did not stop within %.1fs", spec.name, spec.shutdown_timeout)

    def _child_alive(self, spec: ChildSpec) -> bool:
        if spec.kind == "store_writer":
            return self._writer.writer is not None and self._writer.writer.alive
        slot = {"event_bus": self._bus, "worker_pool": self._pool}.get(spec.kind, self._control)
        return slot.ref is not None and slot.ref.is_alive()

    def _restart(self, index: int, spec: ChildSpec) -> bool:
        if not self._intensity.allow(time.monotonic()):
            log.critical(
                "child %s failed more than %d times within %.0fs: the node stops",
                spec.name,
                self.tree.max_restarts,
                self.tree.within_seconds,
            )
            return False
        affected = [
            self._running[i]
            for i in children_to_restart(self.tree.strategy, index, len(self._running))
        ]
        log.error("child %s died; restarting %s", spec.name, ", ".join(c.name for c in affected))
        for child in reversed(affected):
            self._stop_child(child)
        order = {c.name: i for i, c in enumerate(self.tree.children)}
        for child in sorted(affected, key=lambda c: order[c.name]):
            try:
                self._start_child(child)
            except Exception as exc:
                # Its endpoint taken meanwhile, no file descriptors left: it counts as
                # failing again, and the next check restarts it, within the same restart
                # intensity (a refused bind says all in one line; anything else, a traceback).
                unforeseen = not isinstance(exc, TransportError)
                log.error("child %s could not be restarted: %s", child.name, exc,
                          exc_info=unforeseen)  # fmt: skip
                self._running.append(child)
        return True
