"""The Store conformance suite: every test runs against MemoryStore and LmdbStore."""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tamma_actors._errors import StoreClosed, StoreError
from tamma_actors._keys import EVENTS, event_key
from tamma_actors._lmdb_store import LmdbStore
from tamma_actors._store import MemoryStore, RecordStore, Write

Factory = Callable[[], RecordStore]


def _events(first: int, last: int, **extra: Any) -> list[dict[str, Any]]:
    return [{"seq": s, "type": "step.completed", **extra} for s in range(first, last + 1)]


@pytest.fixture(params=["memory", "lmdb"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Factory]:
    opened: list[RecordStore] = []

    def make() -> RecordStore:
        store: RecordStore
        if request.param == "memory":
            store = MemoryStore()
        else:
            store = LmdbStore(tmp_path / f"db{len(opened)}", map_size=256 * 1024)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


@pytest.fixture
def store(make_store: Factory) -> RecordStore:
    return make_store()


def test_an_empty_store(store: RecordStore) -> None:
    assert store.get_summary("e") is None
    assert store.load_snapshot("e") is None
    assert store.last_seq("e") == 0
    assert store.read_events("e") == []
    assert store.read_history("e") == []
    assert store.get_definition("d") is None
    assert store.get_breakers() == {}
    assert list(store.iter_summaries()) == []
    assert store.get_meta("schema_version") == 1
    assert store.get_meta("nothing") is None
    assert store.verify() == []
    assert store.stats()["entries"]["meta"] == 1


def test_events_are_appended_gap_free_and_read_back(store: RecordStore) -> None:
    store.commit([Write("e", events=_events(1, 3))])
    store.commit([Write("e", events=_events(4, 5))])
    assert store.last_seq("e") == 5
    assert [e["seq"] for e in store.read_events("e")] == [1, 2, 3, 4, 5]
    assert [e["seq"] for e in store.read_events("e", from_seq=3)] == [3, 4, 5]
    assert [e["seq"] for e in store.read_events("e", from_seq=2, limit=2)] == [2, 3]
    assert [e["seq"] for e in store.read_events("e", from_seq=0)] == [1, 2, 3, 4, 5]
    assert store.read_events("e", from_seq=6) == []
    assert store.read_events("e", limit=0) == []
    assert store.read_events("e")[0] == {"seq": 1, "type": "step.completed"}


def test_writes_in_one_batch_continue_each_other(store: RecordStore) -> None:
    store.commit([Write("e", events=_events(1, 2)), Write("e", events=_events(3, 3))])
    assert store.last_seq("e") == 3


@pytest.mark.parametrize(
    "bad",
    [[{"seq": 4}], [{"seq": 2}], [{"seq": 3}, {"seq": 3}], [{"seq": 3}, {"seq": 5}],
     [{"no": "seq"}], [{"seq": True}], [{"seq": "4"}], [{"seq": 0}]],
)  # fmt: skip
def test_a_gap_or_repeat_is_refused_naming_the_execution(
    store: RecordStore, bad: list[dict[str, Any]]
) -> None:
    store.commit([Write("exec-7", events=_events(1, 2))])
    with pytest.raises(StoreError, match="exec-7"):
        store.commit([Write("exec-7", events=bad)])
    assert store.last_seq("exec-7") == 2


def test_a_batch_is_all_or_nothing(store: RecordStore) -> None:
    store.commit([Write("a", events=_events(1, 1), summary={"status": "running"})])
    batch = [
        Write("a", delete=True),
        Write("b", events=_events(1, 2), summary={"status": "pending"}, breakers={"p": {}}),
        Write("c", events=[{"seq": 9}]),
    ]
    with pytest.raises(StoreError, match="c"):
        store.commit(batch)
    assert store.get_summary("a") == {"status": "running"}
    assert store.last_seq("a") == 1
    assert store.get_summary("b") is None
    assert store.last_seq("b") == 0
    assert store.get_breakers() == {}


def test_the_sequence_is_enforced_across_failed_batches_terminal_states_and_deletion(
    store: RecordStore,
) -> None:
    """The store remembers each live execution's last seq instead of scanning for it;
    what it remembers must follow what was committed, and only that."""
    store.commit([Write("e", events=_events(1, 2), summary={"status": "running"})])
    with pytest.raises(StoreError, match="f"):
        store.commit([Write("e", events=_events(3, 3)), Write("f", events=[{"seq": 2}])])
    with pytest.raises(StoreError, match="last seq 2"):
        store.commit([Write("e", events=_events(4, 4))])  # 3 was never committed
    store.commit([Write("e", events=_events(3, 3))])
    store.commit([Write("e", events=_events(4, 4), summary={"status": "completed", "end_time": 1})])
    with pytest.raises(StoreError, match="last seq 4"):
        store.commit([Write("e", events=_events(6, 6))])
    store.commit([Write("e", events=_events(5, 5), summary={"status": "failed", "end_time": 1})])
    assert store.delete_terminal_before(100.0, {"failed"}) == ["e"]
    store.commit([Write("e", events=_events(1, 1))])  # a new life starts again at 1
    assert [ev["seq"] for ev in store.read_events("e")] == [1]


def test_a_write_encoded_before_submit_stores_the_same_records(store: RecordStore) -> None:
    def write(eid: str) -> Write:
        return Write(
            eid,
            events=_events(1, 2, step="a"),
            summary={"status": "running"},
            snapshot={"seq": 2, "x": [1, 2]},
        )

    encoded = write("pre").encode()
    assert encoded.encoded is not None and len(encoded.encoded.events) == 2
    store.commit([encoded, write("late")])
    for eid in ("pre", "late"):
        assert store.read_events(eid) == _events(1, 2, step="a")
        assert store.get_summary(eid) == {"status": "running"}
        assert store.load_snapshot(eid) == {"seq": 2, "x": [1, 2]}
    with pytest.raises(StoreError, match="last seq 2"):  # encoded or not, the rules hold
        store.commit([Write("pre", events=_events(4, 4)).encode()])
    bad = Write("bad", events=[{"seq": 1, "x": object()}]).encode()
    assert bad.encoded is None  # left to the writer, whose commit fails as before
    with pytest.raises(StoreError, match="cannot be stored"):
        store.commit([bad])
    assert store.last_seq("bad") == 0


def test_read_execution_gives_the_snapshot_and_only_the_events_after_it(
    store: RecordStore,
) -> None:
    assert store.read_execution("e") is None
    store.commit([Write("e", events=_events(1, 3), summary={"status": "running"})])
    records = store.read_execution("e")
    assert records is not None and records.snapshot is None
    assert [ev["seq"] for ev in records.events] == [1, 2, 3]
    store.commit([Write("e", events=_events(4, 5), snapshot={"seq": 4, "s": 1})])
    records = store.read_execution("e")
    assert records is not None
    assert records.summary == {"status": "running"} and records.snapshot == {"seq": 4, "s": 1}
    assert [ev["seq"] for ev in records.events] == [5]
    store.commit([Write("e", summary={"status": "completed"})])
    assert store.read_execution("e", unless={"completed"}) == ({"status": "completed"}, None, [])


def test_read_executions_reads_many_and_names_a_damaged_one_in_its_place(
    store: RecordStore,
) -> None:
    store.commit(
        [
            Write("live", events=_events(1, 2), summary={"status": "running"}),
            Write("done", events=_events(1, 3), summary={"status": "completed"}),
            Write("bad", events=_events(1, 1), summary={"status": "running"}),
        ]
    )
    store._transact(lambda txn: txn.put(EVENTS, event_key("bad", 1), b"\0\0\0\0junk"))
    live, done, missing, bad = store.read_executions(
        ["live", "done", "missing", "bad"], unless={"completed"}
    )
    assert live == store.read_execution("live") and live is not None
    assert [ev["seq"] for ev in live.events] == [1, 2]
    assert done == ({"status": "completed"}, None, [])
    assert missing is None
    assert isinstance(bad, StoreError) and event_key("bad", 1).hex() in str(bad)


def test_an_unencodable_record_is_a_store_error_and_writes_nothing(store: RecordStore) -> None:
    with pytest.raises(StoreError, match="cannot be stored"):
        store.commit([Write("e", events=[{"seq": 1}, {"seq": 2, "x": object()}])])
    assert store.last_seq("e") == 0


def test_summaries_are_replaced_and_listed_in_id_order(store: RecordStore) -> None:
    for eid in ["c", "a", "b"]:
        store.commit([Write(eid, summary={"id": eid, "v": 1})])
    store.commit([Write("a", summary={"id": "a", "v": 2})])
    assert store.get_summary("a") == {"id": "a", "v": 2}
    assert [s["id"] for s in store.iter_summaries()] == ["a", "b", "c"]
    assert [s["id"] for s in store.iter_summaries(after="a")] == ["b", "c"]
    assert [s["id"] for s in store.iter_summaries(after="bb")] == ["c"]
    assert list(store.iter_summaries(after="c")) == []


def test_iterating_many_summaries_crosses_pages(store: RecordStore) -> None:
    ids = [f"{i:05d}" for i in range(600)]
    store.commit([Write(eid, summary={"id": eid}) for eid in ids])
    assert [s["id"] for s in store.iter_summaries()] == ids
    assert [s["id"] for s in store.iter_summaries(after=ids[255])] == ids[256:]


def test_snapshot_carries_a_seq_within_the_events(store: RecordStore) -> None:
    store.commit([Write("e", events=_events(1, 3), snapshot={"seq": 3, "state": "x"})])
    assert store.load_snapshot("e") == {"seq": 3, "state": "x"}
    store.commit([Write("e", snapshot={"seq": 2, "state": "y"})])
    assert store.load_snapshot("e") == {"seq": 2, "state": "y"}
    store.commit([Write("f", snapshot={"seq": 0})])
    for bad in ({"seq": 4}, {"state": "no seq"}, {"seq": -1}, {"seq": 1.0}):
        with pytest.raises(StoreError, match="snapshot"):
            store.commit([Write("e", snapshot=bad)])
    assert store.load_snapshot("e") == {"seq": 2, "state": "y"}


def test_history_is_appended_in_order(store: RecordStore) -> None:
    store.commit([Write("e", history=[{"status": "pending"}, {"status": "running"}])])
    store.commit([Write("e", history=[{"status": "completed"}])])
    store.commit([Write("other", history=[{"status": "pending"}])])
    assert [h["status"] for h in store.read_history("e")] == ["pending", "running", "completed"]
    assert store.read_history("other") == [{"status": "pending"}]


def test_latest_history_per_execution(store: RecordStore) -> None:
    assert store.last_history("a") is None
    assert list(store.iter_last_history()) == []
    store.commit([Write("b", history=[{"n": 1}, {"n": 2}, {"n": 3}])])
    store.commit([Write("a", history=[{"n": 1}]), Write("ab", history=[{"n": 7}, {"n": 8}])])
    store.commit([Write("c", summary={})])  # no history: not listed
    assert store.last_history("b") == {"n": 3}
    assert store.last_history("c") is None
    assert list(store.iter_last_history()) == [("a", {"n": 1}), ("ab", {"n": 8}), ("b", {"n": 3})]


def test_definitions_are_put_only_when_absent(store: RecordStore) -> None:
    store.commit([Write("e", definition=("sha1", {"name": "first"}))])
    store.commit([Write("f", definition=("sha1", {"name": "second"}))])
    assert store.get_definition("sha1") == {"name": "first"}


def test_breakers_are_replaced_per_plugin(store: RecordStore) -> None:
    store.commit([Write("e", breakers={"shell": {"state": "open"}, "echo": {"state": "closed"}})])
    store.commit([Write("e", breakers={"shell": {"state": "half_open"}})])
    assert store.get_breakers() == {"shell": {"state": "half_open"}, "echo": {"state": "closed"}}


def _full_execution(eid: str) -> Write:
    return Write(
        eid,
        events=_events(1, 3),
        summary={"id": eid, "status": "completed", "end_time": 100.0},
        snapshot={"seq": 3},
        history=[{"status": "completed"}],
    )


def test_delete_removes_every_record_of_that_execution_only(store: RecordStore) -> None:
    store.commit([_full_execution("a"), _full_execution("ab"), _full_execution("b")])
    store.commit([Write("a", delete=True, definition=("d", {}), breakers={"p": {}})])
    assert store.get_summary("a") is None
    assert store.load_snapshot("a") is None
    assert store.read_events("a") == []
    assert store.read_history("a") == []
    for kept in ("ab", "b"):
        assert store.last_seq(kept) == 3
        assert len(store.read_history(kept)) == 1
        assert store.get_summary(kept) is not None
    assert store.get_definition("d") == {}
    assert store.get_breakers() == {"p": {}}


def test_delete_then_recreate_in_one_write_starts_from_seq_1(store: RecordStore) -> None:
    store.commit([_full_execution("a")])
    store.commit([Write("a", delete=True, events=_events(1, 1), summary={"new": True})])
    assert store.last_seq("a") == 1
    assert store.get_summary("a") == {"new": True}
    assert store.load_snapshot("a") is None


def test_delete_terminal_before_removes_only_old_terminal_executions(store: RecordStore) -> None:
    def summary(status: str, end: Any) -> dict[str, Any]:
        return {"status": status, "end_time": end}

    store.commit(
        [
            Write("old-done", events=_events(1, 2), summary=summary("completed", 10.0)),
            Write("old-failed", history=[{}], summary=summary("failed", 20)),
            Write("new-done", summary=summary("completed", 500.0)),
            Write("old-running", summary=summary("running", 10.0)),
            Write("no-end", summary=summary("aborted", None)),
        ]
    )
    removed = store.delete_terminal_before(100.0, {"completed", "failed", "aborted"})
    assert sorted(removed) == ["old-done", "old-failed"]
    assert store.read_events("old-done") == []
    assert store.read_history("old-failed") == []
    assert [s["status"] for s in store.iter_summaries()] == ["completed", "aborted", "running"]
    assert store.delete_terminal_before(100.0, {"completed"}) == []


def test_stats_count_entries_per_sub_database(store: RecordStore) -> None:
    store.commit([_full_execution("a")])
    entries = store.stats()["entries"]
    assert entries == {
        "executions": 1, "snapshots": 1, "events": 3, "history": 1,
        "definitions": 0, "breakers": 0, "meta": 1,
    }  # fmt: skip


def test_a_healthy_store_verifies_clean(store: RecordStore) -> None:
    store.commit([_full_execution("a"), _full_execution("b")])
    assert store.verify() == []


def test_range_scans_of_the_engine(store: RecordStore) -> None:
    store.commit([Write(eid, summary={}) for eid in ["a", "b", "c", "d"]])

    def keys(start: bytes = b"", end: bytes = b"", reverse: bool = False) -> list[bytes]:
        return store._view(
            lambda v: [k for k, _ in v.scan("executions", start, end, reverse=reverse)]
        )

    assert keys() == [b"a", b"b", b"c", b"d"]
    assert keys(b"b") == [b"b", b"c", b"d"]
    assert keys(b"b", b"d") == [b"b", b"c"]
    assert keys(b"bb", b"zz") == [b"c", b"d"]
    assert keys(reverse=True) == [b"d", b"c", b"b", b"a"]
    assert keys(b"b", b"d", reverse=True) == [b"c", b"b"]
    assert keys(b"a", b"cc", reverse=True) == [b"c", b"b", b"a"]
    assert keys(b"x") == []
    assert keys(b"x", reverse=True) == []
    assert keys(b"", b"a", reverse=True) == []


def test_ids_with_nul_are_refused(store: RecordStore) -> None:
    with pytest.raises(StoreError, match="NUL"):
        store.commit([Write("a\x00b", summary={})])
    with pytest.raises(StoreError, match="NUL"):
        store.get_summary("a\x00")


def test_concurrent_commits_from_threads_all_land(store: RecordStore) -> None:
    errors: list[BaseException] = []
    go = threading.Barrier(4)

    def run(worker: int) -> None:
        try:
            go.wait(timeout=10)
            for seq in range(1, 51):
                store.commit([Write(f"t{worker}", events=[{"seq": seq}])])
                assert store.last_seq(f"t{worker}") == seq
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert errors == []
    assert [store.last_seq(f"t{i}") for i in range(4)] == [50] * 4


def test_close_is_idempotent_and_use_after_close_raises(make_store: Factory) -> None:
    store = make_store()
    with store:
        store.commit([Write("e", events=_events(1, 1))])
    store.close()
    calls: list[Callable[[], object]] = [
        lambda: store.commit([]),
        lambda: store.get_summary("e"),
        lambda: list(store.iter_summaries()),
        lambda: store.load_snapshot("e"),
        lambda: store.read_events("e"),
        lambda: store.last_seq("e"),
        lambda: store.read_history("e"),
        lambda: store.get_definition("d"),
        store.get_breakers,
        lambda: store.get_meta("schema_version"),
        lambda: store.delete_terminal_before(0, ()),
        store.stats,
        store.verify,
    ]
    for call in calls:
        with pytest.raises(StoreClosed):
            call()


batches = st.lists(
    st.lists(
        st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(0, 3), st.booleans()),
        min_size=1,
        max_size=4,
    ),
    max_size=8,
)


def _check_against_model(store: RecordStore, plan: list[list[tuple[str, int, bool]]]) -> None:
    """Each item: (eid, events to append, whether to break the sequence)."""
    model: dict[str, int] = {}
    for batch in plan:
        staged = dict(model)
        writes = []
        broken = False
        for eid, count, gap in batch:
            first = staged.get(eid, 0) + 1 + (1 if gap and count else 0)
            broken = broken or (gap and count > 0)
            writes.append(Write(eid, events=_events(first, first + count - 1)))
            staged[eid] = first + count - 1 if count else staged.get(eid, 0)
        if broken:
            with pytest.raises(StoreError):
                store.commit(writes)
        else:
            store.commit(writes)
            model = staged
        for eid in "abc":
            assert store.last_seq(eid) == model.get(eid, 0)
            assert [e["seq"] for e in store.read_events(eid)] == list(
                range(1, model.get(eid, 0) + 1)
            )


@given(batches)
@settings(max_examples=60, deadline=None)
def test_memory_store_matches_the_sequence_model(plan: list[list[tuple[str, int, bool]]]) -> None:
    with MemoryStore() as store:
        _check_against_model(store, plan)


@given(batches)
@settings(max_examples=25, deadline=None)
def test_lmdb_store_matches_the_sequence_model(plan: list[list[tuple[str, int, bool]]]) -> None:
    with tempfile.TemporaryDirectory() as tmp, LmdbStore(Path(tmp) / "db") as store:
        _check_against_model(store, plan)
