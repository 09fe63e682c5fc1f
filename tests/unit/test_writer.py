"""StoreWriter: group commit, callback order, failure isolation, flush and close."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence

import pytest

from tamma_actors._errors import StoreClosed, StoreError, StoreWriterLost
from tamma_actors._store import MemoryStore, Write
from tamma_actors._writer import Done, StoreWriter

WAIT = 10.0  # generous bound for every wait; never a sleep


class CountingStore(MemoryStore):
    """Counts commit calls; can hold the next commit until released."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []
        self.hold = threading.Event()
        self.hold.set()
        self.entered = threading.Event()

    def commit(self, writes: Sequence[Write]) -> None:
        self.entered.set()
        assert self.hold.wait(WAIT), "the test never released the store"
        super().commit(writes)
        self.batches.append(len(writes))


class Recorder:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.results: list[tuple[str, BaseException | None]] = []
        self.all_done = threading.Event()
        self.expected = 0

    def done_for(self, tag: str) -> Done:
        self.expected += 1

        def done(exc: BaseException | None) -> None:
            with self.lock:
                self.results.append((tag, exc))
                if len(self.results) == self.expected:
                    self.all_done.set()

        return done


@pytest.fixture
def store() -> Iterator[CountingStore]:
    s = CountingStore()
    yield s
    s.hold.set()
    s.close()


def _block(store: CountingStore, writer: StoreWriter) -> None:
    """Make the writer thread sit inside a commit, so that later submits pile up."""
    store.hold.clear()
    store.entered.clear()
    writer.submit(Write("blocker", summary={}))
    assert store.entered.wait(WAIT)


def test_many_submits_from_several_threads_end_up_in_few_commits(store: CountingStore) -> None:
    with StoreWriter(store) as writer:
        _block(store, writer)
        go = threading.Barrier(4)

        def submit_many(worker: int) -> None:
            go.wait(timeout=WAIT)
            for seq in range(1, 51):
                writer.submit(Write(f"w{worker}", events=[{"seq": seq}]))

        threads = [threading.Thread(target=submit_many, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=WAIT)
        store.hold.set()
        writer.flush(timeout=WAIT)
        stats = writer.stats()
    assert store.batches == [1, 200]
    assert [store.last_seq(f"w{i}") for i in range(4)] == [50] * 4
    assert stats["commits"] == 2
    assert stats["writes"] == 201
    assert stats["last_batch"] == 200
    assert stats["average_batch"] == pytest.approx(100.5)
    assert stats["commit_ms_p50"] is not None
    assert stats["commit_ms_p99"] >= stats["commit_ms_p50"]
    assert stats["queued"] == 0


def test_batches_never_exceed_max_batch(store: CountingStore) -> None:
    with StoreWriter(store, max_batch=3) as writer:
        _block(store, writer)
        for seq in range(1, 11):
            writer.submit(Write("e", events=[{"seq": seq}]))
        assert writer.stats()["queued"] == 10
        store.hold.set()
        writer.flush(timeout=WAIT)
    assert store.batches == [1, 3, 3, 3, 1]
    assert store.last_seq("e") == 10


def test_callbacks_run_after_commit_in_submit_order(store: CountingStore) -> None:
    seen: list[tuple[int, int]] = []
    recorder_done = threading.Event()

    def done_for(seq: int) -> Done:
        def done(exc: BaseException | None) -> None:
            assert exc is None
            seen.append((seq, store.last_seq("e")))  # committed before we are told
            if seq == 30:
                recorder_done.set()

        return done

    with StoreWriter(store) as writer:
        _block(store, writer)
        for seq in range(1, 31):
            writer.submit(Write("e", events=[{"seq": seq}]), done_for(seq))
        store.hold.set()
        assert recorder_done.wait(WAIT)
    assert [s for s, _ in seen] == list(range(1, 31))
    assert all(last == 30 for _, last in seen)


def test_a_failing_write_fails_alone(store: CountingStore) -> None:
    recorder = Recorder()
    with StoreWriter(store) as writer:
        _block(store, writer)
        writer.submit(Write("a", events=[{"seq": 1}]), recorder.done_for("a1"))
        writer.submit(Write("b", events=[{"seq": 5}]), recorder.done_for("b-gap"))
        writer.submit(Write("a", events=[{"seq": 2}]), recorder.done_for("a2"))
        writer.submit(Write("c", summary={}), recorder.done_for("c"))
        store.hold.set()
        assert recorder.all_done.wait(WAIT)
        stats = writer.stats()
    outcomes = dict(recorder.results)
    assert [tag for tag, _ in recorder.results] == ["a1", "b-gap", "a2", "c"]
    assert outcomes["a1"] is None and outcomes["a2"] is None and outcomes["c"] is None
    assert isinstance(outcomes["b-gap"], StoreError)
    assert "execution b:" in str(outcomes["b-gap"])
    assert store.last_seq("a") == 2
    assert store.get_summary("c") == {}
    assert store.last_seq("b") == 0
    assert stats["failed_writes"] == 1


def test_a_lone_failing_write_is_reported_and_logged_without_callback(
    store: CountingStore, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = Recorder()
    with StoreWriter(store) as writer:
        writer.submit(Write("x", events=[{"seq": 9}]), recorder.done_for("x"))
        assert recorder.all_done.wait(WAIT)
        with caplog.at_level(logging.ERROR, logger="tamma_actors._writer"):
            writer.submit(Write("y", events=[{"seq": 9}]))
            writer.flush(timeout=WAIT)
    assert isinstance(recorder.results[0][1], StoreError)
    assert "store write for y failed" in caplog.text


def test_a_raising_callback_is_logged_and_the_thread_survives(
    store: CountingStore, caplog: pytest.LogCaptureFixture
) -> None:
    def explode(exc: BaseException | None) -> None:
        raise RuntimeError("callback bug")

    recorder = Recorder()
    with StoreWriter(store) as writer, caplog.at_level(logging.ERROR):
        writer.submit(Write("e", events=[{"seq": 1}]), explode)
        writer.submit(Write("e", events=[{"seq": 2}]), recorder.done_for("after"))
        assert recorder.all_done.wait(WAIT)
        assert writer.alive
    assert recorder.results == [("after", None)]
    assert "callback bug" in caplog.text


def test_flush_waits_for_everything_submitted_before_it(store: CountingStore) -> None:
    with StoreWriter(store) as writer:
        writer.flush(timeout=WAIT)  # nothing pending: returns at once
        for seq in range(1, 101):
            writer.submit(Write("e", events=[{"seq": seq}]))
        writer.flush()
        assert store.last_seq("e") == 100


def test_flush_times_out_while_the_store_is_stuck(store: CountingStore) -> None:
    with StoreWriter(store) as writer:
        _block(store, writer)
        with pytest.raises(StoreError, match="timed out"):
            writer.flush(timeout=0.05)
        store.hold.set()
        writer.flush(timeout=WAIT)


def test_flush_without_a_running_thread_raises_instead_of_hanging(store: CountingStore) -> None:
    writer = StoreWriter(store)
    writer.flush()  # nothing pending
    writer.submit(Write("e", summary={}))
    with pytest.raises(StoreError, match="not running"):
        writer.flush()
    writer.close()  # drains on this thread since it never started
    assert store.get_summary("e") == {}


def test_close_commits_what_is_queued_then_stops(store: CountingStore) -> None:
    writer = StoreWriter(store)
    writer.start()
    writer.start()  # idempotent
    _block(store, writer)
    for seq in range(1, 51):
        writer.submit(Write("e", events=[{"seq": seq}]))
    store.hold.set()
    writer.close(timeout=WAIT)
    assert not writer.alive
    assert store.last_seq("e") == 50
    writer.close()  # idempotent
    with pytest.raises(StoreClosed):
        writer.submit(Write("e", summary={}))
    with pytest.raises(StoreClosed):
        writer.start()
    writer.flush()  # nothing pending after close


def test_close_reports_a_writer_that_does_not_stop(store: CountingStore) -> None:
    writer = StoreWriter(store)
    writer.start()
    _block(store, writer)
    with pytest.raises(StoreError, match="did not stop"):
        writer.close(timeout=0.05)
    store.hold.set()
    writer.close(timeout=WAIT)
    assert not writer.alive
    assert store.get_summary("blocker") == {}


def test_close_from_a_callback_does_not_deadlock(store: CountingStore) -> None:
    writer = StoreWriter(store)
    closed = threading.Event()

    def close_now(exc: BaseException | None) -> None:
        writer.close()
        closed.set()

    writer.start()
    writer.submit(Write("e", summary={}), close_now)
    assert closed.wait(WAIT)
    writer.close(timeout=WAIT)
    assert not writer.alive


def test_a_store_failure_during_close_reaches_the_callbacks(store: CountingStore) -> None:
    recorder = Recorder()
    writer = StoreWriter(store)
    writer.submit(Write("e", summary={}), recorder.done_for("e"))
    store.close()
    writer.close()
    assert isinstance(recorder.results[0][1], StoreClosed)


def test_max_batch_must_be_positive(store: CountingStore) -> None:
    with pytest.raises(StoreError, match="max_batch"):
        StoreWriter(store, max_batch=0)


def test_stats_before_any_commit(store: CountingStore) -> None:
    writer = StoreWriter(store)
    assert writer.stats() == {
        "commits": 0, "writes": 0, "failed_writes": 0, "last_batch": 0, "average_batch": 0.0,
        "commit_ms_p50": None, "commit_ms_p99": None, "queued": 0, "alive": False,
        "transition_ms_p50": None, "transition_ms_p99": None,
    }  # fmt: skip
    writer.close()


def test_stats_time_each_write_from_submit_to_commit(store: CountingStore) -> None:
    with StoreWriter(store) as writer:
        for i in range(3):
            writer.submit(Write(f"e{i}", summary={}))
        writer.flush(timeout=5)
        stats = writer.stats()
    assert stats["writes"] == 3
    assert stats["transition_ms_p50"] is not None and stats["transition_ms_p99"] is not None
    # waiting for a commit includes the commit itself
    assert stats["transition_ms_p99"] >= stats["commit_ms_p50"] >= 0


def test_a_lost_writer_refuses_as_lost_even_once_closing(store: CountingStore) -> None:
    writer = StoreWriter(store)
    writer.start()
    writer._lose(StoreWriterLost("its process exited"))
    writer.close()
    with pytest.raises(StoreWriterLost, match="its process exited"):  # not a plain close
        writer.submit(Write("late", summary={}))
    healthy = StoreWriter(store)
    healthy.start()
    healthy.close()
    with pytest.raises(StoreClosed) as closed:
        healthy.submit(Write("late", summary={}))
    assert type(closed.value) is StoreClosed
