"""The recorded detail of parallel and subflow steps, and the pure reducer that builds it.

A parallel step keeps one entry per item (its value, status, attempts, output, error, retry
time) in its step state's ``detail``; a subflow step keeps its child execution's id there.
Every change comes from an event, applied by :func:`apply_detail`, so recovery rebuilds a
half-done fan-out exactly: committed items are never run again, items in flight are
dispatched again with the same attempt (the same idempotency key).

Item statuses: ``pending -> dispatched -> succeeded | failed | retry_wait | cancelled``,
``retry_wait -> pending``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

__all__ = [
    "DETAIL_EVENTS",
    "ITEM_DONE",
    "apply_detail",
    "copy_detail",
    "detail_items",
    "item_task_id",
    "summarize_detail",
]

ITEM_DONE = frozenset({"succeeded", "failed", "cancelled"})

Detail = dict[str, Any]


def item_task_id(execution_id: str, step: str, index: int, attempt: int) -> str:
    """The task id (and idempotency key) of one item: ``execution_id/step[i]/attempt``."""
    return f"{execution_id}/{step}[{index}]/{attempt}"


def _new_item() -> dict[str, Any]:
    return {"status": "pending", "attempts": 0, "output": None, "error": None, "retry_at": None}


def _again(old: Mapping[str, Any]) -> dict[str, Any]:
    return _new_item() | {"attempts": old["attempts"], "base": old["attempts"]}


def _planned(detail: Detail | None, d: Mapping[str, Any], ts: float) -> Detail:
    values = list(d["items"])
    old = (detail or {}).get("state")
    # A manual retry keeps what already succeeded; everything else starts again.
    if old is not None and len(old) == len(values):
        # attempts go on (task ids stay unique); the budget starts again from ``base``
        state = [st if st["status"] == "succeeded" else _again(st) for st in old]
    else:
        state = [_new_item() for _ in values]
    counts: dict[str, int] = {}
    for item in state:
        counts[item["status"]] = counts.get(item["status"], 0) + 1
    # items by status, kept with every change: the supervisor's per-result checks are O(1)
    return {"items": values, "state": state, "counts": counts}


def _move(detail: Detail, index: int, status: str, **fields: Any) -> dict[str, Any]:
    item: dict[str, Any] = detail["state"][index]
    counts = detail["counts"]
    counts[item["status"]] -= 1
    counts[status] = counts.get(status, 0) + 1
    item.update(status=status, **fields)
    return item


def _dispatched(detail: Detail, d: Mapping[str, Any], ts: float) -> Detail:
    for index, attempt in d["items"]:
        _move(detail, index, "dispatched", attempts=attempt, error=None, retry_at=None)
    return detail


def _completed(detail: Detail, d: Mapping[str, Any], ts: float) -> Detail:
    _move(detail, d["index"], "succeeded", output=d.get("output"), error=None)
    return detail


def _failed(detail: Detail, d: Mapping[str, Any], ts: float) -> Detail:
    _move(detail, d["index"], "failed", error=d.get("error"))
    return detail


def _retry(detail: Detail, d: Mapping[str, Any], ts: float) -> Detail:
    _move(detail, d["index"], "retry_wait", error=d.get("error"), retry_at=d["retry_at"])
    return detail


def _ready(detail: Detail, d: Mapping[str, Any], ts: float) -> Detail:
    _move(detail, d["index"], "pending", retry_at=None).pop("frozen", None)
    return detail


def _cancelled(detail: Detail, d: Mapping[str, Any], ts: float) -> Detail:
    for index in d["indexes"]:
        _move(detail, index, "cancelled", retry_at=None).pop("frozen", None)
    return detail


def _frozen(detail: Detail, d: Mapping[str, Any], ts: float) -> Detail:
    for index, left in d["left"]:
        detail["state"][index].update(retry_at=None, frozen=left)
    return detail


def _thawed(detail: Detail, d: Mapping[str, Any], ts: float) -> Detail:
    for index, at in d["retry_at"]:
        item = detail["state"][index]
        item["retry_at"] = at
        item.pop("frozen", None)
    return detail


def _noted(detail: Detail, d: Mapping[str, Any], ts: float) -> Detail:
    return detail  # a worker lost under an item: recorded, the item stays dispatched


def _child(detail: Detail | None, d: Mapping[str, Any], ts: float) -> Detail:
    earlier = (detail or {}).get("children", [])
    return {"child": d["child"], "attempt": d["attempt"], "children": [*earlier, d["child"]]}


_ITEM_HANDLERS = {
    "step.items_dispatched": _dispatched,
    "step.item_completed": _completed,
    "step.item_failed": _failed,
    "step.item_retry_scheduled": _retry,
    "step.item_ready": _ready,
    "step.items_cancelled": _cancelled,
    "step.items_frozen": _frozen,
    "step.items_thawed": _thawed,
    "step.item_redispatched": _noted,
}

DETAIL_EVENTS = frozenset({"step.items_planned", "step.child_started", *_ITEM_HANDLERS})


def copy_detail(detail: Detail | None) -> Detail | None:
    """A copy that later events do not change (item entries are updated in place; their
    values — item inputs, outputs, errors — are only ever replaced)."""
    if detail is None:
        return None
    out = dict(detail)
    if "state" in out:
        out["state"] = [dict(item) for item in out["state"]]
        out["counts"] = dict(out["counts"])
    return out


def detail_items(details: Iterable[Detail | None]) -> int:
    """How many fan-out items these details hold (what a snapshot of them copies)."""
    return sum(len(d["state"]) for d in details if d is not None and "state" in d)


def summarize_detail(detail: Detail) -> Detail:
    """What a record shows: a fan-out's item counts by status, or a subflow's child."""
    if "state" not in detail:
        return dict(detail)
    counts = {status: n for status, n in detail["counts"].items() if n}
    return {"items": len(detail["state"]), **counts}


def apply_detail(detail: Detail | None, event: Mapping[str, Any]) -> Detail:
    """The step detail after ``event`` (one of :data:`DETAIL_EVENTS`); raises KeyError or
    IndexError when the event does not fit the detail (the caller reports corruption)."""
    etype, data, ts = event["type"], event["data"], event["timestamp"]
    if etype == "step.items_planned":
        return _planned(detail, data, ts)
    if etype == "step.child_started":
        return _child(detail, data, ts)
    if detail is None or "state" not in detail:
        raise KeyError(f"{etype} before step.items_planned")
    try:
        return _ITEM_HANDLERS[etype](detail, data, ts)
    except (IndexError, TypeError, ValueError) as exc:
        raise KeyError(f"{etype} does not fit the planned items: {exc}") from exc
