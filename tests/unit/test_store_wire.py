"""The pipe to the store writer process: writes as stored bytes, checked on arrival, and
the writer process's answer to a batch (``_writer_main.handle``) on a real LMDB file."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import pytest

from tamma_actors import _writer_main as writer_main
from tamma_actors._codec import pack, unpack
from tamma_actors._errors import (
    StoreClosed,
    StoreCorrupted,
    StoreError,
    StoreFull,
    StoreUnwritable,
    StoreWriterLost,
)
from tamma_actors._lmdb_store import LmdbStore
from tamma_actors._store import MemoryStore, Write
from tamma_actors._store_wire import (
    error_from_wire,
    error_to_wire,
    write_from_wire,
    write_to_wire,
)
from tamma_actors._writer_main import handle, serve


def _full_write(eid: str = "e1") -> Write:
    return Write(
        eid,
        events=[{"seq": 1, "type": "a"}, {"seq": 2, "type": "b"}],
        summary={"id": eid, "status": "completed"},
        snapshot={"seq": 2, "state": {"x": [1, 2]}},
        history=[{"status": "running"}, {"status": "completed"}],
        definition=("sha-9", {"name": "wf", "steps": []}),
        breakers={"shell": {"state": "open"}},
    )


def _dump(store: MemoryStore, eid: str) -> dict[str, Any]:
    return {
        "summary": store.get_summary(eid),
        "snapshot": store.load_snapshot(eid),
        "events": store.read_events(eid),
        "history": store.read_history(eid),
        "definition": store.get_definition("sha-9"),
        "breakers": store.get_breakers(),
    }


@pytest.mark.parametrize("pre_encoded", [True, False])
def test_a_write_over_the_wire_stores_what_the_write_itself_stores(pre_encoded: bool) -> None:
    direct, via_wire = MemoryStore(), MemoryStore()
    direct.commit([_full_write()])
    original = _full_write().encode() if pre_encoded else _full_write()
    frame = unpack(pack(write_to_wire(original)))  # as it crosses the socket
    via_wire.commit([write_from_wire(frame)])
    assert _dump(via_wire, "e1") == _dump(direct, "e1")
    # the rules ran on the arrived write: a terminal summary dropped the cached seq
    assert via_wire.last_seq("e1") == 2


def test_a_deletion_and_a_breaker_only_write_cross_the_wire() -> None:
    store = MemoryStore()
    store.commit([_full_write()])
    store.commit([write_from_wire(write_to_wire(Write("e1", delete=True)))])
    store.commit([write_from_wire(write_to_wire(Write("", breakers={"b": {"n": 1}})))])
    assert store.get_summary("e1") is None and store.read_events("e1") == []
    assert store.get_breakers()["b"] == {"n": 1}


def test_a_record_that_cannot_be_stored_fails_on_the_node_side() -> None:
    with pytest.raises(StoreError, match="'schema' is reserved"):
        write_to_wire(Write("e", history=[{"schema": 1}]))
    with pytest.raises(StoreError, match="cannot be stored"):
        write_to_wire(Write("e", events=[{"seq": 1, "bad": {1, 2}}]))


@pytest.mark.parametrize(
    ("index", "value", "message"),
    [
        (0, 7, "execution id is not a string"),
        (1, [1], "one seq per event"),
        (2, ["not bytes"], "events is not a list of bytes"),
        (3, "text", "the summary is not bytes"),
        (5, 3, "the snapshot is not bytes"),
        (7, [b"ok", 1], "history is not a list of bytes"),
        (8, ["digest"], "the definition is not"),
        (9, {"b": "text"}, "breakers are not a map of bytes"),
    ],
)
def test_a_malformed_write_names_the_bad_field(index: int, value: Any, message: str) -> None:
    wire = write_to_wire(_full_write())
    wire[index] = value
    with pytest.raises(StoreError, match=message):
        write_from_wire(wire)


def test_a_frame_that_is_not_a_write_is_refused() -> None:
    for bad in (None, [], ["e1"] * 3, {"id": "e1"}):
        with pytest.raises(StoreError, match="not a list of 11 fields"):
            write_from_wire(bad)


@pytest.mark.parametrize(
    "cls", [StoreError, StoreClosed, StoreCorrupted, StoreFull, StoreUnwritable]
)
def test_store_errors_keep_their_class_across_the_wire(cls: type[StoreError]) -> None:
    back = error_from_wire(unpack(pack(error_to_wire(cls("why")))))
    assert type(back) is cls and str(back) == "why"


def test_other_errors_arrive_as_store_errors() -> None:
    codec = error_from_wire(["CodecError", "bad bytes"])
    assert type(codec) is StoreError and str(codec) == "bad bytes"
    assert type(error_from_wire(["KeyError", "x"])) is StoreError
    assert type(error_from_wire(["StoreWriterLost", "x"])) is StoreError  # not from a writer
    assert "unreadable outcome" in str(error_from_wire({"no": "list"}))
    assert issubclass(StoreWriterLost, StoreClosed)


# -- the writer process's side: one batch frame in, its answer out ---------------------------


@pytest.fixture
def lmdb_store(tmp_path: Path) -> Iterator[LmdbStore]:
    store = LmdbStore(tmp_path / "store", map_size=1 << 20)
    yield store
    store.close()


def _batch(number: int, *writes: Any) -> list[Any]:
    return [number, [w if isinstance(w, list) else write_to_wire(w) for w in writes]]


def test_a_good_batch_is_one_commit(lmdb_store: LmdbStore) -> None:
    def w(eid: str) -> Write:
        return Write(eid, events=[{"seq": 1}], summary={"status": "running"})

    number, commits, outcomes = handle(lmdb_store, _batch(3, w("a"), w("b")))
    assert number == 3 and outcomes is None
    assert len(commits) == 1 and commits[0][0] == 2 and commits[0][1] >= 0
    assert lmdb_store.last_seq("a") == 1 and lmdb_store.last_seq("b") == 1


def test_a_bad_write_fails_alone_and_the_others_commit(lmdb_store: LmdbStore) -> None:
    good = Write("g", events=[{"seq": 1}])
    gap = Write("h", events=[{"seq": 4}])
    malformed = write_to_wire(good)
    malformed[2] = ["x"]
    number, commits, outcomes = handle(lmdb_store, _batch(1, good, gap, malformed))
    assert number == 1
    assert outcomes[0] is None
    assert outcomes[1][0] == "StoreError" and "does not continue" in outcomes[1][1]
    assert outcomes[2][0] == "StoreError" and "not a list of bytes" in outcomes[2][1]
    # the two well-formed writes together (the gap fails it), then each; the malformed one
    # never reached LMDB
    assert [size for size, _ in commits] == [2, 1, 1]
    assert lmdb_store.last_seq("g") == 1 and lmdb_store.last_seq("h") == 0


def test_a_lone_failing_write_is_answered_with_its_error(lmdb_store: LmdbStore) -> None:
    _, commits, outcomes = handle(lmdb_store, _batch(2, Write("z", events=[{"seq": 9}])))
    assert len(commits) == 1 and outcomes is not None and outcomes[0][0] == "StoreError"


def test_a_frame_that_is_not_a_batch_is_refused(lmdb_store: LmdbStore) -> None:
    for bad in ("batch", [1], [1, "writes"], {"n": 1}):
        with pytest.raises(StoreError, match="malformed batch"):
            handle(lmdb_store, bad)


def test_a_node_gone_before_the_answer_ends_serving_with_the_batch_committed(
    lmdb_store: LmdbStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The node sends a batch and dies before reading the answer (SIGKILL): the writer
    process commits it, finds the socket closed when it answers and stops as at a close,
    not with an error; the next node reads the batch from the store."""
    node_end, writer_end = socket.socketpair()
    node, writer = Connection(node_end.detach()), Connection(writer_end.detach())
    gone = threading.Event()

    def handle_then_find_the_node_gone(store: LmdbStore, frame: Any) -> list[Any]:
        answer = handle(store, frame)
        assert gone.wait(10)
        return answer

    monkeypatch.setattr(writer_main, "handle", handle_then_find_the_node_gone)
    raised: list[BaseException] = []

    def run() -> None:
        try:
            serve(writer, lmdb_store)
        except BaseException as exc:  # the test asserts there is none
            raised.append(exc)

    served = threading.Thread(target=run)
    served.start()
    assert unpack(node.recv_bytes())[0] == "ready"
    node.send_bytes(pack([1, [write_to_wire(_full_write("gone"))]]))
    node.close()  # dies with its batch sent and the answer unread
    gone.set()
    served.join(10)
    assert not served.is_alive() and raised == []  # it returned, as at a close
    assert lmdb_store.get_summary("gone") == {"id": "gone", "status": "completed"}
