"""The node's supervision tree on a real node: strategies restart the right children, the
node keeps serving, and a child that keeps dying escalates to a non-zero exit."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from tamma_actors import Client
from tamma_actors._config import load_node_config
from tamma_actors._errors import TransportError
from tamma_actors._eventbus import EventBus
from tamma_actors._node import EXIT_ESCALATED, EXIT_OK, Node
from tamma_actors._supervision import load_tree

pytestmark = pytest.mark.integration

WAIT = 60.0
TREE = """
[supervisor]
strategy = "{strategy}"
max_restarts = {max_restarts}
within_seconds = 60

[[child]]
name = "store_writer"
kind = "store_writer"

[[child]]
name = "event_bus"
kind = "event_bus"

[[child]]
name = "worker_pool"
kind = "worker_pool"

[[child]]
name = "control_server"
kind = "control_server"
"""


class Running:
    """A started node whose supervision loop runs on a thread."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.stop = threading.Event()
        self.exit: Future[int] = Future()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        self.exit.set_result(self.node.run(self.stop, check_interval=0.05))

    def refs(self) -> dict[str, Any]:
        n = self.node
        return {
            "store_writer": n._writer.writer,
            "event_bus": n._bus.ref,
            "worker_pool": n._pool.ref,
            "control_server": n._control.ref,
        }


@pytest.fixture
def make_node(short_dir: Path) -> Iterator[Any]:
    started: list[Running] = []

    def make(strategy: str, max_restarts: int = 3) -> Running:
        path = short_dir / f"{strategy}.toml"
        path.write_text(TREE.format(strategy=strategy, max_restarts=max_restarts))
        cfg = load_node_config(
            None, data_dir=short_dir / "var", workers=1, heartbeat_interval=0.2, supervision=path
        )
        running = Running(Node(cfg, tree=load_tree(path)).start())
        started.append(running)
        return running

    yield make
    for running in started:
        running.stop.set()
        running.thread.join(WAIT)
        running.node.close()


def kill_bus(running: Running) -> None:
    ref = running.node._bus.ref
    assert ref is not None
    ref.stop()


def wait_for_restart(running: Running, before: dict[str, Any], name: str) -> dict[str, Any]:
    for _ in range(400):
        now = running.refs()
        if now[name] is not None and now[name] is not before[name]:
            return now
        threading.Event().wait(0.025)
    raise AssertionError(f"{name} was not restarted")


def serves(running: Running) -> bool:
    with Client(running.node.config.control_address, timeout=WAIT) as client:
        spec = {"name": "after", "steps": [{"name": "a", "implementation": "noop"}]}
        run = client.start_workflow(spec)
        return client.wait(run.id, timeout=WAIT).status == "completed"


@pytest.mark.parametrize(
    ("strategy", "restarted"),
    [
        ("one_for_one", {"event_bus"}),
        ("rest_for_one", {"event_bus", "worker_pool", "control_server"}),
        ("one_for_all", {"store_writer", "event_bus", "worker_pool", "control_server"}),
    ],
)
def test_a_dead_child_restarts_what_its_strategy_says(
    make_node: Any, strategy: str, restarted: set[str]
) -> None:
    running = make_node(strategy)
    assert serves(running)
    before = running.refs()
    kill_bus(running)
    after = wait_for_restart(running, before, "event_bus")
    changed = {name for name in before if after[name] is not before[name]}
    assert changed == restarted
    assert serves(running)  # the node went on serving with its new children
    assert not running.exit.done()
    running.stop.set()
    assert running.exit.result(WAIT) == EXIT_OK


def test_a_child_that_keeps_dying_escalates(make_node: Any) -> None:
    running = make_node("one_for_one", max_restarts=1)
    before = running.refs()
    kill_bus(running)
    wait_for_restart(running, before, "event_bus")
    kill_bus(running)  # a second death within the window: more than max_restarts
    assert running.exit.result(WAIT) == EXIT_ESCALATED


def test_a_child_that_cannot_bind_again_counts_as_dying_again(
    make_node: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    running = make_node("one_for_one", max_restarts=2)

    def refuse(self: EventBus) -> None:
        raise TransportError("cannot bind the events socket: taken meanwhile")

    monkeypatch.setattr(EventBus, "on_start", refuse)
    kill_bus(running)
    # two restarts that could not bind, then one more than max_restarts
    assert running.exit.result(WAIT) == EXIT_ESCALATED
    refusals = [r for r in caplog.records if "could not be restarted" in r.getMessage()]
    assert len(refusals) == 2
    assert (
        refusals[0]
        .getMessage()
        .startswith("child event_bus could not be restarted: events_endpoint 'ipc://")
    )
    assert "Unhandled exception" not in caplog.text


def test_a_child_whose_restart_fails_otherwise_counts_as_dying_again(
    make_node: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    running = make_node("one_for_one", max_restarts=2)

    def fail(self: EventBus) -> None:
        raise OSError(24, "Too many open files")  # not a bind refusal: the node goes on

    monkeypatch.setattr(EventBus, "on_start", fail)
    kill_bus(running)
    assert running.exit.result(WAIT) == EXIT_ESCALATED  # after its restart intensity
    refusals = [r for r in caplog.records if "could not be restarted" in r.getMessage()]
    assert len(refusals) == 2 and refusals[0].exc_info is not None
