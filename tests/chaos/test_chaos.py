"""Chaos: SIGKILL the node and its workers at seeded-random moments under load.

Each test runs a real `tamma-node run` with two real workers, keeps starting a mix of
workflows (chains, diamonds, retries with `fail`, wide joins, parallel fan-outs of `record`
items, decisions, subflows, `wait` steps that a restart finds resting; `record` steps
everywhere)
and kills processes while that goes on (the node test ends with a graceful SIGTERM under
load, which must exit 0). Afterwards every check of `harness.check_store`
must hold: every acknowledged start reached a terminal status, each step's result was
committed exactly once, `record` steps ran at least once and again only where their result
had not been committed, event sequences are gap-free, and the store verifies clean
(through `tamma admin verify` on the live node, and offline).

The seed is fixed (``TAMMA_CHAOS_SEED`` overrides it) so a failure can be replayed.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import psutil
import pytest

from tamma_actors import Client
from tests.chaos.harness import (
    KINDS,
    SEED,
    WAIT,
    NodeProcess,
    Submitter,
    check_store,
    cli_verify,
    kill_and_mark,
    mark_kill,
    pause,
    settle_and_stop,
    wait_all,
    write_config,
)

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(240)]


@pytest.mark.parametrize(
    ("durability", "kills"),
    # relaxed skips the fsync per commit: a dead *process* must still lose nothing
    [("full", 4), ("relaxed", 2)],
)
def test_the_node_is_killed_at_random_moments_under_load(
    short_dir: Path, durability: str, kills: int
) -> None:
    rng = random.Random(SEED + kills)
    data, log = short_dir / "var", short_dir / "record.log"
    config = write_config(short_dir / "node.toml", data, durability=durability)
    acked: list[str] = []
    node = NodeProcess(config)
    try:
        for kill in range(kills):
            submitter = Submitter(data, rng, log, acked)
            pause(rng.uniform(0.3, 1.5))  # the kill moment: anywhere, often mid-commit
            at = time.time()
            node.kill()
            submitter.stop()
            mark_kill(log, kill, at)
            node = NodeProcess(config)
            assert node.recovered >= 0
        # a graceful stop under load: new starts are refused, what runs finishes, exit 0
        submitter = Submitter(data, rng, log, acked)
        pause(rng.uniform(0.3, 1.0))
        assert node.terminate() == 0
        submitter.stop()
        node = NodeProcess(config)
        wait_all(data, acked)
        verified = cli_verify(data)
        assert verified.returncode == 0, verified.stdout + verified.stderr
        assert node.terminate() == 0
    finally:
        node.kill()
    assert len(acked) > 10, "the load never got going"
    counts = check_store(data, acked, log, completed=True)
    assert counts["kills"] == kills
    assert counts["kinds"] >= set(KINDS) | {"child"}


def _worker_pids(client: Client) -> list[int]:
    """The pids of the node's busy workers (of all, if none is busy), once it has one: right
    after a death, or while a cold machine starts the first ones, it may have none yet."""
    deadline = time.monotonic() + WAIT
    while True:
        workers = client.health()["workers"]["workers"]
        pids = [w["pid"] for w in workers if w["busy"]] or [w["pid"] for w in workers]
        if pids:
            return pids
        assert time.monotonic() < deadline, f"the node had no worker for {WAIT}s"
        time.sleep(0.05)


def test_workers_are_killed_at_random_while_the_node_runs(short_dir: Path) -> None:
    rng = random.Random(SEED + 1)
    data, log = short_dir / "var", short_dir / "record.log"
    config = write_config(short_dir / "node.toml", data)
    acked: list[str] = []
    node = NodeProcess(config)
    killed = 0
    try:
        submitter = Submitter(data, rng, log, acked)
        with Client(data_dir=data, timeout=WAIT) as client:
            for _ in range(6):
                pause(rng.uniform(0.2, 0.8))
                busy = _worker_pids(client)
                kill_and_mark(psutil.Process(rng.choice(busy)), log, killed)
                killed += 1
        settle_and_stop(node, submitter, data, acked)
    finally:
        node.kill()
    assert killed == 6 and len(acked) > 10
    counts = check_store(data, acked, log, completed=False)
    assert counts["kills"] == killed
    assert counts["kinds"] >= set(KINDS) | {"child"}


def test_the_store_writer_process_is_killed_at_random_while_the_node_runs(
    short_dir: Path,
) -> None:
    """The node restarts its writer; what the dead one had not confirmed is re-read from
    the store, so every acknowledged start still completes."""
    rng = random.Random(SEED + 2)
    data, log = short_dir / "var", short_dir / "record.log"
    config = write_config(short_dir / "node.toml", data)
    acked: list[str] = []
    node = NodeProcess(config)
    killed = 0
    try:
        submitter = Submitter(data, rng, log, acked)
        with Client(data_dir=data, timeout=WAIT) as client:
            for _ in range(3):  # a 4th death within 10 s would stop the node (intensity)
                pause(rng.uniform(0.5, 1.5))
                writer = client.health()["writer"]
                kill_and_mark(psutil.Process(writer["process"]), log, killed)
                killed += 1
                deadline = time.monotonic() + WAIT
                while (
                    (now := client.health()["writer"]) is None
                    or not now["alive"]
                    or (now["process"] == writer["process"])
                ):
                    assert time.monotonic() < deadline, "the node did not restart its writer"
                    pause(0.05)
            pause(2.0)  # load on the last writer too
        settle_and_stop(node, submitter, data, acked)
    finally:
        node.kill()
    assert killed == 3 and len(acked) > 10
    counts = check_store(data, acked, log, completed=True, steps_outlive_kills=True)
    assert counts["kills"] == killed
    assert counts["kinds"] >= set(KINDS) | {"child"}
