"""Whatever a step raises or returns ends as a result frame the node reads: errors the node
could not take as they stand become described, non-retryable failures, never a frame the
node drops (which left the step dispatched or running for good)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tamma_actors import _wire as wire
from tamma_actors._errors import CodecError
from tamma_actors._step_api import (
    MAX_RETRY_AFTER,
    RetryAfter,
    StepContext,
    StepFailure,
    describe_error,
)
from tamma_actors._worker_outbox import Outbox
from tamma_actors._worker_runners import Task, _run_task

MAX_FRAME = 4096


class BadStr(Exception):
    def __str__(self) -> str:
        raise RuntimeError("__str__ exploded")


class WorseStr(Exception):
    """Its str() raises an exception whose own str() raises (and is a BaseException)."""

    def __str__(self) -> str:
        raise SystemExit(BadStr())


class NoInit(StepFailure):
    """A StepFailure that never ran StepFailure.__init__: it has no message."""

    def __init__(self) -> None:
        Exception.__init__(self)


def _bad(what: Any) -> StepFailure:
    failure = StepFailure("m")
    failure.retryable = what
    return failure


@pytest.mark.parametrize(
    ("exc", "error_type", "fragment"),
    [
        (
            BadStr("x"),
            "CodecError",
            "the step raised BadStr, whose str() failed: RuntimeError: __str__ exploded",
        ),
        (WorseStr(), "CodecError", "raised WorseStr, whose str() failed: SystemExit: (its str()"),
        (StepFailure({1, 2}), "CodecError", "StepFailure's message must be text (str), not set"),  # type: ignore[arg-type]
        (StepFailure(12345), "CodecError", "StepFailure's message must be text (str), not int"),  # type: ignore[arg-type]
        (
            StepFailure("m", error_type=b"x"),  # type: ignore[arg-type]
            "CodecError",
            "StepFailure's error_type must be text (str), not bytes",
        ),
        (_bad(1), "CodecError", "StepFailure's retryable must be True, False or None, not int"),
        (
            NoInit(),
            "CodecError",
            "the step raised NoInit, which cannot be described: "
            "AttributeError: 'NoInit' object has no attribute",
        ),
        (
            RetryAfter(math.inf),
            "ValueError",
            "seconds must be a finite number from 0 to 10 years (315,360,000 s), not inf",
        ),
        (RetryAfter(1e300), "ValueError", "RetryAfter's seconds must be a finite number"),
        (RetryAfter(math.nan), "ValueError", "not nan"),
        (RetryAfter(-5), "ValueError", "not -5.0"),
        (RetryAfter(MAX_RETRY_AFTER + 1), "ValueError", "from 0 to 10 years (315,360,000 s)"),
    ],
)
def test_an_error_the_node_cannot_take_is_described_and_not_retried(
    exc: BaseException, error_type: str, fragment: str
) -> None:
    error = describe_error(exc)
    assert (error["type"], error["retryable"], error["retry_after"]) == (error_type, False, None)
    assert fragment in error["message"]


def test_a_retry_after_within_the_bound_is_kept() -> None:
    assert describe_error(RetryAfter(MAX_RETRY_AFTER))["retry_after"] == MAX_RETRY_AFTER
    assert describe_error(RetryAfter(0))["retry_after"] == 0.0
    later = RetryAfter(1)
    later.seconds = 5  # an int set afterwards: a number all the same
    assert describe_error(later)["retry_after"] == 5.0


def test_text_that_is_not_utf_8_is_escaped_not_refused() -> None:
    error = describe_error(StepFailure("bad \udc80 text", error_type="T\udc81"))
    assert (error["type"], error["message"]) == ("T\\udc81", "bad \\udc80 text")
    wire.encode(error)  # goes on the wire


@pytest.fixture
def outbox() -> Iterator[Outbox]:
    box = Outbox()
    yield box
    box.close()


def _run(step: Callable[[StepContext], Any], outbox: Outbox) -> dict[str, Any]:
    """Run ``step`` as a task; its result frame as the node decodes it."""
    msg = {
        "task_id": "t1",
        "execution_id": "e",
        "step": "s",
        "attempt": 1,
        "idempotency_key": "e/s/1",
        "implementation": "x",
        "input": None,
        "inputs": {},
        "upstream": {},
        "config": {},
        "item_index": None,
    }
    frame = _run_task(Task(msg), lambda _: step, outbox, MAX_FRAME)
    result = wire.decode_worker_frame(frame, MAX_FRAME)
    assert result["task_id"] == "t1" and result["started"] is True
    return result


def _raises(exc: BaseException) -> Callable[[StepContext], Any]:
    def step(ctx: StepContext) -> Any:
        raise exc

    return step


def _returns(value: Any) -> Callable[[StepContext], Any]:
    return lambda ctx: value


def _self_referencing() -> list[Any]:
    loop: list[Any] = []
    loop.append(loop)
    return loop


@pytest.mark.parametrize(
    ("step", "error_type", "fragment"),
    [
        (
            _returns({(2, 3): "x"}),
            "CodecError",
            "step output cannot be sent: it has a map key "
            "that is a tuple (in the map at the top); map keys must be str, int",
        ),
        (
            _returns({"a": [1, {"b": {(1,): 2}}]}),
            "CodecError",
            "map key that is a tuple (in the map at ['a'][1]['b'])",
        ),
        (_returns({1, 2}), "CodecError", "can not serialize 'set' object"),
        (_returns(2**70), "CodecError", "step output cannot be sent"),
        (_returns(_self_referencing()), "CodecError", "step output cannot be sent"),
        (_returns("bad \udc80"), "CodecError", "surrogates not allowed"),
        (_returns("x" * 5000), "FrameTooLarge", "step output is 5,"),
        (_raises(BadStr()), "CodecError", "whose str() failed"),
        (_raises(StepFailure({1}, retryable=True)), "CodecError", "not set"),  # type: ignore[arg-type]
        (_raises(StepFailure("m" * 10_000)), "StepFailure", "(cut: 10,000 characters"),
        (_raises(StepFailure("m", error_type="T" * 10_000)), "T" * 200 + "... (cut", "m"),
        (_raises(RetryAfter(math.inf)), "ValueError", "not inf"),
    ],
)
def test_whatever_a_step_does_ends_as_a_result_the_node_reads(
    outbox: Outbox, step: Callable[[StepContext], Any], error_type: str, fragment: str
) -> None:
    result = _run(step, outbox)
    assert result["ok"] is False
    assert result["error"]["type"].startswith(error_type)
    assert fragment in result["error"]["message"]


def test_an_output_the_node_reads_goes_as_it_is(outbox: Outbox) -> None:
    output = {"s": [1, 2.5, None, True, b"b"], 7: "int keys decode", "t": (1, 2)}
    result = _run(_returns(output), outbox)
    assert result["ok"] is True and result["output"] == {**output, "t": [1, 2]}


def test_a_heartbeat_the_node_cannot_read_raises_in_the_step(outbox: Outbox) -> None:
    seen: list[BaseException] = []

    def step(ctx: StepContext) -> Any:
        for progress in ({(1, 2): "x"}, {1, 2}):
            try:
                ctx.heartbeat(progress)
            except CodecError as exc:
                seen.append(exc)
        ctx.heartbeat({"fine": 1})
        return "went on"

    assert _run(step, outbox)["output"] == "went on"
    assert [str(e) for e in seen] == [
        "heartbeat progress cannot be sent: it has a map key that is a tuple (in the map at "
        "the top); map keys must be str, int, float, bool, None or bytes (str is the safe "
        "choice)",
        "heartbeat progress cannot be sent: value cannot be encoded: can not serialize 'set' "
        "object",
    ]
    sent = [wire.decode_worker_frame(item.frame, MAX_FRAME) for item in outbox.drain()]
    assert [m["progress"] for m in sent] == [{"fine": 1}]  # only the readable one went out
