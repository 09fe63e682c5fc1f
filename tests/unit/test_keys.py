"""Key layout and record framing: order, round trips, corruption detection."""

from __future__ import annotations

import subprocess
import sys
import threading
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tamma_actors._codec import pack
from tamma_actors._errors import StoreCorrupted, StoreError
from tamma_actors._keys import (
    SCHEMA_VERSION,
    SUB_DATABASES,
    decode_record,
    encode_record,
    event_key,
    execution_prefix,
    id_key,
    new_execution_id,
    parse_event_key,
    parse_id_key,
    prefix_end,
)

eids = st.text(st.characters(exclude_characters="\x00", exclude_categories=["Cs"]), max_size=20)
seqs = st.integers(min_value=0, max_value=2**64 - 1)
scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text() | st.binary()
values = st.recursive(
    scalars | st.floats(allow_nan=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
records = st.dictionaries(st.text().filter(lambda k: k != "schema"), values, max_size=6)


@given(st.tuples(eids, seqs), st.tuples(eids, seqs))
def test_key_order_is_execution_then_seq_order(a: tuple[str, int], b: tuple[str, int]) -> None:
    ka, kb = event_key(*a), event_key(*b)
    by_tuple = (a[0].encode(), a[1]) < (b[0].encode(), b[1])
    assert (ka < kb) == by_tuple
    assert (ka == kb) == (a == b)


@given(eids, seqs)
def test_parse_event_key_inverts_event_key(eid: str, seq: int) -> None:
    assert parse_event_key(event_key(eid, seq)) == (eid, seq)


@given(eids, seqs)
def test_event_keys_fall_inside_their_prefix_range(eid: str, seq: int) -> None:
    key = event_key(eid, seq)
    prefix = execution_prefix(eid)
    assert key.startswith(prefix)
    assert prefix <= key < prefix_end(prefix)


@given(eids, eids, seqs)
def test_other_executions_fall_outside_the_prefix_range(a: str, b: str, seq: int) -> None:
    if a == b:
        return
    prefix = execution_prefix(a)
    key = event_key(b, seq)
    assert not (prefix <= key < prefix_end(prefix))


def test_prefix_end_of_all_ff_is_open_ended() -> None:
    assert prefix_end(b"\xff\xff") == b""
    assert prefix_end(b"a\xff") == b"b"
    assert prefix_end(b"a\x00") == b"a\x01"


def test_nul_in_an_id_is_refused() -> None:
    with pytest.raises(StoreError, match="NUL"):
        event_key("a\x00b", 1)
    with pytest.raises(StoreError, match="NUL"):
        id_key("x\x00")
    with pytest.raises(StoreError, match="utf-8"):
        id_key("\ud800")


@pytest.mark.parametrize("seq", [-1, 2**64])
def test_out_of_range_sequence_numbers_are_refused(seq: int) -> None:
    with pytest.raises(StoreError, match="out of range"):
        event_key("e", seq)


@pytest.mark.parametrize("key", [b"", b"short", b"abcdefghij", b"\xff\xfe\x00" + bytes(8)])
def test_malformed_event_keys_are_corruption(key: bytes) -> None:
    with pytest.raises(StoreCorrupted, match=r"key [0-9a-f]* is"):
        parse_event_key(key)


def test_parse_id_key_rejects_non_utf8() -> None:
    assert parse_id_key("é".encode()) == "é"
    with pytest.raises(StoreCorrupted, match="fffe"):
        parse_id_key(b"\xff\xfe")


def test_sub_databases_are_the_documented_ones() -> None:
    assert set(SUB_DATABASES) == {
        "executions", "snapshots", "events", "history", "definitions", "breakers", "meta"
    }  # fmt: skip


def test_execution_ids_sort_in_creation_order_and_are_unique() -> None:
    ids = [new_execution_id() for _ in range(2000)]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 19 and "\x00" not in i for i in ids)
    int(ids[0], 16)  # hex only


def test_execution_ids_from_many_threads_are_unique() -> None:
    out: list[list[str]] = [[] for _ in range(4)]
    go = threading.Barrier(4)

    def make(bucket: list[str]) -> None:
        go.wait(timeout=10)
        bucket.extend(new_execution_id() for _ in range(500))

    threads = [threading.Thread(target=make, args=(b,)) for b in out]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    merged = [i for bucket in out for i in bucket]
    assert len(set(merged)) == 2000
    assert all(bucket == sorted(bucket) for bucket in out)


def test_each_process_draws_its_own_suffixes() -> None:
    # Two nodes (or a node and its restart) may stamp the same microsecond: the suffix
    # keeps their ids apart only if each process seeds its own from the OS.
    code = (
        "from tamma_actors._keys import new_execution_id as n; "
        "print(' '.join(n()[13:] for _ in range(20)))"
    )
    runs = [
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
        ).stdout.split()
        for _ in range(2)
    ]
    assert len(runs[0]) == len(runs[1]) == 20
    assert all(len(s) == 6 and int(s, 16) >= 0 for s in runs[0])
    assert runs[0] != runs[1]


@given(records)
def test_record_round_trip(record: dict[str, Any]) -> None:
    data = encode_record(record)
    assert decode_record(b"k", data) == record


@given(
    st.dictionaries(
        st.text(max_size=6).filter(lambda k: k != "schema"),
        st.one_of(st.none(), st.integers(-(2**63), 2**64 - 1), st.text(max_size=5)),
        max_size=20,
    )
)
def test_a_record_encoded_from_its_packed_bytes_is_the_same_record(record: dict[str, Any]) -> None:
    # maps of up to 14 entries reuse the bytes; bigger ones are encoded again: same result
    assert encode_record(record, pack(record)) == encode_record(record)


@pytest.mark.parametrize("size", [0, 64 << 10, 3 << 20])
def test_a_big_record_is_framed_from_its_packed_bytes_alike(size: int) -> None:
    # from 64 KiB an event is framed from views of its packed bytes instead of copies
    record = {"type": "step.completed", "seq": 7, "data": {"output": "x" * size}}
    framed = encode_record(record, pack(record))
    assert framed == encode_record(record)
    assert decode_record(b"k", framed) == record


@given(records, st.data())
def test_any_single_corrupted_byte_is_detected(record: dict[str, Any], data: st.DataObject) -> None:
    encoded = bytearray(encode_record(record))
    index = data.draw(st.integers(0, len(encoded) - 1))
    flip = data.draw(st.integers(1, 255))
    encoded[index] ^= flip
    with pytest.raises(StoreCorrupted, match="6b6579"):
        decode_record(b"key", bytes(encoded))


@given(records, st.data())
def test_truncation_is_detected(record: dict[str, Any], data: st.DataObject) -> None:
    encoded = encode_record(record)
    cut = data.draw(st.integers(0, len(encoded) - 1))
    with pytest.raises(StoreCorrupted, match="abcd"):
        decode_record(b"\xab\xcd", encoded[:cut])


def test_encoded_record_carries_the_schema_version() -> None:
    from tamma_actors._codec import unpack

    assert unpack(encode_record({"a": 1})[4:]) == {"a": 1, "schema": SCHEMA_VERSION}


def _framed(payload: bytes) -> bytes:
    import zlib

    return zlib.crc32(payload).to_bytes(4, "big") + payload


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"\xc1", "does not decode"),  # 0xc1 is never valid msgpack
        (pack([1, 2]), "not a versioned map"),
        (pack({"a": 1}), "not a versioned map"),
        (pack({"schema": "1"}), "not a versioned map"),
    ],
)
def test_payloads_with_a_good_checksum_but_bad_content(payload: bytes, message: str) -> None:
    with pytest.raises(StoreCorrupted, match=message) as info:
        decode_record(b"\x01\x02", _framed(payload), db="events")
    assert "events/0102" in str(info.value)


def test_a_record_from_a_newer_schema_is_refused_not_called_corrupt() -> None:
    with pytest.raises(StoreError, match="newer") as info:
        decode_record(b"k", _framed(pack({"schema": SCHEMA_VERSION + 1})))
    assert not isinstance(info.value, StoreCorrupted)


def test_schema_is_reserved_and_unencodable_values_are_store_errors() -> None:
    with pytest.raises(StoreError, match="reserved"):
        encode_record({"schema": 2})
    with pytest.raises(StoreError, match="cannot be stored"):
        encode_record({"x": object()})
