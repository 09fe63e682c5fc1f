"""A peer that takes a lost worker's name gets nothing of that worker's.

A worker whose connection drops stays registered until ``heartbeat_timeout``. A peer that
then connects under the routing id a worker is known by in ``tamma health`` (its worker
id), without ever saying hello with a token, must neither be sent that worker's steps
(their inputs) nor be heard on their behalf (a forged ``started`` or ``result``), on a
node with tokens, over ipc and over tcp with CURVE.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import zmq

from tamma_actors import Client
from tamma_actors import _wire as wire
from tamma_actors._config import load_node_config
from tamma_actors._curve import curve_client, keypair
from tamma_actors._node import Node
from tests.integration.test_curve import free_port
from tests.workers import until, workers_of

pytestmark = pytest.mark.integration

WAIT = 30.0
ADMIN, OPERATOR = "takeover-admin", "takeover-operator"
VICTIM = "w-victim"
NOOP = {"name": "n", "steps": [{"name": "a", "implementation": "noop"}]}
HANG = {"name": "h", "steps": [{"name": "a", "implementation": "hang"}]}


@dataclass
class Guarded:
    node: Node
    client: Client
    server_key: str | None  # the node's CURVE public key, on tcp


@pytest.fixture(params=["ipc", "tcp+curve"])
def guarded(request: pytest.FixtureRequest, short_dir: Path) -> Iterator[Guarded]:
    """A node with tokens and no local worker; a victim's silence is lost after 3 s."""
    settings: dict[str, Any] = {}
    public = None
    if request.param == "tcp+curve":
        public, secret = keypair()
        settings = {
            "workers_endpoint": f"tcp://127.0.0.1:{free_port()}",
            "curve_public_key": public,
            "curve_secret_key": secret,
        }
    cfg = load_node_config(
        None, data_dir=short_dir / "var", workers=0, heartbeat_interval=0.2,
        heartbeat_timeout=3.0, tokens={ADMIN: "admin", OPERATOR: "operator"}, **settings,
    )  # fmt: skip
    with Node(cfg) as node, Client(cfg.control_address, token=OPERATOR, timeout=WAIT) as c:
        yield Guarded(node, c, public)


@pytest.fixture
def victim(guarded: Guarded) -> Iterator[subprocess.Popen[bytes]]:
    """A worker process holding the admin token, joined as ``w-victim``."""
    args = ["--connect", guarded.node.config.workers_address, "--worker-id", VICTIM]
    if guarded.server_key is not None:
        args.append(f"--curve-server-key={guarded.server_key}")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tamma_actors._worker", *args],
        env={**os.environ, wire.TOKEN_ENV: ADMIN},
    )
    try:
        until(lambda: VICTIM in workers_of(guarded.client), "the victim joined")
        yield proc
    finally:
        proc.kill()
        proc.wait(WAIT)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """Its connection drops; the node keeps it registered until its heartbeat timeout."""
    proc.send_signal(signal.SIGKILL)
    proc.wait(WAIT)


class Rogue:
    """A DEALER under the victim's routing id that never says hello."""

    def __init__(self, guarded: Guarded) -> None:
        self._guarded = guarded
        self._ctx: zmq.Context[Any] = zmq.Context()
        self.sock: zmq.Socket[bytes] | None = None
        self.answers: list[dict[str, Any]] = []

    def _connect(self) -> zmq.Socket[bytes]:
        endpoint = self._guarded.node.config.workers_address
        sock: zmq.Socket[bytes] = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IDENTITY, VICTIM.encode())
        curve_client(sock, endpoint, self._guarded.server_key)
        sock.connect(endpoint)
        return sock

    def take_over(self) -> None:
        """Connect until the node hears this socket: it answers it, or it takes its
        heartbeat for the victim's (a connection under an id still in use is ignored
        until the node lets go of the old one; a new one is needed each time)."""
        client = self._guarded.client
        seen = workers_of(client)[VICTIM]["last_seen"]
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            sock = self._connect()
            sock.send(wire.encode(wire.hb(VICTIM, [], 1)))
            until = time.monotonic() + 0.3
            while time.monotonic() < until:
                if sock.poll(20):
                    self.sock = sock
                    self.answers.append(self.recv())
                    return
                victim = workers_of(client).get(VICTIM)
                if victim is not None and victim["last_seen"] > seen:
                    self.sock = sock
                    return
            sock.close(0)
        raise AssertionError("the node never heard the rogue")

    def send(self, msg: dict[str, Any]) -> None:
        assert self.sock is not None
        self.sock.send(wire.encode(msg))

    def recv(self) -> dict[str, Any]:
        assert self.sock is not None
        return wire.decode_node_frame(self.sock.recv(), 1 << 24)

    def received(self) -> list[dict[str, Any]]:
        """Every frame waiting for it now."""
        while self.sock is not None and self.sock.poll(0):
            self.answers.append(self.recv())
        return self.answers

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close(0)
        self._ctx.term()


@pytest.fixture
def rogue(guarded: Guarded) -> Iterator[Rogue]:
    r = Rogue(guarded)
    try:
        yield r
    finally:
        r.close()


def test_a_peer_under_a_lost_workers_id_is_sent_none_of_its_steps(
    guarded: Guarded, victim: subprocess.Popen[bytes], rogue: Rogue
) -> None:
    _kill(victim)
    rogue.take_over()
    client = guarded.client
    client.start_workflow(NOOP, inputs={"secret": "for workers only"})
    until(
        lambda: VICTIM not in workers_of(client) or any(f["t"] == "run" for f in rogue.received()),
        "the victim lost, or its step sent to the rogue",
    )
    assert [f for f in rogue.received() if f["t"] == "run"] == []


def test_a_peer_under_a_lost_workers_id_cannot_report_its_steps(
    guarded: Guarded, victim: subprocess.Popen[bytes], rogue: Rogue
) -> None:
    client = guarded.client
    handle = client.start_workflow(HANG)
    until(lambda: client.get_workflow_status(handle.id).steps["a"] == "running", "it runs")
    _kill(victim)
    rogue.take_over()
    task_id = f"{handle.id}/a/1"
    rogue.send(wire.started(task_id))
    rogue.send(wire.result_ok(task_id, {"forged": True}, 1.0))
    before = len(rogue.answers)
    until(
        lambda: (
            len(rogue.received()) > before + 1
            or client.get_workflow(handle.id).status == "completed"
        ),
        "both forged frames answered, or taken",
    )
    execution = client.get_workflow(handle.id)
    assert execution.status == "running"
    assert "a" not in execution.results or execution.results["a"].data is None
