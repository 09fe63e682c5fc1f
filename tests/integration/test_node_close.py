"""A node closed just after it started, while the commits of its recovery are in flight:
their effects (dispatches to the worker pool, events to the bus) run before those children
stop, instead of each logging "effect after commit failed" with a traceback (as a
`tamma-node demo` refused an invalid workflow on a data directory with running
executions, twelve tracebacks)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tamma_actors import Client
from tamma_actors._config import load_node_config
from tamma_actors._node import Node
from tests.workers import until

pytestmark = pytest.mark.integration

WAIT = 30.0
HANG = {"name": "h", "steps": [{"name": "h", "implementation": "hang"}]}


def test_a_node_closed_during_its_recovery_commits_runs_their_effects_first(
    short_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = load_node_config(None, data_dir=short_dir / "var", workers=1, cancel_grace=0.5)
    with Node(cfg), Client(cfg.control_address, timeout=WAIT) as client:
        ids = [client.start_workflow(HANG).id for _ in range(6)]
        for eid in ids:
            until(lambda e=eid: client.get_workflow(e).results["h"].status == "running")
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        Node(cfg).start().close()  # recovery sends the six steps again, then it closes
    assert not [r for r in caplog.records if "effect after commit failed" in r.getMessage()]
    with Node(cfg), Client(cfg.control_address, timeout=WAIT) as client:
        assert {client.get_workflow(eid).status for eid in ids} == {"running"}
        for eid in ids:
            client.abort_workflow(eid)
