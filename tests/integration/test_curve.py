"""TCP endpoints with CURVE: only peers that know the node's public key get through."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from tamma_actors import Client, ConfigError, RequestTimeout
from tamma_actors import _wire as wire
from tamma_actors._codec import unpack
from tamma_actors._config import load_node_config
from tamma_actors._curve import curve_client, curve_server, keypair
from tamma_actors._node import Node
from tests.workers import tamma_node_worker

pytestmark = pytest.mark.integration

WAIT = 60.0
TOKEN = "curve-test-operator"
WORKER_TOKEN = "curve-test-admin"  # a worker joins a node with tokens with an admin one


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def dash_keypair() -> tuple[str, str]:
    """A key pair whose public key begins with "-" (z85 may: 1 in 85), which an argument
    parser takes for an option: the node passed it so to its own workers, and they exited 2."""
    while True:
        public, secret = keypair()
        if public.startswith("-"):
            return public, secret


@pytest.fixture
def secured(short_dir: Path) -> Iterator[tuple[Node, str]]:
    public, secret = dash_keypair()  # the awkward case, every time
    ports = [free_port() for _ in range(3)]
    cfg = load_node_config(
        None,
        data_dir=short_dir / "var",
        workers=1,
        heartbeat_interval=0.2,
        control_endpoint=f"tcp://127.0.0.1:{ports[0]}",
        workers_endpoint=f"tcp://127.0.0.1:{ports[1]}",
        events_endpoint=f"tcp://127.0.0.1:{ports[2]}",
        curve_public_key=public,
        curve_secret_key=secret,
        # a tcp:// control endpoint needs them
        tokens={TOKEN: "operator", WORKER_TOKEN: "admin"},
    )
    with Node(cfg) as node:
        yield node, public


def test_a_client_with_the_key_is_served_and_workers_join_over_curve(
    secured: tuple[Node, str],
) -> None:
    node, public = secured
    cfg = node.config
    ctx = zmq.Context.instance()
    # a node with tokens: the subscription carries one (an XSUB's subscription message)
    sub = ctx.socket(zmq.XSUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.send(b"\x01" + TOKEN.encode() + b"\x00workflow.completed")
    curve_client(sub, cfg.events_address, public)
    sub.connect(cfg.events_address)
    # --curve-server-key=KEY: a z85 key may begin with "-", which argparse takes for an option
    remote = subprocess.Popen(
        [sys.executable, "-m", "tamma_actors._cli_node", "worker",
         "--connect", cfg.workers_address, f"--curve-server-key={public}",
         "--worker-id", "remote-1", "--heartbeat", "0.2"],
        env={**os.environ, wire.TOKEN_ENV: WORKER_TOKEN},
    )  # fmt: skip
    try:
        with Client(
            cfg.control_address, token=TOKEN, timeout=WAIT, curve_server_key=public
        ) as client:
            for _ in range(200):
                workers = client.health()["workers"]["workers"]
                if {w["worker_id"] for w in workers} >= {"remote-1"} and len(workers) == 2:
                    break
                threading.Event().wait(0.05)
            else:
                raise AssertionError(f"the remote worker never joined: {workers}")
            run = client.start_workflow(
                {"name": "c", "steps": [{"name": "a", "implementation": "noop"}]}
            )
            assert client.wait(run.id, timeout=WAIT).status == "completed"
        assert sub.poll(int(WAIT * 1000))
        assert unpack(sub.recv_multipart()[-1])["type"] == "workflow.completed"
    finally:
        remote.terminate()
        remote.wait(WAIT)
        sub.close(0)


@pytest.mark.parametrize("token", [None, TOKEN, "not-a-token"])
def test_a_peer_with_the_key_but_no_admin_token_cannot_join_as_a_worker(
    secured: tuple[Node, str], token: str | None
) -> None:
    """Every client is given the node's public key; a worker sees every step's inputs and
    decides its result, so it needs an admin token too. Refused, it says why and exits 1
    (retrying cannot help), and it never counts as a worker."""
    node, public = secured
    cfg = node.config
    env = {k: v for k, v in os.environ.items() if k != wire.TOKEN_ENV}
    if token is not None:
        env[wire.TOKEN_ENV] = token
    code, err = tamma_node_worker(
        ["--connect", cfg.workers_address, f"--curve-server-key={public}",
         "--worker-id", "rogue", "--heartbeat", "0.2", "--allow-shell"],
        env, WAIT,
    )  # fmt: skip
    assert code == 1
    [line] = [x for x in err.splitlines() if "the node refused it" in x]
    assert "admin token" in line
    with Client(cfg.control_address, token=TOKEN, timeout=WAIT, curve_server_key=public) as c:
        assert "rogue" not in {w["worker_id"] for w in c.health()["workers"]["workers"]}


def test_a_client_without_the_key_gets_nothing(secured: tuple[Node, str]) -> None:
    node, _public = secured
    # Right after its handshake is refused a client has no connection for a moment (its
    # send would fail at once): it waits for one like for a reply, and times out.
    for timeout in (0.5, 0.05, 0.5):
        with (
            Client(node.config.control_address, token=TOKEN, timeout=timeout) as plain,
            pytest.raises(RequestTimeout),
        ):
            plain.health()
    wrong, _ = keypair()
    with (
        Client(
            node.config.control_address, token=TOKEN, timeout=0.5, curve_server_key=wrong
        ) as impostor,
        pytest.raises(RequestTimeout),
    ):
        impostor.health()


def test_malformed_keys_are_configuration_errors() -> None:
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    try:
        with pytest.raises(ConfigError, match="curve_secret_key"):
            curve_server(sock, "tcp://127.0.0.1:1", "not a key")
        with pytest.raises(ConfigError, match="public key"):
            curve_client(sock, "tcp://127.0.0.1:1", "not a key")
        curve_server(sock, "ipc:///tmp/x", "not a key")  # ipc: no CURVE, nothing checked
    finally:
        sock.close(0)
    with pytest.raises(ConfigError, match="public key"):
        Client("tcp://127.0.0.1:1", curve_server_key="bad")
