"""Key layout and record framing of the store (pure: no I/O).

Keys sort the way the store scans them: an event key is the execution id (utf-8), a NUL
separator and the sequence number as 8 big-endian bytes, so byte order equals
``(execution_id, seq)`` order and one execution's events are one contiguous range.
Every value is ``crc32 (4 bytes, big-endian) + msgpack map`` whose map carries
``"schema": SCHEMA_VERSION``; the checksum turns silent disk corruption into a
:class:`StoreCorrupted` that names the key.
"""

from __future__ import annotations

import os
import random
import struct
import threading
import time
import zlib
from collections.abc import Mapping
from typing import Any

from tamma_actors._codec import pack, unpack
from tamma_actors._errors import CodecError, StoreCorrupted, StoreError

__all__ = [
    "BREAKERS",
    "DEFINITIONS",
    "EVENTS",
    "EXECUTIONS",
    "HISTORY",
    "MAX_SEQ",
    "META",
    "SCHEMA_VERSION",
    "SEPARATOR",
    "SNAPSHOTS",
    "SUB_DATABASES",
    "decode_record",
    "encode_record",
    "event_key",
    "execution_prefix",
    "id_key",
    "new_execution_id",
    "parse_event_key",
    "parse_id_key",
    "prefix_end",
]

SCHEMA_VERSION = 1

EXECUTIONS = "executions"
SNAPSHOTS = "snapshots"
EVENTS = "events"
HISTORY = "history"
DEFINITIONS = "definitions"
BREAKERS = "breakers"
META = "meta"
SUB_DATABASES = (EXECUTIONS, SNAPSHOTS, EVENTS, HISTORY, DEFINITIONS, BREAKERS, META)

SEPARATOR = b"\x00"
_SEQ = struct.Struct(">Q")
_CRC = struct.Struct(">I")
MAX_SEQ = 2**64 - 1


def id_key(name: str) -> bytes:
    """The key of a per-id record (execution summary, snapshot, breaker, definition)."""
    if "\x00" in name:
        raise StoreError(f"id {name!r} must not contain NUL (it separates key parts)")
    try:
        return name.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise StoreError(f"id {name!r} is not encodable as utf-8") from exc


def parse_id_key(key: bytes) -> str:
    try:
        return key.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StoreCorrupted(f"key {key.hex()} is not utf-8") from exc


def execution_prefix(execution_id: str) -> bytes:
    """The common prefix of every event (and history) key of one execution."""
    return id_key(execution_id) + SEPARATOR


def prefix_end(prefix: bytes) -> bytes:
    """The smallest key greater than every key starting with ``prefix`` (exclusive end).

    Empty when no such key exists (a prefix of only 0xff bytes): scan to the end.
    """
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return b""
    return stripped[:-1] + bytes([stripped[-1] + 1])


def event_key(execution_id: str, seq: int) -> bytes:
    if not 0 <= seq <= MAX_SEQ:
        raise StoreError(f"sequence number {seq} of {execution_id!r} is out of range")
    return execution_prefix(execution_id) + _SEQ.pack(seq)


def parse_event_key(key: bytes) -> tuple[str, int]:
    """Inverse of :func:`event_key`; a malformed key raises StoreCorrupted."""
    if len(key) < 9 or key[-9:-8] != SEPARATOR:
        raise StoreCorrupted(f"key {key.hex()} is not an execution-id/seq key")
    return parse_id_key(key[:-9]), _SEQ.unpack(key[-8:])[0]


class _IdClock:
    """Microsecond stamps that never repeat or go back within this process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last = 0

    def next(self) -> int:
        with self._lock:
            self._last = max(time.time_ns() // 1000, self._last + 1)
            return self._last


_id_clock = _IdClock()
# The suffix only has to differ between processes (ids are not secrets): a generator
# seeded once from the OS, not a system call per id. ``os.urandom`` gives up the GIL,
# and a start would wait to get it back on the control thread, in the middle of intake.
_suffixes = random.Random(os.urandom(16))


def new_execution_id() -> str:
    """13 hex digits of microseconds since the epoch + 6 random hex digits.

    Later ids sort later (within a process even in the same microsecond, because the
    clock is forced forward), and ids stay unique across processes thanks to the suffix.
    """
    return f"{_id_clock.next():013x}{_suffixes.getrandbits(24):06x}"


def encode_record(record: Mapping[str, Any], packed: bytes | None = None) -> bytes:
    """Frame a map for storage: crc32 of the msgpack payload, then the payload.

    ``packed`` is ``record`` already msgpack-encoded (an event goes to the bus too): a map
    of up to 14 entries is then stored by adding the schema entry to those bytes, the same
    bytes ``pack({**record, "schema": ...})`` would give, without encoding it again."""
    if "schema" in record:
        raise StoreError("'schema' is reserved in stored records")
    if packed is not None and _FIXMAP <= packed[0] < _FIXMAP_LAST:
        head = bytes((packed[0] + 1,))
        if len(packed) >= _BIG_RECORD:  # one copy of the parts as they are, not three
            body = memoryview(packed)[1:]
            crc = zlib.crc32(_SCHEMA_ENTRY, zlib.crc32(body, zlib.crc32(head)))
            return b"".join((_CRC.pack(crc), head, body, _SCHEMA_ENTRY))
        payload = head + packed[1:] + _SCHEMA_ENTRY  # small: copies cost less than a view
    else:
        try:
            payload = pack({**record, "schema": SCHEMA_VERSION})
        except CodecError as exc:
            raise StoreError(f"record cannot be stored: {exc}") from exc
    return _CRC.pack(zlib.crc32(payload)) + payload


# msgpack: a map of n <= 15 entries starts with the byte 0x80 | n.
_FIXMAP, _FIXMAP_LAST = 0x80, 0x8F
# From this size an event is framed without copying its packed bytes first (an event of
# ~200 bytes is framed ~0.6 us faster by copying; one of 1 MB two copies faster without).
_BIG_RECORD = 64 << 10
_SCHEMA_ENTRY = pack("schema") + pack(SCHEMA_VERSION)


def _where(key: bytes, db: str) -> str:
    return f"{db}/{key.hex()}" if db else key.hex()


def decode_record(key: bytes, data: bytes, *, db: str = "") -> dict[str, Any]:
    """Check and decode a stored value; the returned map no longer has ``"schema"``.

    A bad checksum, a truncated value or a payload that is not a map raises
    StoreCorrupted naming the key in hex (and the sub-database when given).
    """
    if len(data) <= _CRC.size:
        raise StoreCorrupted(f"record {_where(key, db)} is truncated ({len(data)} bytes)")
    payload = memoryview(data)[_CRC.size :]  # not a copy: a snapshot may be megabytes
    if _CRC.unpack_from(data)[0] != zlib.crc32(payload):
        raise StoreCorrupted(f"record {_where(key, db)} fails its checksum")
    try:
        record = unpack(payload)
    except CodecError as exc:
        raise StoreCorrupted(f"record {_where(key, db)} does not decode: {exc}") from exc
    if not isinstance(record, dict) or not isinstance(record.get("schema"), int):
        raise StoreCorrupted(f"record {_where(key, db)} is not a versioned map")
    if record["schema"] > SCHEMA_VERSION:
        raise StoreError(
            f"record {_where(key, db)} has schema {record['schema']}, newer than this "
            f"version ({SCHEMA_VERSION}); upgrade tamma_actors"
        )
    del record["schema"]
    return record
