"""A worker running on a thread of the test's own process, a worker process run to its
end, and the waits that tests of workers and admission share."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from tamma_actors._worker import Worker

TIMEOUT = 20.0
T = TypeVar("T")


def until(cond: Callable[[], T], what: str = "the condition", timeout: float = 30.0) -> T:
    """``cond()`` once it is true, polled every 20 ms (bounded: an AssertionError naming
    ``what`` after ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while not (found := cond()):
        assert time.monotonic() < deadline, f"not in time: {what}"
        time.sleep(0.02)
    return found


def workers_of(client: Any) -> dict[str, dict[str, Any]]:
    """The workers a node's health lists, by worker id."""
    return {w["worker_id"]: w for w in client.health()["workers"]["workers"]}


class RunningWorker:
    """A :class:`Worker` running on a thread of this process; ``stop`` always stops and
    closes it."""

    def __init__(self, worker: Worker, timeout: float = TIMEOUT) -> None:
        self.worker = worker
        self.timeout = timeout
        self.code: int | None = None
        self.thread = threading.Thread(target=self._run, name="test-worker")
        self.thread.start()

    def _run(self) -> None:
        self.code = self.worker.run()

    def ended(self) -> int | None:
        """Its exit code once it has ended by itself within the timeout; None if it runs."""
        self.thread.join(self.timeout)
        return None if self.thread.is_alive() else self.code

    def join(self) -> int | None:
        """Its exit code; it must end within the timeout."""
        code = self.ended()
        assert not self.thread.is_alive(), "worker did not stop"
        return code

    def stop(self) -> None:
        self.worker.request_stop()
        self.join()
        self.worker.close()


def tamma_node_worker(
    args: list[str], env: Mapping[str, str], timeout: float = TIMEOUT
) -> tuple[int, str]:
    """``tamma-node worker ARGS`` in a child process, run until it exits by itself (killed
    after ``timeout``, which fails the test): its exit code and its standard error."""
    cmd = [sys.executable, "-m", "tamma_actors._cli_node", "worker", *args]
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    try:
        _, err = proc.communicate(timeout=timeout)
    finally:
        proc.kill()
        proc.wait(timeout)
    return proc.returncode, err
