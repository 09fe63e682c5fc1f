"""The worker protocol: constructors and validators for its msgpack maps.

Plain dicts, no pydantic: every worker process imports this. Each frame is one map with
``"v": 2`` and ``"t"`` (its type); see docs/internals.md for the table. Decoding checks
the version, the type, and every field's presence and type; extra fields are tolerated
(a newer peer may add some). Additions to the documented table: ``rehello`` (node ->
worker, no fields) asks a worker the node does not know to introduce itself again - the
node may have restarted while the worker kept its connection; a ``hello`` may carry a
``token`` (a node with tokens admits only a worker token or an admin one), and
``refused`` (node -> worker, ``reason``) answers a hello the node does not admit. A
``hello`` may carry ``hello_seq``, its number among the worker's hellos; the ``welcome``
that answers it says it back, and each ``hb`` says that of the last hello welcomed: the
node checks a worker's tasks after a hello again only against a heartbeat sent after
*that* hello's welcome, not one sent after an earlier welcome while run frames were
still on their way (which would take the steps they carry for lost and run them twice).

A ``run`` frame carries a step's data once: where its ``input`` is the workflow's
``inputs``, its ``upstream`` map or its one dependency's output (most steps), the frame
says so in ``input_from`` instead of packing the same data a second time, and the worker
takes the input from there (version 2; version 1 sent it twice).

The items of a fan-out share their ``inputs`` and ``upstream``, and those may be big (a
list of 10,000 items is often the output of the step before): a worker that says
``shared`` in its hello is sent them once, in a ``blob`` frame (``key``, ``inputs``,
``upstream``), and each item's ``run`` frame then names the blob (``shared``: its key)
instead of carrying them. The node decides what each worker holds: it sends ``forget``
(``key``) to drop one, and a ``welcome`` ends them all (the node sends the blobs again on
the connection it welcomes). A run naming a blob the worker does not hold (its frame was
lost with a dead connection) is answered with the error ``SharedDataMissing``, and the
node sends the blob and the run again.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from tamma_actors._codec import pack, unpack
from tamma_actors._errors import ProtocolError

__all__ = [
    "DEFAULT_WORKER_SLOTS",
    "NODE_TYPES",
    "ROUTE_ENV",
    "SHARED_DATA_MISSING",
    "TOKEN_ENV",
    "VERSION",
    "WORKER_TYPES",
    "blob",
    "bye",
    "cancel",
    "decode_node_frame",
    "decode_worker_frame",
    "encode",
    "forget",
    "hb",
    "hello",
    "progress",
    "refused",
    "rehello",
    "result_error",
    "result_ok",
    "run",
    "run_shared",
    "started",
    "stop",
    "welcome",
]

VERSION = 2
# The error type of a result for a run whose blob the worker does not hold (see above).
SHARED_DATA_MISSING = "SharedDataMissing"
# Steps a worker runs at once unless told otherwise: threads, so mostly for steps that
# wait (I/O, subprocesses); more slots keep more short steps in flight (W2: 8 -> 32 slots
# gave +10-25 % steps/s here; CPU-bound steps share the worker's GIL whatever the count).
DEFAULT_WORKER_SLOTS = 32
# Where a worker process finds its token (it removes it from its environment before any
# step runs): a node gives its local workers this run's own there, not on their command
# line, which ps shows to everyone.
TOKEN_ENV = "TAMMA_WORKER_TOKEN"
# Where a node's own local worker finds the routing id to connect under (removed from its
# environment as its token is): the node drew it, and takes the worker connecting under it
# for that process of its own, whatever worker id it names.
ROUTE_ENV = "TAMMA_WORKER_ROUTE"
Check = Callable[[Any], bool]


def _is_str(v: Any) -> bool:
    return isinstance(v, str)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _is_non_negative(v: Any) -> bool:
    return _is_number(v) and v >= 0


def _is_bool(v: Any) -> bool:
    return isinstance(v, bool)


def _is_str_list(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _is_map_or_nil(v: Any) -> bool:
    return v is None or isinstance(v, dict)


def _is_optional_int(v: Any) -> bool:
    return v is None or _is_int(v)


def _anything(v: Any) -> bool:
    return True


def _is_error(v: Any) -> bool:
    return (
        isinstance(v, dict)
        and _is_str(v.get("type"))
        and _is_str(v.get("message"))
        and v.get("retryable") in (None, True, False)
        and (v.get("retry_after") is None or _is_number(v.get("retry_after")))
    )


# Where a run frame's input may be taken from instead of being sent (``input_from``): the
# workflow's inputs, the upstream map (a step of several dependencies), or the output of
# its one dependency.
INPUT_SOURCES = ("inputs", "upstream", "dependency")

# Fields every map of that type must carry, and what each must look like.
WORKER_TYPES: dict[str, dict[str, Check]] = {
    "hello": {
        "worker_id": _is_str,
        "pid": _is_int,
        "host": _is_str,
        "slots": _is_int,
        "plugins": _is_str_list,
    },
    "hb": {"worker_id": _is_str, "running": _is_str_list, "rss": _is_int},
    "started": {"task_id": _is_str},
    "progress": {"task_id": _is_str, "progress": _anything},
    "result": {"task_id": _is_str, "ok": lambda v: isinstance(v, bool), "duration_ms": _is_number},
    "bye": {"worker_id": _is_str},
}
NODE_TYPES: dict[str, dict[str, Check]] = {
    "welcome": {"heartbeat_interval": _is_number},
    "run": {
        "task_id": _is_str,
        "execution_id": _is_str,
        "step": _is_str,
        "attempt": _is_int,
        "implementation": _is_str,
        "config": _is_map_or_nil,
        "inputs": _is_map_or_nil,
        "upstream": _is_map_or_nil,
        "idempotency_key": _is_str,
        "item_index": _is_optional_int,
    },
    "cancel": {"task_id": _is_str},
    "blob": {"key": _is_str, "inputs": _is_map_or_nil, "upstream": _is_map_or_nil},
    "forget": {"key": _is_str},
    "stop": {},
    "rehello": {},
    "refused": {"reason": _is_str},
}
# Fields a map of that type may carry (older peers leave them out).
_OPTIONAL: dict[str, dict[str, Check]] = {
    # the token a node with tokens admits; its number; whether it takes shared runs
    "hello": {"token": _is_str, "hello_seq": _is_int, "shared": _is_bool},
    "welcome": {"hello_seq": _is_int},  # the hello it answers
    "hb": {"hello_seq": _is_int},  # the last hello welcomed
    "started": {"ran_ms": _is_non_negative},  # a held notice: how long the step has run
    "result": {"started": _is_bool},  # the result stands for the start notice too
    "run": {
        "start_hold": _is_non_negative,  # seconds the start notice may be held
        "input": _anything,  # a run frame carries either its input ...
        "input_from": lambda v: v in INPUT_SOURCES,  # ... or where to take it from
        "shared": _is_str,  # its inputs and upstream are those of the blob of this key
    },
}


def encode(msg: Mapping[str, Any]) -> bytes:
    """Pack one protocol map (CodecError if a value cannot be encoded)."""
    return pack(dict(msg))


def _decode(data: bytes, max_size: int, types: Mapping[str, Mapping[str, Check]]) -> dict[str, Any]:
    msg = unpack(data, max_size)
    if not isinstance(msg, dict):
        raise ProtocolError(f"frame is a {type(msg).__name__}, not a map")
    if msg.get("v") != VERSION:
        raise ProtocolError(f"unsupported protocol version {msg.get('v')!r}")
    kind = msg.get("t")
    fields = types.get(kind) if isinstance(kind, str) else None
    if fields is None:
        raise ProtocolError(f"unknown frame type {kind!r}")
    for name, check in fields.items():
        if name not in msg:
            raise ProtocolError(f"{kind} frame lacks field {name!r}")
        if not check(msg[name]):
            raise ProtocolError(f"{kind} frame has a bad {name!r}: {msg[name]!r:.80}")
    optional = _OPTIONAL.get(str(kind))
    if optional is not None:
        for name, check in optional.items():
            if name in msg and not check(msg[name]):
                raise ProtocolError(f"{kind} frame has a bad {name!r}: {msg[name]!r:.80}")
    if kind == "result":
        _check_result(msg)
    return msg


def _check_result(msg: dict[str, Any]) -> None:
    if msg["ok"]:
        if "output" not in msg:
            raise ProtocolError("result frame with ok=true lacks 'output'")
    elif not _is_error(msg.get("error")):
        raise ProtocolError(f"result frame has a bad 'error': {msg.get('error')!r:.80}")


def decode_worker_frame(data: bytes, max_size: int) -> dict[str, Any]:
    """A validated worker -> node map; CodecError for garbage, ProtocolError otherwise."""
    return _decode(data, max_size, WORKER_TYPES)


def decode_node_frame(data: bytes, max_size: int) -> dict[str, Any]:
    """A validated node -> worker map; a run map gets its ``input`` back from where
    ``input_from`` says, and ``config``/``inputs``/``upstream`` nil becomes {}."""
    msg = _decode(data, max_size, NODE_TYPES)
    if msg["t"] == "run":
        _restore_input(msg)
        for name in ("config", "inputs", "upstream"):
            if msg[name] is None:
                msg[name] = {}
    return msg


def _restore_input(msg: dict[str, Any]) -> None:
    source = msg.pop("input_from", None)
    if source is None:
        if "input" not in msg:
            raise ProtocolError("run frame lacks field 'input' (and 'input_from')")
        return
    if "input" in msg:
        raise ProtocolError("run frame has both 'input' and 'input_from'")
    if source == "inputs":
        msg["input"] = msg["inputs"]
    elif source == "upstream":
        msg["input"] = msg["upstream"]
    else:  # "dependency"
        upstream = msg["upstream"]
        if not isinstance(upstream, dict) or len(upstream) != 1:
            raise ProtocolError("run frame takes its input from the one dependency, but "
                                f"its upstream has {len(upstream or {})} entries")  # fmt: skip
        msg["input"] = next(iter(upstream.values()))


def _frame(kind: str, **fields: Any) -> dict[str, Any]:
    return {"v": VERSION, "t": kind, **fields}


# worker -> node


def hello(
    worker_id: str,
    pid: int,
    host: str,
    slots: int,
    plugins: Sequence[str],
    token: str | None = None,
    hello_seq: int | None = None,
    *,
    shared: bool = False,
) -> dict[str, Any]:
    extra: dict[str, Any] = {} if token is None else {"token": token}
    if hello_seq is not None:
        extra["hello_seq"] = hello_seq
    if shared:
        extra["shared"] = True
    return _frame(
        "hello",
        worker_id=worker_id,
        pid=pid,
        host=host,
        slots=slots,
        plugins=list(plugins),
        **extra,
    )


def hb(
    worker_id: str, running: Sequence[str], rss: int, hello_seq: int | None = None
) -> dict[str, Any]:
    extra = {} if hello_seq is None else {"hello_seq": hello_seq}
    return _frame("hb", worker_id=worker_id, running=list(running), rss=rss, **extra)


def started(task_id: str, ran_ms: float = 0.0) -> dict[str, Any]:
    """``ran_ms``: the notice was held; the step began that long before it was sent."""
    extra = {"ran_ms": ran_ms} if ran_ms > 0 else {}
    return _frame("started", task_id=task_id, **extra)


def progress(task_id: str, value: Any) -> dict[str, Any]:
    return _frame("progress", task_id=task_id, progress=value)


def result_ok(
    task_id: str, output: Any, duration_ms: float, *, started: bool = False
) -> dict[str, Any]:
    """``started``: the step ran (so the node may take the result as its start notice too)."""
    extra = {"started": True} if started else {}
    return _frame(
        "result", task_id=task_id, ok=True, output=output, duration_ms=duration_ms, **extra
    )


def result_error(
    task_id: str, error: Mapping[str, Any], duration_ms: float, *, started: bool = False
) -> dict[str, Any]:
    extra = {"started": True} if started else {}
    return _frame(
        "result", task_id=task_id, ok=False, error=dict(error), duration_ms=duration_ms, **extra
    )


def bye(worker_id: str) -> dict[str, Any]:
    return _frame("bye", worker_id=worker_id)


# node -> worker


def welcome(heartbeat_interval: float, hello_seq: int | None = None) -> dict[str, Any]:
    extra = {} if hello_seq is None else {"hello_seq": hello_seq}
    return _frame("welcome", heartbeat_interval=heartbeat_interval, **extra)


def run(task: Mapping[str, Any]) -> dict[str, Any]:
    """A ``run`` frame from a Dispatch task (the run map without ``v``/``t``). An input
    that *is* (the same object as) the task's ``inputs``, ``upstream`` or its one
    upstream value is not sent twice: the frame names where it is (``input_from``)."""
    frame = {**task, "v": VERSION, "t": "run"}
    source = _input_source(task)
    if source is not None:
        del frame["input"]
        frame["input_from"] = source
    return frame


def _input_source(task: Mapping[str, Any]) -> str | None:
    value = task["input"]
    if "inputs" in task and value is task["inputs"]:
        return "inputs"
    upstream = task.get("upstream")
    if value is upstream:
        return "upstream"
    if upstream and len(upstream) == 1 and value is next(iter(upstream.values())):
        return "dependency"
    return None


def run_shared(task: Mapping[str, Any], key: str) -> dict[str, Any]:
    """A ``run`` frame for a worker holding the blob ``key``: the task's ``inputs`` and
    ``upstream`` stay out (nil), and its ``input`` (a fan-out item's) goes as it is."""
    frame = {k: v for k, v in task.items() if k not in ("inputs", "upstream")}
    frame.update(v=VERSION, t="run", inputs=None, upstream=None, shared=key)
    return frame


def blob(key: str, inputs: Any, upstream: Any) -> dict[str, Any]:
    return _frame("blob", key=key, inputs=inputs, upstream=upstream)


def forget(key: str) -> dict[str, Any]:
    return _frame("forget", key=key)


def cancel(task_id: str) -> dict[str, Any]:
    return _frame("cancel", task_id=task_id)


def stop() -> dict[str, Any]:
    return _frame("stop")


def rehello() -> dict[str, Any]:
    return _frame("rehello")


def refused(reason: str) -> dict[str, Any]:
    return _frame("refused", reason=reason)
