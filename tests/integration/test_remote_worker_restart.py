"""A worker the node did not start (``tamma-node worker`` on another machine) outlives its
node's stop: the node stops its own local workers, and a remote one joins the node that
comes back, as it does after the node crashed. Told to stop, it exited 0, so a node's
routine restart took its whole remote fleet down for good (a service manager restarts a
worker that failed, not one that ended well)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tamma_actors import Client
from tamma_actors._config import load_node_config
from tamma_actors._node import Node
from tamma_actors._worker import Worker
from tests.workers import RunningWorker, until, workers_of

pytestmark = pytest.mark.integration

WAIT = 30.0
ONE_STEP = {"name": "one", "steps": [{"name": "a", "implementation": "noop"}]}


def test_a_remote_worker_outlives_its_nodes_stop_and_joins_the_next_one(
    short_dir: Path,
) -> None:
    cfg = load_node_config(
        None, data_dir=short_dir / "var", workers=1, heartbeat_interval=0.2,
        heartbeat_timeout=2.0,
    )  # fmt: skip
    with Node(cfg), Client(cfg.control_address, timeout=WAIT) as client:
        remote = RunningWorker(Worker(cfg.workers_address, worker_id="w-remote",
                                      heartbeat_interval=0.2))  # fmt: skip
        try:
            until(lambda: len(workers_of(client)) == 2, "both workers joined")
        except BaseException:
            remote.stop()
            raise
    try:
        with Node(cfg), Client(cfg.control_address, timeout=WAIT) as client:
            until(lambda: "w-remote" in workers_of(client), "the remote worker came back")
            assert client.wait(client.start_workflow(ONE_STEP).id, WAIT).status == "completed"
    finally:
        remote.stop()
    assert remote.code == 0
