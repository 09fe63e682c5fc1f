"""Worker protocol maps: constructors round-trip, validators reject what is wrong."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tamma_actors import _wire as wire
from tamma_actors._codec import pack
from tamma_actors._errors import CodecError, FrameTooLarge, ProtocolError

MAX = 1 << 20

RUN_TASK: dict[str, Any] = {
    "task_id": "ex/a/1",
    "execution_id": "ex",
    "step": "a",
    "attempt": 1,
    "implementation": "noop",
    "config": {"k": 1},
    "input": [1, 2],
    "inputs": {"x": 1},
    "upstream": {},
    "idempotency_key": "ex/a/1",
    "item_index": None,
}

WORKER_FRAMES = [
    wire.hello("w1", 12, "host", 4, ["noop", "echo"]),
    wire.hello("w1", 12, "host", 4, [], token="s3cret"),
    wire.hb("w1", ["t1", "t2"], 1 << 33),
    wire.started("t1"),
    wire.started("t2", 250.5),  # a held notice
    wire.progress("t1", {"pct": 3}),
    wire.result_ok("t1", {"out": [1, "x", None]}, 1.5),
    wire.result_ok("t1", None, 0),
    wire.result_ok("t1", 1, 0.5, started=True),
    wire.result_error(
        "t1", {"type": "E", "message": "m", "retryable": None, "retry_after": None}, 2
    ),
    wire.result_error("t1", {"type": "E", "message": "m", "retryable": True, "retry_after": 2}, 2),
    wire.result_error(
        "t1", {"type": "E", "message": "m", "retryable": None, "retry_after": None}, 2, started=True
    ),
    wire.bye("w1"),
]
NODE_FRAMES = [
    wire.welcome(1.0),
    wire.run(RUN_TASK),
    wire.run({**RUN_TASK, "item_index": 3}),
    wire.cancel("t1"),
    wire.stop(),
    wire.rehello(),
    wire.refused("unknown token"),
]


@pytest.mark.parametrize("msg", WORKER_FRAMES, ids=lambda m: m["t"])
def test_worker_frames_round_trip(msg: dict[str, Any]) -> None:
    assert wire.decode_worker_frame(wire.encode(msg), MAX) == msg


@pytest.mark.parametrize("msg", NODE_FRAMES, ids=lambda m: m["t"])
def test_node_frames_round_trip(msg: dict[str, Any]) -> None:
    assert wire.decode_node_frame(wire.encode(msg), MAX) == msg


def test_directions_are_separate() -> None:
    with pytest.raises(ProtocolError, match="unknown frame type 'run'"):
        wire.decode_worker_frame(wire.encode(wire.run(RUN_TASK)), MAX)
    with pytest.raises(ProtocolError, match="unknown frame type 'hello'"):
        wire.decode_node_frame(wire.encode(WORKER_FRAMES[0]), MAX)


def test_run_nil_maps_become_empty() -> None:
    task = {**RUN_TASK, "config": None, "inputs": None, "upstream": None}
    msg = wire.decode_node_frame(wire.encode(wire.run(task)), MAX)
    assert msg["config"] == {} and msg["inputs"] == {} and msg["upstream"] == {}


def test_run_overrides_v_and_t_of_the_task() -> None:
    msg = wire.run({**RUN_TASK, "v": 9, "t": "x"})
    assert msg["v"] == wire.VERSION and msg["t"] == "run"


def test_extra_fields_tolerated() -> None:
    msg = {**wire.started("t"), "future": 1}
    assert wire.decode_worker_frame(pack(msg), MAX)["future"] == 1


@pytest.mark.parametrize(
    ("data", "error", "match"),
    [
        (b"\xc1", CodecError, "malformed"),
        (pack([1, 2]), ProtocolError, "not a map"),
        (pack({"t": "bye", "worker_id": "w"}), ProtocolError, "version None"),
        (pack({"v": 1, "t": "bye", "worker_id": "w"}), ProtocolError, "version 1"),
        (pack({"v": 2, "worker_id": "w"}), ProtocolError, "unknown frame type None"),
        (pack({"v": 2, "t": 5}), ProtocolError, "unknown frame type 5"),
        (pack({"v": 2, "t": "bye"}), ProtocolError, "lacks field 'worker_id'"),
        (pack({"v": 2, "t": "bye", "worker_id": 3}), ProtocolError, "bad 'worker_id'"),
        (pack({**wire.hb("w", [], 1), "rss": True}), ProtocolError, "bad 'rss'"),
        (pack({**wire.hb("w", [], 1), "running": ["a", 1]}), ProtocolError, "bad 'running'"),
        (pack({**wire.result_ok("t", 1, 1), "duration_ms": "1"}), ProtocolError, "duration"),
        (pack({**wire.result_ok("t", 1, 1), "ok": 1}), ProtocolError, "bad 'ok'"),
        (pack({**wire.result_ok("t", 1, 1), "started": 1}), ProtocolError, "bad 'started'"),
        (pack({**wire.started("t"), "ran_ms": -1}), ProtocolError, "bad 'ran_ms'"),
        (pack({**wire.started("t"), "ran_ms": "5"}), ProtocolError, "bad 'ran_ms'"),
        (pack({**wire.hello("w", 1, "h", 1, []), "token": None}), ProtocolError, "bad 'token'"),
        (pack({**wire.hello("w", 1, "h", 1, []), "token": b"t"}), ProtocolError, "bad 'token'"),
        (
            pack({"v": 2, "t": "result", "task_id": "t", "ok": True, "duration_ms": 1}),
            ProtocolError,
            "lacks 'output'",
        ),
        (
            pack({"v": 2, "t": "result", "task_id": "t", "ok": False, "duration_ms": 1}),
            ProtocolError,
            "bad 'error'",
        ),
        (
            pack({**wire.result_error("t", {"type": "E", "message": "m", "retryable": "no"}, 1)}),
            ProtocolError,
            "bad 'error'",
        ),
        (
            pack(wire.result_error("t", {"type": "E", "message": "m", "retry_after": "x"}, 1)),
            ProtocolError,
            "bad 'error'",
        ),
        (pack(wire.result_error("t", {"message": "m"}, 1)), ProtocolError, "bad 'error'"),
    ],
)
def test_bad_worker_frames(data: bytes, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        wire.decode_worker_frame(data, MAX)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("attempt", "1"),
        ("attempt", True),
        ("config", [1]),
        ("item_index", 1.5),
        ("step", None),
        ("start_hold", -0.1),  # optional, but checked when present
        ("start_hold", True),
    ],
)
def test_bad_run_fields(field: str, value: Any) -> None:
    with pytest.raises(ProtocolError, match=f"bad '{field}'"):
        wire.decode_node_frame(pack(wire.run({**RUN_TASK, field: value})), MAX)


def _sent_and_received(task: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    data = wire.encode(wire.run(task))
    return msgpack.unpackb(data), wire.decode_node_frame(data, MAX)


BLOB = {"text": "x" * 10_000}


@pytest.mark.parametrize(
    ("source", "task"),
    [
        ("inputs", {**RUN_TASK, "input": BLOB, "inputs": BLOB}),
        ("dependency", {**RUN_TASK, "input": BLOB, "upstream": {"a": BLOB}}),
        ("upstream", (lambda up: {**RUN_TASK, "input": up, "upstream": up})({"a": BLOB, "b": 1})),
    ],
)
def test_an_input_the_frame_already_holds_is_sent_once(source: str, task: dict[str, Any]) -> None:
    sent, received = _sent_and_received(task)
    assert "input" not in sent and sent["input_from"] == source
    assert len(wire.encode(wire.run(task))) < 11_000  # the blob once, not twice
    assert received["input"] == task["input"] and "input_from" not in received
    assert {k: v for k, v in received.items() if k not in ("v", "t")} == task


def test_an_equal_input_that_is_another_object_is_sent_as_it_is() -> None:
    task = {**RUN_TASK, "input": dict(BLOB), "inputs": BLOB, "upstream": {"a": dict(BLOB)}}
    sent, received = _sent_and_received(task)
    assert sent["input"] == BLOB and "input_from" not in sent
    assert received["input"] == BLOB


def test_a_nil_input_and_nil_maps() -> None:
    _, received = _sent_and_received({**RUN_TASK, "input": None, "inputs": None})
    assert received["input"] is None and received["inputs"] == {}


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"input_from": "inputs"}, "both 'input' and 'input_from'"),
        ({"input_from": "elsewhere"}, "bad 'input_from'"),
        ({"input_from": ["inputs"]}, "bad 'input_from'"),
    ],
)
def test_bad_input_sources(fields: dict[str, Any], match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        wire.decode_node_frame(pack({**wire.run(RUN_TASK), **fields}), MAX)


@pytest.mark.parametrize("upstream", [{}, {"a": 1, "b": 2}, None])
def test_the_one_dependency_must_be_one(upstream: Any) -> None:
    frame = {**wire.run(RUN_TASK), "upstream": upstream, "input_from": "dependency"}
    del frame["input"]
    with pytest.raises(ProtocolError, match="one dependency"):
        wire.decode_node_frame(pack(frame), MAX)


def test_a_run_frame_without_its_input() -> None:
    frame = wire.run(RUN_TASK)
    del frame["input"]
    with pytest.raises(ProtocolError, match="lacks field 'input'"):
        wire.decode_node_frame(pack(frame), MAX)


def test_a_refusal_says_why() -> None:
    with pytest.raises(ProtocolError, match="refused frame lacks field 'reason'"):
        wire.decode_node_frame(pack({"v": 2, "t": "refused"}), MAX)


def test_welcome_interval_must_be_a_number() -> None:
    with pytest.raises(ProtocolError):
        wire.decode_node_frame(pack({**wire.welcome(1), "heartbeat_interval": "1"}), MAX)


def test_oversized_frame() -> None:
    with pytest.raises(FrameTooLarge):
        wire.decode_worker_frame(wire.encode(wire.progress("t", "x" * 100)), 50)


def test_unencodable_value() -> None:
    with pytest.raises(CodecError):
        wire.encode(wire.progress("t", object()))


@given(st.binary(max_size=200))
def test_garbage_never_escapes_the_tree(data: bytes) -> None:
    for decode in (wire.decode_worker_frame, wire.decode_node_frame):
        try:
            msg = decode(data, MAX)
        except (CodecError, ProtocolError):
            continue
        assert msg["v"] == 1  # whatever decodes is a checked protocol map


values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.text()
    | st.floats(allow_nan=False),
    lambda s: st.lists(s, max_size=4) | st.dictionaries(st.text(max_size=5), s, max_size=4),
    max_leaves=10,
)


@given(task_id=st.text(), output=values, ms=st.floats(0, 1e9))
def test_results_round_trip(task_id: str, output: Any, ms: float) -> None:
    msg = wire.result_ok(task_id, output, ms)
    assert wire.decode_worker_frame(wire.encode(msg), MAX) == msg


@given(st.dictionaries(st.sampled_from(["v", "t", "task_id", "x"]), values, max_size=4))
def test_random_maps_are_rejected_or_valid(msg: dict[str, Any]) -> None:
    data = msgpack.packb(msg, use_bin_type=True)
    try:
        out = wire.decode_worker_frame(data, MAX)
    except ProtocolError:
        return
    assert out["t"] in wire.WORKER_TYPES
