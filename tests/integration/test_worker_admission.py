"""Who a node admits as a worker, and which of a worker's offers it takes.

A worker sees every step's inputs and decides every step's result: on a node with tokens
it needs an admin one (the node's local workers get this run's own, unasked). Names the
node gates by its own settings (``shell``, ``record``) never become runnable because a
worker offers them.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import zmq

from tamma_actors import Client, Forbidden, WorkflowValidationError
from tamma_actors import _wire as wire
from tamma_actors._cli_node import main as tamma_node
from tamma_actors._config import load_node_config
from tamma_actors._node import Node
from tamma_actors._worker import EXIT_OK, EXIT_REFUSED, Worker
from tests.workers import RunningWorker, until, workers_of

pytestmark = pytest.mark.integration

WAIT = 30.0
ADMIN, OPERATOR, VIEWER = "adm-token-1", "op-token-1", "view-token-1"
WORKER = "worker-token-1"  # a worker token: admits a worker, nothing on the control socket
TOKENS = {ADMIN: "admin", OPERATOR: "operator", VIEWER: "viewer"}
NOOP = {"name": "n", "steps": [{"name": "a", "implementation": "noop"}]}
SHELL = {"name": "s", "steps": [{"name": "a", "implementation": "shell",
                                 "config": {"command": "true"}}]}  # fmt: skip


@pytest.fixture
def guarded(short_dir: Path) -> Iterator[tuple[Node, Client]]:
    """A node with tokens and one local worker, and an operator's client."""
    cfg = load_node_config(
        None, data_dir=short_dir / "var", workers=1, heartbeat_interval=0.2, tokens=TOKENS
    )
    with Node(cfg) as node, Client(cfg.control_address, token=OPERATOR, timeout=WAIT) as c:
        yield node, c


def test_local_workers_join_a_node_with_tokens_unasked(guarded: tuple[Node, Client]) -> None:
    node, client = guarded
    until(lambda: len(workers_of(client)) == 1)
    assert client.wait(client.start_workflow(NOOP).id, timeout=WAIT).status == "completed"
    [pid] = client.health()["workers"]["local_pids"]
    assert not any(node._worker_token in arg for arg in psutil.Process(pid).cmdline())


def test_local_workers_get_none_of_the_nodes_tamma_variables(
    short_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A node configured through its environment handed TAMMA_TOKENS (and a secret key) to
    # its local workers, where every step could read them; a worker needs none of them.
    monkeypatch.setenv("TAMMA_TOKENS", f'{{"{ADMIN}": "admin", "{OPERATOR}": "operator"}}')
    monkeypatch.setenv("TAMMA_HEARTBEAT_INTERVAL", "0.2")
    cfg = load_node_config(None, data_dir=short_dir / "var", workers=1)
    assert cfg.tokens == {ADMIN: "admin", OPERATOR: "operator"}
    with Node(cfg), Client(cfg.control_address, token=OPERATOR, timeout=WAIT) as client:
        until(lambda: len(workers_of(client)) == 1)
        [pid] = client.health()["workers"]["local_pids"]
        environ = psutil.Process(pid).environ()
    own = (wire.TOKEN_ENV, wire.ROUTE_ENV)  # its own token and routing id, drawn for it
    assert not [name for name in environ if name.startswith("TAMMA_") and name not in own]
    assert "PATH" in environ


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (None, "a token is required (a worker needs a worker token or an admin token)"),
        ("not-a-token", "unknown token (a worker needs a worker token or an admin token)"),
        (
            OPERATOR,
            "a worker needs a worker token or an admin token, not a token of role 'operator'",
        ),
        (VIEWER, "a worker needs a worker token or an admin token, not a token of role 'viewer'"),
    ],
)
def test_a_worker_without_an_admin_token_is_refused_and_exits(
    guarded: tuple[Node, Client],
    token: str | None,
    reason: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    node, client = guarded
    address = node.config.workers_address
    run = RunningWorker(Worker(address, worker_id="w-x", heartbeat_interval=0.2, token=token))
    try:
        assert run.ended() == EXIT_REFUSED
    finally:
        run.stop()
    assert "w-x" not in workers_of(client)
    counted = client.health()["workers"]["refused"]  # an operator sees it without the log
    assert counted["count"] >= 1
    assert counted["last"]["worker_id"] == "w-x" and counted["last"]["reason"] == reason
    assert abs(counted["last"]["at"] - time.time()) < WAIT
    refused = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert f"worker 'w-x' refused: {reason}" in refused
    assert any(f"worker w-x: the node refused it: {reason}" in line for line in refused)


def test_tamma_node_worker_says_hello_with_its_token_option(
    guarded: tuple[Node, Client], caplog: pytest.LogCaptureFixture
) -> None:
    node, _ = guarded
    argv = ["worker", "--connect", node.config.workers_address, "--worker-id", "w-cli"]
    assert tamma_node([*argv, "--heartbeat", "0.2", "--token", OPERATOR]) == 1
    refused = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert (
        "worker 'w-cli' refused: a worker needs a worker token or an admin token, not a token "
        "of role 'operator'" in refused
    )


def test_a_worker_with_an_admin_token_joins_and_runs_steps(
    guarded: tuple[Node, Client],
) -> None:
    node, client = guarded
    address = node.config.workers_address
    run = RunningWorker(Worker(address, worker_id="w-admin", heartbeat_interval=0.2, token=ADMIN))
    try:
        until(lambda: "w-admin" in workers_of(client))
        assert client.wait(client.start_workflow(NOOP).id, timeout=WAIT).status == "completed"
    finally:
        run.stop()
    assert run.code == EXIT_OK


def test_a_worker_token_admits_a_worker_and_opens_nothing_on_the_control_socket(
    short_dir: Path,
) -> None:
    cfg = load_node_config(
        None, data_dir=short_dir / "var", workers=0, heartbeat_interval=0.2, tokens=TOKENS,
        worker_tokens=[WORKER],
    )  # fmt: skip
    with Node(cfg), Client(cfg.control_address, token=OPERATOR, timeout=WAIT) as client:
        worker = Worker(cfg.workers_address, worker_id="w-tok", heartbeat_interval=0.2,
                        token=WORKER)  # fmt: skip
        run = RunningWorker(worker)
        try:
            until(lambda: "w-tok" in workers_of(client))
            assert client.wait(client.start_workflow(NOOP).id, timeout=WAIT).status == "completed"
        finally:
            run.stop()
        holder = Client(cfg.control_address, token=WORKER, timeout=WAIT)
        with holder, pytest.raises(Forbidden, match="unknown token"):
            holder.health()


def test_a_node_with_worker_tokens_alone_admits_only_their_holders(short_dir: Path) -> None:
    """No control tokens (the ipc control socket is open): the workers socket still asks
    for a worker token; the node's local workers have one of their own."""
    cfg = load_node_config(
        None, data_dir=short_dir / "var", workers=1, heartbeat_interval=0.2,
        worker_tokens=[WORKER],
    )  # fmt: skip
    with Node(cfg), Client(cfg.control_address, timeout=WAIT) as client:
        until(lambda: len(workers_of(client)) == 1)
        for token in (None, "not-a-token", ADMIN):
            stranger = Worker(cfg.workers_address, worker_id="w-x", heartbeat_interval=0.2,
                              token=token)  # fmt: skip
            run = RunningWorker(stranger)
            try:
                assert run.ended() == EXIT_REFUSED
            finally:
                run.stop()
        assert "w-x" not in workers_of(client)
        assert client.wait(client.start_workflow(NOOP).id, timeout=WAIT).status == "completed"


def _dealer(ctx: zmq.Context[Any], endpoint: str) -> zmq.Socket[bytes]:
    """A worker's socket: its routing id a secret of its own, as a Worker's."""
    sock: zmq.Socket[bytes] = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.IDENTITY, secrets.token_urlsafe(24).encode())
    sock.connect(endpoint)
    return sock


def _answer(sock: zmq.Socket[bytes], worker_id: str, token: str | None) -> str:
    """Say hello until the node answers (a socket may not be connected yet); its answer."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        sock.send(wire.encode(wire.hello(worker_id, 1, "h", 1, ["noop"], token)))
        if sock.poll(200):
            return str(wire.decode_node_frame(sock.recv(), 1 << 20)["t"])
    raise AssertionError("no answer to hello")


def test_a_peer_repeating_a_refused_hello_is_logged_once(
    guarded: tuple[Node, Client], caplog: pytest.LogCaptureFixture
) -> None:
    node, _ = guarded
    ctx: zmq.Context[Any] = zmq.Context()
    sock = _dealer(ctx, node.config.workers_address)
    try:
        with caplog.at_level(logging.WARNING, logger="tamma_actors._workerpool"):
            assert [_answer(sock, "pest", None) for _ in range(20)] == ["refused"] * 20
    finally:
        sock.close(0)
        ctx.term()
    lines = [r for r in caplog.records if r.getMessage().startswith("worker 'pest' refused")]
    assert len(lines) == 1


def test_a_refused_hello_under_a_joined_workers_id_leaves_that_worker_alone(
    short_dir: Path,
) -> None:
    """A worker is known by its connection's routing id, a secret: a hello under its
    worker id from another connection is someone else's, refused without a token, and
    takes nothing from it."""
    cfg = load_node_config(
        None, data_dir=short_dir / "var", workers=0, heartbeat_interval=0.2,
        heartbeat_timeout=10 * WAIT, tokens=TOKENS,
    )  # fmt: skip
    ctx: zmq.Context[Any] = zmq.Context()
    with Node(cfg), Client(cfg.control_address, token=OPERATOR, timeout=WAIT) as client:
        first = _dealer(ctx, cfg.workers_address)
        second = _dealer(ctx, cfg.workers_address)
        try:
            assert _answer(first, "w-1", ADMIN) == "welcome"
            assert _answer(second, "w-1", None) == "refused"
            client.start_workflow(NOOP)
            assert first.poll(int(WAIT * 1000))
            assert wire.decode_node_frame(first.recv(), 1 << 20)["t"] == "run"
            assert "w-1" in workers_of(client)
        finally:
            first.close(0)
            second.close(0)
    ctx.term()


@pytest.mark.parametrize("allow_shell", [False, True])
def test_a_worker_offering_shell_runs_it_only_on_a_node_that_allows_shell(
    short_dir: Path, allow_shell: bool
) -> None:
    cfg = load_node_config(
        None, data_dir=short_dir / "var", workers=0, heartbeat_interval=0.2,
        allow_shell=allow_shell,
    )  # fmt: skip
    with Node(cfg), Client(cfg.control_address, timeout=WAIT) as client:
        offering = Worker(
            cfg.workers_address,
            worker_id="w-sh",
            heartbeat_interval=0.2,
            enabled={"shell", "record"},
        )
        run = RunningWorker(offering)
        try:
            until(lambda: "w-sh" in workers_of(client))
            plugins = set(workers_of(client)["w-sh"]["plugins"])
            assert ("shell" in plugins) is allow_shell and "record" not in plugins
            if allow_shell:
                done = client.wait(client.start_workflow(SHELL).id, timeout=WAIT)
                assert done.status == "completed"
            else:
                with pytest.raises(WorkflowValidationError, match="implementation 'shell'"):
                    client.start_workflow(SHELL)
        finally:
            run.stop()
