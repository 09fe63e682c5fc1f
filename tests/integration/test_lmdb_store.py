"""LmdbStore on a real LMDB environment under tmp_path."""

from __future__ import annotations

import errno
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeAlias

import lmdb
import pytest

from tamma_actors._errors import StoreCorrupted, StoreError, StoreFull, StoreUnwritable
from tamma_actors._keys import encode_record, event_key
from tamma_actors._lmdb_store import LmdbStore
from tamma_actors._store import Write
from tests.lmdb_damage import tear_main_database

pytestmark = pytest.mark.integration

KiB = 1024
MiB = 1024 * KiB


def _events(first: int, last: int, pad: int = 0) -> list[dict[str, Any]]:
    return [{"seq": s, "pad": "x" * pad} for s in range(first, last + 1)]


def _populate(store: LmdbStore) -> None:
    store.commit(
        [
            Write(
                "e1",
                events=_events(1, 3),
                summary={"id": "e1", "status": "running"},
                snapshot={"seq": 2, "state": {"a": 1}},
                history=[{"status": "pending"}, {"status": "running"}],
                definition=("sha-1", {"name": "wf"}),
                breakers={"shell": {"state": "open", "failures": 5}},
            ),
            Write("e2", events=_events(1, 1), summary={"id": "e2", "status": "pending"}),
        ]
    )


def _assert_populated(store: LmdbStore) -> None:
    assert store.get_summary("e1") == {"id": "e1", "status": "running"}
    assert [s["id"] for s in store.iter_summaries()] == ["e1", "e2"]
    assert store.load_snapshot("e1") == {"seq": 2, "state": {"a": 1}}
    assert [e["seq"] for e in store.read_events("e1")] == [1, 2, 3]
    assert [h["status"] for h in store.read_history("e1")] == ["pending", "running"]
    assert store.get_definition("sha-1") == {"name": "wf"}
    assert store.get_breakers() == {"shell": {"state": "open", "failures": 5}}
    assert store.last_seq("e2") == 1
    assert store.verify() == []


@pytest.mark.parametrize("durability", ["full", "relaxed"])
def test_reopen_after_close_keeps_everything(tmp_path: Path, durability: Any) -> None:
    with LmdbStore(tmp_path / "db", durability=durability) as store:
        _populate(store)
        assert store.stats()["durability"] == durability
    with LmdbStore(tmp_path / "db", durability=durability) as store:
        _assert_populated(store)
        assert store.get_meta("schema_version") == 1


def test_the_map_grows_instead_of_failing(tmp_path: Path) -> None:
    with LmdbStore(tmp_path / "db", map_size=64 * KiB) as store:
        start = store.stats()["map_size"]
        for batch in range(8):
            first = batch * 100 + 1
            store.commit([Write("big", events=_events(first, first + 99, pad=4 * KiB))])
        stats = store.stats()
        assert stats["map_size"] > start
        assert stats["used"] >= 3 * MiB
        assert store.last_seq("big") == 800
    with LmdbStore(tmp_path / "db", map_size=64 * KiB) as store:
        assert store.last_seq("big") == 800
        assert store.read_events("big", from_seq=800)[0]["pad"] == "x" * 4 * KiB
        store.commit([Write("big", events=_events(801, 801))])


_GROW_IT = """
import sys
from tamma_actors._lmdb_store import LmdbStore
from tamma_actors._store import Write
with LmdbStore(sys.argv[1], map_size=64 * 1024) as store:
    first = store.last_seq("big")
    for batch in range(int(sys.argv[2])):
        seqs = range(first + batch * 100 + 1, first + batch * 100 + 101)
        store.commit([Write("big", events=[{"seq": s, "pad": "x" * 4096} for s in seqs])])
"""


def test_every_read_adopts_a_map_another_process_grew(tmp_path: Path) -> None:
    # The node reads while its store writer process commits and grows the map: LMDB then
    # refuses the node's next read transaction until it maps the new size. Health's
    # stats used to fail on that ("MDB_MAP_RESIZED") until some other read had adopted it.
    with LmdbStore(tmp_path / "db", map_size=64 * KiB) as store:
        before = store.stats()["map_size"]
        _grow_elsewhere(tmp_path / "db", batches=1)
        grown = store.stats()["map_size"]
        _grow_elsewhere(tmp_path / "db", batches=3)
        stats = store.stats()
        assert before < grown < stats["map_size"] and stats["entries"]["events"] == 400
        assert store.last_seq("big") == 400


def _grow_elsewhere(path: Path, batches: int) -> None:
    """``batches`` of 100 events of 4 KiB committed by another process, from a map of
    64 KiB: it grows the map."""
    grow = [sys.executable, "-c", _GROW_IT, str(path), str(batches)]
    subprocess.run(grow, check=True, timeout=60, cwd=Path(__file__).parents[2])


def test_the_map_ceiling_is_store_full_and_writes_nothing(tmp_path: Path) -> None:
    with LmdbStore(tmp_path / "db", map_size=64 * KiB, max_map_size=512 * KiB) as store:
        store.commit([Write("e", events=_events(1, 1))])
        with pytest.raises(StoreFull, match="ceiling"):
            store.commit([Write("e", events=_events(2, 400, pad=4 * KiB))])
        assert store.last_seq("e") == 1
        assert store.stats()["map_size"] == 512 * KiB
        store.commit([Write("e", events=_events(2, 2))])  # still usable afterwards
        assert store.last_seq("e") == 2


def test_max_map_size_below_map_size_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="below"):
        LmdbStore(tmp_path / "db", map_size=MiB, max_map_size=KiB)


def test_a_path_that_is_a_file_cannot_be_opened(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(StoreError, match="file"):
        LmdbStore(tmp_path / "file")
    with pytest.raises(StoreError, match="cannot create"):
        LmdbStore(tmp_path / "file" / "db")
    (tmp_path / "odd" / "data.mdb").mkdir(parents=True)  # LMDB itself refuses this one
    with pytest.raises(StoreError, match="cannot open"):
        LmdbStore(tmp_path / "odd")


Tamper: TypeAlias = "Callable[[lmdb.Transaction[bytes], Callable[[bytes], lmdb._Database]], object]"


def _raw(path: Path, fn: Tamper) -> None:
    """Tamper with a closed store through a plain lmdb handle."""
    with lmdb.open(str(path), max_dbs=16) as env, env.begin(write=True) as txn:
        fn(txn, lambda name: env.open_db(name, txn=txn))


def _flip_a_byte(txn: lmdb.Transaction[bytes], db: lmdb._Database, key: bytes) -> None:
    value = bytearray(txn.get(key, db=db) or b"")
    value[len(value) // 2] ^= 0x40
    txn.put(key, bytes(value), db=db)


def test_a_corrupted_value_is_reported_with_its_key(tmp_path: Path) -> None:
    path = tmp_path / "db"
    with LmdbStore(path) as store:
        _populate(store)
    bad_event = event_key("e1", 2)
    _raw(path, lambda txn, db: _flip_a_byte(txn, db(b"events"), bad_event))
    _raw(path, lambda txn, db: _flip_a_byte(txn, db(b"executions"), b"e2"))
    with LmdbStore(path) as store:
        with pytest.raises(StoreCorrupted, match=bad_event.hex()):
            store.read_events("e1")
        assert [e["seq"] for e in store.read_events("e1", from_seq=3)] == [3]
        with pytest.raises(StoreCorrupted, match=b"e2".hex()):
            store.get_summary("e2")
        with pytest.raises(StoreCorrupted, match=b"e2".hex()):
            list(store.iter_summaries())
        problems = store.verify()
    assert len(problems) == 2
    assert any(f"events/{bad_event.hex()}" in p for p in problems)
    assert any(f"executions/{b'e2'.hex()}" in p for p in problems)


def test_verify_finds_gaps_bad_keys_and_snapshots_beyond_the_events(tmp_path: Path) -> None:
    path = tmp_path / "db"
    with LmdbStore(path) as store:
        _populate(store)
        store.commit([Write("e3", events=_events(1, 2), snapshot={"seq": 2})])

    def tamper(txn: lmdb.Transaction[bytes], db: Callable[[bytes], lmdb._Database]) -> None:
        events = db(b"events")
        txn.delete(event_key("e1", 2), db=events)  # a gap in e1
        txn.delete(event_key("e3", 2), db=events)  # e3's snapshot now points past its events
        txn.put(b"junk", encode_record({}), db=events)  # not an id/seq key
        txn.put(event_key("e2", 2), encode_record({"seq": 7}), db=events)  # wrong inner seq
        txn.put(b"e4", encode_record({"no": "seq"}), db=db(b"snapshots"))

    _raw(path, tamper)
    with LmdbStore(path) as store:
        problems = store.verify()
    text = "\n".join(problems)
    assert "execution e1: events jump from seq 1 to 3" in text
    assert "execution e3: snapshot seq 2 is beyond the last event (1)" in text
    assert b"junk".hex() in text
    assert "execution e2: event 2 carries seq 7" in text
    assert "execution e4: snapshot seq None" in text
    assert len(problems) == 5


def test_a_newer_schema_is_refused_on_open(tmp_path: Path) -> None:
    path = tmp_path / "db"
    LmdbStore(path).close()
    _raw(
        path,
        lambda txn, db: txn.put(b"schema_version", encode_record({"value": 99}), db=db(b"meta")),
    )
    with pytest.raises(StoreError, match="schema 99 is newer"):
        LmdbStore(path)


def test_readers_stay_consistent_while_the_writer_commits_and_grows_the_map(
    tmp_path: Path,
) -> None:
    stop = threading.Event()
    errors: list[BaseException] = []
    reads = [0] * 4
    with LmdbStore(tmp_path / "db", map_size=64 * KiB) as store:

        def read(slot: int) -> None:
            try:
                seen = 0
                while not stop.is_set() or reads[slot] == 0:
                    events = store.read_events("e")
                    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
                    assert len(events) >= seen  # never goes back
                    seen = len(events)
                    assert store.last_seq("e") >= seen
                    reads[slot] += 1
            except BaseException as exc:
                errors.append(exc)

        readers = [threading.Thread(target=read, args=(i,)) for i in range(4)]
        for t in readers:
            t.start()
        try:
            for seq in range(1, 301):
                store.commit([Write("e", events=_events(seq, seq, pad=2 * KiB))])
        finally:
            stop.set()
            for t in readers:
                t.join(timeout=30)
        assert not any(t.is_alive() for t in readers)
        assert errors == []
        assert all(reads)
        assert store.stats()["map_size"] > 64 * KiB


class _FailingEnv:
    """Wraps the real environment so that chosen calls raise; ``begin`` is split by mode."""

    def __init__(self, env: lmdb.Environment, **failures: lmdb.Error) -> None:
        self._env = env
        self._failures = failures

    def begin(self, write: bool = False, **kwargs: Any) -> Any:
        exc = self._failures.get("begin_write" if write else "begin_read")
        if exc is not None:
            raise exc
        return self._env.begin(write=write, **kwargs)

    def __getattr__(self, name: str) -> Any:
        if name in self._failures:
            exc = self._failures[name]

            def fail(*args: Any, **kwargs: Any) -> None:
                raise exc

            return fail
        return getattr(self._env, name)


@pytest.mark.parametrize(
    ("exc", "expected", "match"),
    [
        (lmdb.DiskError("mdb_txn_commit", 28), StoreFull, "no space left"),
        (lmdb.Error("mdb_txn_commit", errno.EFBIG), StoreFull, "file too large"),
        (lmdb.Error("mdb_txn_commit", errno.EDQUOT), StoreFull, "quota"),
        (lmdb.Error("mdb_txn_commit", errno.EIO), StoreUnwritable, "refused the write.*I/O"),
        (lmdb.Error("mdb_txn_commit", errno.EROFS), StoreUnwritable, "read-only"),
        (lmdb.CorruptedError("mdb_get", -30796), StoreCorrupted, "damaged"),
        (lmdb.ReadersFullError("mdb_txn_begin", -30790), StoreError, "commit to"),
    ],
)
def test_lmdb_errors_are_translated_at_the_seam(
    tmp_path: Path, exc: lmdb.Error, expected: type[StoreError], match: str
) -> None:
    with LmdbStore(tmp_path / "db") as store:
        store.commit([Write("e", events=_events(1, 1))])
        real = store._env
        store._env = _FailingEnv(real, begin_write=exc)  # type: ignore[assignment]
        try:
            with pytest.raises(expected, match=match) as info:
                store.commit([Write("e", events=_events(2, 2))])
            assert info.value.__cause__ is exc
        finally:
            store._env = real
        assert store.last_seq("e") == 1


def test_read_errors_are_translated(tmp_path: Path) -> None:
    with LmdbStore(tmp_path / "db") as store:
        real = store._env
        exc = lmdb.ReadersFullError("mdb_txn_begin", -30790)
        store._env = _FailingEnv(real, begin_read=exc)  # type: ignore[assignment]
        try:
            with pytest.raises(StoreError, match="read from") as info:
                store.get_summary("e")
            assert info.value.__cause__ is exc
        finally:
            store._env = real


def test_a_failed_map_growth_is_a_store_error_and_writes_nothing(tmp_path: Path) -> None:
    with LmdbStore(tmp_path / "db") as store:
        real = store._env
        store._env = _FailingEnv(  # type: ignore[assignment]
            real,
            begin_write=lmdb.MapFullError("mdb_put", -30792),
            set_mapsize=lmdb.Error("mdb_env_set_mapsize", 12),
        )
        try:
            with pytest.raises(StoreError, match="cannot grow"):
                store.commit([Write("e", events=_events(1, 1))])
        finally:
            store._env = real
        assert store.last_seq("e") == 0


def test_a_failed_final_sync_still_closes(tmp_path: Path) -> None:
    store = LmdbStore(tmp_path / "db", durability="relaxed")
    real = store._env
    store._env = _FailingEnv(real, sync=lmdb.Error("mdb_env_sync", 5))  # type: ignore[assignment]
    with pytest.raises(StoreError, match="final sync"):
        store.close()
    store.close()  # idempotent even after a failed close
    with pytest.raises(lmdb.Error, match="closed"):
        real.begin()  # the environment really was closed


def test_a_store_whose_sub_database_names_are_taken_cannot_open(tmp_path: Path) -> None:
    path = tmp_path / "db"
    with lmdb.open(str(path)) as env, env.begin(write=True) as txn:
        txn.put(b"events", b"a plain key, not a sub-database")
    with pytest.raises(StoreError, match="sub-databases"):
        LmdbStore(path)


def test_a_main_database_of_other_keys_is_refused_not_given_empty_databases(
    tmp_path: Path,
) -> None:
    """What a copy of a live data.mdb looks like: the main database's root page holds a
    page of the events. LMDB created the sub-databases beside those keys, and a node on
    the copy served an empty store."""
    path = tmp_path / "db"
    with LmdbStore(path) as store:
        _populate(store)
    file = path / "data.mdb"
    tear_main_database(file)
    torn = file.read_bytes()
    with pytest.raises(StoreCorrupted, match="list of databases holds 4 key") as info:
        LmdbStore(path)
    assert str(info.value).startswith(f"the LMDB file {file} is damaged: ")
    assert file.read_bytes() == torn  # nothing was created in it
