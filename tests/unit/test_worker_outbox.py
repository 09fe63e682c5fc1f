"""The worker's outbox: order, start notices held, folded into results, released when due."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tamma_actors import _wire as wire
from tamma_actors._worker_outbox import Outbox, Outgoing

MAX = 1 << 20


@pytest.fixture
def outbox() -> Iterator[Outbox]:
    box = Outbox()
    yield box
    box.close()


def decoded(out: list[Outgoing]) -> list[tuple[str, str, str | None]]:
    frames = [(wire.decode_worker_frame(o.frame, MAX), o.finished) for o in out]
    return [(m["t"], m["task_id"], finished) for m, finished in frames]


def result(task_id: str) -> bytes:
    return wire.encode(wire.result_ok(task_id, None, 1.0, started=True))


def test_a_notice_with_no_hold_is_left_out_when_its_result_is_in_the_same_batch(
    outbox: Outbox,
) -> None:
    outbox.started("a", 0.0)
    outbox.started("b", 0.0)
    outbox.progress("b", wire.encode(wire.progress("b", 1)))
    outbox.result("a", result("a"))
    outbox.answer("c", wire.encode(wire.result_error("c", {"type": "X", "message": "m"}, 0)))
    assert decoded(outbox.drain()) == [
        ("started", "b", None),  # progress sends its step's notice first
        ("progress", "b", None),
        ("result", "a", "a"),  # a result frees its runner
        ("result", "c", None),  # an answer for a queued step frees none
    ]
    assert outbox.drain() == [] and outbox.next_due() is None


def test_a_held_notice_waits_for_its_hold_and_says_how_long_the_step_ran(
    outbox: Outbox,
) -> None:
    began = time.monotonic()
    outbox.started("a", 10.0)
    assert outbox.drain(now=began + 5.0) == []
    due = outbox.next_due()
    assert due is not None and began + 10.0 <= due <= time.monotonic() + 10.0
    out = outbox.drain(now=due + 0.5)
    notice = wire.decode_worker_frame(out[0].frame, MAX)
    assert notice["t"] == "started" and notice["task_id"] == "a"
    assert 10_000 <= notice["ran_ms"] <= 10_500 + (time.monotonic() - began) * 1000
    assert len(out) == 1 and outbox.next_due() is None


def test_a_result_within_the_hold_replaces_the_notice(outbox: Outbox) -> None:
    outbox.started("a", 10.0)
    outbox.started("b", 20.0)
    assert outbox.drain() == []
    outbox.result("a", result("a"))
    assert decoded(outbox.drain()) == [("result", "a", "a")]
    due = outbox.next_due()  # only b's notice is still held
    assert due is not None and due > time.monotonic() + 15.0
    assert decoded(outbox.drain(now=due)) == [("started", "b", None)]


def test_a_result_posted_after_close_is_kept_for_the_last_drain(outbox: Outbox) -> None:
    outbox.close()  # the socket thread is shutting down; a runner may still finish
    outbox.result("a", result("a"))
    assert decoded(outbox.drain()) == [("result", "a", "a")]
