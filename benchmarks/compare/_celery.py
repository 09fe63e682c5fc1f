"""W1-W4 on Celery: a redis-server on loopback (broker and result backend, no
persistence) and one ``celery worker --pool prefork --concurrency 2``."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks._workloads import Sizes
from benchmarks.compare._tasks import one_at_a_time

__all__ = ["celery_system"]

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=20)


@contextlib.contextmanager
def celery_system(scratch: Path) -> Iterator[Any]:
    """Redis + a prefork worker of 2 processes; yields the app's module (its tasks)."""
    server = shutil.which("redis-server")
    if server is None:
        raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
    port = _free_port()
    url = f"redis://127.0.0.1:{port}/0"
    os.environ["TAMMA_CMP_REDIS"] = url
    log = open(scratch / "celery.log", "ab")  # noqa: SIM115 - closed below
    redis = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=log, stderr=log, start_new_session=True,
    )  # fmt: skip
    worker = None
    try:
        from benchmarks.compare import _celery_app as app_module

        cmd = [
            sys.executable, "-m", "celery", "-A", "benchmarks.compare._celery_app", "worker",
            "--pool", "prefork", "--concurrency", "2", "--loglevel", "WARNING", "--without-gossip",
            "--without-mingle", "--without-heartbeat",
        ]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        worker = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=log, stderr=log, start_new_session=True
        )
        _wait_worker(app_module.app)
        yield app_module
    finally:
        if worker is not None:
            _stop(worker)
        _stop(redis)
        log.close()


def _wait_worker(app: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if app.control.ping(timeout=0.5):
                return
        time.sleep(0.1)
    raise RuntimeError("the celery worker did not answer a ping within 60s")


def w1(m: Any, sizes: Sizes) -> dict[str, float]:
    return one_at_a_time(
        sizes.w1_starts,
        lambda i: m.noop.apply_async((i,)),
        lambda result: result.get(timeout=sizes.timeout),
    )


def _chains(m: Any, count: int, steps: int, make: Any) -> float:
    from celery import chain  # type: ignore[import-untyped]

    began = time.perf_counter()
    results = [chain(*[make(i, k) for k in range(steps)]).apply_async() for i in range(count)]
    for result in results:
        result.get(timeout=300)
    return time.perf_counter() - began


def w2(m: Any, sizes: Sizes) -> dict[str, float]:
    def step(i: int, k: int) -> Any:
        return m.noop.s(i) if k == 0 else m.noop.s()

    wall = _chains(m, sizes.w2_workflows, sizes.w2_steps, step)
    return {"steps_per_s": sizes.w2_workflows * sizes.w2_steps / wall}


def w3(m: Any, sizes: Sizes) -> dict[str, float]:
    from celery import chain, chord

    began = time.perf_counter()
    fan = chord([m.noop.si(i) for i in range(sizes.w3_items)], m.noop.s())
    chain(m.noop.si(0), fan).apply_async().get(timeout=300)
    return {"wall_s": time.perf_counter() - began}


def w4(m: Any, sizes: Sizes) -> dict[str, float]:
    wall = _chains(m, sizes.w4_workflows, sizes.w4_steps, lambda i, k: m.cpu.si(sizes.w4_cpu_ms))
    return {"wall_s": wall}
