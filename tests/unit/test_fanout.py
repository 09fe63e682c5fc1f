"""The recorded detail of fan-outs: replay from any snapshot equals replay of every event,
and a snapshot never changes after it was taken."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tamma_actors._codec import pack, unpack
from tamma_actors._errors import StoreCorrupted
from tamma_actors._fanout import apply_detail, copy_detail, item_task_id
from tamma_actors._state import ExecutionState, apply, make_event, replay

EID = "e1"


def _start(items: list[Any]) -> tuple[ExecutionState, list[dict[str, Any]]]:
    state = ExecutionState(id=EID)
    events: list[dict[str, Any]] = []

    def emit(etype: str, **data: Any) -> None:
        ev = make_event(state, etype, 1.0 + len(events), **data)
        apply(state, ev)
        events.append(ev)

    emit("workflow.created", workflow_id="w", steps=["f"], inputs={})
    emit("workflow.started")
    emit("step.ready", step="f")
    emit("step.dispatched", step="f", attempt=1)
    emit("step.items_planned", step="f", attempt=1, items=items)
    return state, events


@st.composite
def fan_out_runs(draw: st.DrawFn) -> list[dict[str, Any]]:
    """A random but valid life of a fan-out: dispatch, finish, retry, freeze, cancel."""
    n = draw(st.integers(0, 5))
    state, events = _start(list(range(n)))

    def emit(etype: str, **data: Any) -> None:
        ev = make_event(state, etype, 10.0 + len(events), step="f", **data)
        apply(state, ev)
        events.append(ev)

    for _ in range(draw(st.integers(0, 25))):
        items = state.steps["f"].detail["state"]  # type: ignore[index]
        by = {
            s: [i for i, it in enumerate(items) if it["status"] == s]
            for s in ("pending", "dispatched", "retry_wait")
        }
        moves = [
            m
            for m, ok in (
                ("dispatch", by["pending"]),
                ("finish", by["dispatched"]),
                ("ready", by["retry_wait"]),
                ("freeze", by["retry_wait"]),
                ("cancel", any(by.values())),
            )
            if ok
        ]
        if not moves:
            break
        move = draw(st.sampled_from(moves))
        if move == "dispatch":
            chosen = draw(st.lists(st.sampled_from(by["pending"]), min_size=1, unique=True))
            emit("step.items_dispatched", items=[[i, items[i]["attempts"] + 1] for i in chosen])
        elif move == "finish":
            i = draw(st.sampled_from(by["dispatched"]))
            outcome = draw(st.sampled_from(["completed", "failed", "retry", "lost"]))
            a = items[i]["attempts"]
            if outcome == "completed":
                emit("step.item_completed", index=i, attempt=a, output={"v": i})
            elif outcome == "failed":
                emit("step.item_failed", index=i, attempt=a, error={"type": "Boom"})
            elif outcome == "retry":
                emit("step.item_retry_scheduled", index=i, attempt=a, error={}, retry_at=99.0)
            else:
                emit("step.item_redispatched", index=i, attempt=a, reason="gone")
        elif move == "ready":
            emit("step.item_ready", index=draw(st.sampled_from(by["retry_wait"])))
        elif move == "freeze":
            emit("step.items_frozen", left=[[i, 0.5] for i in by["retry_wait"]])
            emit("step.items_thawed", retry_at=[[i, 50.0] for i in by["retry_wait"]])
        else:
            open_items = by["pending"] + by["dispatched"] + by["retry_wait"]
            emit("step.items_cancelled", indexes=sorted(open_items), reason="stop")
    return events


@settings(deadline=None, max_examples=150)
@given(events=fan_out_runs(), data=st.data())
def test_replay_from_any_snapshot_equals_replay_of_every_event(
    events: list[dict[str, Any]], data: st.DataObject
) -> None:
    full = replay(EID, events).to_dict()
    k = data.draw(st.integers(1, len(events)))
    at_k = replay(EID, events[:k])
    snapshot = at_k.to_dict()
    frozen = unpack(pack(snapshot))  # what the store would hold
    for ev in events[k:]:
        apply(at_k, ev)  # the live state moves on ...
    assert snapshot == frozen  # ... and the snapshot taken before does not
    assert replay(EID, events[k:], frozen).to_dict() == full
    assert at_k.to_dict() == full
    detail = full["steps"]["f"]["detail"]
    recount = Counter(item["status"] for item in detail["state"])
    assert {s: n for s, n in detail["counts"].items() if n} == dict(recount)


def test_a_manual_retry_keeps_succeeded_items_and_gives_the_rest_a_fresh_budget() -> None:
    detail = apply_detail(
        None,
        {
            "type": "step.items_planned",
            "timestamp": 1.0,
            "data": {"step": "f", "attempt": 1, "items": ["a", "b"]},
        },
    )
    detail["state"][0].update(status="succeeded", attempts=1, output="A")
    detail["state"][1].update(status="failed", attempts=3)
    again = apply_detail(
        detail,
        {
            "type": "step.items_planned",
            "timestamp": 2.0,
            "data": {"step": "f", "attempt": 2, "items": ["a", "b"]},
        },
    )
    assert again["state"][0]["output"] == "A"
    assert again["state"][1] | {} == {
        "status": "pending",
        "attempts": 3,
        "base": 3,
        "output": None,
        "error": None,
        "retry_at": None,
    }
    assert copy_detail(None) is None
    assert item_task_id("e", "s", 4, 2) == "e/s[4]/2"


def test_item_events_that_do_not_fit_are_reported_as_corruption() -> None:
    state, events = _start([1])
    bad = make_event(state, "step.item_completed", 9.0, step="f", index=7, attempt=1)
    with pytest.raises(StoreCorrupted, match="does not fit"):
        apply(state, bad)
    fresh = ExecutionState(id=EID)
    for ev in events[:4]:
        apply(fresh, ev)
    early = make_event(fresh, "step.item_ready", 9.0, step="f", index=0)
    with pytest.raises(StoreCorrupted, match=r"before step\.items_planned"):
        apply(fresh, early)


def test_a_subflow_detail_remembers_every_child() -> None:
    one = apply_detail(
        None,
        {
            "type": "step.child_started",
            "timestamp": 1.0,
            "data": {"step": "s", "attempt": 1, "child": "c1"},
        },
    )
    two = apply_detail(
        one,
        {
            "type": "step.child_started",
            "timestamp": 2.0,
            "data": {"step": "s", "attempt": 2, "child": "c2"},
        },
    )
    assert two == {"child": "c2", "attempt": 2, "children": ["c1", "c2"]}
    assert one["child"] == "c1"
