"""The data-directory lock: a live node refuses a second one at once; a dead node's store
writer process, finishing its last commit, is waited for."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest

from tamma_actors import _data_dir
from tamma_actors._data_dir import _lock as _lock_data_dir
from tamma_actors._errors import ConfigError

pytestmark = pytest.mark.integration

# Holds an exclusive flock on argv[1] for argv[2] seconds (or until killed), after saying so.
HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
"""


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid  # reaped: nothing runs under it (until the kernel reuses it)


@pytest.fixture
def lock_file(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    path = tmp_path / "node.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    yield path, fd
    os.close(fd)


@contextmanager
def _held(path: Path, seconds: float) -> Iterator[subprocess.Popen[str]]:
    """Another process holds the lock on ``path`` for ``seconds`` (killed on the way out)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "locked\n"
        yield proc
    finally:
        proc.kill()
        proc.wait()


def _never_wait(seconds: float) -> None:
    raise AssertionError(f"waited {seconds}s for a lock it should refuse at once")


def test_a_live_holder_is_refused_at_once(
    lock_file: tuple[Path, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, fd = lock_file
    path.write_text(f"{os.getpid()}\n")  # the holder's node is alive (this process)
    monkeypatch.setattr(
        _data_dir, "time", SimpleNamespace(monotonic=time.monotonic, sleep=_never_wait)
    )
    with (
        _held(path, 30),
        pytest.raises(ConfigError, match=rf"another node is running .*\(pid {os.getpid()}\)"),
    ):
        _lock_data_dir(fd, path.parent)


def test_a_lock_file_without_a_pid_is_refused_at_once(
    lock_file: tuple[Path, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, fd = lock_file
    path.write_text("not a pid\n")
    monkeypatch.setattr(
        _data_dir, "time", SimpleNamespace(monotonic=time.monotonic, sleep=_never_wait)
    )
    with _held(path, 30), pytest.raises(ConfigError, match=r"another node is running on \S+$"):
        _lock_data_dir(fd, path.parent)  # no pid to judge by


def test_the_writer_of_a_dead_node_is_waited_for(lock_file: tuple[Path, int]) -> None:
    path, fd = lock_file
    path.write_text(f"{_dead_pid()}\n")
    with _held(path, 0.5) as holder:  # the dead node's writer, finishing its last commit
        _lock_data_dir(fd, path.parent)  # returns once the holder let go
        assert holder.wait(5) == 0


def test_a_writer_that_never_lets_go_is_reported(
    lock_file: tuple[Path, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, fd = lock_file
    dead = _dead_pid()
    path.write_text(f"{dead}\n")
    monkeypatch.setattr(_data_dir, "_LOCK_WAIT", 0.3)
    with (
        _held(path, 30),
        pytest.raises(ConfigError, match=rf"the store writer of node {dead}, which is gone"),
    ):
        _lock_data_dir(fd, path.parent)


def test_a_zombie_is_not_alive() -> None:
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 10
    while _data_dir._alive(zombie.pid):  # until it has exited (not reaped yet)
        assert time.monotonic() < deadline, "the child never exited"
        time.sleep(0.01)
    assert os.path.exists(f"/proc/{zombie.pid}")  # still there, as a zombie
    zombie.wait()
    assert not _data_dir._alive(zombie.pid)  # and gone
    assert _data_dir._alive(os.getpid())


def test_a_data_dir_that_is_a_file_or_lies_under_one_is_named(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(ConfigError, match=f"^data_dir '{afile}': it exists and is not a dir"):
        _data_dir.lock_data_dir(afile)
    with pytest.raises(ConfigError, match=f"^data_dir '{afile}/sub': Not a directory$"):
        _data_dir.lock_data_dir(afile / "sub")
    assert afile.read_text() == "x"


def test_a_missing_data_dir_is_made_private_whatever_the_umask(tmp_path: Path) -> None:
    data_dir = tmp_path / "new" / "var"
    old = os.umask(0)
    try:
        fd = _data_dir.lock_data_dir(data_dir)
    finally:
        os.umask(old)
    os.close(fd)
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700


def test_an_existing_data_dir_keeps_its_mode_and_an_open_one_is_warned_of(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """It was made 0700: ``--data-dir /tmp`` turned /tmp from 1777 to 0700."""
    shared, private = tmp_path / "shared", tmp_path / "private"
    shared.mkdir()
    shared.chmod(0o1777)
    private.mkdir(mode=0o700)
    with caplog.at_level(logging.WARNING, logger="tamma_actors._data_dir"):
        for data_dir in (shared, private):
            os.close(_data_dir.lock_data_dir(data_dir))
    assert stat.S_IMODE(shared.stat().st_mode) == 0o1777
    assert stat.S_IMODE(private.stat().st_mode) == 0o700
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 1 and f"data_dir {shared} is open to group or others" in warned[0]
