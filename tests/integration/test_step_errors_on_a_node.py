"""A step whose error or output the node could not read fails, described and not retried,
on a real node with a real worker process, and the worker and its other steps carry on
(before, such a step stayed dispatched or running for good, and its runner was lost)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tamma_actors import Client
from tamma_actors._config import load_node_config
from tamma_actors._node import Node

pytestmark = pytest.mark.integration

WAIT = 30.0
TESTS_DIR = str(Path(__file__).resolve().parents[1])
sys.path.insert(0, TESTS_DIR)
from plugins_step_errors import PLUGINS  # noqa: E402

EXPECTED = {
    "bad_str": (
        "CodecError",
        "the step raised _BadStr, whose str() failed: RuntimeError: __str__ exploded",
    ),
    "set_message": ("CodecError", "StepFailure's message must be text (str), not set"),
    "bytes_type": ("CodecError", "StepFailure's error_type must be text (str), not bytes"),
    "tuple_key": (
        "CodecError",
        "step output cannot be sent: it has a map key that is a "
        "tuple (in the map at the top); map keys must be str",
    ),
    "retry_after_inf": (
        "ValueError",
        "RetryAfter's seconds must be a finite number from 0 to 10 years (315,360,000 s), not inf",
    ),
    "tuple_key_heartbeat": (
        "CodecError",
        "heartbeat progress cannot be sent: it has a map key that is a tuple",
    ),
}


def test_unreadable_errors_and_outputs_fail_their_steps_and_the_worker_serves_on(
    short_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([TESTS_DIR, *sys.path]))
    cfg = load_node_config(
        None,
        data_dir=short_dir / "var",
        workers=1,  # one worker process: every step below shares it
        worker_slots=len(PLUGINS) + 1,
        heartbeat_interval=0.2,
        heartbeat_timeout=5.0,
        plugins=PLUGINS,
    )
    bad = [
        # a step timeout: before, the first ones ended as StepTimeout, killing the worker
        {"name": name, "implementation": name, "timeout": 20}
        for name in PLUGINS
    ]
    neighbour = {"name": "neighbour", "implementation": "sleep", "config": {"seconds": 1.0}}
    spec = {
        "name": "unreadable",
        "error_handling": "continue",
        "retry_policy": {"max_attempts": 3, "base_delay": 10},
        "steps": [*bad, neighbour],
    }
    with Node(cfg), Client(cfg.control_address, timeout=WAIT) as client:
        pids = client.health()["workers"]["local_pids"]
        final = client.wait(client.start_workflow(spec).id, timeout=WAIT)
        assert final.status == "failed"
        for name, (error_type, fragment) in EXPECTED.items():
            result = final.results[name]
            assert result.status == "failed" and result.error is not None, name
            # not retried; but the heartbeat's error is the step's own, which it let
            # through: the retry policy decides, like for any exception a step raises
            attempts = 3 if name == "tuple_key_heartbeat" else 1
            assert (result.error.type, result.attempts) == (error_type, attempts), name
            assert fragment in result.error.message, (name, result.error.message)
        assert final.results["neighbour"].status == "succeeded"
        assert final.results["neighbour"].attempts == 1
        types = [e.type for e in client.get_events(final.id)]
        assert "step.redispatched" not in types  # no worker was lost
        assert client.health()["workers"]["local_pids"] == pids  # nor killed
        again = client.start_workflow({"name": "after", "steps": [neighbour]})
        assert client.wait(again.id, timeout=WAIT).status == "completed"
