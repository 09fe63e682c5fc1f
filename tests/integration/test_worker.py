"""The worker against a plain ROUTER socket standing in for the node.

Most tests run ``Worker.run`` on a thread of the test process (so coverage sees it);
the process-level behaviour (signals, parent death, the CLI) runs real child processes.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import zmq

from tamma_actors import Client, WorkflowValidationError, _pdeath, _worker
from tamma_actors import _wire as wire
from tamma_actors._cli_node import main as cli_node_main
from tamma_actors._config import load_node_config
from tamma_actors._errors import TransportError
from tamma_actors._node import Node
from tamma_actors._worker import (
    EXIT_OK,
    EXIT_PARENT_DIED,
    EXIT_REFUSED,
    EXIT_TRANSPORT,
    EXIT_USAGE,
    CurveKeys,
    Worker,
    main,
    run_worker,
)
from tamma_actors._worker_connection import HANDSHAKE_FAILURES_FATAL, Handshakes
from tests.workers import RunningWorker, tamma_node_worker

pytestmark = pytest.mark.integration

TESTS_DIR = str(Path(__file__).resolve().parents[1])
sys.path.insert(0, TESTS_DIR)
from plugins_for_tests import ALLOWLIST  # noqa: E402

TIMEOUT = 20.0
MAX = 1 << 20


class FakeNode:
    """A ROUTER socket and a log of every decoded frame, in arrival order."""

    def __init__(self, ctx: zmq.Context[Any], endpoint: str, **sockopts: Any) -> None:
        self.sock: zmq.Socket[bytes] = ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        for key, value in sockopts.items():
            setattr(self.sock, key, value)
        self.sock.bind(endpoint)
        self.endpoint = endpoint
        self.frames: list[dict[str, Any]] = []
        self.identity = b""

    def recv(self, *types: str, timeout: float = TIMEOUT) -> dict[str, Any]:
        """The next frame of one of ``types`` (all types when none given); others are logged."""
        while True:
            if not self.sock.poll(int(timeout * 1000)):
                raise AssertionError(f"no {types or 'frame'} within {timeout}s: {self.frames}")
            self.identity, data = self.sock.recv_multipart()
            msg = wire.decode_worker_frame(data, MAX)
            self.frames.append(msg)
            if not types or msg["t"] in types:
                return msg

    def send(self, msg: dict[str, Any]) -> None:
        self.sock.send_multipart([self.identity, wire.encode(msg)])

    def send_raw(self, *parts: bytes) -> None:
        self.sock.send_multipart([self.identity, *parts])

    def handshake(self, interval: float = 0.2) -> dict[str, Any]:
        hello = self.recv("hello")
        self.send(wire.welcome(interval))
        return hello

    def result(self, task_id: str) -> dict[str, Any]:
        while True:
            msg = self.recv("result")
            if msg["task_id"] == task_id:
                return msg

    def index(self, t: str, task_id: str) -> int:
        return next(
            i for i, m in enumerate(self.frames) if m["t"] == t and m.get("task_id") == task_id
        )


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
        "idempotency_key": f"ex/{task_id}/1",
        "item_index": None,
    }
    t.update(extra)
    return wire.run(t)


@pytest.fixture
def zctx() -> Iterator[zmq.Context[Any]]:
    ctx: zmq.Context[Any] = zmq.Context()
    yield ctx
    ctx.term()


@pytest.fixture
def node(zctx: zmq.Context[Any], tmp_path: Path) -> Iterator[FakeNode]:
    fake = FakeNode(zctx, f"ipc://{tmp_path}/w.sock")
    yield fake
    fake.sock.close(0)


@pytest.fixture
def start(node: FakeNode) -> Iterator[Any]:
    running: list[RunningWorker] = []

    def _start(**kw: Any) -> RunningWorker:
        kw.setdefault("heartbeat_interval", 0.2)
        kw.setdefault("allowlist", ALLOWLIST)
        r = RunningWorker(Worker(node.endpoint, **kw))
        running.append(r)
        return r

    yield _start
    for r in running:
        r.stop()


def test_a_held_start_notice_goes_out_when_its_hold_ends(node: FakeNode, start: Any) -> None:
    start()
    node.handshake()
    node.send(task("slow", "sleep", config={"seconds": 2.0}, start_hold=0.2))
    notice = node.recv("started")
    res = node.result("slow")
    # released once its hold is over (never before), saying how long the step had run
    assert notice["task_id"] == "slow" and 199.9 <= notice["ran_ms"] < 2000
    assert node.index("started", "slow") < node.index("result", "slow")
    assert res["ok"] is True and res["started"] is True


def test_a_step_done_within_its_hold_sends_no_start_notice(node: FakeNode, start: Any) -> None:
    start()
    node.handshake()
    node.send(task("quick", "sleep", config={"seconds": 0.05}, start_hold=30))
    res = node.result("quick")
    assert res["ok"] is True and res["started"] is True
    assert [m["t"] for m in node.frames if m.get("task_id") == "quick"] == ["result"]


def test_progress_sends_a_held_start_notice_first(node: FakeNode, start: Any) -> None:
    start()
    node.handshake()
    node.send(task("c", "chatty", config={"n": 2}, start_hold=30))
    node.result("c")
    kinds = [m["t"] for m in node.frames if m.get("task_id") == "c"]
    assert kinds == ["started", "progress", "progress", "result"]


def test_hello_run_result_stop(node: FakeNode, start: Any) -> None:
    r = start(slots=3, worker_id="w-1")
    hello = node.handshake()
    assert hello["worker_id"] == "w-1" and hello["slots"] == 3 and hello["pid"] == os.getpid()
    assert "noop" in hello["plugins"] and "shell" not in hello["plugins"]
    assert node.identity != b"w-1" and len(node.identity) >= 16  # a secret, not its name
    hb = node.recv("hb")
    assert hb["running"] == [] and hb["rss"] > 0
    node.send(task("a", input={"x": [1, 2]}))
    res = node.result("a")
    assert res["ok"] is True and res["output"] == {"x": [1, 2]} and res["duration_ms"] >= 0
    # a step that finished before its start notice went out: the result stands for both
    assert res["started"] is True
    assert [m["t"] for m in node.frames if m.get("task_id") == "a"] in (
        ["started", "result"],
        ["result"],
    )
    node.send(wire.stop())
    assert node.recv("bye")["worker_id"] == "w-1"
    assert r.join() == EXIT_OK


def test_context_is_built_from_the_run_frame(node: FakeNode, start: Any) -> None:
    start()
    node.handshake()
    frame = task(
        "p",
        "context",
        attempt=3,
        config={"c": 1},
        input="in",
        inputs={"i": 2},
        upstream={"u": 3},
        idempotency_key="ex/p[4]/3",
        item_index=4,
    )
    node.send(frame)
    out = node.result("p")["output"]
    expected = {k: frame[k] for k in out}
    assert out == expected and out["item_index"] == 4 and out["attempt"] == 3


def test_progress_frames_precede_the_result(node: FakeNode, start: Any) -> None:
    start()
    node.handshake()
    node.send(task("c", "chatty", config={"n": 3}))
    res = node.result("c")
    assert res["output"]["beats"] == 3
    beats = [m["progress"] for m in node.frames if m["t"] == "progress"]
    assert beats == [{"done": i, "of": 3} for i in (1, 2, 3)]


def test_slots_bound_concurrency_and_cancel(node: FakeNode, start: Any) -> None:
    start(slots=2)
    node.handshake()
    for tid in ("h1", "h2", "h3", "h4"):
        node.send(task(tid, "hang"))
    assert {node.recv("started")["task_id"], node.recv("started")["task_id"]} == {"h1", "h2"}
    # h3 and h4 wait for a slot, but the node hears about all four in heartbeats.
    while set(node.recv("hb")["running"]) != {"h1", "h2", "h3", "h4"}:
        pass
    node.send(wire.cancel("h4"))  # still queued: answered at once, never started
    res = node.result("h4")
    assert res["ok"] is False and res["error"]["type"] == "StepCancelled"
    node.send(wire.cancel("h1"))
    res = node.result("h1")
    assert res["error"] == {
        "type": "StepCancelled",
        "message": "step cancelled",
        "retryable": False,
        "retry_after": None,
    }
    assert node.recv("started")["task_id"] == "h3"
    assert node.index("started", "h3") > node.index("result", "h1")
    assert not any(m["t"] == "started" and m["task_id"] == "h4" for m in node.frames)
    node.send(wire.cancel("nobody"))  # unknown: ignored
    for tid in ("h2", "h3"):
        node.send(wire.cancel(tid))
        assert node.result(tid)["error"]["type"] == "StepCancelled"


def test_cpu_bound_steps_run_one_at_a_time_beside_the_others(node: FakeNode, start: Any) -> None:
    start(slots=4)
    node.handshake()
    node.send(task("load", "heavy", config={"seconds": 0}))  # its first run loads it
    assert node.result("load")["output"] == "done"
    for tid, impl in (("c1", "heavy"), ("c2", "heavy"), ("h1", "hang"), ("c3", "heavy")):
        node.send(task(tid, impl))
    # c1 runs and h1 beside it; c2 and c3 wait though two runners are free
    assert {node.recv("started")["task_id"], node.recv("started")["task_id"]} == {"c1", "h1"}
    while set(node.recv("hb")["running"]) != {"c1", "c2", "c3", "h1"}:
        pass
    assert sorted(m["task_id"] for m in node.frames if m["t"] == "started") == ["c1", "h1"]
    node.send(wire.cancel("c3"))  # waiting: answered at once, never started
    assert node.result("c3")["error"]["type"] == "StepCancelled"
    node.send(wire.cancel("c1"))
    assert node.result("c1")["error"]["type"] == "StepCancelled"
    assert node.recv("started")["task_id"] == "c2"  # the next one, once c1 is done
    assert node.index("started", "c2") > node.index("result", "c1")
    node.send(task("n", "hang"))  # the other steps still take the free runners
    assert node.recv("started")["task_id"] == "n"
    for tid in ("c2", "h1", "n"):
        node.send(wire.cancel(tid))
        assert node.result(tid)["error"]["type"] == "StepCancelled"
    assert not any(m["t"] == "started" and m["task_id"] == "c3" for m in node.frames)


def test_the_builtin_cpu_is_one_at_a_time_from_its_first_run(node: FakeNode, start: Any) -> None:
    start(slots=2)
    node.handshake()
    node.send(task("a", "cpu", config={"ms": 30}))
    node.send(task("b", "cpu", config={"ms": 30}))
    assert node.result("a")["ok"] and node.result("b")["ok"]
    assert node.index("result", "a") < node.index("started", "b")


def test_duplicate_run_is_ignored(node: FakeNode, start: Any) -> None:
    start(slots=2)
    node.handshake()
    node.send(task("d", "hang"))
    node.send(task("d", "hang"))
    node.recv("started")
    while node.recv("hb")["running"] != ["d"]:
        pass
    node.send(wire.cancel("d"))
    node.result("d")
    node.send(task("after"))
    assert node.result("after")["ok"]
    started = [m["task_id"] for m in node.frames if m["t"] == "started"]
    assert started in (["d", "after"], ["d"])  # a fast step's notice may ride its result


def test_an_inline_step_runs_on_the_socket_thread_once_loaded(node: FakeNode, start: Any) -> None:
    start(slots=1)
    node.handshake()
    node.send(task("first", "where"))
    # Its first run loads it, on a runner: a plugin's import never holds up the socket.
    assert node.result("first")["output"].startswith("_StepRunner")
    node.send(task("busy", "hang"))
    assert node.recv("started")["task_id"] == "busy"  # the only runner is taken
    node.send(task("second", "where", config={"beat": True}))
    second = node.result("second")
    # Run at once on the socket thread (this test's "test-worker"), needing no runner.
    assert second["ok"] and second["output"] == "test-worker" and second["started"] is True
    assert node.index("progress", "second") < node.index("result", "second")
    assert not any(m["t"] == "started" and m["task_id"] == "second" for m in node.frames)
    node.send(wire.cancel("busy"))
    assert node.result("busy")["error"]["type"] == "StepCancelled"


def test_an_inline_steps_failure_is_reported_and_the_worker_serves_on(
    node: FakeNode, start: Any
) -> None:
    start()
    node.handshake()
    for tid in ("load-fail", "load-where"):  # first runs: on runners
        node.send(task(tid, "fail" if tid == "load-fail" else "where"))
        node.result(tid)
    node.send(task("flaky", "fail", config={"times": 1, "error": "Flaky"}))
    node.send(task("exit", "where", config={"exit": True}))
    node.send(task("fine", "fail", attempt=2))
    flaky, exited, fine = node.result("flaky"), node.result("exit"), node.result("fine")
    assert (flaky["ok"], flaky["error"]["type"], flaky["error"]["retryable"]) == (
        False,
        "Flaky",
        True,
    )
    # sys.exit in an inline step is the step's error, not the worker's end.
    assert (exited["ok"], exited["error"]["type"]) == (False, "SystemExit")
    assert fine["ok"] and fine["output"] == {"attempt": 2}
    node.send(task("after", "where"))
    assert node.result("after")["output"] == "test-worker"


def test_an_inline_step_that_blocks_goes_back_to_the_runners(
    node: FakeNode, start: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tamma_actors import _worker_runners

    monkeypatch.setattr(_worker_runners, "INLINE_LIMIT", 0.05)
    start()
    node.handshake()
    node.send(task("load", "where"))
    node.result("load")
    with caplog.at_level("WARNING", logger="tamma_actors._worker"):
        node.send(task("slow", "where", config={"sleep": 0.08}))
        assert node.result("slow")["output"] == "test-worker"  # inline, but too long
    assert any(
        "inline step where held the worker's socket thread" in r.getMessage()
        for r in caplog.records
    )
    node.send(task("after", "where"))
    assert node.result("after")["output"].startswith("_StepRunner")  # from now on
    node.send(task("noop", input=1))  # and the worker serves on
    assert node.result("noop")["output"] == 1


def test_an_inline_step_that_blocks_a_little_at_every_run_goes_back_to_the_runners(
    node: FakeNode, start: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No single run is over the limit, but their sum within the window is: the socket
    thread would otherwise stall at every run, forever. Quick runs count for nothing, and
    slow runs further apart than the window are forgiven."""
    from tamma_actors import _worker_runners

    monkeypatch.setattr(_worker_runners, "INLINE_LIMIT", 0.3)
    monkeypatch.setattr(_worker_runners, "INLINE_WINDOW", 0.4)
    start()
    node.handshake()
    node.send(task("load", "where"))
    node.result("load")
    for i in range(20):  # quick: always inline
        node.send(task(f"quick{i}", "where"))
        assert node.result(f"quick{i}")["output"] == "test-worker"
    for i in range(3):  # slow, but each alone and out of the others' window
        node.send(task(f"apart{i}", "where", config={"sleep": 0.12}))
        assert node.result(f"apart{i}")["output"] == "test-worker"
        time.sleep(0.5)
    with caplog.at_level("WARNING", logger="tamma_actors._worker"):
        for i in range(3):  # back to back: 0.36 s within the window, over 0.3 at the third
            node.send(task(f"close{i}", "where", config={"sleep": 0.12}))
            assert node.result(f"close{i}")["output"] == "test-worker"
    warnings = [r.getMessage() for r in caplog.records if "inline step where" in r.getMessage()]
    assert len(warnings) == 1 and "in 3 run(s)" in warnings[0]
    node.send(task("after", "where"))
    assert node.result("after")["output"].startswith("_StepRunner")  # from now on


def test_a_long_batch_of_inline_steps_answers_every_one_in_order(
    node: FakeNode, start: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tamma_actors import _worker_loop

    monkeypatch.setattr(_worker_loop, "_INLINE_FLUSH", 4)
    start()
    node.handshake()
    node.send(task("load"))
    node.result("load")
    ids = [f"t{i}" for i in range(150)]
    for tid in ids:
        node.send(task(tid, input=tid))
    results = [node.recv("result") for _ in ids]
    assert [r["task_id"] for r in results] == ids
    assert all(r["ok"] and r["output"] == r["task_id"] for r in results)


@pytest.mark.parametrize(
    ("impl", "config", "error_type", "retryable"),
    [
        ("nope", {}, "UnknownImplementation", False),
        ("shell", {"command": ["true"]}, "UnknownImplementation", False),
        ("unencodable", {}, "CodecError", False),
        ("big", {"n": 5000}, "FrameTooLarge", False),
        ("exits", {}, "SystemExit", None),
        ("fail", {"times": 1, "error": "Flaky"}, "Flaky", True),
        ("sleep", {"seconds": "x"}, "ConfigError", False),
    ],
)
def test_failures_are_reported(
    node: FakeNode,
    start: Any,
    impl: str,
    config: dict[str, Any],
    error_type: str,
    retryable: bool | None,
) -> None:
    start(max_frame_bytes=4096)
    node.handshake()
    node.send(task("f", impl, config=config))
    res = node.result("f")
    assert res["ok"] is False
    assert (res["error"]["type"], res["error"]["retryable"]) == (error_type, retryable)
    node.send(task("g"))  # the slot is free again and the worker still serves
    assert node.result("g")["ok"]


def test_a_heartbeat_over_the_frame_cap_is_refused_in_the_step(node: FakeNode, start: Any) -> None:
    """Sent, it would make the node drop the worker's connection (and kill the worker)."""
    start(max_frame_bytes=4096)
    node.handshake()
    node.send(task("l", "loud", config={"n": 5000}))
    res = node.result("l")
    assert res["ok"] is False and res["error"]["type"] == "FrameTooLarge"
    assert "over the 4,096-byte cap (max_frame_bytes)" in res["error"]["message"]
    beats = [m["progress"] for m in node.frames if m["t"] == "progress"]
    assert beats == [{"refused": res["error"]["message"]}]  # only the small one went out
    node.send(task("g"))
    assert node.result("g")["ok"]  # the worker serves on


def test_shell_when_allowed(node: FakeNode, start: Any) -> None:
    start(enabled={"shell"})
    assert "shell" in node.handshake()["plugins"]
    node.send(task("s", "shell", config={"command": ["echo", "hi"]}))
    assert node.result("s")["output"]["stdout"] == "hi\n"


def test_garbage_frames_are_dropped(node: FakeNode, start: Any) -> None:
    start()
    node.handshake()
    node.send_raw(b"\xc1\xff garbage")
    node.send_raw(wire.encode({"v": 2, "t": "run"}))
    node.send_raw(wire.encode(wire.stop()), b"second part")
    node.send_raw(wire.encode({**task("x"), "attempt": "one"}))
    node.send(task("ok"))
    assert node.result("ok")["ok"]
    assert not any(m.get("task_id") == "x" for m in node.frames)


def test_hello_again_without_welcome_and_on_rehello(node: FakeNode, start: Any) -> None:
    start(heartbeat_interval=0.05)
    first = node.recv("hello")
    second = node.recv("hello")  # never welcomed: says hello again, numbered
    assert (first.pop("hello_seq"), second.pop("hello_seq")) == (1, 2)
    assert first == second
    node.send(wire.welcome(0.05, 1))  # the first one's welcome, late
    assert node.recv("hb")["hello_seq"] == 1  # its heartbeats say which hello it answered
    node.send(wire.welcome(0.05, 2))
    while node.recv("hb")["hello_seq"] != 2:
        pass
    node.send(wire.welcome(0.05))  # a node that does not number them: the last hello's
    node.send(wire.rehello())
    third = node.recv("hello")
    assert third["worker_id"] == first["worker_id"] and third["hello_seq"] == 3
    node.send(wire.welcome(0.05))
    while node.recv("hb")["hello_seq"] != 3:
        pass


def test_stop_cancels_running_and_queued(node: FakeNode, start: Any) -> None:
    r = start(slots=1)
    node.handshake()
    node.send(task("run", "hang"))
    node.recv("started")
    node.send(task("queued", "hang"))
    while set(node.recv("hb")["running"]) != {"run", "queued"}:
        pass
    node.send(wire.stop())
    node.send(task("late"))
    errors = {node.result(t)["error"]["type"] for t in ("queued", "run")}
    assert errors == {"StepCancelled"}
    node.recv("bye")
    assert r.join() == EXIT_OK
    assert not any(m.get("task_id") == "late" for m in node.frames)


def test_stop_grace_bounds_a_step_that_ignores_cancel(node: FakeNode, start: Any) -> None:
    r = start(stop_grace=0.2)
    node.handshake()
    node.send(task("s", "stubborn", config={"seconds": 2}))
    node.recv("started")
    r.worker.request_stop()
    node.recv("bye")
    assert r.join() == EXIT_OK
    assert not any(m["t"] == "result" for m in node.frames)


def test_a_stopping_worker_does_not_join_again(node: FakeNode, start: Any) -> None:
    """A worker told to stop (over its memory limit, say) answers no rehello: joining
    again it would be sent steps it would not run, each a lost attempt."""
    r = start(stop_grace=0.5)
    node.handshake()
    node.send(task("s", "stubborn", config={"seconds": 2}))  # keeps it stopping a while
    node.recv("started")
    node.send(wire.stop())
    node.send(wire.rehello())  # the node has forgotten it meanwhile
    node.recv("bye")
    assert r.join() == EXIT_OK
    assert [m["t"] for m in node.frames].count("hello") == 1  # the first one only


def test_a_plugin_only_a_connected_worker_offers_may_be_named(short_dir: Path) -> None:
    """A worker elsewhere, started with ``--allow NAME=MODULE:ATTR``, offers a step the
    node's own registry lacks: a workflow may name it while such a worker is connected."""
    cfg = load_node_config(None, data_dir=short_dir / "var", workers=0)
    spec = {"name": "remote", "steps": [{"name": "s", "implementation": "context"}]}

    def offered(client: Client) -> set[str]:
        return {p for w in client.health()["workers"]["workers"] for p in w["plugins"]}

    def until(cond: Callable[[], bool]) -> None:
        deadline = time.monotonic() + TIMEOUT
        while not cond():
            assert time.monotonic() < deadline, "not in time"
            time.sleep(0.02)

    with Node(cfg), Client(cfg.control_address, timeout=TIMEOUT) as client:
        with pytest.raises(WorkflowValidationError, match="unknown implementation 'context'"):
            client.start_workflow(spec)  # no worker offers it
        worker = Worker(
            cfg.workers_address, heartbeat_interval=0.2, allowlist={"context": ALLOWLIST["context"]}
        )
        runs = threading.Thread(target=worker.run)
        runs.start()
        try:
            until(lambda: "context" in offered(client))
            done = client.wait(client.start_workflow(spec).id, timeout=TIMEOUT)
            assert done.status == "completed" and done.results["s"].data["step"] == "s"
        finally:
            worker.request_stop()
            runs.join(TIMEOUT)
            worker.close()
        until(lambda: not offered(client))
        with pytest.raises(WorkflowValidationError, match="unknown implementation 'context'"):
            client.start_workflow(spec)  # it left: none offers it any more


def test_curve_over_tcp(zctx: zmq.Context[Any]) -> None:
    server_public, server_secret = zmq.curve_keypair()
    fake = FakeNode(zctx, "tcp://127.0.0.1:*", curve_server=True, curve_secretkey=server_secret)
    endpoint = fake.sock.getsockopt_string(zmq.LAST_ENDPOINT)
    try:
        with Worker(endpoint, curve=CurveKeys(server_public.decode())) as w:
            _joins(fake, w)
    finally:
        fake.sock.close(0)
    with pytest.raises(TransportError, match="both"):
        CurveKeys(server_public.decode(), public_key="x")


def test_a_curve_key_leaves_an_ipc_connection_plain(node: FakeNode) -> None:
    """As the node does: CURVE is for tcp:// only; a key given with an ipc:// endpoint
    (one command line for every worker, say) must not make the worker unable to join."""
    server_public, _ = zmq.curve_keypair()
    with Worker(node.endpoint, curve=CurveKeys(server_public.decode())) as w:
        _joins(node, w)


def _joins(node: FakeNode, worker: Worker) -> None:
    """``worker`` runs until it has said hello to ``node``, then stops."""
    r = RunningWorker(worker)
    try:
        assert node.recv("hello")["worker_id"] == worker.worker_id
    finally:
        r.worker.request_stop()
        r.join()


def test_the_token_comes_from_the_environment_and_leaves_it(
    node: FakeNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not from the command line, which ps shows; and no step (nor a command it runs)
    sees it in the environment."""
    monkeypatch.setenv(wire.TOKEN_ENV, "s3cret")
    done = threading.Event()
    t = _node_thread(node, done)
    assert main(["--connect", node.endpoint, "--slots", "1"]) == EXIT_OK
    t.join(timeout=TIMEOUT)
    assert node.frames[0]["token"] == "s3cret" and wire.TOKEN_ENV not in os.environ


def test_a_worker_says_hello_on_every_new_connection(
    zctx: zmq.Context[Any], tmp_path: Path
) -> None:
    """Not only when asked (rehello): the node checks what the old connection lost
    against the heartbeat that follows the welcome (see _pool_workers)."""
    endpoint = f"ipc://{tmp_path}/w.sock"
    first = FakeNode(zctx, endpoint)
    r = RunningWorker(Worker(endpoint, heartbeat_interval=0.2))
    try:
        first.handshake()
        first.recv("hb")
        first.sock.close(0)  # the connection drops; a node comes back at the same place
        second = FakeNode(zctx, endpoint)
        try:
            second.recv("hello")  # unasked (heartbeats queued meanwhile may come first)
        finally:
            second.sock.close(0)
    finally:
        r.stop()


def test_the_routing_id_a_node_gives_comes_from_the_environment_and_leaves_it(
    node: FakeNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node's own local worker connects under the routing id the node drew for it (by
    which it knows the process for its own), and no step sees it in the environment."""
    monkeypatch.setenv(wire.ROUTE_ENV, "given-by-the-node-0123456789")
    done = threading.Event()
    t = _node_thread(node, done)
    assert main(["--connect", node.endpoint, "--slots", "1"]) == EXIT_OK
    t.join(timeout=TIMEOUT)
    assert node.identity == b"given-by-the-node-0123456789"
    assert wire.ROUTE_ENV not in os.environ


def test_a_refused_hello_ends_the_worker(
    node: FakeNode, start: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Saying hello again cannot help a worker the node does not admit: it says why and
    exits (a process restarting it would be refused again)."""
    r = start()
    assert "token" not in node.recv("hello")
    node.send(wire.refused("a token is required (a worker needs an admin token)"))
    assert r.join() == EXIT_REFUSED
    [line] = [rec.getMessage() for rec in caplog.records if "refused it" in rec.getMessage()]
    assert line.endswith(
        "the node refused it: a token is required (a worker needs an admin token); "
        f"it was given none ({wire.TOKEN_ENV})"
    )


def test_bad_endpoint_is_a_transport_error() -> None:
    with pytest.raises(TransportError, match="cannot connect"):
        Worker("bogus://nowhere")
    # run_worker: an argument it cannot start with (it logged a traceback, exit 4)
    with pytest.raises(ValueError, match="cannot connect to 'bogus://nowhere': Protocol not"):
        run_worker("bogus://nowhere")
    for junk in ("junk", "#" * 40):  # 40 z85 characters whose group overflows 32 bits
        with pytest.raises(ValueError, match="node's CURVE public key is not a CURVE key"):
            run_worker("tcp://127.0.0.1:5999", curve=CurveKeys(junk))
    assert main(["--connect", "bogus://nowhere"]) == EXIT_USAGE


def test_slots_must_be_positive() -> None:
    with pytest.raises(ValueError, match="slots"):
        Worker("ipc:///nonexistent", slots=0)


def test_send_failure_ends_run_with_transport_code(
    node: FakeNode, caplog: pytest.LogCaptureFixture
) -> None:
    w = Worker(node.endpoint, heartbeat_interval=0.2)
    w._sock.close(0)  # a socket that fails under the worker's feet
    try:
        assert w.run() == EXIT_TRANSPORT
        [line] = [r for r in caplog.records if "transport failed" in r.getMessage()]
        assert line.exc_info is None  # one line naming the failure, not a traceback
    finally:
        w.close()
        w.close()


@pytest.fixture
def curve_node(zctx: zmq.Context[Any]) -> Iterator[tuple[FakeNode, str]]:
    """A fake node serving CURVE on tcp://, and its public key."""
    public, secret = zmq.curve_keypair()
    fake = FakeNode(zctx, "tcp://127.0.0.1:*", curve_server=True, curve_secretkey=secret)
    fake.endpoint = fake.sock.getsockopt_string(zmq.LAST_ENDPOINT)
    yield fake, public.decode()
    fake.sock.close(0)


@pytest.mark.parametrize("key", ["another node's", "none"])
def test_a_handshake_the_node_refuses_ends_the_worker(
    curve_node: tuple[FakeNode, str], key: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A wrong CURVE key, or none for a node with CURVE: ZeroMQ would retry for ever,
    unheard; the worker says why in one line and exits instead."""
    fake, _ = curve_node
    curve = CurveKeys(zmq.curve_keypair()[0].decode()) if key != "none" else None
    r = RunningWorker(Worker(fake.endpoint, heartbeat_interval=0.2, curve=curve))
    try:
        r.thread.join(TIMEOUT)
        assert not r.thread.is_alive(), "the worker still waits for a handshake"
        assert r.code == EXIT_TRANSPORT
    finally:
        r.worker.request_stop()
        r.thread.join(TIMEOUT)
        r.worker.close()
    [line] = [rec for rec in caplog.records if "no handshake" in rec.getMessage()]
    assert fake.endpoint in line.getMessage() and "--curve-server-key" in line.getMessage()
    assert line.exc_info is None and not fake.frames  # one line; nothing got through


def test_tamma_node_worker_with_another_nodes_key_exits_1(curve_node: tuple[FakeNode, str]) -> None:
    fake, _ = curve_node
    wrong = zmq.curve_keypair()[0].decode()  # given with "=": a z85 key may begin with "-"
    code, err = tamma_node_worker(
        ["--connect", fake.endpoint, f"--curve-server-key={wrong}"], _env(), TIMEOUT
    )
    assert code == 1
    [line] = [x for x in err.splitlines() if "no handshake" in x]
    assert "is --curve-server-key the node's public key?" in line


def test_a_node_not_up_yet_or_dropping_a_connection_is_waited_for(zctx: zmq.Context[Any]) -> None:
    """Not handshakes the node refuses: nothing listening yet, then connections closed
    before any handshake (a node going away); ZeroMQ reconnects, the worker joins."""
    public, secret = zmq.curve_keypair()
    with socket.socket() as raw:
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        raw.bind(("127.0.0.1", 0))  # not listening: connections are refused
        endpoint = f"tcp://127.0.0.1:{raw.getsockname()[1]}"
        curve = CurveKeys(public.decode())
        r = RunningWorker(Worker(endpoint, heartbeat_interval=0.2, curve=curve))
        raw.listen(1)
        raw.settimeout(TIMEOUT)
        for _ in range(HANDSHAKE_FAILURES_FATAL - 1):
            raw.accept()[0].close()
    fake = FakeNode(zctx, endpoint, curve_server=True, curve_secretkey=secret)
    try:
        assert fake.recv("hello")["worker_id"] == r.worker.worker_id
    finally:
        r.stop()
        fake.sock.close(0)


def test_handshakes_closed_by_the_node_are_fatal_only_so_many_in_a_row(
    zctx: zmq.Context[Any],
) -> None:
    sock: zmq.Socket[bytes] = zctx.socket(zmq.DEALER)
    watch = Handshakes(sock, "tcp://127.0.0.1:1", curve=True)
    watch.monitor.close(0)
    feed: zmq.Socket[bytes] = zctx.socket(zmq.PAIR)
    feed.bind("inproc://handshake-events")
    watch.monitor = zctx.socket(zmq.PAIR)
    watch.monitor.connect("inproc://handshake-events")

    def events(*kinds: int) -> None:
        for kind in kinds:
            feed.send_multipart([struct.pack("=HI", kind, 32), b"tcp://127.0.0.1:1"])
        watch.read()

    closed, ok = zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL, zmq.EVENT_HANDSHAKE_SUCCEEDED
    try:
        events(*[closed] * (HANDSHAKE_FAILURES_FATAL - 1), ok)
        events(*[closed] * (HANDSHAKE_FAILURES_FATAL - 1))
        with pytest.raises(TransportError, match=r"3 handshakes in a row \(is --curve-server-key"):
            events(closed)
        with pytest.raises(TransportError, match="refused this worker's CURVE key"):
            events(zmq.EVENT_HANDSHAKE_FAILED_AUTH)
        with pytest.raises(TransportError, match="protocol error 0x20"):
            events(zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL)
    finally:
        watch.close()
        feed.close(0)
        sock.close(0)


def _node_thread(node: FakeNode, done: threading.Event) -> threading.Thread:
    def serve() -> None:
        node.handshake()
        node.send(wire.stop())
        node.recv("bye")
        done.set()

    t = threading.Thread(target=serve, name="fake-node")
    t.start()
    return t


def test_main_in_the_main_thread(node: FakeNode) -> None:
    done = threading.Event()
    t = _node_thread(node, done)
    before = signal.getsignal(signal.SIGTERM)
    code = main(
        ["--connect", node.endpoint, "--slots", "2", "--allow", "big=plugins_for_tests:big"]
    )
    t.join(timeout=TIMEOUT)
    assert code == EXIT_OK and done.is_set()
    assert signal.getsignal(signal.SIGTERM) is before
    assert "big" in node.frames[0]["plugins"]


def test_managed_in_the_main_thread(node: FakeNode, monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[bool] = []
    monkeypatch.setattr(_worker, "_die_with_parent", lambda: asked.append(True))
    done = threading.Event()
    t = _node_thread(node, done)
    before = signal.signal(signal.SIGINT, signal.default_int_handler)  # whatever pytest had
    try:
        code = run_worker(node.endpoint, managed=True, parent_pid=os.getppid())
        t.join(timeout=TIMEOUT)
        assert code == EXIT_OK and asked == [True]
        # a managed worker ignores SIGINT while it runs, then puts back what it found
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, before)


@pytest.mark.parametrize(
    "argv",
    [
        ["--connect", "ipc:///x", "--slots", "0"],
        ["--connect", "ipc:///x", "--allow", "x=os"],
        ["--connect", "ipc:///x", "--heartbeat-interval", "0"],
        ["--connect", "ipc:///x", "--heartbeat-interval", "-1"],
        ["--connect", "ipc:///x", "--allow", "x=tamma_no_such_module_xyz:f"],
    ],
)
def test_main_usage_errors(argv: list[str]) -> None:
    assert main(argv) == EXIT_USAGE


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--heartbeat", "0"],
            "the heartbeat interval must be 0.01 s or more, and finite, not 0.0",
        ),
        (
            ["--heartbeat", "-1"],
            "the heartbeat interval must be 0.01 s or more, and finite, not -1.0",
        ),
        (
            ["--heartbeat", "nan"],
            "the heartbeat interval must be 0.01 s or more, and finite, not nan",
        ),
        (
            ["--heartbeat", "inf"],
            "the heartbeat interval must be 0.01 s or more, and finite, not inf",
        ),  # a traceback
        (
            ["--heartbeat", "1e-9"],
            "the heartbeat interval must be 0.01 s or more, and finite, not 1e-09",
        ),  # busy
        (
            ["--allow", "x=tamma_no_such_module_xyz:f"],
            "allowlist entry 'x' = 'tamma_no_such_module_xyz:f': "
            "no module named 'tamma_no_such_module_xyz'",
        ),
        (
            ["--allow", "x=tamma_no_such_package_xyz.steps:f"],
            "allowlist entry 'x' = 'tamma_no_such_package_xyz.steps:f': "
            "ModuleNotFoundError: No module named 'tamma_no_such_package_xyz'",
        ),
    ],
)
def test_tamma_node_worker_refuses_an_argument_it_cannot_use(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before it connects: a heartbeat not above 0 (it said hello again in a busy loop),
    an --allow entry whose module is not there (each of its steps could only fail)."""
    assert cli_node_main(["worker", "--connect", "ipc:///nonexistent/w.sock", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"tamma-node: {message}") and err.count("\n") == 1


def test_a_managed_worker_leaves_the_nodes_plugins_to_their_first_step(
    node: FakeNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node's ``plugins`` are its operator's configuration, given to its local workers:
    one that cannot load fails its steps, it does not keep the workers from starting."""
    monkeypatch.setattr(_worker, "_die_with_parent", lambda: None)
    done = threading.Event()
    t = _node_thread(node, done)
    gone = {"x": "tamma_no_such_module_xyz:f"}
    before = signal.getsignal(signal.SIGINT)
    try:
        code = run_worker(node.endpoint, managed=True, allowlist=gone, parent_pid=os.getppid())
    finally:
        signal.signal(signal.SIGINT, before)
    t.join(timeout=TIMEOUT)
    assert code == EXIT_OK and done.is_set() and "x" in node.frames[0]["plugins"]


def test_main_rejects_malformed_allow() -> None:
    with pytest.raises(SystemExit):
        main(["--connect", "ipc:///x", "--allow", "no-equals-sign"])


# Real child processes


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([TESTS_DIR, *sys.path])}


def _spawn(endpoint: str, *args: str) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "tamma_actors._worker", "--connect", endpoint, *args]
    return subprocess.Popen(cmd, env=_env())


def test_process_sigterm_is_a_graceful_stop(node: FakeNode) -> None:
    proc = _spawn(node.endpoint, "--slots", "2", "--heartbeat-interval", "0.2")
    try:
        node.handshake()
        node.send(task("h", "hang"))
        node.recv("started")
        proc.send_signal(signal.SIGTERM)
        assert node.result("h")["error"]["type"] == "StepCancelled"
        node.recv("bye")
        assert proc.wait(timeout=TIMEOUT) == EXIT_OK
    finally:
        proc.kill()
        proc.wait(timeout=TIMEOUT)


def test_process_crash_step_kills_the_worker(node: FakeNode) -> None:
    proc = _spawn(node.endpoint, "--managed")
    try:
        node.handshake()
        node.send(task("c", "crash", config={"times": 1}))
        assert proc.wait(timeout=TIMEOUT) == -signal.SIGKILL
    finally:
        proc.kill()
        proc.wait(timeout=TIMEOUT)


def test_managed_worker_with_a_dead_parent_exits(node: FakeNode) -> None:
    proc = _spawn(node.endpoint, "--managed", "--parent-pid", "1")
    try:
        assert proc.wait(timeout=TIMEOUT) == EXIT_PARENT_DIED
    finally:
        proc.kill()
        proc.wait(timeout=TIMEOUT)


def test_managed_worker_dies_with_its_parent(node: FakeNode) -> None:
    # An intermediate parent spawns a managed worker, reports its pid, then is killed.
    script = (
        "import subprocess, sys\n"
        "p = subprocess.Popen([sys.executable, '-m', 'tamma_actors._worker', '--connect',"
        f" {node.endpoint!r}, '--managed', '--heartbeat-interval', '0.2'])\n"
        "print(p.pid, flush=True)\n"
        "sys.stdin.read()\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=_env()
    )
    try:
        assert parent.stdout is not None
        child = psutil.Process(int(parent.stdout.readline()))
        node.handshake()
        parent.kill()
        parent.wait(timeout=TIMEOUT)
        child.wait(timeout=TIMEOUT)
        assert not child.is_running()
    finally:
        parent.kill()
        parent.wait(timeout=TIMEOUT)
        assert parent.stdin is not None and parent.stdout is not None
        parent.stdin.close()
        parent.stdout.close()


def test_managed_worker_notices_a_new_parent_on_its_timer(node: FakeNode) -> None:
    with Worker(node.endpoint, managed=True, parent_pid=os.getppid() + 99999) as w:
        assert w.run() == EXIT_PARENT_DIED


def test_welcome_without_interval_keeps_ours(node: FakeNode, start: Any) -> None:
    start(heartbeat_interval=0.05)
    node.recv("hello")
    node.send(wire.welcome(0))
    node.recv("hb")
    node.recv("hb")  # still heartbeating at our own interval


class _FakeLibc:
    def __init__(self, rc: int) -> None:
        self.rc = rc
        self.calls: list[tuple[int, ...]] = []

    def prctl(self, *args: int) -> int:
        self.calls.append(args)
        return self.rc


def test_die_with_parent_asks_prctl(monkeypatch: pytest.MonkeyPatch, caplog: Any) -> None:
    libc = _FakeLibc(-1)
    monkeypatch.setattr(_pdeath, "_PRCTL", libc.prctl)
    _worker._die_with_parent()
    assert libc.calls == [(1, signal.SIGKILL, 0, 0, 0)]
    assert "prctl(PR_SET_PDEATHSIG) failed" in caplog.text

    monkeypatch.setattr(_pdeath, "_PRCTL", None)  # no libc's prctl (not Linux)
    monkeypatch.setattr(_pdeath, "AVAILABLE", False)
    _worker._die_with_parent()
    assert "prctl unavailable" in caplog.text
