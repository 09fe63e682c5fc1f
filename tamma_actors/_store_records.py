"""The record layout on an ordered key-value transaction: ``Write`` (what one transition
persists), the ``RecordView``/``RecordTxn`` interface a store engine supplies, and the
write rules (gap-free event sequences, snapshot bounds, history counters, deletion).

:class:`~tamma_actors._store.RecordStore` applies these rules for both ``MemoryStore``
and ``LmdbStore``.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from tamma_actors._codec import pack
from tamma_actors._errors import CodecError, StoreError
from tamma_actors._keys import (
    BREAKERS,
    DEFINITIONS,
    EVENTS,
    EXECUTIONS,
    HISTORY,
    SNAPSHOTS,
    decode_record,
    encode_record,
    event_key,
    execution_prefix,
    id_key,
    parse_event_key,
    prefix_end,
)

__all__ = [
    "Encoded",
    "ExecutionRecords",
    "Record",
    "RecordTxn",
    "RecordView",
    "Write",
    "apply_write",
    "decoded",
    "delete_execution",
    "event_range",
    "last_counter",
    "read_execution_records",
    "seq_of",
]

Record = dict[str, Any]


@dataclass(slots=True)
class Write:
    """Everything one transition persists for one execution; applied atomically."""

    execution_id: str
    events: Sequence[Mapping[str, Any]] = ()
    summary: Mapping[str, Any] | None = None
    snapshot: Mapping[str, Any] | None = None
    history: Sequence[Mapping[str, Any]] = ()
    definition: tuple[str, Mapping[str, Any]] | None = None
    breakers: Mapping[str, Mapping[str, Any]] | None = None
    delete: bool = False
    # The events, summary and snapshot as stored bytes, made by ``encode`` on the thread
    # that submits the write, so the writer's transaction only checks and puts bytes.
    encoded: Encoded | None = None

    def encode(self) -> Write:
        """Encode the records now, on the caller's thread; returns the write. A record
        that cannot be encoded is left to the writer, whose commit fails as usual."""
        try:
            packed = [pack(event) for event in self.events]
            self.encoded = Encoded(
                [encode_record(e, p) for e, p in zip(self.events, packed, strict=True)],
                None if self.summary is None else encode_record(self.summary),
                None if self.snapshot is None else encode_record(self.snapshot),
                packed,
            )
        except (StoreError, CodecError):
            self.encoded = None
        return self


@dataclass(frozen=True, slots=True)
class Encoded:
    events: list[bytes]
    summary: bytes | None
    snapshot: bytes | None
    packed_events: list[bytes]  # the events as plain msgpack: what the event bus sends
    # Set only on a write that came over the pipe to the store writer process
    # (``_store_wire``), where every record arrives as stored bytes.
    history: list[bytes] | None = None
    definition: bytes | None = None
    breakers: dict[str, bytes] | None = None


class RecordView(Protocol):
    """Reads inside one transaction; ``end`` is exclusive and ``b""`` means no end."""

    def get(self, db: str, key: bytes) -> bytes | None: ...
    def scan(
        self, db: str, start: bytes = b"", end: bytes = b"", *, reverse: bool = False
    ) -> Iterator[tuple[bytes, bytes]]: ...


class RecordTxn(RecordView, Protocol):
    def put(self, db: str, key: bytes, value: bytes) -> None: ...
    def delete(self, db: str, key: bytes) -> None: ...


def decoded(view: RecordView, db: str, key: bytes) -> Record | None:
    data = view.get(db, key)
    return None if data is None else decode_record(key, data, db=db)


def event_range(
    view: RecordView, db: str, eid: str, first: int = 0
) -> Iterator[tuple[bytes, bytes]]:
    prefix = execution_prefix(eid)
    return view.scan(db, event_key(eid, max(first, 0)), prefix_end(prefix))


def last_counter(view: RecordView, db: str, eid: str) -> int:
    prefix = execution_prefix(eid)
    for key, _ in view.scan(db, prefix, prefix_end(prefix), reverse=True):
        return parse_event_key(key)[1]
    return 0


def delete_execution(txn: RecordTxn, eid: str) -> None:
    key = id_key(eid)
    txn.delete(EXECUTIONS, key)
    txn.delete(SNAPSHOTS, key)
    for db in (EVENTS, HISTORY):
        for old, _ in list(event_range(txn, db, eid)):
            txn.delete(db, old)


def seq_of(record: Mapping[str, Any]) -> int | None:
    seq = record.get("seq")
    return seq if type(seq) is int else None  # bool is an int subclass: refuse it too


def _append_events(txn: RecordTxn, w: Write, last: int | None) -> int:
    if last is None:
        last = last_counter(txn, EVENTS, w.execution_id)
    encoded = None if w.encoded is None else w.encoded.events
    for i, event in enumerate(w.events):
        seq = seq_of(event)
        if seq != last + 1:
            raise StoreError(
                f"execution {w.execution_id}: event seq {event.get('seq')!r} does not continue "
                f"the stored sequence (last seq {last}); nothing was written"
            )
        value = encode_record(event) if encoded is None else encoded[i]
        txn.put(EVENTS, event_key(w.execution_id, seq), value)
        last = seq
    return last


def apply_write(txn: RecordTxn, w: Write, last_seq: int | None = None) -> int:
    """Apply ``w``; returns the execution's last event seq after it. ``last_seq`` is that
    seq before the write when the caller knows it (it saves a cursor scan); None: look."""
    eid = w.execution_id
    key = id_key(eid)
    if w.delete:
        delete_execution(txn, eid)
        last_seq = 0
    enc = w.encoded
    if w.definition is not None:
        digest_key = id_key(w.definition[0])
        if txn.get(DEFINITIONS, digest_key) is None:
            definition = None if enc is None else enc.definition
            txn.put(DEFINITIONS, digest_key, definition or encode_record(w.definition[1]))
    last = _append_events(txn, w, last_seq)
    if w.summary is not None:
        summary = None if enc is None else enc.summary
        txn.put(EXECUTIONS, key, encode_record(w.summary) if summary is None else summary)
    if w.snapshot is not None:
        seq = seq_of(w.snapshot)
        if seq is None or not 0 <= seq <= last:
            raise StoreError(
                f"execution {eid}: snapshot seq {w.snapshot.get('seq')!r} is not within the "
                f"stored events (last seq {last}); nothing was written"
            )
        snapshot = None if enc is None else enc.snapshot
        txn.put(SNAPSHOTS, key, encode_record(w.snapshot) if snapshot is None else snapshot)
    history = _stored(w.history, None if enc is None else enc.history)
    first = last_counter(txn, HISTORY, eid) + 1 if history else 1
    for counter, value in enumerate(history, start=first):
        txn.put(HISTORY, event_key(eid, counter), value)
    breakers = None if enc is None else enc.breakers
    if breakers is None:
        breakers = {name: encode_record(state) for name, state in (w.breakers or {}).items()}
    for name, value in breakers.items():
        txn.put(BREAKERS, id_key(name), value)
    return last


def _stored(records: Sequence[Mapping[str, Any]], encoded: list[bytes] | None) -> list[bytes]:
    return [encode_record(r) for r in records] if encoded is None else encoded


class ExecutionRecords(NamedTuple):
    """What rebuilds an execution: its summary, latest snapshot and the events after it."""

    summary: Record
    snapshot: Record | None
    events: list[Record]


def read_execution_records(
    view: RecordView, eid: str, unless: Collection[str] = (), rest_alone: bool = False
) -> ExecutionRecords | None:
    """An execution's summary, latest snapshot and the events after it (None without a
    summary; a summary whose status is in ``unless``, or, with ``rest_alone``, one that
    holds a ``rest`` time, comes alone)."""
    key = id_key(eid)
    summary = decoded(view, EXECUTIONS, key)
    if summary is None:
        return None
    if summary.get("status") in unless or (rest_alone and "rest" in summary):
        return ExecutionRecords(summary, None, [])
    snapshot = decoded(view, SNAPSHOTS, key)
    first = int(snapshot["seq"]) + 1 if snapshot else 1
    events = [decode_record(k, d, db=EVENTS) for k, d in event_range(view, EVENTS, eid, first)]
    return ExecutionRecords(summary, snapshot, events)
