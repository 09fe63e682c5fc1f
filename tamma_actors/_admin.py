"""Store administration: verify, backup, restore and retention cleanup.

The node serves these as admin-only control ops (``tamma admin verify|backup|cleanup``);
they run on one admin thread so a long check never holds up the control socket, and each
works on a consistent view while the node keeps writing. The offline variants
(``tamma-node verify|restore|cleanup``) call the same functions on a store that no node
has open.

A backup directory is laid out like a data directory (``DEST/store/data.mdb``), so a node
can be started on the copy as it is (``tamma-node run --data-dir DEST``); ``restore``
copies a backup into a fresh data directory after checking it.

An LMDB store is verified in a child process (``_store_check``): a damaged file can make
liblmdb abort the process that reads it, and the check must not take the node (or the
command) with it. Backups are copied (and their copies verified) by child processes too,
and ``restore`` checks and copies the backup that way, so a damaged one is refused before
anything is installed.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import time
from collections.abc import Callable, Collection, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol, TypeVar

from tamma_actors._errors import ConfigError, StoreCorrupted, StoreError, TammaError
from tamma_actors._lmdb_env import DATA_FILE
from tamma_actors._lmdb_store import LmdbStore
from tamma_actors._store import RecordView
from tamma_actors._store_check import copy_store, verify_file, walk_store
from tamma_actors._verify import VerifyReport, check_store

__all__ = [
    "TERMINAL",
    "AdminStore",
    "StoreAdmin",
    "backup_offline",
    "backup_store",
    "cleanup_store",
    "data_dir_locked",
    "offline_store",
    "restore_backup",
    "verify_store",
]

T = TypeVar("T")
log = logging.getLogger(__name__)

TERMINAL = frozenset({"completed", "failed", "aborted"})
DAY = 86400.0
STORE_DIR = "store"  # the store's directory inside a data (or backup) directory


class AdminStore(Protocol):
    def read(self, fn: Callable[[RecordView], T]) -> T: ...
    def delete_terminal_before(
        self, ts: float, terminal_statuses: Collection[str]
    ) -> list[str]: ...


def verify_store(store: AdminStore) -> VerifyReport:
    """``check_store`` of ``store``: an LMDB store's file is read by a child process."""
    if isinstance(store, LmdbStore):
        return verify_file(store.path)
    return store.read(check_store)


def cleanup_store(store: AdminStore, older_than_days: float, now: float) -> dict[str, Any]:
    """Delete terminal executions that ended more than ``older_than_days`` before ``now``,
    with all their records; returns ``{"deleted": [ids], "cutoff": ts}``."""
    if not older_than_days > 0:
        raise StoreError(f"older_than_days must be a positive number, not {older_than_days!r}")
    cutoff = now - older_than_days * DAY
    deleted = store.delete_terminal_before(cutoff, TERMINAL)
    if deleted:
        log.info("retention: deleted %d executions that ended before %.0f", len(deleted), cutoff)
    return {"deleted": deleted, "cutoff": cutoff}


def _empty_target(dest: Path) -> None:
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise StoreError(f"{dest} must be a new or empty directory")


def backup_store(store: Any, dest: Path) -> dict[str, Any]:
    """A compacted, consistent copy of a live ``LmdbStore`` into ``dest/store``, made and
    then verified by child processes (one read transaction: the node keeps writing);
    returns where it is, its size and the check."""
    if not isinstance(store, LmdbStore):
        raise StoreError("only an LMDB store can be backed up")
    dest = Path(dest)
    if not dest.is_absolute():
        raise StoreError(f"backup directory {str(dest)!r} must be an absolute path")
    try:
        _empty_target(dest)
        copy_store(store.path, dest / STORE_DIR)  # in a child: the file may be damaged
        return _checked_copy(dest)
    except OSError as exc:
        raise StoreError(f"backup to {dest} failed: {exc}") from exc


def _checked_copy(dest: Path) -> dict[str, Any]:
    """A backup just made in ``dest``: where it is, its size and its check (in a child)."""
    target = dest / STORE_DIR
    report = verify_file(target)
    size = sum(f.stat().st_size for f in target.iterdir() if f.is_file())
    return {"path": str(dest), "bytes": size, "verify": report.to_dict()}


def restore_backup(backup: Path, data_dir: Path) -> VerifyReport:
    """Check the backup at ``backup`` (a backup or data directory) and copy it into the
    new data directory ``data_dir``. Refuses a backup whose file is damaged
    (StoreCorrupted) or whose records are (StoreError), and a used target; nothing is
    installed then. The backup is read by child processes only."""
    source = _store_of(Path(backup))
    _empty_target(Path(data_dir))
    report = verify_file(source)
    if report.damaged:
        raise StoreCorrupted(f"{report.problems[0]}; nothing was restored into {data_dir}")
    if not report.ok:
        raise StoreError(
            f"the backup at {backup} fails verification ({len(report.problems)} "
            f"problem(s)), first: {report.problems[0]}"
        )
    _install(source, Path(data_dir))
    return report


def _install(source: Path, data_dir: Path) -> None:
    """A compacted copy of the store ``source`` as the store of ``data_dir`` (created),
    which is left as it was found if the copy fails."""
    existed = data_dir.exists()
    target = data_dir / STORE_DIR
    try:
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        copy_store(source, target)
    except (OSError, StoreError) as exc:
        shutil.rmtree(target, ignore_errors=True)
        if not existed:
            shutil.rmtree(data_dir, ignore_errors=True)
        if isinstance(exc, StoreError):
            raise
        raise StoreError(f"cannot copy the store into {data_dir}: {exc}") from exc


def backup_offline(data_dir: Path, dest: Path) -> dict[str, Any]:
    """``backup_store`` of a stopped node's store: checked, copied and the copy checked,
    each in a child process, while the data directory's lock is held."""
    dest = Path(dest)
    if not dest.is_absolute():
        raise StoreError(f"backup directory {str(dest)!r} must be an absolute path")
    _empty_target(dest)
    with data_dir_locked(data_dir) as source:
        report = verify_file(source)
        if report.damaged:
            raise StoreCorrupted(f"{report.problems[0]}; no backup was made")
        _install(source, dest)
    return _checked_copy(dest)


def _store_of(data_dir: Path) -> Path:
    path = data_dir / STORE_DIR
    if not (path / DATA_FILE).is_file():
        raise StoreError(f"{data_dir} holds no store (expected {path / DATA_FILE})")
    return path


@contextmanager
def data_dir_locked(data_dir: Path) -> Iterator[Path]:
    """The store directory of ``data_dir`` while no node runs on it: its lock is held
    meanwhile, so no node starts on it either."""
    path = _store_of(Path(data_dir))
    fd = os.open(Path(data_dir) / "node.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            raise ConfigError(
                f"a node is running on {data_dir}; use `tamma admin ...` against it instead"
            ) from exc
        yield path
    finally:
        os.close(fd)


@contextmanager
def offline_store(data_dir: Path) -> Iterator[LmdbStore]:
    """The store of ``data_dir`` while no node runs on it (its lock is held meanwhile),
    opened once a child process has read every page of it (a damaged file raises
    StoreCorrupted: opened for writing, liblmdb would abort on it in this process)."""
    with data_dir_locked(data_dir) as path:
        walk_store(path)
        with LmdbStore(path) as store:
            yield store


class StoreAdmin:
    """The node's admin ops: each returns a future, resolved on the admin thread."""

    def __init__(self, store: Any, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tamma-admin")

    def _submit(self, fn: Callable[[], T]) -> Future[T]:
        try:
            return self._pool.submit(fn)
        except RuntimeError as exc:  # submitted after close()
            failed: Future[T] = Future()
            failed.set_exception(TammaError(f"the node is shutting down ({exc})"))
            return failed

    def verify(self) -> Future[dict[str, Any]]:
        return self._submit(lambda: verify_store(self._store).to_dict())

    def backup(self, dest: str) -> Future[dict[str, Any]]:
        return self._submit(lambda: backup_store(self._store, Path(dest)))

    def cleanup(self, older_than_days: float) -> Future[dict[str, Any]]:
        return self._submit(lambda: cleanup_store(self._store, older_than_days, self._clock()))

    def close(self) -> None:
        """Cancel queued ops; an op already running finishes (the store waits for it)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
