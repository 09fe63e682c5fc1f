"""``LmdbStore``: the durable store, one LMDB environment with named sub-databases.

The record rules live in :class:`RecordStore`; this module only makes transactions,
grows the map when it fills, and translates ``lmdb.Error`` (this is the seam).

A node commits from its store writer process and reads from its own process: when one
process grows the map, the other adopts the new size at its next transaction (LMDB says
``MapResizedError``).

``lmdb.Error`` is translated in ``_lmdb_env``: a damaged file is a ``StoreCorrupted``
naming ``data.mdb``. Some damage makes liblmdb abort the process instead (an assertion),
which no ``except`` can catch: the checks that read a file of unknown health run in a
child process (``_store_check``).

Locking: commits are serialised by ``_commit_lock``. Readers run short read transactions
from any thread under the shared side of ``_gate``; growing the map and closing take the
exclusive side, because LMDB invalidates every open transaction when the map is replaced
and frees the environment on close.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, TypeVar

import lmdb

from tamma_actors._errors import StoreClosed, StoreCorrupted, StoreError, StoreFull
from tamma_actors._keys import SUB_DATABASES
from tamma_actors._lmdb_env import DATA_FILE, MAX_READERS, LmdbTxn, check_layout, translate
from tamma_actors._store import RecordStore, RecordTxn, RecordView

__all__ = ["LmdbStore"]

T = TypeVar("T")
_log = logging.getLogger(__name__)
MiB = 1 << 20


class _Gate:
    """Many shared holders or one exclusive holder; a waiting exclusive goes first."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._shared = 0
        self._exclusive = False
        self._waiting = 0

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._exclusive or self._waiting:
                self._cond.wait()
            self._shared += 1
        try:
            yield
        finally:
            with self._cond:
                self._shared -= 1
                self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._waiting += 1
            while self._exclusive or self._shared:
                self._cond.wait()
            self._waiting -= 1
            self._exclusive = True
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()


class LmdbStore(RecordStore):
    """The durable store in the LMDB environment at ``path`` (a directory).

    ``durability="full"`` fsyncs every commit; ``"relaxed"`` leaves that to the OS and
    syncs on close (a crash may lose the last commits, never corrupt the file).
    """

    def __init__(
        self,
        path: Path,
        *,
        durability: Literal["full", "relaxed"] = "full",
        map_size: int = 64 * MiB,
        max_map_size: int | None = None,
    ) -> None:
        if max_map_size is not None and max_map_size < map_size:
            raise StoreError(f"max_map_size {max_map_size} is below map_size {map_size}")
        self.path = Path(path)
        self.file = self.path / DATA_FILE
        self.durability = durability
        self._max_map_size = max_map_size
        self._last_seqs = {}
        self._commit_lock = threading.Lock()
        self._gate = _Gate()
        self._closed = False
        self._env, self._dbs = self._open(map_size)
        try:
            self._transact(self._init_schema)
        except BaseException:
            self._env.close()
            self._closed = True
            raise

    def _open(self, map_size: int) -> tuple[lmdb.Environment, dict[str, lmdb._Database]]:
        full = self.durability == "full"
        try:
            self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
            env = lmdb.open(
                str(self.path), map_size=map_size, max_dbs=len(SUB_DATABASES),
                sync=full, metasync=full, lock=True, max_readers=MAX_READERS, mode=0o600,
            )  # fmt: skip
        except OSError as exc:
            raise StoreError(f"cannot create the store directory {self.path}: {exc}") from exc
        except lmdb.Error as exc:
            raise translate(exc, f"cannot open the store at {self.path}", self.file) from exc
        try:
            with env.begin() as txn:
                check_layout(txn, self.file)
            dbs = {name: env.open_db(name.encode()) for name in SUB_DATABASES}
        except lmdb.Error as exc:
            env.close()
            what = f"cannot open the sub-databases of {self.path}"
            raise translate(exc, what, self.file) from exc
        except StoreCorrupted:
            env.close()
            raise
        return env, dbs

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed(f"the store at {self.path} is closed")

    def _view(self, fn: Callable[[RecordView], T]) -> T:
        return self._read(lambda txn: fn(LmdbTxn(txn, self._dbs)), "read from")

    def _read(self, fn: Callable[[lmdb.Transaction[bytes]], T], what: str) -> T:
        """``fn`` in a read transaction; every read goes through here, so that each one
        adopts a map the writer process grew (LMDB refuses the transaction until then)."""
        while True:
            with self._gate.shared():
                self._check_open()
                try:
                    with self._env.begin() as txn:
                        return fn(txn)
                except lmdb.MapResizedError:
                    pass  # the writer process grew the map: adopt its size, read again
                except lmdb.Error as exc:
                    raise translate(exc, f"{what} {self.path} failed", self.file) from exc
            self._adopt_map()

    def _adopt_map(self) -> None:
        """Map the size another process (the store writer) grew the file to."""
        with self._gate.exclusive():
            try:
                self._env.set_mapsize(0)  # 0: the size recorded in the file
            except lmdb.Error as exc:
                what = f"cannot adopt the map size of {self.path}"
                raise translate(exc, what, self.file) from exc

    def _transact(self, fn: Callable[[RecordTxn], T]) -> T:
        with self._commit_lock:
            self._check_open()
            while True:
                try:
                    return self._attempt(fn)
                except lmdb.MapFullError:
                    self._grow()  # the transaction was aborted: redo it in the bigger map
                except lmdb.MapResizedError:
                    self._adopt_map()  # another process grew it: redo it in its map
                except lmdb.Error as exc:
                    raise translate(exc, f"commit to {self.path} failed", self.file) from exc

    def _attempt(self, fn: Callable[[RecordTxn], T]) -> T:
        txn = self._env.begin(write=True)
        try:
            result = fn(LmdbTxn(txn, self._dbs))
            txn.commit()
        except BaseException:
            # py-lmdb 3.0 aborts a write transaction only at a moment when no read
            # transaction is in flight, so busy readers can starve it forever (seen with
            # four reader threads): hold new readers off until the abort is done.
            with self._gate.exclusive():
                txn.abort()  # a no-op when a failed commit already freed it
            raise
        return result

    def _grow(self) -> None:
        current = self._env.info()["map_size"]
        ceiling = self._max_map_size
        if ceiling is not None and current >= ceiling:
            raise StoreFull(
                f"the store at {self.path} reached its map ceiling of {ceiling} bytes; "
                "nothing was written"
            )
        new = current * 2 if ceiling is None else min(current * 2, ceiling)
        with self._gate.exclusive():
            try:
                self._env.set_mapsize(new)
            except lmdb.Error as exc:
                raise translate(exc, f"cannot grow the map of {self.path}", self.file) from exc
        _log.info("store %s: map grown from %d to %d bytes", self.path, current, new)

    def stats(self) -> dict[str, Any]:
        # LMDB keeps each sub-database's entry count: no scan (health calls this, and
        # counting a store of 100,000 executions by scanning took seconds)
        def read(txn: lmdb.Transaction[bytes]) -> tuple[dict[str, int], dict[str, Any], int]:
            entries = {name: txn.stat(db)["entries"] for name, db in self._dbs.items()}
            return entries, dict(self._env.info()), self._env.stat()["psize"]

        entries, info, page = self._read(read, "stats of")
        return {
            "entries": entries,
            "map_size": info["map_size"],
            "used": (info["last_pgno"] + 1) * page,
            "max_map_size": self._max_map_size,
            "durability": self.durability,
        }

    def close(self) -> None:
        """Sync (when relaxed) and close the environment; closing twice is fine."""
        with self._commit_lock, self._gate.exclusive():
            if self._closed:
                return
            self._closed = True
            try:
                if self.durability == "relaxed":
                    self._env.sync(True)
            except lmdb.Error as exc:
                raise translate(exc, f"final sync of {self.path} failed", self.file) from exc
            finally:
                self._env.close()
