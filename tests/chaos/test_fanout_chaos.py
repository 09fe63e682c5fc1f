"""SIGKILL a node in the middle of a fan-out: after the restart every item completes once
in the event log, and no item whose result was committed before the kill runs again.

Items are `record` steps: each run appends ``<execution> fan[<i>] <attempt>`` to a log; the
test appends a ``KILL`` marker once the killed node and its workers are gone, so a line
after the marker is a run by the restarted node.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from pathlib import Path

import pytest

from tamma_actors import Client
from tamma_actors._lmdb_store import LmdbStore
from tests.chaos.harness import SEED, WAIT, NodeProcess, write_config

pytestmark = pytest.mark.chaos

ITEMS = 60


@pytest.mark.parametrize("round_", range(2))
def test_a_killed_node_resumes_a_fan_out_without_rerunning_committed_items(
    short_dir: Path, round_: int
) -> None:
    rng = random.Random(SEED + round_)
    data, log = short_dir / "var", short_dir / "runs.log"
    config = write_config(short_dir / "node.toml", data)
    spec = {
        "name": "chaos-fan",
        "retry_policy": {"max_attempts": 5, "base_delay": 10, "jitter": 0},
        "steps": [
            {
                "name": "fan",
                "type": "parallel",
                "implementation": "record",
                "config": {"items": list(range(ITEMS)), "max_concurrency": 3, "path": str(log)},
            },
            {"name": "after", "implementation": "noop", "dependencies": ["fan"]},
        ],
    }
    node = NodeProcess(config)
    try:
        control = f"ipc://{data}/control.sock"
        with Client(control, timeout=WAIT) as client:
            eid = client.start_workflow(spec).id
            deadline = time.monotonic() + WAIT
            wanted = rng.randint(5, ITEMS // 2)  # kill somewhere in the first half
            while _runs(log) < wanted:
                assert time.monotonic() < deadline, "the fan-out did not get going"
                time.sleep(0.002)
        node.kill()
        killed_at = time.time()
        with log.open("a") as fh:
            fh.write(f"KILL 1 {killed_at}\n")
        with LmdbStore(data / "store") as store:
            before = {
                e["data"]["index"]
                for e in store.read_events(eid)
                if e["type"] == "step.item_completed"
            }
        assert 0 < len(before) < ITEMS, "the kill did not land in the middle of the fan-out"
        node = NodeProcess(config)
        assert node.recovered == 1
        with Client(control, timeout=WAIT) as client:
            final = client.wait(eid, timeout=WAIT)
            assert final.status == "completed", final.error
            assert final.results["fan"].data == [{"recorded": True}] * ITEMS
            events = client.get_events(eid)
    finally:
        node.kill()
    completed = Counter(e.data["index"] for e in events if e.type == "step.item_completed")
    assert completed == Counter(range(ITEMS))  # every item's result committed exactly once
    epoch, reruns = 0, []
    for line in log.read_text().splitlines():
        if line.startswith("KILL"):
            epoch += 1
            continue
        execution, step, _attempt = line.split()
        index = int(step.removeprefix("fan[").removesuffix("]"))
        if epoch == 1 and execution == eid and index in before:
            reruns.append(index)
    assert reruns == [], f"items re-run after their result was committed: {reruns}"
    ran = {int(line.split()[1][4:-1]) for line in log.read_text().splitlines() if "fan[" in line}
    assert ran == set(range(ITEMS))


def _runs(log: Path) -> int:
    try:
        return log.read_text().count("\n")
    except FileNotFoundError:
        return 0
