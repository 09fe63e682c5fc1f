"""The pool takes a worker for one of its own local processes by the routing id it gave
that process at spawn, not by the worker id the process was started under.

A local worker is one the pool may kill and restart, whose memory it measures itself and
which it signals at shutdown; its worker id (``local-PID-N``) is shown by ``tamma health``
and predictable. A peer naming itself after one, before that process joins or after it
died (until the pool has reaped it), must not be taken for it, nor keep the name from it.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from typing import Any

import pytest
import zmq

from tamma_actors import _wire as wire
from tamma_actors._worker_children import Child
from tamma_actors._workerpool import WorkerPool
from tests.integration import test_workerpool
from tests.integration.test_workerpool import TIMEOUT, FakeWorker, Harness, _heard
from tests.workers import until

pytestmark = pytest.mark.integration

zctx = test_workerpool.zctx  # (fixtures)
make = test_workerpool.make


class LatePool(WorkerPool):
    """Spawns a local worker when the test says so, and hears of one's exit only when the
    test says so: a pidfd event may come after frames the pool reads first."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._exited: list[Child] = []

    def spawn_one(self) -> None:
        self._spawn(failures=0)

    def _on_child_exit(self, child: Child) -> None:
        self.unwatch(child.pidfd)  # (level-triggered: it would fire on every turn)
        self._exited.append(child)

    def reap(self) -> int:
        exited, self._exited = self._exited, []
        for child in exited:
            super()._on_child_exit(child)
        return len(exited)


def _local(h: Harness, worker_id: str) -> dict[str, Any] | None:
    """The pool's entry for ``worker_id``, if it is one of its local processes."""
    stats = h.stats()
    for w in stats["workers"]:
        if w["worker_id"] == worker_id and w["local"] and w["pid"] in stats["local_pids"]:
            return w  # type: ignore[no-any-return]
    return None


def test_a_peer_naming_a_local_worker_that_died_is_not_taken_for_it(
    make: Callable[..., Harness], zctx: zmq.Context[Any]
) -> None:
    h = make(local_workers=1, pool_cls=LatePool)
    h.wait_workers(1)
    [joined] = h.stats()["workers"]
    os.kill(joined["pid"], signal.SIGKILL)  # its connection drops; the pool reaps it later
    rogue = FakeWorker(zctx, h.endpoint(), joined["worker_id"])
    try:
        hello = wire.hello(joined["worker_id"], 4242, "roguehost", 2, ["noop"])
        # until the pool answers (it may first wait for the dead one's connection to go)
        _heard(rogue, hello, lambda: rogue.sock.poll(0), reconnect=False)
        answer = rogue.recv()
        assert answer["t"] == "refused", answer
        assert "local worker" in answer["reason"]
        assert [w["pid"] for w in h.stats()["workers"]] == [joined["pid"]]  # not the peer's
        assert h.proxy.reap().get(timeout=TIMEOUT) == 1
        # its successor joins, as one of the pool's own
        until(lambda: [w for w in h.stats()["workers"] if w["local"]], "a new local worker")
        assert all(w["worker_id"] != joined["worker_id"] for w in h.stats()["workers"])
    finally:
        rogue.close()


def test_a_local_worker_takes_its_name_from_a_peer_that_claimed_it_first(
    make: Callable[..., Harness], zctx: zmq.Context[Any]
) -> None:
    """Local worker ids are predictable: a peer may claim the next one before the process
    that gets it says hello. The process gets its name and is the pool's own; the peer is
    refused and loses it (and its steps: they run again)."""
    h = make(local_workers=0, pool_cls=LatePool)
    name = f"local-{os.getpid()}-1"  # the first local worker of a pool in this process
    rogue = FakeWorker(zctx, h.endpoint(), name)
    try:
        rogue.hello(["noop"])
        h.proxy.spawn_one().get(timeout=TIMEOUT)
        child = until(lambda: _local(h, name), "the local worker joined under its name")
        assert child["host"] != "fakehost"
        answer = rogue.recv()
        assert answer["t"] == "refused", answer
        assert "local worker" in answer["reason"]
        assert [w["worker_id"] for w in h.stats()["workers"]] == [name]
    finally:
        rogue.close()
