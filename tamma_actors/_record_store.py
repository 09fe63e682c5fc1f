"""``RecordStore``: the store's semantics on an ordered key-value transaction interface.

``MemoryStore`` (the twin, in :mod:`tamma_actors._store`) and ``LmdbStore`` both derive
from it and only supply transactions (``_view``, ``_transact``), ``stats`` and ``close``;
every rule of the record layout is here or beneath it: commits of ``Write`` batches (the
write rules are in ``_store_records.py``), paged reads of summaries and execution ids,
whole executions for recovery (``read_execution(s)``), history, definitions, breakers,
retention, and the record checks (``_store_verify.py``). So the twin and ``LmdbStore``
differ only in how a transaction is made, and the same conformance suite runs against both.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterator, Sequence
from functools import partial
from itertools import islice
from types import TracebackType
from typing import Any, Self, TypeVar

from tamma_actors._errors import StoreError
from tamma_actors._keys import (
    BREAKERS,
    DEFINITIONS,
    EVENTS,
    EXECUTIONS,
    HISTORY,
    META,
    SCHEMA_VERSION,
    SEPARATOR,
    SNAPSHOTS,
    decode_record,
    encode_record,
    execution_prefix,
    id_key,
    parse_event_key,
    parse_id_key,
    prefix_end,
)
from tamma_actors._status import TERMINAL_EXECUTION
from tamma_actors._store_records import (
    ExecutionRecords,
    Record,
    RecordTxn,
    RecordView,
    Write,
    apply_write,
    decoded,
    delete_execution,
    event_range,
    last_counter,
    read_execution_records,
)
from tamma_actors._store_verify import verify_records

__all__ = ["RecordStore"]

T = TypeVar("T")
_PAGE = 256  # summaries read per short read transaction
SCHEMA_KEY = b"schema_version"
WRITER_KEY = b"writer"  # the process that writes now (see ``mark_writer``)


def _page(view: RecordView, start: bytes) -> list[tuple[bytes, bytes]]:
    return list(islice(view.scan(EXECUTIONS, start), _PAGE))


def _key_page(view: RecordView, start: bytes) -> list[bytes]:
    return [key for key, _ in islice(view.scan(EXECUTIONS, start), _PAGE)]


def _next_last_history(view: RecordView, start: bytes) -> tuple[bytes, bytes] | None:
    """The last history record of the first execution at or after ``start``."""
    for first, _ in view.scan(HISTORY, start):
        prefix = execution_prefix(parse_event_key(first)[0])
        return next(view.scan(HISTORY, prefix, prefix_end(prefix), reverse=True))
    return None


_TERMINAL = frozenset(status.value for status in TERMINAL_EXECUTION)


class RecordStore(ABC):
    """Store semantics on an ordered key-value engine; subclasses supply transactions."""

    @abstractmethod
    def _view(self, fn: Callable[[RecordView], T]) -> T:
        """Run ``fn`` in a short read transaction (raises StoreClosed after close)."""

    @abstractmethod
    def _transact(self, fn: Callable[[RecordTxn], T]) -> T:
        """Run ``fn`` in one write transaction: committed if it returns, else undone."""

    @abstractmethod
    def stats(self) -> dict[str, Any]:
        """Entries per sub-database, plus engine figures (map size and use for LMDB)."""

    @abstractmethod
    def close(self) -> None:
        """Release the engine; idempotent. Any later use raises StoreClosed."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _init_schema(self, txn: RecordTxn) -> None:
        stored = decoded(txn, META, SCHEMA_KEY)
        if stored is None:
            txn.put(META, SCHEMA_KEY, encode_record({"value": SCHEMA_VERSION}))
        elif not isinstance(stored.get("value"), int) or stored["value"] > SCHEMA_VERSION:
            raise StoreError(
                f"store schema {stored.get('value')!r} is newer than this version "
                f"({SCHEMA_VERSION}); upgrade tamma_actors"
            )

    def mark_writer(self, pid: int, at: float) -> None:
        """Record, in a commit of its own, which process writes from now on. In LMDB a
        writer killed after its commit but before publishing it to the readers of other
        processes (the lock file's last transaction id) leaves them reading the commit
        before, until the next commit; a new writer process makes this one before it says
        it is ready, so what the dead one committed is what everyone reads."""
        record = encode_record({"pid": pid, "at": at})
        self._transact(lambda txn: txn.put(META, WRITER_KEY, record))

    # The last event seq of executions written since the store opened, so a commit does
    # not scan for it. Kept for live executions only: a terminal summary drops its entry,
    # and so does any deletion (retention deletes only terminal executions).
    _last_seqs: dict[str, int]

    def commit(self, writes: Sequence[Write]) -> None:
        """Apply every write in one transaction, all or nothing."""
        batch = list(writes)
        known = self._last_seqs

        def apply(txn: RecordTxn) -> dict[str, int]:
            seen: dict[str, int] = {}  # rebuilt if the transaction is redone
            for w in batch:
                eid = w.execution_id
                seen[eid] = apply_write(txn, w, seen.get(eid, known.get(eid)))
            return seen

        known.update(self._transact(apply))
        for w in batch:
            if w.summary is not None and w.summary.get("status") in _TERMINAL:
                known.pop(w.execution_id, None)

    def get_summary(self, eid: str) -> Record | None:
        return self._view(lambda v: decoded(v, EXECUTIONS, id_key(eid)))

    def iter_summaries(self, *, after: str | None = None) -> Iterator[Record]:
        """Summaries in id order, read page by page so no transaction stays open."""
        start = b"" if after is None else id_key(after) + SEPARATOR
        while True:
            page = self._view(partial(_page, start=start))
            for key, data in page:
                yield decode_record(key, data, db=EXECUTIONS)
            if len(page) < _PAGE:
                return
            start = page[-1][0] + SEPARATOR

    def iter_execution_ids(self) -> Iterator[str]:
        """Every execution id in order, from the keys alone: a damaged summary value does
        not hide its execution (recovery and verify report it instead)."""
        start = b""
        while True:
            page = self._view(partial(_key_page, start=start))
            yield from (parse_id_key(key) for key in page)
            if len(page) < _PAGE:
                return
            start = page[-1] + SEPARATOR

    def read(self, fn: Callable[[RecordView], T]) -> T:
        """Run ``fn`` over one consistent read view (a whole-store check, a backup)."""
        return self._view(fn)

    def load_snapshot(self, eid: str) -> Record | None:
        return self._view(lambda v: decoded(v, SNAPSHOTS, id_key(eid)))

    def read_events(self, eid: str, from_seq: int = 1, limit: int | None = None) -> list[Record]:
        def read(view: RecordView) -> list[Record]:
            items = islice(event_range(view, EVENTS, eid, from_seq), limit)
            return [decode_record(k, d, db=EVENTS) for k, d in items]

        return self._view(read)

    def read_execution(self, eid: str, *, unless: Collection[str] = ()) -> ExecutionRecords | None:
        """The summary, latest snapshot and the events after it, in one read transaction;
        None without a summary. A summary whose status is in ``unless`` comes alone (no
        snapshot, no events): recovery skips terminal executions without reading them."""
        return self._view(partial(read_execution_records, eid=eid, unless=unless))

    def read_executions(
        self, eids: Sequence[str], *, unless: Collection[str] = (), rest_alone: bool = False
    ) -> list[ExecutionRecords | StoreError | None]:
        """``read_execution`` of each id, all in one read transaction, with the StoreError
        of an execution whose records do not decode in its place. Recovery reads thousands:
        a read transaction gives up the GIL, which costs ~0.4 ms to get back while other
        threads are busy. ``rest_alone``: a summary that holds a ``rest`` time comes alone
        (see ``read_execution_records``)."""

        def read(view: RecordView) -> list[ExecutionRecords | StoreError | None]:
            found: list[ExecutionRecords | StoreError | None] = []
            for eid in eids:
                try:
                    found.append(read_execution_records(view, eid, unless, rest_alone))
                except StoreError as exc:
                    found.append(exc)
            return found

        return self._view(read)

    def last_seq(self, eid: str) -> int:
        return self._view(lambda v: last_counter(v, EVENTS, eid))

    def read_history(self, eid: str) -> list[Record]:
        return self._view(
            lambda v: [decode_record(k, d, db=HISTORY) for k, d in event_range(v, HISTORY, eid)]
        )

    def last_history(self, eid: str) -> Record | None:
        """The latest history record of ``eid`` (one seek, not a scan)."""

        def last(view: RecordView) -> Record | None:
            prefix = execution_prefix(eid)
            for key, data in view.scan(HISTORY, prefix, prefix_end(prefix), reverse=True):
                return decode_record(key, data, db=HISTORY)
            return None

        return self._view(last)

    def iter_last_history(self) -> Iterator[tuple[str, Record]]:
        """(execution id, latest history record) for every execution with history, in id
        order; one short read per execution, skipping over the older records."""
        start = b""
        while found := self._view(partial(_next_last_history, start=start)):
            key, data = found
            eid = parse_event_key(key)[0]
            yield eid, decode_record(key, data, db=HISTORY)
            start = prefix_end(execution_prefix(eid))

    def get_definition(self, digest: str) -> Record | None:
        return self._view(lambda v: decoded(v, DEFINITIONS, id_key(digest)))

    def get_breakers(self) -> dict[str, Record]:
        return self._view(
            lambda v: {
                parse_id_key(k): decode_record(k, d, db=BREAKERS) for k, d in v.scan(BREAKERS)
            }
        )

    def get_meta(self, key: str) -> Any:
        record = self._view(lambda v: decoded(v, META, id_key(key)))
        return None if record is None else record.get("value")

    def delete_terminal_before(self, ts: float, terminal_statuses: Collection[str]) -> list[str]:
        """Retention: remove terminal executions that ended before ``ts``; their ids."""
        terminal = set(terminal_statuses)

        def purge(txn: RecordTxn) -> list[str]:
            doomed = []
            for key, data in list(txn.scan(EXECUTIONS)):
                summary = decode_record(key, data, db=EXECUTIONS)
                end = summary.get("end_time")
                if summary.get("status") in terminal and isinstance(end, int | float) and end < ts:
                    doomed.append(parse_id_key(key))
            for eid in doomed:
                delete_execution(txn, eid)
            return doomed

        doomed = self._transact(purge)
        for eid in doomed:
            self._last_seqs.pop(eid, None)
        return doomed

    def verify(self) -> list[str]:
        """Problems found (bad records with their keys, sequence gaps, snapshot bounds)."""
        return self._view(verify_records)
