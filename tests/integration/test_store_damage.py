"""A damaged ``data.mdb``: every ``tamma-node`` command says so and exits 65, none dies.

liblmdb aborts the process that reads some damaged pages (an assertion, SIGABRT) and a
truncated file gives a SIGBUS: the commands used to die that way with no word of ours.
The store is made once by a real node (1,000 waiting executions and a few completed ones:
its events tree is three levels deep), each test damages a copy of its file the way a
disk or a careless copy does (``tests/lmdb_damage.py``), and runs the real command in a
child process of its own (a command that aborts must not take the test with it).
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tamma_actors import Client
from tamma_actors._config import load_node_config
from tamma_actors._errors import TammaError
from tamma_actors._node import Node
from tests.lmdb_damage import inner_branch_pages, tear_main_database, truncate, zero_pages

pytestmark = pytest.mark.integration

WAIT = 60.0
DAMAGED = 65
WAITING = {"name": "park", "steps": [{"name": "p", "implementation": "wait",
                                      "config": {"seconds": 3600}}]}  # fmt: skip


@pytest.fixture(scope="module")
def healthy() -> Iterator[Path]:
    """The ``data.mdb`` of a node that parked 1,000 executions (and 2 were aborted)."""
    scratch = Path(tempfile.mkdtemp(prefix="tamma-"))
    try:
        cfg = load_node_config(None, data_dir=scratch / "var", workers=0)
        with Node(cfg) as node, Client(node.config.control_address, timeout=WAIT) as client:
            parked = client.start_workflows(WAITING, ({} for _ in range(1002)))
            for execution in parked[:2]:
                client.abort_workflow(execution.id, reason="a terminal one or two")
        yield scratch / "var" / "store" / "data.mdb"
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _data_dir(healthy: Path, where: Path) -> Path:
    """A stopped node's data directory holding a copy of the healthy store."""
    (where / "store").mkdir(parents=True, mode=0o700)
    shutil.copyfile(healthy, where / "store" / "data.mdb")
    where.chmod(0o700)
    return where


def _tamma_node(*args: str, timeout: float = WAIT) -> subprocess.CompletedProcess[str]:
    """The real command in a child process, killed (with its children) if it overruns."""
    cmd = [sys.executable, "-m", "tamma_actors._cli_node", *args]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"tamma-node {args[0]} did not end in {timeout}s: {err}") from None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _processes_on(data_dir: Path) -> list[str]:
    """Processes whose command line names ``data_dir``, once stopping ones had a moment."""
    deadline = time.monotonic() + 5.0
    while True:
        found = [
            " ".join(p.info["cmdline"] or [])
            for p in psutil.process_iter(["cmdline"])
            if str(data_dir) in " ".join(p.info["cmdline"] or []) and p.pid != os.getpid()
        ]
        if not found or time.monotonic() >= deadline:
            return found
        time.sleep(0.1)


def _start_node(data: Path) -> subprocess.Popen[str]:
    """``tamma-node run`` on ``data``, once it serves."""
    cmd = [sys.executable, "-m", "tamma_actors._cli_node", "run", "--data-dir", str(data),
           "--workers", "0", "--log-level", "WARNING"]  # fmt: skip
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    assert proc.stdout is not None
    if not proc.stdout.readline().startswith("tamma-node: control"):
        _stop(proc)
        raise AssertionError(f"the node did not start: {proc.stderr.read() if proc.stderr else ''}")
    return proc


def _stop(proc: subprocess.Popen[str]) -> str:
    """SIGTERM, then SIGKILL to the group if it does not stop in time; its stderr."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=WAIT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
    return err


def _zero_inner_branches(data: Path) -> None:
    """Pages that make liblmdb abort a walk of the events (see ``inner_branch_pages``)."""
    file = data / "store" / "data.mdb"
    pages = inner_branch_pages(file, "events")
    assert len(pages) > 1, "the events tree is too shallow to damage below its root"
    zero_pages(file, pages[1:])


# -- verify -----------------------------------------------------------------------------


def test_verify_passes_on_the_healthy_copy(healthy: Path, tmp_path: Path) -> None:
    data = _data_dir(healthy, tmp_path / "var")
    done = _tamma_node("verify", "--data-dir", str(data))
    assert done.returncode == 0, done.stderr
    assert "store OK: 1002 executions" in done.stdout


def test_verify_of_pages_that_abort_liblmdb_names_the_file_and_where(
    healthy: Path, tmp_path: Path
) -> None:
    data = _data_dir(healthy, tmp_path / "var")
    _zero_inner_branches(data)
    done = _tamma_node("verify", "--data-dir", str(data))
    assert done.returncode == DAMAGED, (done.returncode, done.stderr)  # was -6 (SIGABRT)
    first = done.stdout.splitlines()[0]
    assert first.startswith(f"store file is damaged: the LMDB file {data}/store/data.mdb")
    assert "SIGABRT" in first and "Assertion" in first
    assert "while reading database 'events' after key '" in first
    assert "tamma-node restore BACKUP --data-dir NEW" in done.stdout


def test_verify_of_a_truncated_file_says_so(healthy: Path, tmp_path: Path) -> None:
    data = _data_dir(healthy, tmp_path / "var")
    truncate(data / "store" / "data.mdb", 0.5)
    done = _tamma_node("verify", "--data-dir", str(data), "--json")
    assert done.returncode == DAMAGED, (done.returncode, done.stderr)  # was -7 (SIGBUS)
    assert '"damaged": true' in done.stdout and '"ok": false' in done.stdout
    assert "SIGBUS" in done.stdout and "truncated" in done.stdout


def test_verify_of_a_torn_copy_says_it_is_damaged_and_writes_nothing(
    healthy: Path, tmp_path: Path
) -> None:
    data = _data_dir(healthy, tmp_path / "var")
    file = data / "store" / "data.mdb"
    tear_main_database(file)
    before = file.read_bytes()
    done = _tamma_node("verify", "--data-dir", str(data))
    # it was "store OK: 0 executions", after creating empty databases in the file
    assert done.returncode == DAMAGED, (done.returncode, done.stdout)
    assert "its list of databases holds" in done.stdout
    assert "taken while its node was writing" in done.stdout
    assert file.read_bytes() == before


def test_admin_verify_reports_a_damaged_file_and_the_node_keeps_serving(
    healthy: Path, short_dir: Path
) -> None:
    """The check ran in the node's process: the diagnosing tool killed the node."""
    data = _data_dir(healthy, short_dir / "var")
    proc = _start_node(data)
    try:
        file = data / "store" / "data.mdb"
        pages = inner_branch_pages(file, "events")
        assert len(pages) > 2
        zero_pages(file, pages[1:-1])  # not the last: where the node's next events go
        with Client(f"ipc://{data}/control.sock", timeout=WAIT) as client:
            report = client.admin_verify()
            assert report["damaged"] and not report["ok"] and len(report["problems"]) == 1
            assert report["problems"][0].startswith(f"the LMDB file {file} is damaged: ")
            assert "SIGABRT" in report["problems"][0]
            assert client.health()["status"] == "ok"
    finally:
        _stop(proc)
    assert proc.returncode == 0


# -- restore and backup -----------------------------------------------------------------


def test_restore_refuses_a_damaged_backup_before_installing_anything(
    healthy: Path, tmp_path: Path
) -> None:
    backup = _data_dir(healthy, tmp_path / "bk")
    _zero_inner_branches(backup)
    empty = tmp_path / "empty"
    empty.mkdir()
    for target in (tmp_path / "new", empty):
        done = _tamma_node("restore", str(backup), "--data-dir", str(target))
        assert done.returncode == DAMAGED, (done.returncode, done.stderr)  # was -6
        line = done.stderr.strip()
        assert line.startswith(f"tamma-node: the LMDB file {backup}/store/data.mdb is damaged")
        assert line.endswith(f"nothing was restored into {target}") and "SIGABRT" in line
    assert not (tmp_path / "new").exists() and list(empty.iterdir()) == []


def test_backup_of_a_stopped_node_copies_a_healthy_store_and_refuses_a_damaged_one(
    healthy: Path, tmp_path: Path
) -> None:
    data = _data_dir(healthy, tmp_path / "var")
    done = _tamma_node("backup", str(tmp_path / "bk"), "--data-dir", str(data))
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"backed up 1002 executions into {tmp_path / 'bk'}\n"
    assert _tamma_node("verify", "--data-dir", str(tmp_path / "bk")).returncode == 0
    truncate(data / "store" / "data.mdb", 0.5)
    done = _tamma_node("backup", str(tmp_path / "bk2"), "--data-dir", str(data))
    assert done.returncode == DAMAGED, (done.returncode, done.stderr)
    assert "SIGBUS" in done.stderr and "no backup was made" in done.stderr
    assert not (tmp_path / "bk2").exists()


def test_cleanup_does_not_open_a_damaged_store(healthy: Path, tmp_path: Path) -> None:
    data = _data_dir(healthy, tmp_path / "var")
    truncate(data / "store" / "data.mdb", 0.5)
    done = _tamma_node("cleanup", "--data-dir", str(data), "--older-than", "1")
    assert done.returncode == DAMAGED, (done.returncode, done.stderr)  # was -7 (SIGBUS)
    assert "SIGBUS" in done.stderr and f"--data-dir {data}`" in done.stderr


def test_cleanup_takes_the_lock_before_it_reads_the_store(healthy: Path, tmp_path: Path) -> None:
    # it read every page of a running node's store first, then found the node running
    data = _data_dir(healthy, tmp_path / "var")
    truncate(data / "store" / "data.mdb", 0.5)  # what a read would report
    fd = os.open(data / "node.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running node holds it
        done = _tamma_node("cleanup", "--data-dir", str(data), "--older-than", "1")
    finally:
        os.close(fd)
    assert done.returncode == 1, (done.returncode, done.stderr)
    assert "a node is running" in done.stderr and "SIGBUS" not in done.stderr


# -- run --------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["truncated", "torn"])
def test_run_does_not_start_a_node_on_a_damaged_store(
    healthy: Path, short_dir: Path, damage: str
) -> None:
    data = _data_dir(healthy, short_dir / "var")
    file = data / "store" / "data.mdb"
    if damage == "truncated":
        truncate(file, 0.5)  # the node died of SIGBUS while it recovered
    else:
        tear_main_database(file)  # the node served an empty store
    done = _tamma_node("run", "--data-dir", str(data), "--workers", "0", timeout=30.0)
    assert done.returncode == DAMAGED, (done.returncode, done.stderr)
    lines = done.stderr.splitlines()
    assert lines[0].startswith("tamma-node: ") and f"{file} is damaged" in lines[0]
    assert lines[1].startswith("tamma-node: a node does not use a damaged store: ")
    assert f"`tamma-node verify --data-dir {data}`" in lines[1] and len(lines) == 2
    assert done.stdout == "" and _processes_on(data) == []


def test_a_store_writer_killed_by_its_file_stops_the_node(short_dir: Path) -> None:
    """The file is cut short under a running node: its store writer process dies of
    SIGBUS at its next commit, and the node stops with the file named instead of
    restarting writers that die the same way until its restart intensity runs out."""
    data = short_dir / "var"
    proc = _start_node(data)
    try:
        with Client(f"ipc://{data}/control.sock", timeout=WAIT) as client:
            client.start_workflows(WAITING, ({} for _ in range(50)))
            with (data / "store" / "data.mdb").open("r+b") as f:
                f.truncate(4 * 4096)  # the meta pages and two more: the trees are gone
            with pytest.raises(TammaError, match=r"data\.mdb: it is damaged"):
                client.start_workflow(WAITING)
        _, err = proc.communicate(timeout=WAIT)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == DAMAGED, err  # it was 70, after three writers died
    lines = [line for line in err.splitlines() if line.startswith("tamma-node: ")]
    assert lines[0].startswith("tamma-node: the store writer process (pid ")
    assert f"the LMDB file {data}/store/data.mdb: it is damaged (SIGBUS" in lines[0]
    assert "tamma-node verify --data-dir" in lines[1]
    assert len(set(re.findall(r"store writer process \(pid (\d+)\)", err))) == 1  # no other
    assert _processes_on(data) == []
