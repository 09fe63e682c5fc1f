"""Client.request_many / start_workflows (batched 'start_many' requests): against a real
ControlServer."""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import pykka
import pytest
import zmq

from tamma_actors import _protocol
from tamma_actors._client import Client
from tamma_actors._control import ControlServer
from tamma_actors._errors import (
    ExecutionExists,
    Forbidden,
    FrameTooLarge,
    InvalidRequest,
    RemoteError,
    RequestTimeout,
    TransportError,
    UnknownExecution,
    WorkflowValidationError,
)
from tests.fakes import FakeEngine

pytestmark = pytest.mark.integration

ONE_STEP = {"name": "one", "steps": [{"name": "only", "implementation": "noop"}]}


@pytest.fixture
def ctx() -> Iterator[zmq.Context[Any]]:
    context: zmq.Context[Any] = zmq.Context()
    yield context
    context.term()


@pytest.fixture
def engine() -> Iterator[FakeEngine]:
    with FakeEngine() as fake:
        yield fake


@pytest.fixture
def server(
    ctx: zmq.Context[Any], engine: FakeEngine, short_dir: Path
) -> Iterator[pykka.ActorRef[Any]]:
    ref = ControlServer.start(ctx, engine, endpoint=f"ipc://{short_dir}/control.sock")
    ref.proxy().address().get(timeout=10)
    try:
        yield ref
    finally:
        ref.stop(block=True, timeout=10)


@pytest.fixture
def client(server: pykka.ActorRef[Any], short_dir: Path) -> Iterator[Client]:
    with Client(data_dir=short_dir, timeout=10) as c:
        yield c


def _requests(server: pykka.ActorRef[Any]) -> int:
    return int(server.proxy().stats().get(timeout=10)["requests"])


def _listed(client: Client) -> list[Any]:
    return sorted(e.context["inputs"]["n"] for e in client.list_workflows())


def _started_inputs(engine: FakeEngine) -> list[Any]:
    return [c[1][1] for c in engine.calls if c[0] == "start_workflow"]


def test_start_workflows_starts_one_execution_per_inputs_in_order_in_batches(
    client: Client, engine: FakeEngine, server: pykka.ActorRef[Any]
) -> None:
    started = client.start_workflows(ONE_STEP, ({"n": i} for i in range(50)), window=8)
    assert [e.context["inputs"] for e in started] == [{"n": i} for i in range(50)]
    assert len({e.id for e in started}) == 50
    assert _started_inputs(engine) == [{"n": i} for i in range(50)]
    assert _requests(server) == 7  # 'start_many' requests of at most 8 starts
    assert client.start_workflows(ONE_STEP, []) == []
    assert _requests(server) == 7


def test_start_workflows_with_ids_sends_each_id_with_its_inputs(
    client: Client, engine: FakeEngine
) -> None:
    ids = [f"order-{i}" for i in range(5)]
    started = client.start_workflows(ONE_STEP, ({"n": i} for i in range(5)), execution_ids=ids)
    assert [e.id for e in started] == ids
    assert [e.context["inputs"] for e in started] == [{"n": i} for i in range(5)]
    with pytest.raises(ValueError, match="2 execution ids for 5 inputs"):
        client.start_workflows(ONE_STEP, ({"n": i} for i in range(5)), execution_ids=ids[:2])
    with pytest.raises(ValueError, match="window"):
        client.start_workflows(ONE_STEP, [{}], window=0)


def test_a_failed_start_in_a_batch_leaves_the_others_started_and_raises_after_all(
    client: Client, engine: FakeEngine
) -> None:
    engine.inject_failure("start_workflow", ExecutionExists("order-1 is taken"))
    with pytest.raises(ExecutionExists, match="order-1 is taken"):
        client.start_workflows(ONE_STEP, ({"n": i} for i in range(6)), window=4)
    # the first start failed; the other five (in two batches) were started and answered
    assert _listed(client) == [1, 2, 3, 4, 5]
    # a start that raises where it should have answered a failed future: only it fails
    engine.inject_failure("start_workflow", RuntimeError("bug"), synchronous=True)
    with pytest.raises(RemoteError, match="internal error"):
        client.start_workflows(ONE_STEP, ({"n": i} for i in range(6, 9)))
    assert _listed(client) == [1, 2, 3, 4, 5, 7, 8]


def test_an_invalid_workflow_starts_nothing_and_names_what_is_wrong(
    client: Client, engine: FakeEngine
) -> None:
    broken = {"name": "broken", "steps": [{"name": "a", "implementation": "noop",
                                           "dependencies": ["nowhere"]}]}  # fmt: skip
    with pytest.raises(WorkflowValidationError, match="nowhere"):
        client.start_workflows(broken, ({"n": i} for i in range(3)))
    assert _listed(client) == []


def test_inputs_that_cannot_be_sent_start_nothing_and_are_named_by_their_place(
    client: Client, server: pykka.ActorRef[Any]
) -> None:
    due = datetime.date(2026, 12, 1)
    for inputs_list, says in [
        ([{"n": 0}, {"n": 1, "due": due}], r"'start_many': inputs_list\[1\]\.due: .* type date"),
        ([{"n": 0}, [("n", 1)]], r"^inputs_list\[1\] must be a mapping .* not list$"),
    ]:
        with pytest.raises(InvalidRequest, match=says):
            client.start_workflows(ONE_STEP, inputs_list)
    with pytest.raises(InvalidRequest, match=r"'start': inputs\.due: a value of type date"):
        client.start_workflow(ONE_STEP, {"due": due})
    with pytest.raises(InvalidRequest, match=r"'execute': context\[0\]: .* type set"):
        client.execute_step("x1", "only", [{1}])
    assert _requests(server) == 0  # refused before anything was sent
    assert _listed(client) == []


def test_big_inputs_go_in_smaller_batches_and_one_over_the_cap_sends_nothing(
    client: Client, server: pykka.ActorRef[Any], short_dir: Path
) -> None:
    with Client(data_dir=short_dir, timeout=10, max_frame_bytes=64 << 10) as small:
        blob = "x" * (10 << 10)
        started = small.start_workflows(ONE_STEP, ({"n": i, "blob": blob} for i in range(12)))
        assert [e.context["inputs"]["n"] for e in started] == list(range(12))
        # half the 64 KiB cap holds three such starts with their records: four requests
        assert _requests(server) == 4
        with pytest.raises(FrameTooLarge, match="exceeds the 65536-byte cap"):
            small.start_workflows(ONE_STEP, [{"n": 0}, {"blob": "y" * (70 << 10)}])
    # the refused call sent nothing, not even its first start
    assert _listed(client) == list(range(12))
    # with the default 8 MiB cap, a request still holds at most 256 KiB of starts
    blob = "z" * (10 << 10)
    client.start_workflows(ONE_STEP, ({"n": 12 + i, "blob": blob} for i in range(40)))
    assert _requests(server) == 4 + 2 + 1  # and the one 'list' above


@contextmanager
def _capped(
    ctx: zmq.Context[Any], engine: FakeEngine, short_dir: Path, cap: int
) -> Iterator[Client]:
    """A control server whose frame cap is ``cap``, and a client with the default cap."""
    endpoint = f"ipc://{short_dir}/capped.sock"
    ref = ControlServer.start(ctx, engine, endpoint=endpoint, max_frame_bytes=cap)
    ref.proxy().address().get(timeout=10)
    try:
        with Client(endpoint, timeout=10) as c:
            yield c
    finally:
        ref.stop(block=True, timeout=10)


def _wide(steps: int) -> dict[str, Any]:
    """A workflow whose records are big for its definition: a result per step."""
    names = [f"step-{i:03d}" for i in range(steps)]
    return {"name": "wide", "steps": [{"name": n, "implementation": "noop"} for n in names]}


def _calls(engine: FakeEngine, method: str) -> int:
    return sum(1 for c in engine.calls if c[0] == method)


def test_a_start_many_request_over_half_the_cap_is_refused_before_it_starts_anything(
    ctx: zmq.Context[Any], engine: FakeEngine, short_dir: Path
) -> None:
    with _capped(ctx, engine, short_dir, 32 << 10) as raw:
        items = [{"inputs": {"pad": "x" * 1_000}} for _ in range(20)]  # ~20 KB
        too_large = r"of 20 starts and .* over half the 32,768-byte cap"
        with pytest.raises(FrameTooLarge, match=too_large) as refused:
            raw.request("start_many", {"workflow": ONE_STEP, "items": items})
        assert cast(RemoteError, refused.value).details == {"started": []}
        assert raw.request("start_many", {"workflow": ONE_STEP, "items": items[:5]})
        big = [{"inputs": {"pad": "y" * 20_000}}]  # alone, a batch is a 'start'
        assert raw.request("start_many", {"workflow": ONE_STEP, "items": big})[0]["ok"]
    assert len(_started_inputs(engine)) == 6


def test_a_start_many_of_more_starts_than_one_reply_can_answer_is_refused_before_it_starts(
    ctx: zmq.Context[Any], engine: FakeEngine, short_dir: Path
) -> None:
    # 16 KiB hold 51 compact outcomes of at most 320 bytes: 52 tiny starts are refused
    with _capped(ctx, engine, short_dir, 16 << 10) as raw:
        items = [{"inputs": {"n": i}} for i in range(52)]
        too_many = r"of 52 starts and more starts than one reply within the 16,384-byte cap"
        with pytest.raises(FrameTooLarge, match=too_many) as refused:
            raw.request("start_many", {"workflow": ONE_STEP, "items": items})
        assert cast(RemoteError, refused.value).details == {"started": []}
        assert _calls(engine, "start_workflow") == 0
        assert len(raw.request("start_many", {"workflow": ONE_STEP, "items": items[:51]})) == 51


def test_records_over_the_cap_together_come_back_compact_with_every_id_and_failure(
    ctx: zmq.Context[Any], engine: FakeEngine, short_dir: Path
) -> None:
    with _capped(ctx, engine, short_dir, 24 << 10) as raw:
        long_message = "é" * 200 + " is taken"  # cut to 160 bytes, on a character boundary
        engine.inject_failure("start_workflow", ExecutionExists(long_message))
        items = [{"inputs": {"n": i}} for i in range(30)]
        outcomes = raw.request("start_many", {"workflow": _wide(40), "items": items})
    # 30 records of 40 results each would be ~80 KB: each outcome is an id or a failure
    assert outcomes[0] == {
        "ok": False,
        "error": {"code": "execution_exists", "message": "é" * 80},
    }
    started = [o["id"] for o in outcomes[1:]]
    assert all(o == {"ok": True, "id": eid} for o, eid in zip(outcomes[1:], started, strict=True))
    assert [engine._records[eid]["context"]["inputs"]["n"] for eid in started] == list(range(1, 30))


def test_start_workflows_reads_records_sent_compact_and_resends_refused_batches_smaller(
    ctx: zmq.Context[Any], engine: FakeEngine, short_dir: Path
) -> None:
    # A node with a smaller cap than the client: 64 starts fit its requests, not its replies
    with _capped(ctx, engine, short_dir, 24 << 10) as small:
        started = small.start_workflows(_wide(40), ({"n": i} for i in range(100)))
        assert [e.context["inputs"] for e in started] == [{"n": i} for i in range(100)]
        assert all(len(e.results) == 40 for e in started)
        assert len({e.id for e in started}) == 100
        assert _calls(engine, "get_workflow") == 100  # both batches came back compact
    # a smaller one still: batches of 64 and 32 are refused (25 outcomes fit), their
    # halves are not; the executions come back in order, each started once
    engine.calls.clear()
    with _capped(ctx, engine, short_dir, 8 << 10) as smaller:
        started = smaller.start_workflows(ONE_STEP, ({"n": i} for i in range(100, 200)))
    assert [e.context["inputs"] for e in started] == [{"n": i} for i in range(100, 200)]
    assert sorted(i["n"] for i in _started_inputs(engine)) == list(range(100, 200))
    assert _calls(engine, "get_workflow") == 0


def test_a_record_that_cannot_be_read_after_a_compact_reply_raises_naming_the_started(
    ctx: zmq.Context[Any], engine: FakeEngine, short_dir: Path
) -> None:
    with _capped(ctx, engine, short_dir, 24 << 10) as small:
        engine.inject_failure("get_workflow", UnknownExecution("gone"))
        with pytest.raises(UnknownExecution, match="was started, but its record could not"):
            try:
                small.start_workflows(_wide(40), ({"n": i} for i in range(10)))
            except RemoteError as exc:
                assert isinstance(exc.details, dict)
                assert len(exc.details["started"]) == 10
                assert sorted(exc.details["started"]) == sorted(engine._records)
                raise


def test_a_start_whose_record_is_over_the_cap_is_made_and_its_error_names_it(
    ctx: zmq.Context[Any], engine: FakeEngine, short_dir: Path
) -> None:
    with _capped(ctx, engine, short_dir, 16 << 10) as small:
        inputs = {"pad": "x" * 12_000}  # the request fits; the record, with 60 results, not
        with pytest.raises(FrameTooLarge, match="was started; read it in parts") as refused:
            small.start_workflow(_wide(60), inputs)
    [eid] = engine._records
    assert eid in str(refused.value)
    assert cast(RemoteError, refused.value).details == {"started": [eid]}


def test_a_batch_refused_for_a_reason_other_than_its_size_raises_it(
    ctx: zmq.Context[Any], engine: FakeEngine, short_dir: Path
) -> None:
    endpoint = f"ipc://{short_dir}/tokens.sock"
    tokens = {"look": "viewer"}
    ref = ControlServer.start(ctx, engine, endpoint=endpoint, tokens=tokens)
    ref.proxy().address().get(timeout=10)
    try:
        with (
            Client(endpoint, timeout=10, token="look") as viewer,
            pytest.raises(Forbidden, match="may not call 'start_many'"),
        ):
            viewer.start_workflows(ONE_STEP, ({"n": i} for i in range(3)))
        assert _calls(engine, "start_workflow") == 0
    finally:
        ref.stop(block=True, timeout=10)


def test_a_big_request_a_node_drops_fails_at_once_saying_why_it_may_have(
    ctx: zmq.Context[Any], engine: FakeEngine, short_dir: Path
) -> None:
    # over twice the node's 64 KiB cap: libzmq drops it unread, with the connection, and
    # the client says so at once (not after its timeout: no reply can come)
    with _capped(ctx, engine, short_dir, 64 << 10) as small:
        small.timeout = 30.0
        big = {"pad": "x" * (1 << 20)}
        hint = r"dropped before 'start' was answered \(the request was 1,048,6\d\d bytes"
        with pytest.raises(TransportError, match=hint) as dropped:
            small.start_workflow(ONE_STEP, big)
        assert not isinstance(dropped.value, RequestTimeout)
        small.timeout = 0.5
        eid = small.start_workflow(ONE_STEP).id  # the client connects again after a timeout
        with pytest.raises(RequestTimeout, match=r"within 0.5s$"):  # a small one: no hint
            small.request("wait", {"id": eid, "timeout": 5.0})
    assert _calls(engine, "start_workflow") == 1


def test_a_node_without_start_many_gets_one_start_per_execution(
    client: Client, engine: FakeEngine, server: pykka.ActorRef[Any], monkeypatch: Any
) -> None:
    monkeypatch.delitem(_protocol.OPS, "start_many")  # a node from before the op
    started = client.start_workflows(ONE_STEP, ({"n": i} for i in range(5)), window=2)
    assert [e.context["inputs"] for e in started] == [{"n": i} for i in range(5)]
    assert _started_inputs(engine) == [{"n": i} for i in range(5)]
    assert _requests(server) == 3 + 5  # three refused batches, then five starts


def test_request_many_collects_every_reply_then_raises_the_first_error(
    client: Client, engine: FakeEngine
) -> None:
    good = client.start_workflow(ONE_STEP)
    ids = [good.id, "missing-1", good.id, "missing-2"]
    with pytest.raises(UnknownExecution, match="missing-1"):
        client.request_many("status", ({"id": i} for i in ids), window=2)
    # every reply was read: the socket is clean for the next request
    assert client.get_workflow_status(good.id).id == good.id
    assert client.request_many("status", []) == []


def test_request_many_refuses_a_bad_window_and_a_closed_client(client: Client) -> None:
    with pytest.raises(ValueError, match="window"):
        client.request_many("health", [{}], window=0)
    client.close()
    with pytest.raises(TransportError, match="closed"):
        client.request_many("health", [{}])


def test_request_many_times_out_without_a_server(short_dir: Path) -> None:
    with (
        Client(f"ipc://{short_dir}/nobody.sock", timeout=0.2) as lonely,
        pytest.raises(RequestTimeout, match="2 'health' request"),
    ):
        lonely.request_many("health", [{}, {}])
