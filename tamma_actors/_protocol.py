"""The control protocol: request/reply envelopes, per-op argument models, roles.

A request is one msgpack map ``{"v": 1, "id": str|int, "op": str, "args": {...},
"token": str (optional)}``; a reply is ``{"v": 1, "id": ..., "ok": true, "result": ...}``
or ``{"v": 1, "id": ..., "ok": false, "error": {"code", "message", "details"?}}``.

Everything here is pure: the server and the clients share it, and nothing in it touches
a socket. Requests are validated completely before they reach the engine.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tamma_actors._codec import peek, unpack
from tamma_actors._errors import (
    ConfigError,
    Forbidden,
    FrameTooLarge,
    InvalidRequest,
    RemoteError,
    TammaError,
    WorkflowValidationError,
    error_code,
)

__all__ = [
    "COMPACT_OUTCOME_BYTES",
    "LIST_MOST",
    "OPS",
    "PROTOCOL_VERSION",
    "START_MANY_MOST",
    "AbortArgs",
    "AdminBackupArgs",
    "AdminCleanupArgs",
    "AdminVerifyArgs",
    "EventsArgs",
    "ExecuteArgs",
    "ExecutionArgs",
    "HealthArgs",
    "InvalidRequest",
    "ListArgs",
    "Request",
    "RequestId",
    "RetryArgs",
    "Role",
    "StartArgs",
    "StartItem",
    "StartManyArgs",
    "WaitArgs",
    "authorize",
    "checked_args",
    "compact_outcome",
    "error_map",
    "error_reply",
    "make_request",
    "ok_reply",
    "parse_request",
    "problems_summary",
    "require_role",
]

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
MAX_WAIT_SECONDS = 3600.0
RequestId = str | int
ExecutionStatusName = Literal["pending", "running", "paused", "completed", "failed", "aborted"]


class Role(IntEnum):
    """Ordered: a role may do everything the roles below it may."""

    viewer = 1
    operator = 2
    admin = 3


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


# An execution id a client may choose: it is part of store keys and task ids.
CLIENT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@-]*$"


class StartArgs(_Args):
    # Any keys: the engine's check of the definition names a key that is no text with the
    # workflow's other problems (an invalid workflow, not a malformed request).
    workflow: dict[Any, Any]
    inputs: dict[str, Any] = Field(default_factory=dict)
    source: str | None = None
    # The execution's id, chosen by the client: a start is then idempotent (Engine._start_once)
    id: str | None = Field(default=None, max_length=128, pattern=CLIENT_ID_PATTERN)


# The most starts one 'start_many' request carries (the client sends bigger batches in
# several requests): its reply holds a record per start, and one request must not keep the
# control server's thread for long.
START_MANY_MOST = 1_000
# A 'start_many' outcome sent compact (when the records together are over the frame cap)
# encodes to at most this many bytes: an id of up to 128 characters, or a failure's code
# and the first 160 bytes of its message. A request of more starts than the cap holds
# compact outcomes is refused before it starts anything.
COMPACT_OUTCOME_BYTES = 320
_COMPACT_MESSAGE_BYTES = 160


class StartItem(_Args):
    """One start of a 'start_many' request: its inputs and, optionally, its id."""

    inputs: dict[str, Any] = Field(default_factory=dict)
    id: str | None = Field(default=None, max_length=128, pattern=CLIENT_ID_PATTERN)


class StartManyArgs(_Args):
    """start_many: one execution of ``workflow`` per item, each as 'start' would make it.
    The reply holds one outcome per item, in order: ``{"ok": true, "result": record}`` or
    ``{"ok": false, "error": {...}}`` (an item's failure leaves the others started); when
    the records together are over the frame cap, each outcome goes compact (see
    ``compact_outcome``)."""

    workflow: dict[Any, Any]  # as StartArgs's
    source: str | None = None
    items: list[StartItem] = Field(min_length=1, max_length=START_MANY_MOST)


class ExecutionArgs(_Args):
    """pause, resume, get and status: just the execution id."""

    id: str = Field(min_length=1)


class AbortArgs(ExecutionArgs):
    reason: str | None = None


# The most records one 'list' or 'events' reply holds: a request for more (a limit over
# it, or none and more match) is refused before any record is read, so one request never
# keeps the control server's thread for long nor makes a reply no client could take.
LIST_MOST = 10_000


class ListArgs(_Args):
    """list: the matching executions, oldest first, as records or, with ``view``
    ``"summary"``, as the summaries the store keeps for listing (no record built)."""

    status: list[ExecutionStatusName] | None = None
    workflow_id: str | None = None
    limit: int | None = Field(default=None, ge=1, le=LIST_MOST)
    offset: int = Field(default=0, ge=0)
    view: Literal["record", "summary"] = "record"


class RetryArgs(ExecutionArgs):
    step: str = Field(min_length=1)


class ExecuteArgs(RetryArgs):
    """execute: run one step outside the execution's schedule with ``context`` as input."""

    context: Any = None
    timeout: float = Field(default=300.0, gt=0, le=MAX_WAIT_SECONDS, allow_inf_nan=False)


class EventsArgs(ExecutionArgs):
    from_seq: int = Field(default=0, ge=0)
    limit: int | None = Field(default=None, ge=1, le=LIST_MOST)


class WaitArgs(ExecutionArgs):
    timeout: float | None = Field(default=None, ge=0, le=MAX_WAIT_SECONDS, allow_inf_nan=False)


class HealthArgs(_Args):
    pass


class AdminVerifyArgs(_Args):
    pass


class AdminBackupArgs(_Args):
    dest: str = Field(min_length=1, pattern=r"^/")  # absolute: the node opens it


class AdminCleanupArgs(_Args):
    older_than_days: float = Field(gt=0, allow_inf_nan=False)


# op -> (argument model, least role allowed to call it)
OPS: dict[str, tuple[type[_Args], Role]] = {
    "start": (StartArgs, Role.operator),
    "start_many": (StartManyArgs, Role.operator),
    "pause": (ExecutionArgs, Role.operator),
    "resume": (ExecutionArgs, Role.operator),
    "abort": (AbortArgs, Role.operator),
    "retry": (RetryArgs, Role.operator),
    "execute": (ExecuteArgs, Role.operator),
    "get": (ExecutionArgs, Role.viewer),
    "status": (ExecutionArgs, Role.viewer),
    "list": (ListArgs, Role.viewer),
    "events": (EventsArgs, Role.viewer),
    "wait": (WaitArgs, Role.viewer),
    "health": (HealthArgs, Role.viewer),
    "explain": (ExecutionArgs, Role.viewer),
    "admin.verify": (AdminVerifyArgs, Role.admin),
    "admin.backup": (AdminBackupArgs, Role.admin),
    "admin.cleanup": (AdminCleanupArgs, Role.admin),
}


@dataclass(frozen=True)
class Request:
    """A validated request: ``args`` is the op's argument model."""

    id: RequestId
    op: str
    args: _Args
    token: str | None = None


_ENVELOPE_KEYS = frozenset({"v", "id", "op", "args", "token"})


def _problems(exc: ValidationError) -> list[dict[str, str]]:
    return [
        {"loc": ".".join(str(part) for part in err["loc"]), "message": err["msg"]}
        for err in exc.errors(include_url=False)
    ]


def problems_summary(exc: ValidationError) -> str:
    """A pydantic error as a request's error names it: ``loc: message; ...``."""
    return _summary(_problems(exc))


def _summary(problems: list[dict[str, str]]) -> str:
    return "; ".join(f"{p['loc'] or 'args'}: {p['message']}" for p in problems)


def checked_args(op: str, raw_args: Any, request_id: RequestId | None = None) -> _Args:
    """``raw_args`` checked by ``op``'s argument model: by the control server for a
    request, by the embedded engine for a call, so a mistake is the same ``InvalidRequest``."""
    model, _ = OPS[op]
    try:
        return model.model_validate(raw_args)
    except ValidationError as exc:
        problems = _problems(exc)
        raise InvalidRequest(
            f"invalid arguments for {op!r}: {_summary(problems)}",
            request_id=request_id,
            details=problems,
        ) from exc


def _read_id(msg: dict[Any, Any]) -> RequestId | None:
    rid = msg.get("id")
    # bool is an int to Python but never a sensible id.
    if isinstance(rid, str | int) and not isinstance(rid, bool):
        return rid
    return None


def parse_request(frame: bytes, max_size: int | None = None) -> Request:
    """Decode and validate one request frame.

    Raises :class:`InvalidRequest` (code ``bad_request``, ``unknown_op``,
    ``unsupported_version`` or ``too_large``) carrying the request id when it could be
    read; a frame that is not msgpack at all raises ``CodecError``.
    """
    if max_size is not None and len(frame) > max_size:
        raise InvalidRequest(  # its id, if it comes before its args (ours does), for the reply
            f"request of {len(frame)} bytes exceeds the {max_size}-byte cap (max_frame_bytes)",
            "too_large",
            request_id=_read_id({"id": peek(frame, "id")}),
        )
    msg = unpack(frame)
    if not isinstance(msg, dict):
        raise InvalidRequest(f"request must be a map, not {type(msg).__name__}")
    rid = _read_id(msg)
    if rid is None:
        raise InvalidRequest("request 'id' must be a string or an integer")
    if msg.get("v") != PROTOCOL_VERSION:
        raise InvalidRequest(
            f"unsupported protocol version {msg.get('v')!r} (this node speaks {PROTOCOL_VERSION})",
            "unsupported_version",
            request_id=rid,
        )
    extra = sorted(str(k) for k in msg if k not in _ENVELOPE_KEYS)
    if extra:
        raise InvalidRequest(f"unknown envelope field(s): {', '.join(extra)}", request_id=rid)
    op = msg.get("op")
    if not isinstance(op, str):
        raise InvalidRequest("request 'op' must be a string", request_id=rid)
    if op not in OPS:
        raise InvalidRequest(f"unknown op {op!r}", "unknown_op", request_id=rid)
    token = msg.get("token")
    if token is not None and not isinstance(token, str):
        raise InvalidRequest("request 'token' must be a string", request_id=rid)
    raw_args = msg.get("args", {})
    if not isinstance(raw_args, dict):
        raise InvalidRequest("request 'args' must be a map", request_id=rid)
    return Request(id=rid, op=op, args=checked_args(op, raw_args, rid), token=token)


def make_request(
    request_id: RequestId, op: str, args: Mapping[str, Any], token: str | None = None
) -> dict[str, Any]:
    """The envelope a client sends (not validated here: the server does that)."""
    msg: dict[str, Any] = {"v": PROTOCOL_VERSION, "id": request_id, "op": op, "args": dict(args)}
    if token is not None:
        msg["token"] = token
    return msg


def authorize(token: str | None, tokens: Mapping[str, str]) -> Role:
    """The caller's role.

    With no tokens configured every caller is admin: the local socket is guarded by its
    0700 directory. Otherwise the token must be one of ``tokens`` (token -> role name).
    """
    if not tokens:
        return Role.admin
    if token is None:
        raise Forbidden("a token is required")
    found: str | None = None
    # Compare against every token in constant time so timing does not leak a prefix.
    for known, role_name in tokens.items():
        if hmac.compare_digest(known.encode(), token.encode()):
            found = role_name
    if found is None:
        raise Forbidden("unknown token")
    try:
        return Role[found]
    except KeyError as exc:
        raise ConfigError(f"token configured with unknown role {found!r}") from exc


def require_role(role: Role, op: str) -> None:
    """Raise Forbidden unless ``role`` may call ``op``."""
    needed = OPS[op][1] if op in OPS else Role.admin
    if role < needed:
        raise Forbidden(f"role {role.name!r} may not call {op!r} (needs {needed.name!r})")


def ok_reply(request_id: RequestId | None, result: Any) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "id": request_id, "ok": True, "result": result}


def _details(exc: BaseException) -> object:
    if isinstance(exc, WorkflowValidationError):
        return [{"loc": p.loc, "message": p.message} for p in exc.problems]
    if isinstance(exc, InvalidRequest | RemoteError | FrameTooLarge):
        return exc.details
    return None


def compact_outcome(outcome: dict[str, Any]) -> dict[str, Any]:
    """A 'start_many' outcome without its record: the started execution's id, or the
    failure's code and (the start of) its message."""
    if outcome["ok"]:
        return {"ok": True, "id": outcome["result"]["id"]}
    error = outcome["error"]
    message = str(error["message"]).encode()[:_COMPACT_MESSAGE_BYTES].decode(errors="ignore")
    return {"ok": False, "error": {"code": error["code"], "message": message}}


def error_reply(request_id: RequestId | None, exc: BaseException) -> dict[str, Any]:
    """The error reply for ``exc``; unexpected errors are logged, never described."""
    error = error_map(request_id, exc)
    return {"v": PROTOCOL_VERSION, "id": request_id, "ok": False, "error": error}


def error_map(request_id: RequestId | None, exc: BaseException) -> dict[str, Any]:
    """The ``error`` of a reply (or of one 'start_many' outcome) for ``exc``: its code,
    message and details; an unexpected error is logged, never described."""
    if isinstance(exc, TammaError):
        error: dict[str, Any] = {"code": error_code(exc), "message": str(exc)}
        details = _details(exc)
        if details is not None:
            error["details"] = details
        return error
    log.error("internal error serving request %r", request_id, exc_info=exc)
    return {"code": "internal", "message": "internal error (see the node's log)"}
