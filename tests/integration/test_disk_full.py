"""A disk that takes no more bytes, for real: `tamma-node run` under RLIMIT_FSIZE.

The kernel refuses every write past the limit (EFBIG; SIGXFSZ is ignored), as a full file
system would (ENOSPC). LMDB reports the short write as an I/O error: the store's commit
fails with StoreUnwritable (StoreFull for ENOSPC, EDQUOT, EFBIG), the node refuses new work
with a clear error, keeps serving what it committed, and a node started without the limit
on the same data finishes every acknowledged execution.
"""

from __future__ import annotations

import resource
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tamma_actors import Client, StoreFull, StoreUnwritable

pytestmark = pytest.mark.integration

WAIT = 60.0
LIMIT = 3 << 20  # bytes any process of the node may write to one file


def chain() -> dict[str, Any]:
    return {
        "name": "chain",
        "steps": [
            {"name": "a", "implementation": "noop"},
            {"name": "b", "implementation": "noop", "dependencies": ["a"]},
        ],
    }


def start_node(data: Path, *, limited: bool) -> subprocess.Popen[str]:
    def limit_file_size() -> None:  # runs in the child, before exec
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, LIMIT))

    proc = subprocess.Popen(
        [sys.executable, "-m", "tamma_actors._cli_node", "run", "--data-dir", str(data),
         "--workers", "1", "--log-level", "WARNING"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        preexec_fn=limit_file_size if limited else None,
    )  # fmt: skip
    assert proc.stdout is not None
    assert "control" in proc.stdout.readline()
    return proc


def stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(WAIT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(WAIT)


def test_a_disk_that_takes_no_more_bytes_stops_intake_and_loses_nothing(
    short_dir: Path,
) -> None:
    data = short_dir / "var"
    blob = "x" * (64 << 10)
    acked: list[str] = []
    node = start_node(data, limited=True)
    try:
        with Client(data_dir=data, timeout=WAIT) as client:
            with pytest.raises((StoreFull, StoreUnwritable), match="nothing was written"):
                for _ in range(200):  # 200 x 64 KiB inputs cannot fit in 3 MiB
                    acked.append(client.start_workflow(chain(), {"blob": blob}).id)
            assert acked, "some executions fit before the limit"
            with pytest.raises((StoreFull, StoreUnwritable), match="accepts no new work"):
                client.start_workflow(chain(), {})
            health = client.health()
            assert health["status"] == "degraded"
            assert "nothing was written" in health["store_refuses_writes"]
            for eid in acked:  # what was acknowledged is still served
                assert client.get_workflow(eid).id == eid
    finally:
        stop(node)
    node = start_node(data, limited=False)
    try:
        with Client(data_dir=data, timeout=WAIT) as client:
            for eid in acked:
                assert client.wait(eid, timeout=WAIT).status == "completed"
            assert client.admin_verify()["ok"]
    finally:
        stop(node)
