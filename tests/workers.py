"""A worker running on a thread of the test's own process (tests of workers and admission)."""

from __future__ import annotations

import threading

from tamma_actors._worker import Worker

TIMEOUT = 20.0


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
