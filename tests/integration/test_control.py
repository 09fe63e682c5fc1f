"""ControlServer over real ZeroMQ sockets, against the in-memory FakeEngine."""

from __future__ import annotations

import os
import socket
import stat
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pykka
import pytest
import zmq

from tamma_actors._client import Client
from tamma_actors._codec import pack, unpack
from tamma_actors._control import ControlServer, _Completed
from tamma_actors._errors import ConfigError, FrameTooLarge, RemoteError, TransportError
from tamma_actors._protocol import PROTOCOL_VERSION, make_request
from tamma_actors._server_socket import forget_ipc_file, make_ipc_private, prepare_ipc_endpoint
from tests.fakes import FakeEngine

pytestmark = pytest.mark.integration

WORKFLOW = {"name": "demo", "steps": [{"name": "a"}, {"name": "b", "dependencies": ["a"]}]}
TIMEOUT_MS = 10_000


@pytest.fixture
def ctx() -> Iterator[zmq.Context[Any]]:
    context: zmq.Context[Any] = zmq.Context()
    yield context
    context.term()


@pytest.fixture
def engine() -> Iterator[FakeEngine]:
    with FakeEngine() as fake:
        yield fake


class Harness:
    """A running ControlServer plus helpers to talk to it with raw sockets."""

    def __init__(self, ctx: zmq.Context[Any], engine: FakeEngine, endpoint: str, **kw: Any):
        self.ctx = ctx
        self.engine = engine
        self.ref = ControlServer.start(ctx, engine, endpoint=endpoint, **kw)
        self.server = self.ref.proxy()
        self.endpoint: str = self.server.address().get(timeout=10)
        self.sockets: list[zmq.Socket[Any]] = []

    def socket(self, kind: int = zmq.DEALER) -> zmq.Socket[Any]:
        sock: zmq.Socket[Any] = self.ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.endpoint)
        self.sockets.append(sock)
        return sock

    def ask(self, sock: zmq.Socket[Any], payload: bytes | list[bytes]) -> dict[str, Any]:
        sock.send_multipart(payload if isinstance(payload, list) else [payload])
        return self.receive(sock)

    @staticmethod
    def receive(sock: zmq.Socket[Any]) -> dict[str, Any]:
        assert sock.poll(TIMEOUT_MS), "no reply from the control server"
        reply = unpack(sock.recv_multipart()[-1])
        assert isinstance(reply, dict)
        return reply

    def call(self, sock: zmq.Socket[Any], op: str, rid: Any = 1, **args: Any) -> dict[str, Any]:
        return self.ask(sock, pack(make_request(rid, op, args)))

    def stats(self) -> dict[str, int]:
        result: dict[str, int] = self.server.stats().get(timeout=10)
        return result

    def close(self) -> None:
        for sock in self.sockets:
            sock.close(linger=0)
        if self.ref.is_alive():
            self.ref.stop(block=True, timeout=10)


@pytest.fixture
def harness(ctx: zmq.Context[Any], engine: FakeEngine, tmp_path: Path) -> Iterator[Harness]:
    h = Harness(ctx, engine, f"ipc://{tmp_path}/run/control.sock")
    yield h
    h.close()


# -- endpoints ---------------------------------------------------------------------------


def test_ipc_directory_is_created_private(harness: Harness, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert stat.S_IMODE(run.stat().st_mode) & 0o077 == 0
    assert (run / "control.sock").is_socket()


def test_the_socket_file_is_private_whatever_the_umask(
    ctx: zmq.Context[Any], engine: FakeEngine, tmp_path: Path
) -> None:
    """Its mode came from the umask: under 000 any local user could connect, and on a node
    without tokens be admin."""
    old = os.umask(0)
    try:
        h = Harness(ctx, engine, f"ipc://{tmp_path}/control.sock")
    finally:
        os.umask(old)
    try:
        assert stat.S_IMODE((tmp_path / "control.sock").stat().st_mode) == 0o600
    finally:
        h.close()


def _terminates(ctx: zmq.Context[Any]) -> bool:
    """Whether ``ctx.term()`` returns (it waits for every socket of the context to close)."""
    term = threading.Thread(target=ctx.term, daemon=True)
    term.start()
    term.join(10)
    return not term.is_alive()


def test_a_start_failing_otherwise_than_at_the_bind_closes_its_socket(engine: FakeEngine) -> None:
    """A key libzmq refuses (the node's config checks keys; here one is given directly): the
    socket stayed open, and the node's stop then hung for ever in Context.term()."""
    ctx: zmq.Context[Any] = zmq.Context()
    with pytest.raises(ConfigError, match="curve_secret_key"):
        ControlServer.start_and_wait(
            ctx, engine, endpoint="tcp://127.0.0.1:*", curve_secret_key="not a key", timeout=10
        )
    assert _terminates(ctx)


def test_stale_socket_file_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # the file stays behind, nobody listens
    prepare_ipc_endpoint(f"ipc://{path}")
    assert not path.exists()


def test_live_socket_is_not_stolen(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    with socket.socket(socket.AF_UNIX) as live:
        live.bind(str(path))
        live.listen(1)
        with pytest.raises(TransportError, match="already served"):
            prepare_ipc_endpoint(f"ipc://{path}")
    assert path.exists()


def test_regular_file_is_not_removed(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    path.write_text("precious")
    with pytest.raises(TransportError, match="not a socket"):
        prepare_ipc_endpoint(f"ipc://{path}")
    assert path.read_text() == "precious"


def test_non_file_endpoints_are_left_alone(tmp_path: Path) -> None:
    prepare_ipc_endpoint("tcp://127.0.0.1:5555")
    prepare_ipc_endpoint("ipc://@abstract-name")
    assert list(tmp_path.iterdir()) == []


def test_tcp_endpoint_reports_its_port(ctx: zmq.Context[Any], engine: FakeEngine) -> None:
    h = Harness(ctx, engine, "tcp://127.0.0.1:*")
    try:
        assert h.endpoint.startswith("tcp://127.0.0.1:")
        assert not h.endpoint.endswith(":*")
        assert h.call(h.socket(), "health")["ok"] is True
    finally:
        h.close()


def test_unbindable_endpoint_stops_the_actor(ctx: zmq.Context[Any], engine: FakeEngine) -> None:
    ref = ControlServer.start(ctx, engine, endpoint="tcp://256.1.1.1:1")
    with pytest.raises(pykka.ActorDeadError):
        ref.proxy().address().get(timeout=10)


def test_second_server_on_a_live_endpoint_fails(
    harness: Harness, ctx: zmq.Context[Any], engine: FakeEngine
) -> None:
    ref = ControlServer.start(ctx, engine, endpoint=harness.endpoint)
    with pytest.raises(pykka.ActorDeadError):
        ref.proxy().address().get(timeout=10)
    assert harness.call(harness.socket(), "health")["ok"] is True


# -- serving -----------------------------------------------------------------------------


def test_start_and_get_round_trip(harness: Harness) -> None:
    sock = harness.socket()
    started = harness.call(sock, "start", "s1", workflow=WORKFLOW, inputs={"k": 1})
    assert started["ok"] is True and started["id"] == "s1" and started["v"] == 1
    record = started["result"]
    assert record["status"] == "running"
    assert record["context"]["inputs"] == {"k": 1}
    got = harness.call(sock, "get", 2, id=record["id"])
    assert got["result"]["id"] == record["id"]


def test_every_op_reaches_the_engine(harness: Harness, engine: FakeEngine) -> None:
    sock = harness.socket()
    eid = harness.call(sock, "start", workflow=WORKFLOW)["result"]["id"]
    engine.run_step(eid, "a")
    engine.fail_step(eid, "a")
    replies = {
        "status": harness.call(sock, "status", id=eid),
        "list": harness.call(sock, "list", status=["failed"], workflow_id="demo", limit=5),
        "events": harness.call(sock, "events", id=eid, from_seq=2, limit=2),
        "retry": harness.call(sock, "retry", id=eid, step="a"),
        "pause": harness.call(sock, "pause", id=eid),
        "resume": harness.call(sock, "resume", id=eid),
        "abort": harness.call(sock, "abort", id=eid, reason="enough"),
        "wait": harness.call(sock, "wait", id=eid, timeout=5),
        "health": harness.call(sock, "health"),
    }
    assert all(r["ok"] for r in replies.values()), replies
    assert replies["status"]["result"]["steps"] == {"a": "failed", "b": "pending"}
    assert [r["id"] for r in replies["list"]["result"]] == [eid]
    assert [e["seq"] for e in replies["events"]["result"]] == [2, 3]
    assert replies["retry"]["result"]["status"] == "running"
    assert replies["pause"]["result"]["status"] == "paused"
    assert replies["resume"]["result"]["status"] == "running"
    assert replies["abort"]["result"]["reason"] == "enough"
    assert replies["wait"]["result"]["status"] == "aborted"
    assert replies["health"]["result"]["status"] == "ok"
    called = [name for name, _ in engine.calls]
    assert called == [
        "start_workflow",
        "get_workflow_status",
        "list_workflows",
        "get_events",
        "retry_step",
        "pause_workflow",
        "resume_workflow",
        "abort_workflow",
        "wait",
        "health",
    ]
    assert engine.calls[2][1] == (["failed"], "demo", 5, 0, "record")


def test_engine_errors_become_error_replies(harness: Harness) -> None:
    sock = harness.socket()
    missing = harness.call(sock, "get", 5, id="nope")
    assert missing == {
        "v": 1,
        "id": 5,
        "ok": False,
        "error": {"code": "not_found", "message": "no execution 'nope'"},
    }
    invalid = harness.call(sock, "start", workflow={"name": "w", "steps": [{"name": ""}]})
    assert invalid["error"]["code"] == "invalid_workflow"
    assert invalid["error"]["details"] == [
        {"loc": "steps.0.name", "message": "a step needs a name"}
    ]


def test_illegal_transition_changes_nothing(harness: Harness) -> None:
    sock = harness.socket()
    eid = harness.call(sock, "start", workflow=WORKFLOW)["result"]["id"]
    reply = harness.call(sock, "resume", id=eid)
    assert reply["error"]["code"] == "illegal_transition"
    assert harness.call(sock, "get", id=eid)["result"]["status"] == "running"


GARBAGE: list[tuple[bytes | list[bytes], str, Any]] = [
    (b"\xc1\xff\x00garbage", "bad_request", None),
    (pack([1, 2, 3]), "bad_request", None),
    (pack({"v": 1, "op": "health", "args": {}}), "bad_request", None),
    (pack({"v": 9, "id": 4, "op": "health", "args": {}}), "unsupported_version", 4),
    (pack({"v": 1, "id": 4, "op": "rm -rf", "args": {}}), "unknown_op", 4),
    (pack({"v": 1, "id": "x", "op": "get", "args": {"id": 17}}), "bad_request", "x"),
    (pack({"v": 1, "id": "x", "op": "get", "args": {}}), "bad_request", "x"),
    (pack({"v": 1, "id": "x", "op": "start", "args": {"workflow": "f.yaml"}}), "bad_request", "x"),
    ([b"two", b"frames"], "bad_request", None),
]


@pytest.mark.parametrize(("payload", "code", "rid"), GARBAGE)
def test_garbage_gets_an_error_and_the_server_keeps_serving(
    harness: Harness, engine: FakeEngine, payload: bytes | list[bytes], code: str, rid: Any
) -> None:
    sock = harness.socket()
    reply = harness.ask(sock, payload)
    assert reply["ok"] is False
    assert (reply["error"]["code"], reply["id"]) == (code, rid)
    assert engine.calls == []
    assert harness.call(sock, "health", 99) == {
        "v": 1,
        "id": 99,
        "ok": True,
        "result": {"status": "ok", "executions": 0, "live": 0},
    }
    assert harness.stats() == {"requests": 2, "errors": 1, "in_flight": 0}


def test_wrong_types_name_the_field(harness: Harness) -> None:
    reply = harness.call(harness.socket(), "list", limit="ten", offset=-1)
    assert "limit" in reply["error"]["message"]
    assert {p["loc"] for p in reply["error"]["details"]} == {"limit", "offset"}


def test_req_clients_get_the_delimiter_back(harness: Harness) -> None:
    req = harness.socket(zmq.REQ)
    req.send(pack(make_request("r", "health", {})))
    assert req.poll(TIMEOUT_MS)
    reply = unpack(req.recv())  # a REQ socket only accepts a reply behind the delimiter
    assert (reply["id"], reply["ok"]) == ("r", True)
    req.send(b"junk")
    assert req.poll(TIMEOUT_MS)
    assert unpack(req.recv())["error"]["code"] == "bad_request"


def test_a_frame_over_the_cap_is_refused_naming_it_and_one_over_twice_is_dropped(
    ctx: zmq.Context[Any], engine: FakeEngine, tmp_path: Path
) -> None:
    h = Harness(ctx, engine, f"ipc://{tmp_path}/c.sock", max_frame_bytes=1024)
    try:
        over = h.socket()
        refused = h.call(over, "start", rid="big-1", workflow={"pad": "x" * 1500})  # ~1.5 KB
        assert (refused["id"], refused["error"]["code"]) == ("big-1", "too_large")
        assert "exceeds the 1024-byte cap" in refused["error"]["message"]
        big = h.socket()
        big.send(pack(make_request(1, "start", {"workflow": {"pad": "x" * 4096}})))
        other = h.socket()
        assert h.call(other, "health")["ok"] is True
        # The frame over twice the cap never reached the server: libzmq disconnected its
        # sender. Nothing was started either way.
        assert h.stats()["requests"] == 2
        assert engine.calls == [("health", ())]
    finally:
        h.close()


@pytest.fixture
def capped(ctx: zmq.Context[Any], engine: FakeEngine, tmp_path: Path) -> Iterator[Harness]:
    """A server whose frames (requests and replies) are capped at 2 KiB."""
    h = Harness(ctx, engine, f"ipc://{tmp_path}/c.sock", max_frame_bytes=2048)
    yield h
    h.close()


def test_a_reply_over_the_cap_is_not_sent_its_request_gets_an_error_naming_it(
    capped: Harness,
) -> None:
    # A client with the same cap would drop such a reply (and lose its connection) and
    # wait for nothing: the request is answered with what was too large instead.
    sock = capped.socket()
    for _ in range(20):
        assert capped.call(sock, "start", workflow=WORKFLOW)["ok"] is True
    error = capped.call(sock, "list", limit=20)["error"]
    assert error["code"] == "too_large"
    assert error["message"].startswith("the reply to 'list' is ")
    assert "bytes, over the 2,048-byte cap (max_frame_bytes)" in error["message"]
    assert len(capped.call(sock, "list", limit=1)["result"]) == 1  # still served


def test_a_client_pages_down_to_one_record_and_then_names_the_cap(
    capped: Harness, engine: FakeEngine
) -> None:
    """Pages shrink to one record; one over the cap alone is named by the node (the
    client then rebuilds it from its events: tested on a real node, whose events replay)."""
    with Client(capped.endpoint, timeout=10, max_frame_bytes=2048) as client:
        small = client.start_workflow(WORKFLOW).id
        big = client.start_workflow(WORKFLOW).id
        engine.run_step(big, "a")
        engine.complete_step(big, "a", data={"text": "x" * 4000})  # over the cap alone
        assert [e.id for e in client.list_workflows({"limit": 1})] == [small]
        with pytest.raises(FrameTooLarge, match="over the 2,048-byte cap"):
            client.request("list", {"offset": 1, "limit": 1})
        assert [s.id for s in client.list_summaries()] == [small, big]
        with pytest.raises(FrameTooLarge, match="over the 2,048-byte cap"):
            client.get_events(big)  # one event alone over the cap: nothing to rebuild it from
        with pytest.raises(RemoteError) as bad:
            client.get_events(small, limit=0)  # not paged: the node names what is wrong
        assert bad.value.code == "bad_request" and "limit" in str(bad.value)


def test_a_slow_wait_does_not_block_other_requests(harness: Harness, engine: FakeEngine) -> None:
    waiter, other = harness.socket(), harness.socket()
    eid = harness.call(other, "start", workflow={"name": "w", "steps": [{"name": "only"}]})[
        "result"
    ]["id"]
    waiter.send(pack(make_request("w", "wait", {"id": eid})))
    assert harness.call(other, "status", id=eid)["result"]["status"] == "running"
    assert harness.stats()["in_flight"] == 1  # status answered while wait is parked
    engine.run_step(eid, "only")
    engine.complete_step(eid, "only", data={"n": 1})
    reply = harness.receive(waiter)
    assert reply["id"] == "w"
    assert reply["result"]["status"] == "completed"
    assert reply["result"]["results"]["only"]["data"] == {"n": 1}
    assert harness.stats()["in_flight"] == 0


def test_wait_timeout_returns_the_current_record(harness: Harness) -> None:
    sock = harness.socket()
    eid = harness.call(sock, "start", workflow=WORKFLOW)["result"]["id"]
    reply = harness.call(sock, "wait", id=eid, timeout=0)
    assert reply["result"]["status"] == "running"


def test_internal_errors_are_not_described(harness: Harness, engine: FakeEngine) -> None:
    sock = harness.socket()
    engine.inject_failure("health", RuntimeError("secret"), synchronous=True)
    sync = harness.call(sock, "health")
    engine.inject_failure("health", KeyError("secret"))
    failed_future = harness.call(sock, "health")
    for reply in (sync, failed_future):
        assert reply["error"]["code"] == "internal"
        assert "secret" not in reply["error"]["message"]
    assert harness.call(sock, "health")["ok"] is True


class OddEngine(FakeEngine):
    """Answers health with values the wire cannot carry, or never (then cancels)."""

    def __init__(self) -> None:
        super().__init__()
        self.parked: Future[dict[str, Any]] | None = None
        self.parked_event = threading.Event()

    def health(self) -> Future[dict[str, Any]]:
        fut: Future[dict[str, Any]] = Future()
        if self.parked is None:
            self.parked = fut
            self.parked_event.set()
        else:
            fut.set_result({"not": {1, 2}})
        return fut


def test_unencodable_results_and_cancelled_futures(ctx: zmq.Context[Any], tmp_path: Path) -> None:
    with OddEngine() as engine:
        h = Harness(ctx, engine, f"ipc://{tmp_path}/c.sock")
        try:
            sock = h.socket()
            sock.send(pack(make_request("parked", "health", {})))
            assert engine.parked_event.wait(10)
            assert h.call(sock, "health", "odd")["error"]["code"] == "internal"
            assert engine.parked is not None
            engine.parked.cancel()
            cancelled = h.receive(sock)
            assert (cancelled["id"], cancelled["error"]["code"]) == ("parked", "unavailable")
        finally:
            h.close()


def test_tokens_and_roles(ctx: zmq.Context[Any], engine: FakeEngine, tmp_path: Path) -> None:
    tokens = {"view": "viewer", "op": "operator"}
    h = Harness(ctx, engine, f"ipc://{tmp_path}/c.sock", tokens=tokens)
    try:
        sock = h.socket()

        def call(op: str, token: str | None, **args: Any) -> dict[str, Any]:
            return h.ask(sock, pack(make_request(1, op, args, token)))

        assert call("health", None)["error"]["code"] == "forbidden"
        assert call("health", "wrong")["error"]["code"] == "forbidden"
        assert call("health", "view")["ok"] is True
        denied = call("start", "view", workflow=WORKFLOW)
        assert denied["error"]["code"] == "forbidden"
        assert [name for name, _ in engine.calls] == ["health"]
        assert call("start", "op", workflow=WORKFLOW)["ok"] is True
        # A malformed request from a caller without the right token is refused as such:
        # its problems (which name its fields) are for callers that may make it.
        for token in (None, "wrong", "view"):
            refused = call("start", token, workflow=WORKFLOW, nosuchkey=1)["error"]
            assert refused["code"] == "forbidden" and "nosuchkey" not in str(refused)
        assert call("start", "op", nosuchkey=1)["error"]["code"] == "bad_request"
        assert call("nosuchop", "view")["error"]["code"] == "unknown_op"
        assert call("nosuchop", "wrong")["error"]["code"] == "forbidden"
        # an envelope's mistake too (here no id), for an op the token may not call
        no_id = {"v": PROTOCOL_VERSION, "op": "admin.backup", "token": "op", "args": {}}
        assert h.ask(sock, pack(no_id))["error"]["code"] == "forbidden"
        assert h.ask(sock, pack({**no_id, "op": "health"}))["error"]["code"] == "bad_request"
    finally:
        h.close()


def test_replies_after_stop_are_dropped(harness: Harness, engine: FakeEngine) -> None:
    sock = harness.socket()
    eid = harness.call(sock, "start", workflow=WORKFLOW)["result"]["id"]
    sock.send(pack(make_request("late", "wait", {"id": eid})))
    assert harness.call(sock, "health")["ok"] is True  # the wait is parked by now
    harness.ref.stop(block=True, timeout=10)
    engine.abort_workflow(eid).result(timeout=10)  # resolves the parked wait: no one to tell
    assert not harness.ref.is_alive()


def test_socket_file_is_removed_on_stop(harness: Harness, tmp_path: Path) -> None:
    harness.ref.stop(block=True, timeout=10)
    assert not (tmp_path / "run" / "control.sock").exists()
    assert os.listdir(tmp_path / "run") == []


def test_undeliverable_replies_are_dropped(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    done: Future[Any] = Future()
    done.set_result({"ok": 1})
    with caplog.at_level("WARNING", logger="tamma_actors._control"):
        harness.ref.tell(_Completed([b"nobody"], 1, "health", done))
        assert harness.call(harness.socket(), "health")["ok"] is True
    assert any("reply dropped" in rec.getMessage() for rec in caplog.records)


def test_unexpected_messages_are_ignored(harness: Harness) -> None:
    harness.ref.tell("hello")
    assert harness.call(harness.socket(), "health")["ok"] is True


def test_a_failing_server_releases_its_endpoint(harness: Harness, tmp_path: Path) -> None:
    done: Future[Any] = Future()
    done.set_result(None)
    harness.ref.tell(_Completed([42], 1, "health", done))  # type: ignore[list-item]
    with pytest.raises(pykka.ActorDeadError):
        harness.server.stats().get(timeout=10)
    # The actor is marked dead before on_failure has closed its socket: wait for that.
    sock_file, deadline = tmp_path / "run" / "control.sock", time.monotonic() + 10
    while sock_file.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not sock_file.exists()


def test_a_socket_file_is_removed_only_by_the_socket_that_made_it(tmp_path: Path) -> None:
    # A pool restarted while its predecessor still stops (its workers get cancel_grace)
    # binds the path again: the predecessor's late clean-up must leave the new file alone.
    endpoint, path = f"ipc://{tmp_path}/w.sock", tmp_path / "w.sock"
    path.touch()
    made_old = make_ipc_private(endpoint)
    path.rename(tmp_path / "old.sock")  # (kept: the new file cannot get its inode)
    path.touch()
    made_new = make_ipc_private(endpoint)
    assert made_old is not None and made_new is not None and made_old != made_new
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    forget_ipc_file(endpoint, made_old)
    assert path.exists()
    forget_ipc_file(endpoint, made_new)
    assert not path.exists()
    forget_ipc_file(endpoint, made_new)  # gone already: nothing to do
    assert make_ipc_private("tcp://127.0.0.1:1") is None
