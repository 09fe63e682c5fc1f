"""Damage an LMDB ``data.mdb`` the ways a disk or a careless copy does, for the tests.

The file's layout (liblmdb 0.9, 64-bit): pages of ``psize`` bytes, each starting with a
16-byte header (page number, pad, flags, lower, upper); pages 0 and 1 are meta pages (the
one with the higher transaction id is current) holding the free and main databases'
records; the main database's leaf page maps each sub-database's name to its record,
whose last field is its root page.
"""

from __future__ import annotations

import struct
from pathlib import Path

__all__ = ["inner_branch_pages", "roots", "tear_main_database", "truncate", "zero_pages"]

_HEADER = struct.Struct("<QHHHH")  # pgno, pad, flags, lower, upper
_DB = struct.Struct("<IHHQQQQQ")  # pad (psize in the free db), flags, depth, ..., root
_BRANCH, _LEAF, _SUBDATA = 0x01, 0x02, 0x02
_MAGIC = 0xBEEFC0DE


def _meta(data: bytes) -> tuple[int, int]:
    """(page size, main database root) of the current meta page."""
    best: tuple[int, int, int] | None = None
    for offset in (0, 4096):  # a meta page is at the start of the file's first two pages
        base = offset + _HEADER.size
        magic, _version = struct.unpack_from("<II", data, base)
        if magic != _MAGIC:
            continue
        free = _DB.unpack_from(data, base + 24)
        main = _DB.unpack_from(data, base + 24 + _DB.size)
        txnid = struct.unpack_from("<Q", data, base + 24 + 2 * _DB.size + 8)[0]
        if best is None or txnid > best[0]:
            best = (txnid, free[0], main[7])
    assert best is not None, "no meta page"
    return best[1], best[2]


def _nodes(data: bytes, psize: int, pgno: int) -> tuple[int, list[tuple[int, bytes, int]]]:
    """A page's flags and its nodes: (node flags, key, offset of the node's data)."""
    base = pgno * psize
    _, _, flags, lower, _ = _HEADER.unpack_from(data, base)
    count = (lower - _HEADER.size) // 2
    out = []
    for ptr in struct.unpack_from(f"<{count}H", data, base + _HEADER.size):
        _lo, _hi, nflags, ksize = struct.unpack_from("<HHHH", data, base + ptr)
        key = data[base + ptr + 8 : base + ptr + 8 + ksize]
        out.append((nflags, key, base + ptr + 8 + ksize))
    return flags, out


def roots(path: Path) -> dict[str, int]:
    """The root page of each sub-database (and ``""``: the main database's)."""
    data = path.read_bytes()
    psize, main = _meta(data)
    found = {"": main}
    for nflags, key, offset in _nodes(data, psize, main)[1]:
        if nflags & _SUBDATA:
            found[key.decode()] = _DB.unpack_from(data, offset)[7]
    return found


def inner_branch_pages(path: Path, db: str) -> list[int]:
    """The branch pages of sub-database ``db`` below its root, in key order. liblmdb
    checks a page's type when it descends from the root, but trusts the parent it steps
    back up to when a cursor moves on to the next leaf: zeroing all but the first of these
    makes a walk of ``db`` abort."""
    data = path.read_bytes()
    psize, _ = _meta(data)
    pages: list[int] = []
    _collect_branches(data, psize, roots(path)[db], pages, top=True)
    return pages


def _collect_branches(data: bytes, psize: int, pgno: int, out: list[int], *, top: bool) -> None:
    flags, nodes = _nodes(data, psize, pgno)
    if not flags & _BRANCH:
        return
    if not top:
        out.append(pgno)
    for _nflags, key, offset in nodes:
        _collect_branches(data, psize, _child_pgno(data, key, offset), out, top=False)


def zero_pages(path: Path, pages: list[int], psize: int = 4096) -> None:
    with path.open("r+b") as f:
        for pgno in pages:
            f.seek(pgno * psize)
            f.write(bytes(psize))


def truncate(path: Path, fraction: float, psize: int = 4096) -> None:
    size = path.stat().st_size
    with path.open("r+b") as f:
        f.truncate(int(size * fraction) // psize * psize)


def tear_main_database(path: Path, psize: int = 4096) -> None:
    """What a copy of a ``data.mdb`` taken while its node commits looks like: the main
    database's root page holds a leaf page of another tree (here the events')."""
    data = path.read_bytes()
    found = roots(path)
    leaf = found["events"]
    while not _nodes(data, psize, leaf)[0] & _LEAF:  # down the leftmost branch
        leaf = _child(data, psize, leaf)
    with path.open("r+b") as f:
        f.seek(found[""] * psize)
        page = bytearray(data[leaf * psize : (leaf + 1) * psize])
        page[:8] = struct.pack("<Q", found[""])  # as it would sit there
        f.write(page)


def _child(data: bytes, psize: int, pgno: int) -> int:
    _, nodes = _nodes(data, psize, pgno)
    _nflags, key, offset = nodes[0]
    return _child_pgno(data, key, offset)


def _child_pgno(data: bytes, key: bytes, offset: int) -> int:
    """The page a branch node (its key ending at ``offset``) points to: 48 bits split over
    the node header's three 16-bit words."""
    lo, hi, child_flags = struct.unpack_from("<HHH", data, offset - 8 - len(key))
    return lo | hi << 16 | child_flags << 32
