"""LMDB reports a write that a full disk cut short as EIO (liblmdb's mdb_page_flush turns
a short write into EIO), never ENOSPC: the seam looks at the file system before it calls
that an I/O error, so that a full disk is a StoreFull, as the README promises, and an
operator is not sent looking for a failing disk."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import lmdb
import pytest

from tamma_actors import _lmdb_env
from tamma_actors._errors import StoreFull, StoreUnwritable
from tamma_actors._lmdb_env import translate

SHORT_WRITE = lmdb.Error("mdb_txn_commit: Input/output error", errno.EIO)


def _free(monkeypatch: pytest.MonkeyPatch, free_bytes: int) -> list[str]:
    """Make the file system report ``free_bytes`` available; the paths asked about."""
    asked: list[str] = []

    class Stat:
        f_frsize = 4096
        f_bavail = free_bytes // 4096

    def statvfs(path: Any) -> Stat:
        asked.append(os.fspath(path))
        return Stat()

    monkeypatch.setattr(_lmdb_env.os, "statvfs", statvfs)
    return asked


def test_an_io_error_on_a_full_file_system_is_a_full_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked = _free(monkeypatch, 8192)
    error = translate(SHORT_WRITE, "commit to store", tmp_path / "store" / "data.mdb")
    assert isinstance(error, StoreFull)
    assert "no space left on device" in str(error) and "nothing was written" in str(error)
    assert asked == [str(tmp_path / "store")]
    # with room left, or a file system that cannot be asked, it is the disk refusing it
    _free(monkeypatch, 1 << 30)
    error = translate(SHORT_WRITE, "commit to store", tmp_path / "data.mdb")
    assert isinstance(error, StoreUnwritable) and "I/O error" in str(error)
    monkeypatch.undo()
    error = translate(SHORT_WRITE, "commit to store", tmp_path / "gone" / "data.mdb")
    assert isinstance(error, StoreUnwritable)
