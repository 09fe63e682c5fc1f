"""Writes on the pipe between the node and its store writer process.

The node encodes every record of a :class:`Write` to its stored bytes (most already are:
``Write.encode`` runs on the submitting thread) and sends those bytes with the few fields
the record rules check: each event's seq, the summary's status, the snapshot's seq. The
writer process rebuilds a ``Write`` that carries exactly that, so the one set of rules in
``_store_records.apply_write`` checks and puts it. A batch goes as one msgpack frame::

    node → writer   [batch_no, [write, ...]]        a batch to commit in one transaction
    writer → node   [batch_no, [[size, seconds], ...], outcomes]
                    the commits it took (one, then one per write if that one failed);
                    outcomes: None when all committed, else one [error, message] or None
                    per write
    writer → node   ["ready", pid] once its store is open, or ["failed", message]
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tamma_actors._errors import (
    CodecError,
    StoreClosed,
    StoreCorrupted,
    StoreError,
    StoreFull,
    StoreUnwritable,
)
from tamma_actors._keys import encode_record
from tamma_actors._store_records import Encoded, Write, seq_of

__all__ = ["error_from_wire", "error_to_wire", "write_from_wire", "write_to_wire"]

_ERRORS: dict[str, type[StoreError]] = {
    cls.__name__: cls
    for cls in (StoreError, StoreClosed, StoreCorrupted, StoreFull, StoreUnwritable)
}
_FIELDS = 11


def write_to_wire(w: Write) -> list[Any]:
    """``w`` as stored bytes; a record that cannot be stored raises StoreError here, on
    the node, so only that write fails."""
    enc = w.encoded
    events = [encode_record(e) for e in w.events] if enc is None else enc.events
    summary, snapshot = w.summary, w.snapshot
    status = None if summary is None else summary.get("status")
    return [
        w.execution_id,
        [seq_of(e) for e in w.events],
        events,
        _stored(summary, None if enc is None else enc.summary),
        status if isinstance(status, str) else None,
        _stored(snapshot, None if enc is None else enc.snapshot),
        None if snapshot is None else seq_of(snapshot),
        [encode_record(r) for r in w.history],
        None if w.definition is None else [w.definition[0], encode_record(w.definition[1])],
        None
        if w.breakers is None
        else {name: encode_record(state) for name, state in w.breakers.items()},
        w.delete,
    ]


def _stored(record: Mapping[str, Any] | None, encoded: bytes | None) -> bytes | None:
    """A record's stored bytes: as ``Write.encode`` made them, or encoded now."""
    if record is None:
        return None
    return encode_record(record) if encoded is None else encoded


def _bytes_list(value: Any, what: str) -> list[bytes]:
    if not isinstance(value, list) or not all(isinstance(v, bytes) for v in value):
        raise StoreError(f"malformed write from the node: {what} is not a list of bytes")
    return value


def write_from_wire(data: Any) -> Write:
    """The ``Write`` that ``write_to_wire`` described; StoreError names a malformed field."""
    if not isinstance(data, list) or len(data) != _FIELDS:
        raise StoreError(f"malformed write from the node: not a list of {_FIELDS} fields")
    eid, seqs, events, summary, status, snapshot, snap_seq, history, definition = data[:9]
    breakers, delete = data[9:]
    if not isinstance(eid, str):  # "" for a write of breakers alone
        raise StoreError("malformed write from the node: the execution id is not a string")
    events = _bytes_list(events, "events")
    if not isinstance(seqs, list) or len(seqs) != len(events):
        raise StoreError(f"malformed write for {eid}: one seq per event is expected")
    for value, what in ((summary, "summary"), (snapshot, "snapshot")):
        if value is not None and not isinstance(value, bytes):
            raise StoreError(f"malformed write for {eid}: the {what} is not bytes")
    if definition is not None and not (
        isinstance(definition, list)
        and len(definition) == 2
        and isinstance(definition[0], str)
        and isinstance(definition[1], bytes)
    ):
        raise StoreError(f"malformed write for {eid}: the definition is not [digest, bytes]")
    if breakers is not None and not (
        isinstance(breakers, Mapping)
        and all(isinstance(k, str) and isinstance(v, bytes) for k, v in breakers.items())
    ):
        raise StoreError(f"malformed write for {eid}: breakers are not a map of bytes")
    history = _bytes_list(history, "history")
    return Write(
        execution_id=eid,
        events=[{"seq": seq} for seq in seqs],
        summary=None if summary is None else {"status": status},
        snapshot=None if snapshot is None else {"seq": snap_seq},
        history=[{}] * len(history),
        definition=None if definition is None else (definition[0], {}),
        breakers=None if breakers is None else {name: {} for name in breakers},
        delete=delete is True,
        encoded=Encoded(
            events,
            summary,
            snapshot,
            [],
            history,
            None if definition is None else definition[1],
            None if breakers is None else dict(breakers),
        ),
    )


def error_to_wire(exc: BaseException) -> list[str]:
    return [type(exc).__name__, str(exc)]


def error_from_wire(data: Any) -> StoreError:
    """The store error a writer process reported (StoreError for anything unknown)."""
    if isinstance(data, list) and len(data) == 2 and all(isinstance(d, str) for d in data):
        name, message = data
        if name == CodecError.__name__:
            return StoreError(message)
        return _ERRORS.get(name, StoreError)(message)
    return StoreError(f"the store writer process reported an unreadable outcome: {data!r}")
