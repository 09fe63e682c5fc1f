"""Which of a worker's offers a node takes: names the node gates by its own settings
(``shell``, ``record``) never become runnable because a worker offers them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tamma_actors import Client, WorkflowValidationError
from tamma_actors._config import load_node_config
from tamma_actors._node import Node
from tamma_actors._worker import Worker

pytestmark = pytest.mark.integration

WAIT = 30.0
SHELL = {"name": "s", "steps": [{"name": "a", "implementation": "shell",
                                 "config": {"command": "true"}}]}  # fmt: skip


def _until(cond: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT
    while not cond():
        assert time.monotonic() < deadline, "not in time"
        threading.Event().wait(0.02)


def _workers(client: Client) -> dict[str, dict[str, Any]]:
    return {w["worker_id"]: w for w in client.health()["workers"]["workers"]}


class _Run:
    """A Worker on a thread of this process; always stopped and closed."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.code: int | None = None
        self.thread = threading.Thread(target=self._run, name="test-worker")
        self.thread.start()

    def _run(self) -> None:
        self.code = self.worker.run()

    def ended(self) -> int | None:
        self.thread.join(WAIT)
        return None if self.thread.is_alive() else self.code

    def close(self) -> None:
        self.worker.request_stop()
        self.thread.join(WAIT)
        self.worker.close()


@pytest.mark.parametrize("allow_shell", [False, True])
def test_a_worker_offering_shell_runs_it_only_on_a_node_that_allows_shell(
    short_dir: Path, allow_shell: bool
) -> None:
    cfg = load_node_config(
        None, data_dir=short_dir / "var", workers=0, heartbeat_interval=0.2,
        allow_shell=allow_shell,
    )  # fmt: skip
    with Node(cfg), Client(cfg.control_address, timeout=WAIT) as client:
        run = _Run(Worker(cfg.workers_address, worker_id="w-sh", heartbeat_interval=0.2,
                          enabled={"shell", "record"}))  # fmt: skip
        try:
            _until(lambda: "w-sh" in _workers(client))
            plugins = set(_workers(client)["w-sh"]["plugins"])
            assert ("shell" in plugins) is allow_shell and "record" not in plugins
            if allow_shell:
                done = client.wait(client.start_workflow(SHELL).id, timeout=WAIT)
                assert done.status == "completed"
            else:
                with pytest.raises(WorkflowValidationError, match="implementation 'shell'"):
                    client.start_workflow(SHELL)
        finally:
            run.close()
