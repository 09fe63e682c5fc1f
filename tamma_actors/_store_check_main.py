"""The child process of ``_store_check``: ``python -m tamma_actors._store_check_main MODE
STORE --mark-fd N``. It opens the store read-only, runs one mode (``verify``, ``walk``,
``copy --dest DIR``), notes what it reads in the page shared with its parent (``--mark-fd``:
what, NUL, database, NUL, key, after the mark's length) and writes its answer as one JSON
object on stdout: ``{"result": ...}``, ``{"damaged": message}`` or ``{"error": message}``.
If liblmdb kills it first, the parent reads the mark. It imports only what the walk needs:
it runs beside a starting node.
"""

from __future__ import annotations

import argparse
import json
import mmap
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tamma_actors._errors import StoreCorrupted, StoreError, TammaError
from tamma_actors._lmdb_env import read_only_view

if TYPE_CHECKING:
    from tamma_actors._store import RecordView

__all__ = ["HEAD", "MARK_SIZE", "WALKED", "main"]

MARK_SIZE = 4096
HEAD = 4  # the mark's length, then the mark
WALKED = "reading every page of every database"  # what the walk was doing


class _Marker:
    """What the child reads, in the page it shares with its parent."""

    def __init__(self, fd: int) -> None:
        self._page = mmap.mmap(fd, MARK_SIZE)

    def mark(self, what: str, db: str = "", key: bytes = b"") -> None:
        data = f"{what}\0{db}\0".encode() + key
        data = data[: MARK_SIZE - HEAD]
        self._page[HEAD : HEAD + len(data)] = data
        self._page[:HEAD] = len(data).to_bytes(HEAD, "big")


class _MarkingView:
    """A RecordView that marks each key before LMDB reads it, and after."""

    def __init__(self, view: RecordView, marker: _Marker) -> None:
        self._view = view
        self._mark = marker.mark

    def get(self, db: str, key: bytes) -> bytes | None:
        self._mark("get", db, key)
        return self._view.get(db, key)

    def scan(
        self, db: str, start: bytes = b"", end: bytes = b"", *, reverse: bool = False
    ) -> Iterator[tuple[bytes, bytes]]:
        self._mark("scan", db, end if reverse else start)
        for key, value in self._view.scan(db, start, end, reverse=reverse):
            self._mark("after", db, key)
            yield key, value


def _verify(path: Path, marker: _Marker, _dest: Path | None) -> dict[str, Any]:
    """The records' check, then the pages' walk (which finds some damage that reads
    through a cursor do not: another tree's page standing in for a database's root)."""
    from tamma_actors._verify import check_store  # here: the walk needs none of it

    with read_only_view(path) as store:
        report = check_store(_MarkingView(store.view, marker))
        marker.mark("walk")
        try:
            store.walk()
        except StoreCorrupted as exc:
            report.damaged = True
            report.problems.insert(0, f"{exc}; found while {WALKED}")
        return report.to_dict()


def _walk(path: Path, marker: _Marker, _dest: Path | None) -> dict[str, Any]:
    with read_only_view(path) as store:
        marker.mark("walk")
        store.walk()
    return {}


def _copy(path: Path, marker: _Marker, dest: Path | None) -> dict[str, Any]:
    if dest is None:
        raise StoreError("copy needs --dest")
    with read_only_view(path) as store:
        marker.mark("copy")
        store.copy(dest)
    return {}


_MODES: dict[str, Callable[[Path, _Marker, Path | None], dict[str, Any]]] = {
    "verify": _verify,
    "walk": _walk,
    "copy": _copy,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tamma-store-check", description=__doc__.split("\n")[0])
    parser.add_argument("mode", choices=sorted(_MODES))
    parser.add_argument("path", type=Path, help="the store directory (holds data.mdb)")
    parser.add_argument("--dest", type=Path, help="copy: the new store directory")
    parser.add_argument("--mark-fd", type=int, required=True)
    args = parser.parse_args(argv)
    marker = _Marker(args.mark_fd)
    marker.mark("open")
    try:
        answer: dict[str, Any] = {"result": _MODES[args.mode](args.path, marker, args.dest)}
    except StoreCorrupted as exc:
        answer = {"damaged": str(exc)}
    except TammaError as exc:
        answer = {"error": str(exc)}
    sys.stdout.write(json.dumps(answer))
    return 0


if __name__ == "__main__":
    sys.exit(main())
