"""ProcessStoreWriter: a real writer process committing to a real LMDB file, read here."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tamma_actors import Client
from tamma_actors._config import load_node_config
from tamma_actors._errors import StoreClosed, StoreError
from tamma_actors._lmdb_store import LmdbStore
from tamma_actors._node import Node
from tamma_actors._store import Write
from tamma_actors._writer_process import ProcessStoreWriter

pytestmark = pytest.mark.integration

WAIT = 10.0
MiB = 1 << 20


class Outcomes:
    """Each write's outcome, in the order the writer reported them."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.seen: list[tuple[str, BaseException | None]] = []

    def done(self, tag: str) -> Any:
        def record(exc: BaseException | None) -> None:
            with self.cond:
                self.seen.append((tag, exc))
                self.cond.notify_all()

        return record

    def wait(self, total: int) -> list[tuple[str, BaseException | None]]:
        """Every outcome so far, once there are ``total`` of them."""
        with self.cond:
            ok = self.cond.wait_for(lambda: len(self.seen) >= total, WAIT)
            assert ok, f"only {len(self.seen)} of {total} outcomes"
            return list(self.seen)


def _write(eid: str, first: int, last: int, **extra: Any) -> Write:
    events = [{"seq": s, "type": "x"} for s in range(first, last + 1)]
    return Write(eid, events=events, summary={"id": eid, "status": "running"}, **extra)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[LmdbStore]:
    s = LmdbStore(tmp_path / "store", map_size=MiB)
    yield s
    s.close()


@pytest.fixture
def writer(store: LmdbStore) -> Iterator[ProcessStoreWriter]:
    w = ProcessStoreWriter(store.path, map_size=MiB, max_batch=64)
    w.start()
    yield w
    w.close()


def test_writes_commit_in_the_process_and_are_read_here(
    store: LmdbStore, writer: ProcessStoreWriter
) -> None:
    out = Outcomes()
    writer.submit(
        _write(
            "e1",
            1,
            2,
            snapshot={"seq": 2, "state": {"a": 1}},
            history=[{"status": "running"}],
            definition=("sha-1", {"name": "wf"}),
        ).encode(),
        out.done("first"),
    )
    writer.submit(_write("e1", 3, 3), out.done("second"))  # not pre-encoded: the node does it
    writer.submit(Write("", breakers={"shell": {"state": "open"}}), out.done("breakers"))
    assert out.wait(3) == [("first", None), ("second", None), ("breakers", None)]
    assert [e["seq"] for e in store.read_events("e1")] == [1, 2, 3]
    assert store.get_summary("e1") == {"id": "e1", "status": "running"}
    assert store.load_snapshot("e1") == {"seq": 2, "state": {"a": 1}}
    assert [h["status"] for h in store.read_history("e1")] == ["running"]
    assert store.get_definition("sha-1") == {"name": "wf"}
    assert store.get_breakers() == {"shell": {"state": "open"}}
    stats = writer.stats()
    assert stats["process"] == writer.pid != os.getpid()
    assert stats["writes"] == 3 and stats["commits"] >= 1 and stats["failed_writes"] == 0
    assert stats["commit_ms_p99"] is not None and stats["transition_ms_p99"] is not None


def test_a_faulty_write_fails_alone_in_its_batch(
    store: LmdbStore, writer: ProcessStoreWriter
) -> None:
    out = Outcomes()
    writer.submit(_write("a", 1, 1), out.done("a1"))
    out.wait(1)
    # one batch: a seq gap in "a", a record that cannot be stored, and a good write
    writer.submit(_write("a", 5, 5), out.done("gap"))
    writer.submit(Write("c", events=[{"seq": 1, "schema": 9}]), out.done("reserved"))
    writer.submit(_write("b", 1, 2), out.done("b"))
    seen = dict(out.wait(4))
    assert list(seen) == ["a1", "gap", "reserved", "b"]  # submit order
    assert "does not continue the stored sequence (last seq 1)" in str(seen["gap"])
    assert isinstance(seen["gap"], StoreError)
    assert "'schema' is reserved" in str(seen["reserved"])
    assert seen["b"] is None
    assert [e["seq"] for e in store.read_events("a")] == [1]
    assert [e["seq"] for e in store.read_events("b")] == [1, 2]
    assert store.get_summary("c") is None
    assert writer.stats()["failed_writes"] == 2


def test_the_reader_follows_the_map_the_process_grew(
    store: LmdbStore, writer: ProcessStoreWriter
) -> None:
    out = Outcomes()
    pad = "x" * 4000
    for i in range(600):  # ~2.4 MiB of events into a 1 MiB map
        event = {"seq": i + 1, "pad": pad}
        writer.submit(Write("big", events=[event]).encode(), out.done(str(i)))
    assert all(exc is None for _, exc in out.wait(600))
    events = store.read_events("big")
    assert len(events) == 600 and events[-1]["pad"] == pad
    assert store.stats()["map_size"] > MiB


def test_a_killed_process_fails_its_writes_and_the_writer_is_no_longer_alive(
    store: LmdbStore, writer: ProcessStoreWriter
) -> None:
    out = Outcomes()
    writer.submit(_write("k", 1, 1), out.done("before"))
    assert out.wait(1) == [("before", None)]
    assert writer.alive and writer.pid is not None
    os.kill(writer.pid, signal.SIGKILL)
    for _ in range(200):  # the thread notices at its next send, or sooner by EOF
        try:
            writer.submit(_write("k", 2, 2), out.done("after"))
        except StoreClosed as exc:
            assert "store writer process" in str(exc) and "lost" in str(exc)
            break
        seen = out.wait(len(out.seen) + 1)[-1]
        assert isinstance(seen[1], StoreError) and "lost" in str(seen[1])
    else:
        raise AssertionError("submits were still accepted after the process died")
    writer._thread.join(WAIT)  # type: ignore[union-attr]
    assert not writer.alive
    # a new writer (what the node's supervision tree starts) takes over the same file
    with ProcessStoreWriter(store.path, map_size=MiB) as again:
        again.submit(_write("k", 2, 2), out.done("restarted"))
        assert out.wait(len(out.seen) + 1)[-1] == ("restarted", None)
    assert [e["seq"] for e in store.read_events("k")] == [1, 2]


def test_close_commits_what_is_queued_and_the_process_exits(store: LmdbStore) -> None:
    writer = ProcessStoreWriter(store.path, map_size=MiB)
    writer.start()
    out = Outcomes()
    for i in range(50):
        writer.submit(_write(f"q{i}", 1, 1), out.done(str(i)))
    proc = writer._proc
    writer.close()
    assert [exc for _, exc in out.wait(50)] == [None] * 50
    assert proc is not None and proc.returncode == 0
    assert sum(1 for _ in store.iter_execution_ids()) == 50
    with pytest.raises(StoreClosed):
        writer.submit(_write("late", 1, 1))


def test_a_process_that_cannot_open_the_store_fails_the_writes(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    writer = ProcessStoreWriter(blocker / "store", map_size=MiB)
    writer.start()
    out = Outcomes()
    try:
        try:
            writer.submit(_write("x", 1, 1), out.done("x"))
        except StoreClosed as refused:  # the thread already heard the process fail
            assert "cannot open the store" in str(refused)
        else:
            [(_, failed)] = out.wait(1)
            assert isinstance(failed, StoreError) and "cannot open the store" in str(failed)
    finally:
        writer.close()


def test_a_writer_never_started_fails_what_close_finds_queued(store: LmdbStore) -> None:
    writer = ProcessStoreWriter(store.path, map_size=MiB)
    out = Outcomes()
    writer.submit(_write("n", 1, 1), out.done("n"))
    writer.close()
    [(_, exc)] = out.wait(1)
    assert isinstance(exc, StoreError) and "never started" in str(exc)
    assert store.get_summary("n") is None


@pytest.mark.parametrize("mode", ["process", "thread"])
def test_a_node_commits_through_either_writer(short_dir: Path, mode: str) -> None:
    settings = {"workers": 1, "store_writer": mode, "heartbeat_interval": 0.2}
    with Node(load_node_config(None, data_dir=short_dir / "var", **settings)) as node:
        with Client(node.config.control_address, timeout=WAIT * 3) as client:
            run = client.start_workflow(
                {"name": "w", "steps": [{"name": "a", "implementation": "noop"}]}
            )
            assert client.wait(run.id, timeout=WAIT * 3).status == "completed"
            writer = client.health()["writer"]
        assert writer["alive"] and writer["writes"] >= 2
        if mode == "process":
            child = psutil.Process(writer["process"])
            assert child.ppid() == os.getpid()  # the node runs in this test process
            assert "tamma_actors._writer_main" in " ".join(child.cmdline())
        else:
            assert "process" not in writer
    if mode == "process":
        assert not psutil.pid_exists(writer["process"]) or (
            psutil.Process(writer["process"]).status() == psutil.STATUS_ZOMBIE
        )
    with LmdbStore(short_dir / "var" / "store") as store:
        assert store.get_summary(run.id)["status"] == "completed"  # type: ignore[index]


def test_a_writer_process_commits_once_before_it_says_ready(store: LmdbStore) -> None:
    # A writer killed between its commit and publishing it to other processes' readers
    # (LMDB's last transaction id in the lock file) leaves them reading the commit before,
    # until the next commit: a new writer process makes one before it is ready, and the
    # node re-reads the executions the dead one stopped only once it is.
    from tamma_actors._keys import META
    from tamma_actors._record_store import WRITER_KEY
    from tamma_actors._store_records import decoded

    def marked() -> Any:
        return store._view(lambda view: decoded(view, META, WRITER_KEY))

    assert marked() is None
    with ProcessStoreWriter(store.path, map_size=MiB) as writer:
        assert _ready(writer) and marked()["pid"] == writer.pid
        os.kill(writer.pid, signal.SIGKILL)  # type: ignore[arg-type]
        psutil.Process(writer.pid).wait(WAIT)  # type: ignore[arg-type]
        assert not writer.ready  # its process is gone
    with ProcessStoreWriter(store.path, map_size=MiB) as again:
        assert _ready(again) and marked()["pid"] == again.pid


def _ready(writer: ProcessStoreWriter) -> bool:
    """Whether ``writer`` says it is ready within WAIT (its process answers at once)."""
    deadline = time.monotonic() + WAIT
    while not writer.ready and time.monotonic() < deadline:
        time.sleep(0.01)
    return writer.ready
