"""Step implementations whose error or output the node could not read as it stands (used
by tests/integration/test_step_errors_on_a_node.py, through the node's plugins table)."""

from __future__ import annotations

from typing import Any

from tamma_actors._step_api import RetryAfter, StepContext, StepFailure


class _BadStr(Exception):
    def __str__(self) -> str:
        raise RuntimeError("__str__ exploded")


def bad_str(ctx: StepContext) -> Any:
    raise _BadStr()


def set_message(ctx: StepContext) -> Any:
    raise StepFailure({1, 2})  # type: ignore[arg-type]


def bytes_type(ctx: StepContext) -> Any:
    raise StepFailure("m", error_type=b"x")  # type: ignore[arg-type]


def tuple_key(ctx: StepContext) -> Any:
    return {"fine": 1, (2, 3): "x"}


def retry_after_inf(ctx: StepContext) -> Any:
    raise RetryAfter(float("inf"))


def tuple_key_heartbeat(ctx: StepContext) -> Any:
    ctx.heartbeat({(1, 2): "x"})
    return "unreachable: the heartbeat raises"


PLUGINS = {
    name: f"plugins_step_errors:{name}"
    for name in (
        "bad_str",
        "set_message",
        "bytes_type",
        "tuple_key",
        "retry_after_inf",
        "tuple_key_heartbeat",
    )
}
