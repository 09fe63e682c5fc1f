"""A worker whose TCP connection to the node dies without a FIN or an RST (a network cut,
a NAT that forgot it) notices within seconds, connects again under its routing id and
serves on as the same worker: the node, which may still hold the dead connection, hands
the routing id over to the new one (a connection under a routing id still in use was
ignored, and so was everything the worker sent on it), and runs again what the dead
connection lost: a run frame sent into it, a result sent out of it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import zmq

from tamma_actors import _wire as wire
from tamma_actors._worker_loop import CurveKeys, Worker
from tamma_actors._workerpool import TaskRedispatched, TaskStarted
from tests.integration import test_workerpool
from tests.integration.test_workerpool import ALLOW_ARGS, Harness, task
from tests.plugins_for_tests import ALLOWLIST
from tests.tcp_forwarder import Forwarder
from tests.workers import RunningWorker

pytestmark = pytest.mark.integration

zctx = test_workerpool.zctx  # (fixtures)
make = test_workerpool.make
fake = test_workerpool.fake

# The node's heartbeat timeout: long, so that only a worker that came back in time keeps
# its place (its tasks are not queued again for its silence).
HOLD = 60.0
INTERVAL = 0.2


@pytest.fixture(params=["tcp", "tcp+curve"])
def curve(request: pytest.FixtureRequest) -> Iterator[tuple[str, str] | None]:
    if request.param == "tcp":
        yield None
    else:
        public, secret = zmq.curve_keypair()
        yield public.decode(), secret.decode()


def test_a_worker_whose_connection_froze_connects_again_and_serves_on(
    make: Callable[..., Harness], curve: tuple[str, str] | None
) -> None:
    h = make(
        endpoint="tcp://127.0.0.1:*", heartbeat_interval=INTERVAL, heartbeat_timeout=HOLD,
        curve_secret_key=None if curve is None else curve[1], worker_args=ALLOW_ARGS,
    )  # fmt: skip
    port = int(h.endpoint().rsplit(":", 1)[1])
    keys = None if curve is None else CurveKeys(curve[0])
    with Forwarder(port) as fw:
        endpoint = f"tcp://127.0.0.1:{fw.port}"
        worker = Worker(endpoint, heartbeat_interval=INTERVAL, allowlist=ALLOWLIST, curve=keys)
        r = RunningWorker(worker)
        try:
            h.wait_workers(1)
            [joined] = h.stats()["workers"]
            h.dispatch(task("before"))
            assert h.inbox.finished("before").ok
            h.dispatch(task("slow", "sleep", config={"seconds": 0.5}))
            h.inbox.seen(TaskStarted, "slow")  # (a start notice, or the result saying so)
            frozen_at = time.monotonic()
            assert fw.freeze() == 1
            h.dispatch(task("during"))  # sent into the dead connection
            assert h.inbox.finished("slow").ok and h.inbox.finished("during").ok
            h.dispatch(task("after"))
            assert h.inbox.finished("after").ok
            assert time.monotonic() - frozen_at < HOLD / 4  # seconds, not the node's timeout
            assert fw.connections == 2  # it connected again, through a new connection
            stats = h.stats()
            assert [(w["worker_id"], w["pid"]) for w in stats["workers"]] == [
                (joined["worker_id"], joined["pid"])
            ]  # the same worker, once: no other name, no connection left over
            assert stats["refused"]["count"] == 0
            assert {m.worker_id for m in h.inbox.messages if isinstance(m, TaskStarted)} == {
                joined["worker_id"]
            }
            reasons = [m.reason for m in h.inbox.messages if isinstance(m, TaskRedispatched)]
            assert all("connection" in reason for reason in reasons), reasons
        finally:
            r.stop()


# The protocol behind it, with a worker speaking it by hand: a worker says hello again when
# it has a new connection; the node checks the tasks it had then against the worker's next
# heartbeat (sent once welcomed again, so after every frame the node sent before).


def test_the_tasks_a_worker_no_longer_holds_after_a_new_hello_run_again(fake: Any) -> None:
    h, new = fake
    w = new("fw1")
    w.hello(["noop"], slots=3)
    for tid in ("kept", "lost"):
        h.dispatch(task(tid))
        assert w.recv()["task_id"] == tid
    # A heartbeat may have been sent before run frames came: on its own it tells nothing.
    w.send(wire.hb("fw1", [], 1))
    w.hello(["noop"], slots=3)  # its connection was replaced: "lost" went with the old one
    h.dispatch(task("new"))
    assert w.recv()["task_id"] == "new"
    w.send(wire.hb("fw1", ["kept"], 1))  # sent before "new" came: it is not in question
    lost = h.inbox.seen(TaskRedispatched, "lost")
    assert "fw1" in lost.reason and "connection" in lost.reason
    assert w.recv()["task_id"] == "lost"  # queued again, to the only worker there is
    w.send(wire.hb("fw1", ["kept", "new", "lost"], 1))
    for tid in ("kept", "new", "lost"):
        w.send(wire.result_ok(tid, tid, 1.0))
        assert h.inbox.finished(tid).output == tid
    assert h.inbox.of(TaskRedispatched, "kept") == h.inbox.of(TaskRedispatched, "new") == []


def test_a_hello_said_again_before_its_welcome_came_does_not_run_a_step_twice(
    fake: Any,
) -> None:
    """A worker says hello again when no welcome came in time (a busy node); the first
    welcome then comes, the run frames sent after it, and the second welcome. A heartbeat
    it sent after the first welcome, before it read those run frames, says nothing of
    them: it names the first hello, and the node waits for one naming the second."""
    h, new = fake
    w = new("fw1")
    w.send(wire.hello("fw1", 4242, "fakehost", 2, ["noop"], hello_seq=1))
    assert w.recv() == wire.welcome(0.2, 1)
    h.dispatch(task("t1"))
    w.send(wire.hello("fw1", 4242, "fakehost", 2, ["noop"], hello_seq=2))  # said again
    assert w.recv()["task_id"] == "t1"
    assert w.recv() == wire.welcome(0.2, 2)
    w.send(wire.hb("fw1", [], 1, hello_seq=1))  # sent before it had read t1's run frame
    w.send(wire.hb("fw1", ["t1"], 1, hello_seq=2))
    w.send(wire.result_ok("t1", "once", 1.0))
    assert h.inbox.finished("t1").output == "once"
    assert h.inbox.of(TaskRedispatched, "t1") == []
    assert not w.sock.poll(300)  # t1 was not sent again


def test_a_cancel_the_old_connection_may_have_lost_is_sent_again(fake: Any) -> None:
    h, new = fake
    w = new("fw1")
    w.hello(["noop"])
    h.dispatch(task("c"))
    assert w.recv()["task_id"] == "c"
    h.cancel("c")
    assert w.recv() == wire.cancel("c")
    w.hello(["noop"])
    w.send(wire.hb("fw1", ["c"], 1))
    assert w.recv() == wire.cancel("c")
    w.send(wire.result_error("c", {"type": "StepCancelled", "message": "x"}, 1.0))
    finished = h.inbox.finished("c")
    assert finished.error is not None and finished.error["type"] == "StepCancelled"
