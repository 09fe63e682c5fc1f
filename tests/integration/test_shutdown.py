"""Graceful shutdown of a real `tamma-node run` process.

SIGTERM stops intake, lets running steps finish within ``shutdown_grace`` and commit,
stops the workers and exits 0; a second signal cuts the grace short. The next start has
nothing to recover beyond what was still running, and nothing committed runs again.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tamma_actors import Client
from tamma_actors._errors import TammaError
from tamma_actors._lmdb_store import LmdbStore
from tests.workers import until

pytestmark = pytest.mark.integration

WAIT = 60.0


class NodeProcess:
    """`tamma-node run` as a child; its stderr is read by a thread, line by line."""

    def __init__(self, data: Path, config: Path) -> None:
        self.data = data
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tamma_actors._cli_node", "run", "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self.banner = self.proc.stdout.readline()
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        assert "control" in self.banner, (self.banner, self.wait_exit())

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._cond:
                self.lines.append(line)
                self._cond.notify_all()

    def wait_for_log(self, pattern: str, timeout: float = WAIT) -> None:
        with self._cond:
            found = self._cond.wait_for(
                lambda: any(re.search(pattern, line) for line in self.lines), timeout
            )
        assert found, f"no log line matching {pattern!r}:\n{''.join(self.lines[-30:])}"

    def recovered(self) -> int:
        match = re.search(r"\((\d+) executions recovered\)", self.banner)
        assert match, self.banner
        return int(match.group(1))

    def wait_exit(self, timeout: float = WAIT) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def setup(short_dir: Path) -> Iterator[tuple[Path, Path, Path]]:
    data = short_dir / "var"
    config = short_dir / "node.toml"
    config.write_text(
        f'data_dir = "{data}"\nworkers = 1\nworker_slots = 4\nshutdown_grace = 30.0\n'
        "heartbeat_interval = 0.2\nheartbeat_timeout = 2.0\ncancel_grace = 0.5\n"
        "allow_record = true\n"
    )
    yield data, config, short_dir / "record.log"


def _chain(record: Path) -> dict[str, Any]:
    rec = {"implementation": "record", "config": {"path": str(record)}}
    return {
        "name": "chain",
        "steps": [
            {"name": "a", **rec},
            {"name": "slow", "implementation": "sleep", "config": {"seconds": 1.5},
             "dependencies": ["a"]},
            {"name": "b", **rec, "dependencies": ["slow"]},
        ],
    }  # fmt: skip


def _until(client: Client, eid: str, step: str, status: str) -> None:
    for _ in range(600):
        if client.get_workflow(eid).results[step].status == status:
            return
        client.wait(eid, timeout=0.05)
    raise AssertionError(f"{eid}: step {step} never became {status}")


def _events(data: Path, eid: str) -> list[dict[str, Any]]:
    with LmdbStore(data / "store") as store:
        return store.read_events(eid)


def test_sigterm_drains_then_exits_0_and_the_restart_runs_only_what_was_left(
    setup: tuple[Path, Path, Path],
) -> None:
    data, config, record = setup
    node = NodeProcess(data, config)
    try:
        with Client(data_dir=data, timeout=WAIT) as c:
            chain = c.start_workflow(_chain(record)).id
            hang = c.start_workflow(
                {"name": "h", "steps": [{"name": "h", "implementation": "hang"}]}
            ).id
            _until(c, chain, "slow", "running")
            _until(c, hang, "h", "running")
            node.proc.send_signal(signal.SIGTERM)
            node.wait_for_log(r"signal \d+: shutting down")
            # the signal is logged as it comes; intake stops when the main thread drains
            until(lambda: c.health()["draining"], "the node drains")
            with pytest.raises(TammaError, match="shutting down"):
                c.start_workflow(_chain(record))
            # the running step finishes and commits during the grace period...
            _until(c, chain, "slow", "succeeded")
            assert c.get_workflow(chain).results["b"].status in ("dispatched", "ready")
        # ...the hanging one would use all of it: a second signal cuts it short
        node.proc.send_signal(signal.SIGTERM)
        assert node.wait_exit() == 0
        node.wait_for_log(r"shutting down with 1 step\(s\) still running")
    finally:
        node.kill()
    events = _events(data, chain)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    slow_done = [e for e in events if e["type"] == "step.completed" and e["data"]["step"] == "slow"]
    assert len(slow_done) == 1

    node = NodeProcess(data, config)
    try:
        assert node.recovered() == 2  # the chain (b not run yet) and the hanging step
        with Client(data_dir=data, timeout=WAIT) as c:
            final = c.wait(chain, timeout=WAIT)
            assert final.status == "completed"
            assert final.results["slow"].attempts == 1
            _until(c, hang, "h", "running")
            assert c.abort_workflow(hang).status == "aborted"
            hang_events = c.get_events(hang)
            assert any(
                e.type == "step.redispatched" and e.data.get("reason") == "recovery"
                for e in hang_events
            )
            chain_events = c.get_events(chain)
        node.proc.send_signal(signal.SIGTERM)
        assert node.wait_exit() == 0
    finally:
        node.kill()
    completed = [e.data["step"] for e in chain_events if e.type == "step.completed"]
    assert sorted(completed) == ["a", "b", "slow"]  # each committed once
    assert not [e for e in chain_events if e.type == "step.redispatched"]  # nothing re-ran
    lines = record.read_text().split()
    assert lines == [chain, "a", "1", chain, "b", "1"]


def test_sighup_stops_the_node_as_sigterm_does(setup: tuple[Path, Path, Path]) -> None:
    # Its default action killed the node without a drain (exit 129).
    data, config, _ = setup
    node = NodeProcess(data, config)
    try:
        with Client(data_dir=data, timeout=WAIT) as c:
            assert c.health()["status"] == "ok"
        assert sorted(p.name for p in data.glob("*.sock")) == [
            "control.sock",
            "events.sock",
            "workers.sock",
        ]
        node.proc.send_signal(signal.SIGHUP)
        node.wait_for_log(r"signal \d+: shutting down")
        assert node.wait_exit() == 0
    finally:
        node.kill()
    assert list(data.glob("*.sock")) == []  # the events and workers files were left behind
