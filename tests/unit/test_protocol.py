"""The control protocol: envelope parsing, argument models, roles, replies."""

from __future__ import annotations

import contextlib
import logging
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import tamma_actors
from tamma_actors import _errors
from tamma_actors._codec import pack
from tamma_actors._errors import (
    CodecError,
    ConfigError,
    Forbidden,
    Problem,
    ProtocolError,
    RemoteError,
    UnknownExecution,
    WorkflowValidationError,
    error_from_code,
)
from tamma_actors._protocol import (
    OPS,
    AbortArgs,
    EventsArgs,
    InvalidRequest,
    ListArgs,
    Role,
    StartArgs,
    WaitArgs,
    authorize,
    error_reply,
    make_request,
    ok_reply,
    parse_request,
    require_role,
)


def frame(**overrides: Any) -> bytes:
    msg: dict[str, Any] = {"v": 1, "id": 7, "op": "get", "args": {"id": "x1"}}
    msg.update(overrides)
    return pack({k: v for k, v in msg.items() if v is not ...})


def rejected(data: bytes, max_size: int | None = None) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        parse_request(data, max_size)
    return info.value


def test_parses_a_valid_request() -> None:
    req = parse_request(frame(token="t"))
    assert (req.id, req.op, req.token) == (7, "get", "t")
    assert req.args.model_dump() == {"id": "x1"}


def test_defaults_are_filled_in() -> None:
    start = parse_request(frame(op="start", args={"workflow": {"name": "w"}})).args
    assert isinstance(start, StartArgs)
    assert (start.inputs, start.source, start.id) == ({}, None, None)
    lst = parse_request(frame(op="list", args={})).args
    assert isinstance(lst, ListArgs)
    assert (lst.status, lst.limit, lst.offset, lst.view) == (None, None, 0, "record")
    with pytest.raises(InvalidRequest, match="view"):
        parse_request(frame(op="list", args={"view": "everything"}))
    health = parse_request(frame(op="health", args=...))
    assert health.op == "health"


def test_every_op_round_trips_through_make_request() -> None:
    samples: dict[str, dict[str, Any]] = {
        "start": {"workflow": {"name": "w"}, "inputs": {"a": 1}, "source": "w.yaml", "id": "x"},
        "start_many": {
            "workflow": {"name": "w"},
            "source": None,
            "items": [{"inputs": {"a": 1}, "id": None}, {"inputs": {}, "id": "y"}],
        },
        "pause": {"id": "e"},
        "resume": {"id": "e"},
        "abort": {"id": "e", "reason": "why"},
        "retry": {"id": "e", "step": "s"},
        "execute": {"id": "e", "step": "s", "context": {"k": [1]}, "timeout": 9.0},
        "get": {"id": "e"},
        "status": {"id": "e"},
        "list": {
            "status": ["running", "paused"],
            "workflow_id": "w",
            "limit": 5,
            "offset": 2,
            "view": "summary",
        },
        "events": {"id": "e", "from_seq": 3, "limit": 10},
        "wait": {"id": "e", "timeout": 2.5},
        "health": {},
        "explain": {"id": "e"},
        "admin.verify": {},
        "admin.backup": {"dest": "/srv/backup"},
        "admin.cleanup": {"older_than_days": 30.0},
    }
    assert set(samples) == set(OPS)
    for op, args in samples.items():
        req = parse_request(pack(make_request("r", op, args, token="tok")))
        assert req.op == op
        assert req.args.model_dump() == args
        assert req.token == "tok"
    assert "token" not in make_request(1, "health", {})


def test_wait_accepts_an_integer_timeout() -> None:
    args = parse_request(frame(op="wait", args={"id": "e", "timeout": 3})).args
    assert isinstance(args, WaitArgs)
    assert args.timeout == 3.0


@pytest.mark.parametrize(
    ("op", "args"),
    [
        ("execute", {"id": "e", "step": "s", "timeout": math.nan}),
        ("wait", {"id": "e", "timeout": math.inf}),
        ("admin.cleanup", {"older_than_days": math.nan}),
    ],
)
def test_a_time_that_is_no_number_is_refused_as_such(op: str, args: dict[str, Any]) -> None:
    # nan passed no bound and was refused by the last one: "less than or equal to 3600"
    with pytest.raises(InvalidRequest, match="Input should be a finite number"):
        parse_request(frame(op=op, args=args))


def test_garbage_is_a_codec_error() -> None:
    with pytest.raises(CodecError):
        parse_request(b"\xc1\xc1 not msgpack")


def test_oversized_frame_is_refused_with_its_id_when_it_can_be_read() -> None:
    err = rejected(frame(), max_size=4)
    assert err.code == "too_large" and "exceeds the 4-byte cap (max_frame_bytes)" in str(err)
    assert err.request_id == 7  # read without decoding the rest of the frame
    assert rejected(frame(id=True), max_size=4).request_id is None  # not an id
    assert rejected(pack([7]), max_size=2).request_id is None


@pytest.mark.parametrize("value", [[1, 2], "text", 3, None])
def test_non_map_request(value: Any) -> None:
    err = rejected(pack(value))
    assert (err.code, err.request_id) == ("bad_request", None)
    assert "map" in str(err)


@pytest.mark.parametrize("rid", [..., None, True, 1.5, [1]])
def test_unreadable_id(rid: Any) -> None:
    err = rejected(frame(id=rid))
    assert (err.code, err.request_id) == ("bad_request", None)


@pytest.mark.parametrize("version", [..., 2, "1", None])
def test_unsupported_version_keeps_the_id(version: Any) -> None:
    err = rejected(frame(v=version, id="abc"))
    assert (err.code, err.request_id) == ("unsupported_version", "abc")


def test_unknown_op() -> None:
    err = rejected(frame(op="drop_tables"))
    assert (err.code, err.request_id) == ("unknown_op", 7)
    assert "drop_tables" in str(err)


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"op": 5}, "'op'"),
        ({"op": ...}, "'op'"),
        ({"token": 5}, "'token'"),
        ({"args": [1]}, "'args'"),
        ({"extra": 1}, "extra"),
    ],
)
def test_malformed_envelope_keeps_the_id(overrides: dict[str, Any], needle: str) -> None:
    err = rejected(frame(**overrides))
    assert (err.code, err.request_id) == ("bad_request", 7)
    assert needle in str(err)


@pytest.mark.parametrize(
    ("op", "args", "field"),
    [
        ("get", {}, "id"),
        ("get", {"id": 5}, "id"),
        ("get", {"id": ""}, "id"),
        ("get", {"id": "x", "surprise": 1}, "surprise"),
        ("start", {"workflow": "w.yaml"}, "workflow"),
        ("start", {"workflow": {}, "inputs": []}, "inputs"),
        ("start_many", {"workflow": {}}, "items"),
        ("start_many", {"workflow": {}, "items": []}, "items"),
        ("start_many", {"workflow": {}, "items": [{}] * 1_001}, "items"),
        ("start_many", {"workflow": {}, "items": [{}, {"inputs": 3}]}, "items.1.inputs"),
        ("start_many", {"workflow": {}, "items": [{"id": "../etc"}]}, "items.0.id"),
        ("start_many", {"workflow": {}, "items": [{"n": 1}]}, "items.0.n"),
        ("list", {"status": ["sleeping"]}, "status.0"),
        ("list", {"limit": 0}, "limit"),
        ("list", {"limit": 10_001}, "limit"),
        ("list", {"offset": -1}, "offset"),
        ("list", {"limit": "5"}, "limit"),
        ("events", {"id": "e", "from_seq": -1}, "from_seq"),
        ("events", {"id": "e", "from_seq": True}, "from_seq"),
        ("events", {"id": "e", "limit": 0}, "limit"),
        ("events", {"id": "e", "limit": 10_001}, "limit"),  # as a 'list' reply, at most 10,000
        ("wait", {"id": "e", "timeout": 3601}, "timeout"),
        ("wait", {"id": "e", "timeout": "1"}, "timeout"),
        ("retry", {"id": "e"}, "step"),
        ("abort", {"id": "e", "reason": 3}, "reason"),
        ("health", {"x": 1}, "x"),
    ],
)
def test_invalid_arguments_name_the_field(op: str, args: dict[str, Any], field: str) -> None:
    err = rejected(frame(op=op, args=args))
    assert (err.code, err.request_id) == ("bad_request", 7)
    assert field in str(err)
    assert isinstance(err.details, list)
    assert field in [p["loc"] for p in err.details]


def test_argument_models_are_frozen_and_typed() -> None:
    args = AbortArgs(id="e")
    assert args.reason is None
    assert EventsArgs(id="e").from_seq == 0


@given(st.binary(max_size=64))
def test_arbitrary_bytes_never_escape_the_error_tree(data: bytes) -> None:
    with contextlib.suppress(CodecError, InvalidRequest):
        parse_request(data, 1024)


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=8),
        lambda inner: (
            st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
        ),
        max_leaves=12,
    )
)
def test_arbitrary_values_are_rejected_or_valid(value: Any) -> None:
    try:
        req = parse_request(pack(value))
    except InvalidRequest as err:
        assert err.code in {"bad_request", "unknown_op", "unsupported_version"}
    else:
        assert req.op in OPS


# roles -------------------------------------------------------------------------------


def test_without_tokens_everyone_is_admin() -> None:
    assert authorize(None, {}) is Role.admin
    assert authorize("anything", {}) is Role.admin


def test_tokens_map_to_roles() -> None:
    tokens = {"v-tok": "viewer", "o-tok": "operator", "a-tok": "admin"}
    assert authorize("v-tok", tokens) is Role.viewer
    assert authorize("o-tok", tokens) is Role.operator
    assert authorize("a-tok", tokens) is Role.admin


@pytest.mark.parametrize("token", [None, "", "v-to", "v-tokk"])
def test_missing_or_unknown_token_is_forbidden(token: str | None) -> None:
    with pytest.raises(Forbidden):
        authorize(token, {"v-tok": "viewer"})


def test_misconfigured_role_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        authorize("t", {"t": "superuser"})


@pytest.mark.parametrize("op", ["get", "list", "status", "events", "wait", "health"])
def test_viewer_may_read(op: str) -> None:
    require_role(Role.viewer, op)


@pytest.mark.parametrize("op", ["start", "start_many", "pause", "resume", "abort", "retry"])
def test_viewer_may_not_change_anything(op: str) -> None:
    with pytest.raises(Forbidden, match=op):
        require_role(Role.viewer, op)
    require_role(Role.operator, op)
    require_role(Role.admin, op)


def test_unknown_ops_need_admin() -> None:
    with pytest.raises(Forbidden):
        require_role(Role.operator, "compact")
    require_role(Role.admin, "compact")


def test_role_order() -> None:
    assert Role.viewer < Role.operator < Role.admin


# replies -----------------------------------------------------------------------------


def test_ok_reply() -> None:
    assert ok_reply("a", [1]) == {"v": 1, "id": "a", "ok": True, "result": [1]}


def test_error_reply_uses_the_error_code() -> None:
    reply = error_reply(3, UnknownExecution("no execution 'x'"))
    assert reply == {
        "v": 1,
        "id": 3,
        "ok": False,
        "error": {"code": "not_found", "message": "no execution 'x'"},
    }


def test_error_reply_lists_workflow_problems() -> None:
    exc = WorkflowValidationError([Problem("steps.0.name", "missing"), Problem("", "empty")])
    error = error_reply(1, exc)["error"]
    assert error["code"] == "invalid_workflow"
    assert error["details"] == [
        {"loc": "steps.0.name", "message": "missing"},
        {"loc": "", "message": "empty"},
    ]
    rebuilt = error_from_code(error["code"], error["message"], error["details"])
    assert isinstance(rebuilt, WorkflowValidationError)
    assert rebuilt.problems == exc.problems


def test_error_reply_for_invalid_request_carries_details() -> None:
    err = rejected(frame(args={}))
    error = error_reply(err.request_id, err)["error"]
    assert error["code"] == "bad_request"
    assert error["details"] == [{"loc": "id", "message": "Field required"}]


@pytest.mark.parametrize("code", ["bad_request", "unknown_op", "unsupported_version"])
def test_a_refused_request_is_an_invalid_request_on_the_client_too(code: str) -> None:
    # A WorkflowEngine raises InvalidRequest for a wrong argument: a client must get the
    # same class for the same mistake, refused by a node.
    err = rejected(frame(args={}))
    error = error_reply(err.request_id, err)["error"]
    rebuilt = error_from_code(code, error["message"], error["details"])
    assert isinstance(rebuilt, InvalidRequest)
    assert isinstance(rebuilt, ProtocolError) and isinstance(rebuilt, RemoteError)
    assert (rebuilt.code, rebuilt.details) == (code, error["details"])
    assert rebuilt.request_id is None


def test_invalid_request_is_public_and_one_class() -> None:
    assert tamma_actors.InvalidRequest is InvalidRequest is _errors.InvalidRequest
    assert issubclass(InvalidRequest, ProtocolError)


def test_error_reply_passes_remote_details_on() -> None:
    error = error_reply(1, RemoteError("odd", "m", {"k": 1}))["error"]
    assert (error["code"], error["details"]) == ("odd", {"k": 1})


def test_unexpected_errors_are_logged_not_sent(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="tamma_actors._protocol"):
        reply = error_reply(9, KeyError("secret internals"))
    assert reply["error"]["code"] == "internal"
    assert "secret" not in str(reply)
    assert any(rec.exc_info and "secret" in str(rec.exc_info[1]) for rec in caplog.records)


@pytest.mark.parametrize(
    ("op", "args", "complaint"),
    [
        ("admin.backup", {"dest": "relative/dir"}, "dest"),
        ("admin.backup", {}, "dest"),
        ("admin.cleanup", {"older_than_days": 0}, "older_than_days"),
        ("admin.cleanup", {"older_than_days": "30"}, "older_than_days"),
        ("admin.verify", {"deep": True}, "deep"),
    ],
)
def test_admin_arguments_are_validated(op: str, args: dict[str, Any], complaint: str) -> None:
    with pytest.raises(InvalidRequest, match=complaint):
        parse_request(frame(op=op, args=args))


def test_admin_ops_need_the_admin_role() -> None:
    for op in ("admin.verify", "admin.backup", "admin.cleanup"):
        require_role(Role.admin, op)
        for role in (Role.viewer, Role.operator):
            with pytest.raises(Forbidden, match="needs 'admin'"):
                require_role(role, op)
