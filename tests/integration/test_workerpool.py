"""WorkerPool with real worker processes, and with fake workers speaking the protocol."""

from __future__ import annotations

import os
import secrets
import signal
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import psutil
import pykka
import pytest
import zmq

from tamma_actors import _wire as wire
from tamma_actors._errors import ConfigError
from tamma_actors._workerpool import (
    Cancel,
    Dispatch,
    TaskFinished,
    TaskProgress,
    TaskRedispatched,
    TaskStarted,
    Undelivered,
    WorkerPool,
)

pytestmark = pytest.mark.integration

TESTS_DIR = str(Path(__file__).resolve().parents[1])
sys.path.insert(0, TESTS_DIR)
from plugins_for_tests import ALLOW_ARGS  # noqa: E402

TIMEOUT = 30.0
MAX = 1 << 20


class Inbox:
    """What the pool told an execution, in order; tests wait on it with a timeout."""

    def __init__(self) -> None:
        self.messages: list[Any] = []
        self.cond = threading.Condition()

    def add(self, msg: Any) -> None:
        with self.cond:
            self.messages.append(msg)
            self.cond.notify_all()

    def wait_for(self, predicate: Callable[[list[Any]], Any], timeout: float = TIMEOUT) -> Any:
        with self.cond:
            result = self.cond.wait_for(lambda: predicate(self.messages), timeout)
            assert result, f"timed out; got {self.messages}"
            return result

    def of(self, kind: type, task_id: str) -> list[Any]:
        with self.cond:
            return [m for m in self.messages if isinstance(m, kind) and m.task_id == task_id]

    def finished(self, task_id: str) -> TaskFinished:
        self.wait_for(
            lambda ms: any(isinstance(m, TaskFinished) and m.task_id == task_id for m in ms)
        )
        return self.of(TaskFinished, task_id)[0]  # type: ignore[no-any-return]

    def seen(self, kind: type, task_id: str) -> Any:
        self.wait_for(lambda ms: any(isinstance(m, kind) and m.task_id == task_id for m in ms))
        return self.of(kind, task_id)[0]


class Owner(pykka.ThreadingActor):
    def __init__(self, inbox: Inbox) -> None:
        super().__init__()
        self.inbox = inbox

    def on_receive(self, message: Any) -> None:
        self.inbox.add(message)


def task(task_id: str, implementation: str = "noop", **extra: Any) -> dict[str, Any]:
    t: dict[str, Any] = {
        "task_id": task_id,
        "execution_id": "ex",
        "step": task_id,
        "attempt": 1,
        "implementation": implementation,
        "config": {},
        "input": None,
        "inputs": {},
        "upstream": {},
        "idempotency_key": task_id,
        "item_index": None,
    }
    t.update(extra)
    return t


class Harness:
    def __init__(self, pool: pykka.ActorRef[Any], inbox: Inbox, owner: pykka.ActorRef[Any]):
        self.pool = pool
        self.proxy = pool.proxy()
        self.inbox = inbox
        self.owner = owner

    def dispatch(self, t: dict[str, Any]) -> None:
        self.pool.tell(Dispatch(t, self.owner))

    def cancel(self, task_id: str) -> None:
        self.pool.tell(Cancel(task_id))

    def stats(self) -> dict[str, Any]:
        return self.proxy.stats().get(timeout=TIMEOUT)  # type: ignore[no-any-return]

    def wait_workers(self, n: int) -> None:
        self.proxy.when_workers(n).get(timeout=TIMEOUT).result(timeout=TIMEOUT)

    def idle_stats(self) -> dict[str, Any]:
        """The pool's stats once no task runs any more (bounded)."""
        deadline = time.monotonic() + TIMEOUT
        while (stats := self.stats())["running"]:
            assert time.monotonic() < deadline, f"tasks still running: {stats}"
            time.sleep(0.01)
        return stats

    def endpoint(self) -> str:
        return self.proxy.endpoint().get(timeout=TIMEOUT)  # type: ignore[no-any-return]


@pytest.fixture
def zctx() -> Iterator[zmq.Context[Any]]:
    ctx: zmq.Context[Any] = zmq.Context()
    yield ctx
    ctx.term()


@pytest.fixture
def make(zctx: zmq.Context[Any], tmp_path: Path) -> Iterator[Callable[..., Harness]]:
    started: list[Harness] = []

    def _make(**kw: Any) -> Harness:
        kw.setdefault("endpoint", f"ipc://{tmp_path}/run/workers")
        kw.setdefault("local_workers", 0)
        kw.setdefault("worker_slots", 2)
        kw.setdefault("heartbeat_interval", 0.2)
        kw.setdefault("heartbeat_timeout", 10.0)
        kw.setdefault("cancel_grace", 5.0)
        kw.setdefault("worker_args", ALLOW_ARGS)
        kw.setdefault("env", {"PYTHONPATH": os.pathsep.join([TESTS_DIR, *sys.path])})
        inbox = Inbox()
        pool_cls = kw.pop("pool_cls", WorkerPool)
        h = Harness(pool_cls.start(zctx, **kw), inbox, Owner.start(inbox))
        started.append(h)
        return h

    yield _make
    for h in started:
        if h.pool.is_alive():
            h.pool.stop(timeout=TIMEOUT)
        h.owner.stop(timeout=TIMEOUT)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# Real local workers


def test_many_tasks_across_two_workers(make: Callable[..., Harness], tmp_path: Path) -> None:
    h = make(local_workers=2)
    h.wait_workers(2)
    assert oct(os.stat(tmp_path / "run").st_mode & 0o777) == "0o700"
    for i in range(30):
        h.dispatch(task(f"t{i}", "noop", input={"i": i}))
    results = {f"t{i}": h.inbox.finished(f"t{i}") for i in range(30)}
    assert all(r.ok and r.output == {"i": int(tid[1:])} for tid, r in results.items())
    workers = {h.inbox.of(TaskStarted, f"t{i}")[0].worker_id for i in range(30)}
    assert len(workers) == 2
    stats = h.stats()
    assert stats["dispatched_total"] == 30 and stats["queued"] == 0 and stats["running"] == 0
    assert all(w["local"] and w["slots"] == 2 and w["rss"] >= 0 for w in stats["workers"])
    assert {w["pid"] for w in stats["workers"]} == set(stats["local_pids"])


def test_slots_are_respected(make: Callable[..., Harness]) -> None:
    h = make(local_workers=1, worker_slots=2)
    h.wait_workers(1)
    for tid in ("a", "b", "c"):
        h.dispatch(task(tid, "hang"))
    h.inbox.seen(TaskStarted, "a")
    h.inbox.seen(TaskStarted, "b")
    stats = h.stats()
    assert stats["workers"][0]["busy"] == 2 and stats["queued"] == 1
    assert h.inbox.of(TaskStarted, "c") == []
    h.cancel("a")
    assert h.inbox.finished("a").error["type"] == "StepCancelled"  # type: ignore[index]
    h.inbox.seen(TaskStarted, "c")
    assert h.stats()["workers"][0]["pid"] == stats["workers"][0]["pid"]  # not killed
    for tid in ("b", "c"):
        h.cancel(tid)
        assert h.inbox.finished(tid).ok is False


def test_killed_worker_is_replaced_and_its_task_completes(
    make: Callable[..., Harness], tmp_path: Path
) -> None:
    h = make(local_workers=1)
    h.wait_workers(1)
    h.dispatch(task("k", "once_blocking", config={"path": str(tmp_path / "marker")}))
    started = h.inbox.seen(TaskStarted, "k")
    h.inbox.seen(TaskProgress, "k")
    old_pid = h.stats()["workers"][0]["pid"]
    os.kill(old_pid, signal.SIGKILL)
    assert "exited" in h.inbox.seen(TaskRedispatched, "k").reason
    result = h.inbox.finished("k")
    assert result.ok and result.output == {"second_run": True, "attempt": 1}
    stats = h.stats()
    assert stats["restarts"] >= 1 and old_pid not in stats["local_pids"]
    assert h.inbox.of(TaskStarted, "k")[-1].worker_id != started.worker_id


def test_hang_cancelled_cooperatively(make: Callable[..., Harness]) -> None:
    h = make(local_workers=1)
    h.wait_workers(1)
    h.dispatch(task("h", "hang"))
    h.inbox.seen(TaskStarted, "h")
    h.cancel("h")
    h.cancel("h")  # a second cancel changes nothing
    res = h.inbox.finished("h")
    assert (res.ok, res.error["type"]) == (False, "StepCancelled")  # type: ignore[index]
    assert h.stats()["restarts"] == 0


def test_step_ignoring_cancel_gets_its_worker_killed(
    make: Callable[..., Harness], tmp_path: Path
) -> None:
    h = make(local_workers=1, cancel_grace=0.5)
    h.wait_workers(1)
    pid = h.stats()["workers"][0]["pid"]
    h.dispatch(task("s", "stubborn"))
    h.dispatch(task("b", "once_blocking", config={"path": str(tmp_path / "m")}))
    h.inbox.seen(TaskStarted, "s")
    h.inbox.seen(TaskProgress, "b")
    h.cancel("s")
    res = h.inbox.finished("s")
    assert res.error is not None and res.error["type"] == "StepCancelled"
    assert "killed" in res.error["message"]
    assert "ignored a cancel" in h.inbox.seen(TaskRedispatched, "b").reason
    bystander = h.inbox.finished("b")
    assert bystander.ok and bystander.output["second_run"] is True
    psutil.Process(pid).wait(timeout=TIMEOUT) if _alive(pid) else None
    assert not _alive(pid)


def test_stop_leaves_no_child_behind(make: Callable[..., Harness]) -> None:
    h = make(local_workers=2)
    h.wait_workers(2)
    h.dispatch(task("h", "hang"))
    h.inbox.seen(TaskStarted, "h")
    pids = h.stats()["local_pids"]
    assert len(pids) == 2
    h.pool.stop(timeout=TIMEOUT)
    assert not any(_alive(pid) for pid in pids)
    assert not [c for c in psutil.Process().children(recursive=True) if c.pid in pids]


class DeafPool(WorkerPool):
    """Never hears a hello: its local workers never join."""

    def _on_hello(self, identity: bytes, msg: dict[str, Any]) -> None:
        pass


def test_stop_does_not_wait_for_a_worker_that_never_joined(
    make: Callable[..., Harness],
) -> None:
    # A worker still starting when the node stops gets no stop message: it is terminated,
    # not waited for through the grace (here 600 s + STOP_EXTRA, far past the stop's own
    # timeout, which would fail the test).
    h = make(local_workers=1, cancel_grace=600.0, pool_cls=DeafPool)
    deadline = time.monotonic() + TIMEOUT
    while not (pids := h.stats()["local_pids"]) or not psutil.Process(pids[0]).net_connections(
        kind="unix"
    ):
        assert time.monotonic() < deadline, "the local worker never connected"
        time.sleep(0.05)
    assert h.stats()["workers"] == []  # connected, never joined
    h.pool.stop(timeout=TIMEOUT)
    assert not _alive(pids[0])


def test_stop_kills_a_worker_that_will_not_stop(make: Callable[..., Harness]) -> None:
    # The worker itself would wait 60 s for its stubborn step; the pool waits much less.
    h = make(local_workers=1, cancel_grace=0.3, worker_args=[*ALLOW_ARGS, "--stop-grace", "60"])
    h.wait_workers(1)
    h.dispatch(task("s", "stubborn"))
    h.inbox.seen(TaskStarted, "s")
    pids = h.stats()["local_pids"]
    h.pool.stop(timeout=TIMEOUT)
    assert not any(_alive(pid) for pid in pids)


# Fake workers: a DEALER socket in the test speaking the protocol by hand


class FakeWorker:
    """``route``: its connection's routing id (a secret of its own unless given)."""

    def __init__(
        self, ctx: zmq.Context[Any], endpoint: str, worker_id: str, route: bytes | None = None
    ) -> None:
        self.route = route if route is not None else secrets.token_urlsafe(24).encode()
        self.sock: zmq.Socket[bytes] = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.IDENTITY, self.route)
        self.sock.connect(endpoint)
        self.worker_id = worker_id

    def send(self, msg: dict[str, Any]) -> None:
        self.sock.send(wire.encode(msg))

    def hello(self, plugins: list[str], slots: int = 2) -> None:
        self.send(wire.hello(self.worker_id, 4242, "fakehost", slots, plugins))
        assert self.recv()["t"] == "welcome"

    def recv(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        assert self.sock.poll(int(timeout * 1000)), "nothing from the pool"
        return wire.decode_node_frame(self.sock.recv(), MAX)

    def close(self) -> None:
        self.sock.close(0)


@pytest.fixture
def fake(
    make: Callable[..., Harness], zctx: zmq.Context[Any]
) -> Iterator[tuple[Harness, Callable[[str], FakeWorker]]]:
    h = make(heartbeat_timeout=30.0, cancel_grace=0.3, max_frame_bytes=MAX)
    endpoint = h.endpoint()
    made: list[FakeWorker] = []

    def new(worker_id: str) -> FakeWorker:
        w = FakeWorker(zctx, endpoint, worker_id)
        made.append(w)
        return w

    yield h, new
    for w in made:
        w.close()


def test_fake_worker_full_cycle(fake: Any) -> None:
    h, new = fake
    w = new("fw1")
    w.hello(["noop"])
    h.dispatch(task("t1", input=7))
    run = w.recv()
    assert run["t"] == "run" and run["task_id"] == "t1" and run["input"] == 7
    w.send(wire.started("t1"))
    w.send(wire.progress("t1", {"pct": 50}))
    w.send(wire.result_ok("nobody", 1, 1.0))  # unknown task: ignored
    w.send(wire.hb("fw1", ["t1"], 12345))
    w.send(wire.result_ok("t1", 7, 2.5))
    assert h.inbox.seen(TaskStarted, "t1").worker_id == "fw1"
    assert h.inbox.seen(TaskProgress, "t1").progress == {"pct": 50}
    assert h.inbox.finished("t1") == TaskFinished("t1", True, 7, None, 2.5)
    stats = h.stats()
    assert stats["workers"][0]["rss"] == 12345 and stats["workers"][0]["local"] is False
    assert stats["workers"][0]["host"] == "fakehost" and stats["local_pids"] == []


def test_a_result_that_says_started_stands_for_the_start_notice(fake: Any) -> None:
    h, new = fake
    w = new("fw1")
    w.hello(["noop"])
    h.dispatch(task("fast"))
    h.dispatch(task("never-ran"))
    for _ in range(2):
        w.recv()
    w.send(wire.result_ok("fast", 1, 0.1, started=True))  # no started frame before it
    err = {"type": "UnknownImplementation", "message": "m", "retryable": False}
    w.send(wire.result_error("never-ran", {**err, "retry_after": None}, 0.0))
    h.inbox.finished("fast")
    h.inbox.finished("never-ran")
    fast = [type(m) for m in h.inbox.messages if m.task_id == "fast"]
    assert fast == [TaskStarted, TaskFinished]  # in that order, once each
    assert h.inbox.of(TaskStarted, "fast")[0].worker_id == "fw1"
    assert h.inbox.of(TaskStarted, "never-ran") == []


def test_unknown_implementation_waits_then_cancel(fake: Any) -> None:
    h, new = fake
    new("fw").hello(["noop"])
    h.dispatch(task("u", "nope"))
    stats = h.stats()
    assert stats["queued"] == 1 and stats["waiting_for_implementation"] == {"nope": 1}
    h.cancel("u")
    res = h.inbox.finished("u")
    assert res.error == {
        "type": "StepCancelled",
        "message": "cancelled while queued",
        "retryable": False,
        "retry_after": None,
    }
    h.cancel("u")  # unknown by now: ignored
    assert h.stats()["queued"] == 0


def test_task_waits_for_a_worker_offering_it(fake: Any) -> None:
    h, new = fake
    h.dispatch(task("later", "echo"))
    assert h.stats()["waiting_for_implementation"] == {"echo": 1}
    w = new("fw")
    w.hello(["echo"])
    assert w.recv()["task_id"] == "later"


def test_least_busy_worker_and_slots(fake: Any) -> None:
    h, new = fake
    a, b = new("a"), new("b")
    a.hello(["noop"], slots=1)
    b.hello(["noop"], slots=3)
    for i in range(4):
        h.dispatch(task(f"t{i}"))
    got_a = [a.recv()["task_id"]]
    got_b = [b.recv()["task_id"] for _ in range(3)]
    assert sorted(got_a + got_b) == ["t0", "t1", "t2", "t3"]
    h.dispatch(task("t4"))
    assert h.stats()["queued"] == 1  # every slot taken
    a.send(wire.result_ok(got_a[0], None, 1))
    assert a.recv()["task_id"] == "t4"


def test_silent_worker_is_declared_dead(make: Callable[..., Harness], zctx: Any) -> None:
    h = make(heartbeat_timeout=0.5)
    w = FakeWorker(zctx, h.endpoint(), "quiet")
    try:
        w.hello(["noop"])
        h.dispatch(task("q"))
        assert w.recv()["t"] == "run"
        assert "silent" in h.inbox.seen(TaskRedispatched, "q").reason
        assert w.recv()["t"] == "stop"  # remote: told to stop, it cannot be killed
        h.wait_workers(0)
        assert h.stats()["workers"] == [] and h.stats()["queued"] == 1
    finally:
        w.close()


def test_bye_redispatches_to_another_worker(fake: Any) -> None:
    h, new = fake
    a = new("a")
    a.hello(["noop"])
    h.dispatch(task("x"))
    assert a.recv()["task_id"] == "x"
    a.send(wire.bye("a"))
    assert "left" in h.inbox.seen(TaskRedispatched, "x").reason
    b = new("b")
    b.hello(["noop"])
    run = b.recv()
    assert run["task_id"] == "x" and run["attempt"] == 1


def test_unasked_cancelled_result_is_redispatched(fake: Any) -> None:
    h, new = fake
    a = new("a")
    a.hello(["noop"])
    h.dispatch(task("x"))
    a.recv()
    error = {"type": "StepCancelled", "message": "m", "retryable": False, "retry_after": None}
    a.send(wire.result_error("x", error, 1))
    assert "stopping" in h.inbox.seen(TaskRedispatched, "x").reason
    h.dispatch(task("y"))
    assert not a.sock.poll(300)  # a is leaving: nothing more is sent to it
    b = new("b")
    b.hello(["noop"])
    assert {b.recv()["task_id"], b.recv()["task_id"]} == {"x", "y"}
    a.send(wire.bye("a"))  # its bye loses nothing more: x was redispatched once
    deadline = time.monotonic() + TIMEOUT
    while [w["worker_id"] for w in h.stats()["workers"]] != ["b"]:
        assert time.monotonic() < deadline, "a's bye was not seen"
        time.sleep(0.01)
    assert [r.reason for r in h.inbox.of(TaskRedispatched, "x")] == ["worker a is stopping"]


def test_a_worker_that_gave_a_step_back_but_stays_is_sent_work_again(
    make: Callable[..., Harness], zctx: Any
) -> None:
    """A step may raise StepCancelled itself: its worker is not leaving after all, and
    once it could have left (cancel grace + heartbeat timeout) it gets work again."""
    h = make(heartbeat_timeout=1.0, cancel_grace=0.3)
    a = FakeWorker(zctx, h.endpoint(), "a")
    try:
        a.hello(["noop"])
        h.dispatch(task("x"))
        a.recv()
        error = {"type": "StepCancelled", "message": "m", "retryable": False, "retry_after": None}
        a.send(wire.result_error("x", error, 1))
        deadline = time.monotonic() + TIMEOUT
        while not a.sock.poll(100):  # it keeps its heartbeats up meanwhile
            assert time.monotonic() < deadline, "x never came back to a"
            a.send(wire.hb("a", [], 0))
        assert a.recv()["task_id"] == "x"
    finally:
        a.close()


def test_remote_worker_ignoring_cancel_is_dropped(fake: Any) -> None:
    h, new = fake
    a = new("a")
    a.hello(["noop"])
    h.dispatch(task("s"))
    h.dispatch(task("other"))
    assert {a.recv()["task_id"], a.recv()["task_id"]} == {"s", "other"}
    h.cancel("s")
    assert a.recv() == wire.cancel("s")
    res = h.inbox.finished("s")
    assert res.error is not None and res.error["type"] == "StepCancelled"
    assert a.recv()["t"] == "stop"
    assert "ignored a cancel" in h.inbox.seen(TaskRedispatched, "other").reason
    a.send(wire.result_ok("other", 1, 1))  # too late: a is no longer a worker
    assert a.recv()["t"] == "rehello"


def test_cancelled_task_whose_worker_dies_is_reported_cancelled(fake: Any) -> None:
    h, new = fake
    a = new("a")
    a.hello(["noop"])
    h.dispatch(task("c"))
    a.recv()
    h.cancel("c")
    assert a.recv()["t"] == "cancel"
    a.send(wire.bye("a"))
    assert h.inbox.finished("c").error["message"] == "worker a left"  # type: ignore[index]
    assert h.inbox.of(TaskRedispatched, "c") == []


def test_garbage_does_not_break_the_pool(fake: Any, zctx: Any) -> None:
    h, new = fake
    junk = new("junk")
    junk.sock.send(b"\xc1 not msgpack")
    junk.sock.send_multipart([b"two", b"parts"])
    junk.send({"v": 9, "t": "hello"})
    junk.send(wire.hb("junk", [], 1))  # not introduced: asked to say hello
    assert junk.recv()["t"] == "rehello"
    junk.send(wire.bye("junk"))  # unknown and leaving: nothing to say
    junk.send(wire.hello("junk", 1, "h", 0, ["noop"]))  # no slots
    old = FakeWorker(zctx, h.endpoint(), "old-1", route=b"old-1")  # an older worker's
    try:
        old.send(wire.hello("old-1", 1, "h", 2, ["noop"]))
        assert "routing id is not a secret" in old.recv()["reason"]
    finally:
        old.close()
    assert h.stats()["workers"] == []
    good = new("good")
    good.hello(["noop"])
    h.dispatch(task("fine"))
    good.send(wire.result_ok(good.recv()["task_id"], "ok", 1))
    assert h.inbox.finished("fine").ok
    assert h.pool.is_alive()


def test_a_result_the_node_cannot_read_fails_its_step(fake: Any) -> None:
    # an older or foreign worker that sends what its step returned unchecked: the step
    # used to wait for ever, its frame dropped
    h, new = fake
    w = new("fw1")
    w.hello(["noop"])
    h.dispatch(task("t1"))
    h.dispatch(task("t2"))
    for _ in range(2):
        w.recv()
    frame = {"v": wire.VERSION, "t": "result", "task_id": "t1", "ok": True,
             "output": {(2, 3): "x"}, "duration_ms": 1.0}  # fmt: skip
    w.sock.send(msgpack.packb(frame))  # a tuple key: no frame the node reads
    finished = h.inbox.finished("t1")
    assert not finished.ok and finished.error is not None
    assert finished.error["type"] == "ProtocolError" and finished.error["retryable"] is False
    assert "could not be read" in finished.error["message"]
    w.send(wire.result_ok("t2", 2, 1.0))  # the worker and its other steps carry on
    assert h.inbox.finished("t2").ok and h.stats()["running"] == 0


def test_rehello_keeps_running_tasks(fake: Any) -> None:
    h, new = fake
    a = new("a")
    a.hello(["noop"])
    h.dispatch(task("r"))
    a.recv()
    a.hello(["noop"])  # e.g. the worker missed our welcome
    a.send(wire.result_ok("r", 1, 1))
    assert h.inbox.finished("r").ok


def test_bad_dispatches(fake: Any) -> None:
    h, _ = fake
    h.pool.tell(Dispatch({"implementation": "noop"}, h.owner))  # no task id: dropped
    h.pool.tell("not a message")
    h.dispatch(task("big", input="x" * (MAX + 10)))
    big = h.inbox.finished("big")
    assert big.error is not None and big.error["type"] == "FrameTooLarge"
    h.dispatch(task("odd", input={1, 2}))
    assert h.inbox.finished("odd").error["type"] == "CodecError"  # type: ignore[index]
    h.dispatch(task("dup", "nope"))
    h.dispatch(task("dup", "nope"))
    assert h.stats()["queued"] == 1
    assert h.pool.is_alive()


def test_a_dispatch_of_a_running_task_moves_its_reports_to_the_new_owner(fake: Any) -> None:
    """A supervisor re-activated while its step ran dispatches the same attempt again: it
    runs once, and the start and the result go to the new supervisor."""
    h, new = fake
    w = new("fw1")
    w.hello(["noop"])
    h.dispatch(task("same"))
    assert w.recv()["task_id"] == "same"
    w.send(wire.started("same"))
    h.inbox.seen(TaskStarted, "same")
    inbox = Inbox()
    successor = Owner.start(inbox)
    try:
        h.pool.tell(Dispatch(task("same"), successor))
        assert inbox.seen(TaskStarted, "same").worker_id == "fw1"  # it had started
        w.send(wire.result_ok("same", 5, 1.0))
        assert inbox.finished("same") == TaskFinished("same", True, 5, None, 1.0)
        assert h.inbox.of(TaskFinished, "same") == []  # not to the old owner
        assert not w.sock.poll(200), "the task was sent to the worker twice"
    finally:
        successor.stop()


def test_a_result_its_owner_missed_goes_to_the_next_dispatch_of_the_same_task(
    fake: Any,
) -> None:
    """A supervisor that failed while its step ran is brought back and dispatches the same
    attempt again: the result the pool could not deliver answers it; the step does not
    run twice."""
    h, new = fake
    w = new("fw1")
    w.hello(["noop"])
    gone_inbox = Inbox()
    gone = Owner.start(gone_inbox)
    h.pool.tell(Dispatch(task("missed"), gone))
    assert w.recv()["task_id"] == "missed"
    gone.stop()  # its owner stopped while it ran
    w.send(wire.result_ok("missed", 5, 1.0, started=True))
    assert h.idle_stats()["results_kept"] == 1  # the result is in, and nobody took it
    successor_inbox = Inbox()
    successor = Owner.start(successor_inbox)
    try:
        h.pool.tell(Dispatch(task("missed"), successor))
        assert successor_inbox.seen(TaskStarted, "missed").worker_id == "fw1"
        assert successor_inbox.finished("missed") == TaskFinished("missed", True, 5, None, 1.0)
        assert not w.sock.poll(200), "the task was sent to the worker again"
        assert h.stats()["results_kept"] == 0
        h.pool.tell(Dispatch(task("missed"), successor))  # once only: now it runs
        assert w.recv()["task_id"] == "missed"
    finally:
        successor.stop()
    assert gone_inbox.of(TaskFinished, "missed") == []


def test_the_result_of_a_task_its_owner_cancelled_is_not_kept(fake: Any) -> None:
    """An aborted execution's supervisor cancels its steps and stops: their late
    StepCancelled results are for nobody and must not crowd out results worth keeping."""
    h, new = fake
    w = new("fw1")
    w.hello(["noop"])
    gone = Owner.start(Inbox())
    h.pool.tell(Dispatch(task("aborted"), gone))
    assert w.recv()["task_id"] == "aborted"
    h.pool.tell(Cancel("aborted"))
    assert w.recv() == wire.cancel("aborted")
    gone.stop()
    error = {"type": "StepCancelled", "message": "cancelled", "retryable": False,
             "retry_after": None}  # fmt: skip
    w.send(wire.result_error("aborted", error, 1.0))
    assert h.idle_stats()["results_kept"] == 0


def test_a_result_handed_back_by_its_owner_goes_to_the_next_dispatch(fake: Any) -> None:
    """A supervisor that stopped with the result still in its inbox hands it back."""
    h, new = fake
    w = new("fw1")
    w.hello(["noop"])
    h.dispatch(task("back"))
    assert w.recv()["task_id"] == "back"
    w.send(wire.result_ok("back", 6, 1.0))
    finished = h.inbox.finished("back")
    h.pool.tell(Undelivered(finished))
    successor_inbox = Inbox()
    successor = Owner.start(successor_inbox)
    try:
        h.pool.tell(Dispatch(task("back"), successor))
        assert successor_inbox.finished("back") == finished
        assert successor_inbox.of(TaskStarted, "back") == []
        assert not w.sock.poll(200), "the task was sent to the worker again"
    finally:
        successor.stop()


def test_results_kept_for_stopped_owners_are_bounded_in_number_age_and_bytes(
    fake: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tamma_actors import _pool_kept

    h, new = fake
    w = new("fw1")
    w.hello(["noop"])
    monkeypatch.setattr(_pool_kept, "_KEEP_UNDELIVERED", 2)
    for n in range(3):
        h.pool.tell(Undelivered(TaskFinished(f"k{n}", True, n, None, 1.0)))
    assert h.stats()["results_kept"] == 2  # the oldest went
    h.dispatch(task("k0"))
    assert w.recv()["task_id"] == "k0"  # forgotten: it runs
    monkeypatch.setattr(_pool_kept, "_KEEP_UNDELIVERED_S", 0.05)
    time.sleep(0.1)
    h.pool.tell(Undelivered(TaskFinished("k3", True, 3, None, 1.0)))
    assert h.stats()["results_kept"] == 1  # the others were too old
    monkeypatch.setattr(_pool_kept, "_KEEP_UNDELIVERED", 100)
    monkeypatch.setattr(_pool_kept, "_KEEP_UNDELIVERED_BYTES", 2500)
    h.pool.tell(Undelivered(TaskFinished("big", True, "x" * 3000, None, 1.0)))
    assert h.stats()["results_kept"] == 1  # over the whole budget alone: not kept
    h.pool.tell(Undelivered(TaskFinished("m0", True, "x" * 1500, None, 1.0)))
    assert h.stats()["results_kept"] == 2  # k3 and m0 fit in the 2,500 bytes
    h.pool.tell(Undelivered(TaskFinished("m1", True, "x" * 1500, None, 1.0)))
    stats = h.stats()  # m1 does not fit beside m0: both older ones go
    assert stats["results_kept"] == 1 and 1500 < stats["results_kept_bytes"] < 1600


def test_tcp_endpoint_is_resolved(make: Callable[..., Harness], zctx: Any) -> None:
    h = make(endpoint="tcp://127.0.0.1:*")
    endpoint = h.endpoint()
    assert endpoint.startswith("tcp://127.0.0.1:") and not endpoint.endswith("*")
    w = FakeWorker(zctx, endpoint, "tcp-worker")
    try:
        w.hello(["noop"])
        h.wait_workers(1)
    finally:
        w.close()


def test_the_socket_file_is_private_whatever_the_umask(
    make: Callable[..., Harness], tmp_path: Path
) -> None:
    old = os.umask(0)
    try:
        h = make(endpoint=f"ipc://{tmp_path}/workers.sock")
        h.endpoint()  # the pool has bound it
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "workers.sock").stat().st_mode) == 0o600


def test_a_start_failing_otherwise_than_at_the_bind_closes_its_socket() -> None:
    """A key libzmq refuses: the ROUTER stayed open and Context.term() never returned."""
    ctx: zmq.Context[Any] = zmq.Context()
    with pytest.raises(ConfigError, match="curve_secret_key"):
        WorkerPool.start_and_wait(
            ctx,
            endpoint="tcp://127.0.0.1:*",
            local_workers=0,
            curve_secret_key="not a key",
            timeout=TIMEOUT,
        )
    term = threading.Thread(target=ctx.term, daemon=True)
    term.start()
    term.join(TIMEOUT)
    assert not term.is_alive(), "a socket of the pool was left open"


def test_bind_failure_stops_the_pool(zctx: Any) -> None:
    ref = WorkerPool.start(zctx, endpoint="bogus://nowhere", local_workers=0)
    with pytest.raises(pykka.ActorDeadError):
        ref.proxy().stats().get(timeout=TIMEOUT)
    assert not ref.is_alive()


def test_stop_cancels_pending_waiters(make: Callable[..., Harness]) -> None:
    h = make()
    waiter = h.proxy.when_workers(3).get(timeout=TIMEOUT)
    assert not waiter.done()
    h.pool.stop(timeout=TIMEOUT)
    assert waiter.cancelled()


def test_a_worker_above_its_memory_limit_is_replaced_and_its_task_runs_again(
    make: Callable[..., Harness], tmp_path: Path
) -> None:
    h = make(local_workers=1, max_worker_rss=250 << 20, heartbeat_interval=0.1)
    h.wait_workers(1)
    first_pid = h.stats()["local_pids"][0]
    h.dispatch(task("fat", "hog", config={"path": str(tmp_path / "marker"), "mb": 400}))
    lost = h.inbox.seen(TaskRedispatched, "fat")
    assert "above the 250 MiB limit" in lost.reason
    result = h.inbox.finished("fat")
    assert result.ok and result.output == {"second_run": True}
    assert not _alive(first_pid)
    assert first_pid not in h.stats()["local_pids"]


class StallingPool(WorkerPool):
    def stall(self, started: threading.Event, release: threading.Event) -> None:
        started.set()
        release.wait(TIMEOUT)


def test_heartbeats_waiting_in_the_socket_count_after_the_pool_was_held_up(
    make: Callable[..., Harness], zctx: Any
) -> None:
    """A stalled pool thread (a long GC pause) must not blame workers whose heartbeats
    arrived meanwhile: they are read before anyone is declared silent."""
    h = make(heartbeat_timeout=0.5, heartbeat_interval=0.2, pool_cls=StallingPool)
    w = FakeWorker(zctx, h.endpoint(), "patient")
    stalled, release, checked = threading.Event(), threading.Event(), threading.Event()
    try:
        w.hello(["noop"])
        pool = h.pool.proxy()
        pool.stall(stalled, release)  # a message that holds the pool's thread
        assert stalled.wait(TIMEOUT)
        beat = threading.Event()
        for _ in range(10):  # 1 s of heartbeats, twice the timeout, while the pool is stuck
            w.send(wire.hb("patient", [], 1))
            beat.wait(0.1)
        release.set()
        # two heartbeat checks later (interval 0.2 s)
        pool.call_later(0.5, checked.set).get(timeout=TIMEOUT)
        assert checked.wait(TIMEOUT)
        assert [x["worker_id"] for x in h.stats()["workers"]] == ["patient"]
        assert not w.sock.poll(0)  # no stop was sent
    finally:
        release.set()
        w.close()


# The pool knows a worker by its connection's routing id, a secret the worker draws: not
# by its worker id, which every viewer reads in ``tamma health`` (the ROUTER sends to,
# and hears from, whoever connects under a routing id).


def _heard(w: FakeWorker, msg: dict[str, Any], answered: Any, *, reconnect: bool) -> None:
    """Send ``msg`` until ``answered()``; with ``reconnect``, each time from a new socket
    under ``w``'s routing id (a connection under a routing id still in use is ignored
    until the pool lets go of the old one)."""
    endpoint = w.sock.getsockopt_string(zmq.LAST_ENDPOINT)
    ctx = w.sock.context
    deadline = time.monotonic() + TIMEOUT
    while True:
        if reconnect:
            w.sock.close(0)
            w.sock = ctx.socket(zmq.DEALER)
            w.sock.setsockopt(zmq.LINGER, 0)
            w.sock.setsockopt(zmq.IDENTITY, w.route)
            w.sock.connect(endpoint)
        w.send(msg)
        until = time.monotonic() + 0.3
        while time.monotonic() < until:
            if answered():
                return
            time.sleep(0.01)
        assert time.monotonic() < deadline, "never heard"


def test_a_peer_naming_itself_after_a_worker_is_not_that_worker(fake: Any) -> None:
    h, new = fake
    w = new("fw1")
    w.hello(["noop"])
    h.dispatch(task("t1"))
    assert w.recv()["task_id"] == "t1"
    rogue = FakeWorker(w.sock.context, h.endpoint(), "fw1", route=b"fw1")
    try:
        rogue.send(wire.started("t1"))
        rogue.send(wire.result_ok("t1", "forged", 1.0))
        assert rogue.recv()["t"] == "rehello" and rogue.recv()["t"] == "rehello"
        w.send(wire.result_ok("t1", "real", 1.0))
        assert h.inbox.finished("t1").output == "real"
        assert h.inbox.of(TaskStarted, "t1") == []  # the forged start notice was not taken
    finally:
        rogue.close()


def test_a_worker_that_reconnects_keeps_its_tasks(fake: Any) -> None:
    """Its routing id is the same, so it is the same worker: its steps go on and report."""
    h, new = fake
    w = new("fw1")
    w.hello(["noop"])
    h.dispatch(task("t1"))
    assert w.recv()["task_id"] == "t1"
    _heard(w, wire.started("t1"), lambda: h.inbox.of(TaskStarted, "t1"), reconnect=True)
    w.send(wire.result_ok("t1", "done", 1.0))
    assert h.inbox.finished("t1").output == "done"
    assert h.inbox.of(TaskRedispatched, "t1") == []


def test_a_hello_under_a_connected_workers_id_is_not_answered(fake: Any) -> None:
    h, new = fake
    a = new("a")
    a.hello(["noop"])
    h.dispatch(task("x"))
    assert a.recv()["task_id"] == "x"
    other = new("a")
    other.send(wire.hello("a", 1, "h", 2, ["noop"]))
    assert a.recv()["t"] == "rehello"  # asked whether it is there: it is
    a.hello(["noop"])  # its answer, on its own connection: it keeps its tasks
    assert not other.sock.poll(200), "the newcomer was answered"
    a.send(wire.result_ok("x", 1, 1.0))
    assert h.inbox.finished("x").ok
    assert h.inbox.of(TaskRedispatched, "x") == []


def test_a_hello_under_a_gone_workers_id_takes_it_and_its_tasks_run_again(fake: Any) -> None:
    h, new = fake
    a = new("a")
    a.hello(["noop"])
    h.dispatch(task("x"))
    assert a.recv()["task_id"] == "x"
    a.close()  # gone, and not yet silent for long
    successor = new("a")
    hello = wire.hello("a", 1, "h", 2, ["noop"])
    _heard(successor, hello, lambda: successor.sock.poll(0), reconnect=False)
    assert successor.recv()["t"] == "welcome"
    assert "gone from its connection" in h.inbox.seen(TaskRedispatched, "x").reason
    assert successor.recv()["task_id"] == "x"
    successor.send(wire.result_ok("x", 2, 1.0))
    assert h.inbox.finished("x") == TaskFinished("x", True, 2, None, 1.0)
