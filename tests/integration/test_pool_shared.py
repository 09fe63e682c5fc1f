"""A fan-out's items share their inputs and upstream outputs: the pool sends them to each
worker once, in a blob, and the items' run frames name it (tamma_actors/_pool_shared.py);
the worker puts them back into each item's context."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from tamma_actors import _wire as wire
from tamma_actors._pool_shared import MIN_SHARED_BYTES, PER_WORKER
from tamma_actors._workerpool import TaskRedispatched
from tests.integration import test_workerpool
from tests.integration.test_worker import FakeNode
from tests.integration.test_workerpool import FakeWorker, task
from tests.plugins_for_tests import ALLOWLIST
from tests.workers import RunningWorker

pytestmark = pytest.mark.integration

zctx = test_workerpool.zctx  # (fixtures)
make = test_workerpool.make
fake = test_workerpool.fake

BIG = {"src": ["x" * 100] * (MIN_SHARED_BYTES // 50)}  # an upstream worth sending once
INPUTS = {"topic": "t"}


def item(task_id: str, key: str, index: int, upstream: Any = None) -> dict[str, Any]:
    return task(
        task_id,
        inputs=INPUTS,
        upstream=BIG if upstream is None else upstream,
        input=index,
        item_index=index,
        shared=key,
    )


def join(w: FakeWorker, *, shared: bool = True, slots: int = 8) -> None:
    w.send(wire.hello(w.worker_id, 4242, "fakehost", slots, ["noop"], shared=shared))
    assert w.recv()["t"] == "welcome"


def test_a_fan_outs_shared_data_goes_once_to_each_worker_then_is_forgotten(fake: Any) -> None:
    h, new = fake
    w = new("fw1")
    join(w)
    for i in range(3):
        h.dispatch(item(f"i{i}", "ex/fan#1", i))
    blob = w.recv()
    assert blob == wire.blob("ex/fan#1", INPUTS, BIG)
    runs = [w.recv() for _ in range(3)]
    assert [(r["t"], r["task_id"], r["input"], r["shared"]) for r in runs] == [
        ("run", f"i{i}", i, "ex/fan#1") for i in range(3)
    ]
    assert all(r["inputs"] == {} and r["upstream"] == {} for r in runs)  # not in them
    for i in range(2):
        w.send(wire.result_ok(f"i{i}", i, 1.0))
        assert h.inbox.finished(f"i{i}").output == i
    h.dispatch(item("i3", "ex/fan#1", 3))  # a later item: the worker holds the blob still
    assert w.recv()["task_id"] == "i3"
    assert h.stats()["shared_blobs"] == 1
    for tid in ("i2", "i3"):
        w.send(wire.result_ok(tid, tid, 1.0))
        h.inbox.finished(tid)
    assert w.recv() == wire.forget("ex/fan#1")  # the fan-out's last task is gone
    assert h.stats()["shared_blobs"] == 0
    assert not w.sock.poll(200)


def test_a_worker_that_does_not_take_shared_runs_gets_whole_tasks(fake: Any) -> None:
    h, new = fake
    old = new("old")
    join(old, shared=False)  # an older worker: no "shared" in its hello
    h.dispatch(item("i0", "ex/fan#2", 0))
    run = old.recv()
    assert run["t"] == "run" and "shared" not in run
    assert (run["inputs"], run["upstream"], run["input"]) == (INPUTS, BIG, 0)
    old.send(wire.result_ok("i0", 0, 1.0))
    assert h.inbox.finished("i0").ok
    assert not old.sock.poll(200)  # nothing to forget: it never held it


def test_small_shared_data_goes_with_each_item(fake: Any) -> None:
    h, new = fake
    w = new("fw1")
    join(w)
    h.dispatch(item("i0", "ex/fan#3", 0, upstream={"src": [1, 2]}))
    run = w.recv()
    assert run["t"] == "run" and "shared" not in run and run["upstream"] == {"src": [1, 2]}


def test_a_worker_holds_at_most_so_many_blobs_the_oldest_forgotten_first(fake: Any) -> None:
    h, new = fake
    w = new("fw1")
    join(w, slots=PER_WORKER + 1)
    keys = [f"ex/fan#{n}" for n in range(PER_WORKER + 1)]
    for n, key in enumerate(keys):  # one item each of so many fan-outs, all running
        h.dispatch(item(f"t{n}", key, 0))
    got = [w.recv() for _ in range(2 * (PER_WORKER + 1) + 1)]
    assert [f["t"] for f in got[: 2 * PER_WORKER]] == ["blob", "run"] * PER_WORKER
    assert got[2 * PER_WORKER] == wire.forget(keys[0])  # the least recently used one
    assert [f.get("key") or f.get("task_id") for f in got[-2:]] == [keys[-1], f"t{PER_WORKER}"]
    w.send(wire.result_ok("t1", 1, 1.0))  # a slot frees, and that fan-out is done
    h.inbox.finished("t1")
    assert w.recv() == wire.forget(keys[1])
    h.dispatch(item("again", keys[0], 1))  # the forgotten one is sent again when needed
    assert w.recv()["key"] == keys[0] and w.recv()["task_id"] == "again"


def test_a_run_whose_blob_the_worker_lacks_is_sent_again_with_it(fake: Any) -> None:
    h, new = fake
    w = new("fw1")
    join(w)
    h.dispatch(item("i0", "ex/fan#9", 0))
    h.dispatch(item("other", "ex/fan#10", 0))
    got = [w.recv() for _ in range(4)]
    assert [f.get("key") or f.get("task_id") for f in got] == [
        "ex/fan#9",
        "i0",
        "ex/fan#10",
        "other",
    ]
    missing = {"type": wire.SHARED_DATA_MISSING, "message": "lost", "retryable": True}
    w.send(wire.result_error("i0", missing, 0.0))  # as if the blob's frame had been lost
    assert w.recv() == wire.blob("ex/fan#9", INPUTS, BIG)  # sent again, then the run
    assert w.recv()["task_id"] == "i0"
    w.send(wire.result_ok("i0", "done", 1.0))
    assert h.inbox.finished("i0").output == "done"
    assert h.inbox.of(TaskRedispatched, "i0") == []  # no worker lost, no attempt spent
    assert w.recv() == wire.forget("ex/fan#9")
    w.send(wire.result_ok("other", "done", 1.0))  # the other blob is known to be held
    assert w.recv() == wire.forget("ex/fan#10")


def test_a_steps_own_error_of_that_name_is_its_failure(fake: Any) -> None:
    h, new = fake
    w = new("fw1")
    join(w)
    h.dispatch(item("i0", "ex/fan#11", 0))
    assert w.recv()["t"] == "blob" and w.recv()["task_id"] == "i0"
    raised = {"type": wire.SHARED_DATA_MISSING, "message": "the step's", "retryable": False}
    w.send(wire.result_error("i0", raised, 5.0, started=True))  # it ran: its own error
    finished = h.inbox.finished("i0")
    assert finished.error is not None and finished.error["message"] == "the step's"


def test_a_task_cancelled_as_its_worker_goes_lets_its_blob_go(fake: Any) -> None:
    h, new = fake
    w = new("fw1")
    join(w)
    h.dispatch(item("i0", "ex/fan#12", 0))
    assert w.recv()["t"] == "blob" and w.recv()["task_id"] == "i0"
    h.cancel("i0")
    assert w.recv() == wire.cancel("i0")
    w.send(wire.bye("fw1"))  # it leaves before it answers: the cancel is settled so
    finished = h.inbox.finished("i0")
    assert finished.error is not None and finished.error["type"] == "StepCancelled"
    assert h.stats()["shared_blobs"] == 0


def test_a_whole_task_over_the_cap_for_an_older_worker_fails_as_too_large(fake: Any) -> None:
    h, new = fake
    old = new("old")
    join(old, shared=False)
    # the blob and the run each fit the 1 MiB frames; together they do not
    shared, own = "x" * (600 * 1024), "y" * (600 * 1024)
    h.dispatch(task("big", inputs=INPUTS, upstream={"src": shared}, input=own, shared="k"))
    failed = h.inbox.finished("big")
    assert failed.error is not None and failed.error["type"] == "FrameTooLarge"
    assert h.stats()["shared_blobs"] == 0
    assert not old.sock.poll(200)


# The worker's side


@pytest.fixture
def node(tmp_path: Path) -> Iterator[FakeNode]:
    ctx: zmq.Context[Any] = zmq.Context()
    fake_node = FakeNode(ctx, f"ipc://{tmp_path}/w.sock")
    yield fake_node
    fake_node.sock.close(0)
    ctx.term()


def test_a_worker_builds_each_items_context_from_the_blob_it_names(node: FakeNode) -> None:
    from tamma_actors._worker_loop import Worker

    running = RunningWorker(Worker(node.endpoint, heartbeat_interval=0.2, allowlist=ALLOWLIST))
    try:
        hello = node.recv("hello")
        assert hello["shared"] is True  # it says it takes shared runs
        node.send(wire.welcome(0.2, hello["hello_seq"]))
        node.send(wire.blob("k1", INPUTS, {"src": [1, 2, 3]}))
        run = {**task("a", "context"), "input": 7, "item_index": 0}
        node.send(wire.run_shared(run, "k1"))
        out = node.result("a")["output"]
        assert (out["inputs"], out["upstream"], out["input"]) == (INPUTS, {"src": [1, 2, 3]}, 7)
        node.send(wire.forget("k1"))
        node.send(wire.run_shared({**run, "task_id": "b"}, "k1"))
        lacked = node.result("b")
        assert lacked["ok"] is False and lacked["error"]["type"] == wire.SHARED_DATA_MISSING
        node.send(wire.blob("k2", INPUTS, {}))
        node.send(wire.welcome(0.2, hello["hello_seq"]))  # a welcome ends what it held
        node.send(wire.run_shared({**run, "task_id": "c"}, "k2"))
        assert node.result("c")["error"]["type"] == wire.SHARED_DATA_MISSING
    finally:
        running.stop()


def test_an_item_whose_shared_data_is_over_the_frame_cap_fails_and_nothing_is_kept(
    fake: Any,
) -> None:
    h, new = fake
    w = new("fw1")
    join(w)
    huge = {"src": ["x" * 1000] * 1100}  # over the pool's 1 MiB frames, in the blob alone
    h.dispatch(item("big", "ex/fan#big", 0, upstream=huge))
    failed = h.inbox.finished("big")
    assert failed.error is not None and failed.error["type"] == "FrameTooLarge"
    assert h.stats()["shared_blobs"] == 0  # no blob left behind
    h.dispatch(item("unencodable", "ex/fan#set", 0, upstream={"src": {1, 2}}))
    failed = h.inbox.finished("unencodable")
    assert failed.error is not None and failed.error["type"] == "CodecError"
    assert h.stats()["shared_blobs"] == 0
    assert not w.sock.poll(200)  # the worker was sent neither
