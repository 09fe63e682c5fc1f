"""The LMDB seam under ``LmdbStore``: ``lmdb.Error`` translated to the StoreError it means
(naming ``data.mdb``), the store's layout (the main database names the sub-databases and
nothing else), ``LmdbTxn`` (a record view on one transaction), and the read-only view and
page walk that ``_store_check_main`` runs in a child process on a file of unknown health.
It imports no more than that child needs: the child runs beside a starting node.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import lmdb

from tamma_actors._errors import StoreCorrupted, StoreError, StoreFull, StoreUnwritable
from tamma_actors._keys import SUB_DATABASES

if TYPE_CHECKING:
    from tamma_actors._store_records import RecordView

__all__ = [
    "DATA_FILE",
    "MAX_READERS",
    "LmdbTxn",
    "ReadOnlyStore",
    "check_layout",
    "read_only_view",
    "translate",
]

MAX_READERS = 1024  # readers come from any thread (control, engine, metrics)
DATA_FILE = "data.mdb"  # the LMDB file inside the store directory
# What LMDB says of a damaged file. MDB_BAD_TXN: a page read failed inside a transaction
# without an error reaching us (liblmdb's cursor setup ignores it), so the next call fails;
# MDB_INCOMPATIBLE: a sub-database's name leads to something that is not one.
_CORRUPTION = (
    lmdb.CorruptedError,
    lmdb.PageNotFoundError,
    lmdb.PanicError,
    lmdb.BadTxnError,
    lmdb.IncompatibleError,
)
_KNOWN = frozenset(name.encode() for name in SUB_DATABASES)


# py-lmdb raises Error(what, rc); rc is an errno for failures of the disk itself.
_NO_ROOM = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large",
}
_UNWRITABLE = {errno.EIO: "I/O error", errno.EROFS: "read-only file system"}


def _errno(exc: lmdb.Error) -> int | None:
    rc = exc.args[1] if len(exc.args) > 1 else getattr(exc, "code", None)
    return rc if isinstance(rc, int) else None


# Below this many bytes free (to an unprivileged writer), the file system of a write that
# failed with EIO is taken for full: LMDB reports a short write as EIO, and a write cut
# short by a full disk leaves less than that free.
FULL_BELOW_BYTES = 1 << 20


def _file_system_full(file: Path) -> bool:
    try:
        stat = os.statvfs(file.parent)
    except OSError:
        return False
    return stat.f_bavail * stat.f_frsize < FULL_BELOW_BYTES


def translate(exc: lmdb.Error, what: str, file: Path) -> StoreError:
    """``exc`` as the StoreError it means; ``file`` is the store's data file."""
    rc = _errno(exc)
    if isinstance(exc, lmdb.DiskError) or rc in _NO_ROOM:
        why = _NO_ROOM.get(rc or errno.ENOSPC, "no space left on device")
        return StoreFull(f"{what}: {why}; nothing was written ({exc})")
    if rc == errno.EIO and _file_system_full(file):
        return StoreFull(
            f"{what}: no space left on device (the file system of {file} is full: LMDB "
            f"reports the write it cut short as an I/O error); nothing was written ({exc})"
        )
    if rc in _UNWRITABLE:
        why = _UNWRITABLE[rc]
        return StoreUnwritable(f"{what}: the disk refused the write ({why}); nothing was written")
    if isinstance(exc, _CORRUPTION):
        return StoreCorrupted(f"{what}: the LMDB file {file} is damaged ({exc})")
    if isinstance(exc, lmdb.InvalidError):  # no valid meta page
        return StoreCorrupted(
            f"{what}: {file} is not an LMDB file (its meta pages are damaged, or it is "
            f"another file) ({exc})"
        )
    return StoreError(f"{what}: {exc}")


def check_layout(txn: lmdb.Transaction[bytes], file: Path) -> set[bytes]:
    """The store's sub-databases named in the main database, which holds nothing else. A
    main database of other keys is a damaged file (its root page holds another tree's
    page: a copy of a live ``data.mdb`` looks like this); opening it would create empty
    sub-databases beside them and show an empty store."""
    names = set(txn.cursor().iternext(keys=True, values=False))
    strange = sorted(names - _KNOWN)
    if strange:
        raise StoreCorrupted(
            f"the LMDB file {file} is damaged: its list of databases holds {len(strange)} "
            f"key(s) that name none of the store's (first {strange[0][:40]!r}); a copy of "
            "a data.mdb taken while its node was writing looks like this"
        )
    return names


class LmdbTxn:
    """The RecordTxn interface on one lmdb transaction."""

    def __init__(self, txn: lmdb.Transaction[bytes], dbs: dict[str, lmdb._Database]) -> None:
        self._txn = txn
        self._dbs = dbs

    def get(self, db: str, key: bytes) -> bytes | None:
        return self._txn.get(key, db=self._dbs[db])

    def scan(
        self, db: str, start: bytes = b"", end: bytes = b"", *, reverse: bool = False
    ) -> Iterator[tuple[bytes, bytes]]:
        with self._txn.cursor(self._dbs[db]) as cur:
            if reverse:
                yield from self._scan_back(cur, start, end)
                return
            if not cur.set_range(start):
                return
            for key, value in cur:
                if end and key >= end:
                    return
                yield key, value

    @staticmethod
    def _scan_back(
        cur: lmdb.Cursor[bytes], start: bytes, end: bytes
    ) -> Iterator[tuple[bytes, bytes]]:
        positioned = cur.prev() if end and cur.set_range(end) else cur.last()
        while positioned and cur.key() >= start:
            yield cur.item()
            positioned = cur.prev()

    def put(self, db: str, key: bytes, value: bytes) -> None:
        self._txn.put(key, value, db=self._dbs[db])

    def delete(self, db: str, key: bytes) -> None:
        self._txn.delete(key, db=self._dbs[db])


class ReadOnlyStore:
    """One read transaction on a store opened read-only (``read_only_view``)."""

    def __init__(self, env: lmdb.Environment, txn: lmdb.Transaction[bytes], file: Path) -> None:
        self._env = env
        self._txn = txn
        self.file = file
        dbs = {n: env.open_db(n.encode(), txn=txn, create=False) for n in SUB_DATABASES}
        self.view: RecordView = LmdbTxn(txn, dbs)

    def walk(self) -> None:
        """Read every page of every database once, with liblmdb's compacting copy written
        to /dev/null (~10 ms for 10,000 executions): a page that is not where or what its
        parent says is a StoreCorrupted (or, for some, an abort: call it in a child)."""
        try:
            with open(os.devnull, "wb") as sink:
                self._env.copyfd(sink.fileno(), compact=True, txn=self._txn)
        except lmdb.Error as exc:
            raise translate(exc, "reading every page failed", self.file) from exc

    def copy(self, dest: Path) -> None:
        """A compacted copy of this transaction's store into the directory ``dest``."""
        try:
            dest.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._env.copy(str(dest), compact=True, txn=self._txn)
        except OSError as exc:
            raise StoreError(f"cannot copy the store into {dest}: {exc}") from exc
        except lmdb.Error as exc:
            raise translate(exc, f"copying the store into {dest} failed", self.file) from exc


@contextmanager
def read_only_view(path: Path) -> Iterator[ReadOnlyStore]:
    """The store at ``path`` opened read-only, in one read transaction: for the checks of
    ``_store_check``, which create and write nothing (a file with a damaged list of
    databases is refused, not given empty ones). Another process may be writing (a node:
    ``tamma admin verify|backup``). Every ``lmdb.Error``, also one raised in the ``with``
    body, becomes a StoreError."""
    file = Path(path) / DATA_FILE
    if not file.is_file():
        raise StoreError(f"{path} holds no store (expected {file})")
    try:
        env = lmdb.open(
            str(path), readonly=True, max_dbs=len(SUB_DATABASES), lock=True,
            max_readers=MAX_READERS,
        )  # fmt: skip
    except lmdb.Error as exc:
        raise translate(exc, f"cannot open the store at {path}", file) from exc
    try:
        with _begin_adopting(env) as txn:
            missing = [n for n in SUB_DATABASES if n.encode() not in check_layout(txn, file)]
            if missing:
                raise StoreCorrupted(
                    f"the LMDB file {file} is damaged: its list of databases lacks "
                    f"{', '.join(missing)}"
                )
            yield ReadOnlyStore(env, txn, file)
    except lmdb.Error as exc:
        raise translate(exc, f"read from {path} failed", file) from exc
    finally:
        env.close()


def _begin_adopting(env: lmdb.Environment) -> lmdb.Transaction[bytes]:
    """A read transaction, once this process maps the size a writer grew the file to."""
    while True:
        try:
            return env.begin()
        except lmdb.MapResizedError:
            env.set_mapsize(0)
