"""msgpack encoding for the wire and the store; msgpack errors are translated here."""

from __future__ import annotations

import math
import threading
from typing import Any

import msgpack

from tamma_actors._errors import CodecError, FrameTooLarge

__all__ = ["INT_RANGE", "pack", "peek", "same_data", "unpack"]

INT_RANGE = range(-(2**63), 2**64)  # the integers msgpack (the wire and the store) carries

# A Packer per thread: ``packb`` builds a new one per call, which costs more than packing a
# small map. A Packer is not thread-safe; it resets its buffer after each pack, and on error.
_local = threading.local()


def _packer() -> Any:
    try:
        return _local.packer
    except AttributeError:
        _local.packer = msgpack.Packer(use_bin_type=True, datetime=False)
        return _local.packer


def pack(obj: Any) -> bytes:
    """Encode ``obj`` (dicts, lists, str, bytes, numbers, bool, None)."""
    try:
        return _packer().pack(obj)  # type: ignore[no-any-return]
    except (TypeError, ValueError, OverflowError) as exc:
        raise CodecError(f"value cannot be encoded: {exc}") from exc


def unpack(data: bytes | memoryview, max_size: int | None = None) -> Any:
    """Decode one msgpack value; garbage, trailing bytes or oversized input raise.

    ``max_size`` bounds the input length, so a hostile frame cannot make us allocate.
    """
    if max_size is not None and len(data) > max_size:
        raise FrameTooLarge(f"frame of {len(data)} bytes exceeds the {max_size}-byte cap")
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)
    except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise CodecError(f"malformed message: {exc}") from exc
    except (ValueError, TypeError, UnicodeDecodeError) as exc:
        raise CodecError(f"malformed message: {exc}") from exc


def peek(data: bytes | memoryview, key: str) -> Any:
    """The value of ``key`` in the msgpack map ``data``, read without building the other
    values (they are skipped): for a frame too big to decode whole. None when ``data`` is
    not a map, has no such key, or is malformed."""
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, max_buffer_size=len(data))
    try:
        unpacker.feed(data)
        for _ in range(unpacker.read_map_header()):
            if unpacker.unpack() == key:
                return unpacker.unpack()
            unpacker.skip()
    except (msgpack.UnpackException, ValueError, TypeError):  # not a map, cut short, garbage
        return None
    return None


def same_data(a: Any, b: Any) -> bool:
    """``a == b`` for decoded data, but with NaN equal to NaN: msgpack carries NaN, and two
    decodings of one stored NaN are two float objects that ``==`` calls different (a list
    or dict holding the same NaN object compares equal only by that object's identity)."""
    if a == b:
        return True
    if isinstance(a, float) and isinstance(b, float):
        return math.isnan(a) and math.isnan(b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_data(v, b[k]) for k, v in a.items())
    if isinstance(a, list | tuple) and isinstance(b, list | tuple) and type(a) is type(b):
        return len(a) == len(b) and all(map(same_data, a, b))
    return False


def packed_size(value: Any, limit: int) -> int:
    """How many bytes ``pack(value)`` makes, counted without making them; once the count
    passes ``limit`` it stops and returns what it has (a number over ``limit``). For data
    put together from references to the same big values (a list naming one input a
    thousand times), which packing would copy in full only to find it too big."""
    total = 0
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            n = len(item) if item.isascii() else len(item.encode("utf-8", "surrogatepass"))
            total += n + (1 if n < 32 else 2 if n < 256 else 3 if n < 65536 else 5)
        elif isinstance(item, bool) or item is None:
            total += 1
        elif isinstance(item, int):
            total += _int_size(item)
        elif isinstance(item, float):
            total += 9
        elif isinstance(item, bytes | bytearray):
            n = len(item)
            total += n + (2 if n < 256 else 3 if n < 65536 else 5)
        elif isinstance(item, list | tuple):
            total += _header_size(len(item))
            stack.extend(item)
        elif isinstance(item, dict):
            total += _header_size(len(item))
            stack.extend(item.keys())
            stack.extend(item.values())
        else:  # anything else: as msgpack has it (or its CodecError)
            total += len(pack(item))
        if total > limit:
            break
    return total


def _header_size(n: int) -> int:
    return 1 if n < 16 else 3 if n < 65536 else 5


def _int_size(n: int) -> int:
    if -32 <= n < 128:
        return 1
    if -(2**7) <= n < 2**8:
        return 2
    if -(2**15) <= n < 2**16:
        return 3
    if -(2**31) <= n < 2**32:
        return 5
    return 9
