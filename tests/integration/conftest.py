"""A real node for the integration tests: LMDB under a short temporary directory, two local
worker processes, a client on its control socket. A module changes the node's settings by
defining its own ``node_settings`` fixture (or its own ``node``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tamma_actors import Client
from tamma_actors._config import load_node_config
from tamma_actors._node import Node

CLIENT_TIMEOUT = 60.0


@pytest.fixture
def node_settings() -> dict[str, Any]:
    return {
        "workers": 2,
        "worker_slots": 4,
        "heartbeat_interval": 0.2,
        "heartbeat_timeout": 2.0,
        "cancel_grace": 1.0,
    }


@pytest.fixture
def node(short_dir: Path, node_settings: dict[str, Any]) -> Iterator[Node]:
    with Node(load_node_config(None, data_dir=short_dir / "var", **node_settings)) as n:
        yield n


@pytest.fixture
def client(node: Node) -> Iterator[Client]:
    with Client(node.config.control_address, timeout=CLIENT_TIMEOUT) as c:
        yield c
