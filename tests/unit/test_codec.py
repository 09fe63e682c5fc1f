"""The msgpack codec: round trips, errors translated, one packer per thread."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tamma_actors._codec import pack, packed_size, peek, same_data, unpack
from tamma_actors._errors import CodecError, FrameTooLarge

values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=20,
)


@settings(deadline=None)
@given(values)
def test_round_trip(value: Any) -> None:
    assert unpack(pack(value)) == value


@settings(deadline=None)
@given(values)
def test_packed_size_is_the_packed_length(value: Any) -> None:
    assert packed_size(value, 1 << 40) == len(pack(value))


@pytest.mark.parametrize(
    "value",
    ["a" * 31, "a" * 32, "é" * 200, "a" * 65_535, "a" * 65_536, b"x" * 255, b"x" * 256,
     list(range(15)), list(range(16)), {str(i): i for i in range(70_000)}, 2**64 - 1, -(2**63),
     (1, "a"), 1.5],
)  # fmt: skip
def test_packed_size_at_each_header_boundary(value: Any) -> None:
    assert packed_size(value, 1 << 40) == len(pack(value))


def test_packed_size_stops_once_over_its_limit() -> None:
    # A thousand references to one 1 MiB string: counting stops after the second one,
    # where packing would have made a gigabyte first.
    big = "x" * (1 << 20)
    many = [big] * 1000
    assert (1 << 20) < packed_size(many, 1 << 20) <= 2 * ((1 << 20) + 5) + 3
    assert packed_size(many, 1 << 40) == 1000 * ((1 << 20) + 5) + 3


with_nan = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.floats() | st.text(max_size=3),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(deadline=None)
@given(with_nan)
def test_same_data_holds_for_a_value_and_its_decoding_nan_included(value: Any) -> None:
    """Two decodings of one stored value are the same data, though a NaN in them is not
    ``==`` to itself as another float object."""
    assert same_data(unpack(pack(value)), unpack(pack(value)))


def test_same_data_tells_different_data_apart() -> None:
    nan = float("nan")
    assert unpack(pack({"x": [nan]})) != unpack(pack({"x": [nan]}))  # why it exists
    assert same_data({"x": [nan, 1]}, {"x": [float("nan"), 1]})
    for a, b in [
        ({"x": nan}, {"x": 1.0}),
        ({"x": nan}, {"y": nan}),
        ([nan], [nan, nan]),
        ([nan], (nan,)),  # a tuple is not a list
        ({"x": [nan, 1]}, {"x": [nan, 2]}),
        (nan, "nan"),
        ([1], {"a": 1}),
    ]:
        assert not same_data(a, b) and not same_data(b, a), (a, b)


def test_a_failed_pack_leaves_nothing_behind() -> None:
    good = pack({"a": [1, 2]})
    for bad in ({"x": object()}, [1, 2**70], {"k": {1, 2}}):
        with pytest.raises(CodecError, match="cannot be encoded"):
            pack(bad)
        assert pack({"a": [1, 2]}) == good


def test_garbage_and_oversized_input_are_refused() -> None:
    with pytest.raises(CodecError, match="malformed"):
        unpack(b"\xc1")
    with pytest.raises(CodecError, match="malformed"):
        unpack(pack(1) + b"\x01")
    with pytest.raises(FrameTooLarge, match="exceeds"):
        unpack(pack("x" * 100), max_size=10)


def test_threads_pack_concurrently_without_mixing() -> None:
    errors: list[str] = []

    def work(n: int) -> None:
        value = {"thread": n, "items": list(range(n, n + 50))}
        expected = pack(value)
        for _ in range(2000):
            if pack(value) != expected:
                errors.append(f"thread {n} got a mixed encoding")
                return

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []


@settings(deadline=None)
@given(st.dictionaries(st.text(max_size=5), values, max_size=6), st.text(max_size=5))
def test_peek_reads_one_value_of_a_map_as_a_full_decode_would(
    mapping: dict[str, Any], key: str
) -> None:
    assert peek(pack(mapping), key) == mapping.get(key)


def test_peek_finds_nothing_in_what_is_not_a_map() -> None:
    big = pack({"v": 1, "args": {"pad": "x" * 100_000}, "id": 7})
    assert peek(big, "id") == 7  # the big value before it was skipped, not built
    assert peek(pack([1, 2]), "id") is None
    assert peek(b"\xc1 not msgpack", "id") is None
    assert peek(big[:50], "id") is None  # truncated before the key
