"""The store seam: the ``Store`` protocol, ``Write``, and ``MemoryStore`` (the twin).

Both stores derive from :class:`~tamma_actors._record_store.RecordStore` (re-exported
here), which holds every rule of the record layout (gap-free event sequences, snapshot
bounds, history counters, retention, verification) on top of a tiny ordered key-value
transaction interface. The twin and ``LmdbStore`` therefore differ only in how a
transaction is made, and the same conformance suite runs against both.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Collection, Iterator, Sequence
from typing import Any, Protocol, TypeVar

from tamma_actors._errors import StoreClosed, StoreError
from tamma_actors._keys import SUB_DATABASES
from tamma_actors._record_store import RecordStore
from tamma_actors._store_records import (
    ExecutionRecords,
    Record,
    RecordTxn,
    RecordView,
    Write,
)
from tamma_actors._store_verify import verify_records

__all__ = [
    "ExecutionRecords",
    "MemoryStore",
    "RecordStore",
    "RecordTxn",
    "RecordView",
    "Store",
    "Write",
    "verify_records",
]

T = TypeVar("T")


class Store(Protocol):
    """Durable execution state. Every failure is a StoreError subclass."""

    def commit(self, writes: Sequence[Write]) -> None: ...
    def get_summary(self, eid: str) -> Record | None: ...
    def iter_summaries(self, *, after: str | None = None) -> Iterator[Record]: ...
    def iter_execution_ids(self) -> Iterator[str]: ...
    def read(self, fn: Callable[[RecordView], T]) -> T: ...
    def load_snapshot(self, eid: str) -> Record | None: ...
    def read_events(
        self, eid: str, from_seq: int = 1, limit: int | None = None
    ) -> list[Record]: ...
    def read_execution(
        self, eid: str, *, unless: Collection[str] = ()
    ) -> ExecutionRecords | None: ...
    def read_executions(
        self, eids: Sequence[str], *, unless: Collection[str] = (), rest_alone: bool = False
    ) -> list[ExecutionRecords | StoreError | None]: ...
    def last_seq(self, eid: str) -> int: ...
    def read_history(self, eid: str) -> list[Record]: ...
    def last_history(self, eid: str) -> Record | None: ...
    def iter_last_history(self) -> Iterator[tuple[str, Record]]: ...
    def get_definition(self, digest: str) -> Record | None: ...
    def get_breakers(self) -> dict[str, Record]: ...
    def get_meta(self, key: str) -> Any: ...
    def delete_terminal_before(
        self, ts: float, terminal_statuses: Collection[str]
    ) -> list[str]: ...
    def stats(self) -> dict[str, Any]: ...
    def close(self) -> None: ...


class _Table:
    """A sorted in-memory table: a dict plus a sorted key list for range scans."""

    def __init__(self) -> None:
        self.rows: dict[bytes, bytes] = {}
        self.keys: list[bytes] = []

    def put(self, key: bytes, value: bytes) -> bytes | None:
        old = self.rows.get(key)
        if old is None:
            bisect.insort(self.keys, key)
        self.rows[key] = value
        return old

    def delete(self, key: bytes) -> bytes | None:
        old = self.rows.pop(key, None)
        if old is not None:
            del self.keys[bisect.bisect_left(self.keys, key)]
        return old


class _MemoryTxn:
    """Reads and writes on the tables, logging what to undo if the transaction fails."""

    def __init__(self, tables: dict[str, _Table], undo: list[tuple[str, bytes, bytes | None]]):
        self._tables = tables
        self._undo = undo

    def get(self, db: str, key: bytes) -> bytes | None:
        return self._tables[db].rows.get(key)

    def scan(
        self, db: str, start: bytes = b"", end: bytes = b"", *, reverse: bool = False
    ) -> Iterator[tuple[bytes, bytes]]:
        table = self._tables[db]
        lo = bisect.bisect_left(table.keys, start)
        hi = bisect.bisect_left(table.keys, end) if end else len(table.keys)
        keys = table.keys[lo:hi]  # a copy: writes during the scan cannot disturb it
        for key in reversed(keys) if reverse else keys:
            yield key, table.rows[key]

    def put(self, db: str, key: bytes, value: bytes) -> None:
        self._undo.append((db, key, self._tables[db].put(key, value)))

    def delete(self, db: str, key: bytes) -> None:
        old = self._tables[db].delete(key)
        if old is not None:
            self._undo.append((db, key, old))


class MemoryStore(RecordStore):
    """The in-memory twin of LmdbStore: same records, same rules, one lock."""

    def __init__(self) -> None:
        self._last_seqs = {}
        self._lock = threading.RLock()
        self._tables = {db: _Table() for db in SUB_DATABASES}
        self._closed = False
        self._transact(self._init_schema)

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed("the memory store is closed")

    def _view(self, fn: Callable[[RecordView], T]) -> T:
        with self._lock:
            self._check_open()
            return fn(_MemoryTxn(self._tables, []))

    def _transact(self, fn: Callable[[RecordTxn], T]) -> T:
        with self._lock:
            self._check_open()
            undo: list[tuple[str, bytes, bytes | None]] = []
            try:
                return fn(_MemoryTxn(self._tables, undo))
            except BaseException:
                for db, key, old in reversed(undo):
                    if old is None:
                        self._tables[db].delete(key)
                    else:
                        self._tables[db].put(key, old)
                raise

    def stats(self) -> dict[str, Any]:
        with self._lock:
            self._check_open()
            return {"entries": {db: len(table.rows) for db, table in self._tables.items()}}

    def close(self) -> None:
        with self._lock:
            self._closed = True
