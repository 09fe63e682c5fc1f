"""ControlServer: the actor that owns the node's control ROUTER socket.

Each request is decoded, validated and authorized here (see :mod:`tamma_actors._protocol`)
before it reaches the engine, so a malformed request changes nothing. The engine answers
with a future; when it completes, its done-callback only *tells* this actor, and the reply
is sent from the actor's own thread (a ZeroMQ socket belongs to one thread). Requests are
therefore served concurrently: a long-polling ``wait`` does not hold up a ``status``.

Frames: ``[identity, payload]`` from DEALER clients, ``[identity, b"", payload]`` from REQ
clients (the reply then carries the empty delimiter back).

Oversized frames: a request over ``max_frame_bytes`` but within twice that is read and
answered with a ``too_large`` error naming its size and the cap (a client whose own cap is
larger than the node's learns why). The socket sets ``ZMQ_MAXMSGSIZE`` to twice the cap,
so libzmq drops a larger message and *disconnects the peer* before we ever see it: no
reply is sent, the client times out (a :class:`~tamma_actors._client.Client` with the
node's cap refuses to send such a frame in the first place); what one request can make
the node hold stays bounded. Other clients on the socket are unaffected. A reply over the
cap is not sent either (a client with the same cap would drop it the same way and wait
for nothing): the request gets a ``too_large`` error naming its size and the cap instead.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import pykka
import zmq

from tamma_actors._codec import pack, peek
from tamma_actors._engine_api import AsyncEngine
from tamma_actors._errors import (
    CodecError,
    Forbidden,
    FrameTooLarge,
    TammaError,
    TransportError,
)
from tamma_actors._futures import failed, when_all
from tamma_actors._protocol import (
    COMPACT_OUTCOME_BYTES,
    LIST_MOST,
    OPS,
    AbortArgs,
    AdminBackupArgs,
    AdminCleanupArgs,
    AdminVerifyArgs,
    EventsArgs,
    ExecuteArgs,
    ExecutionArgs,
    HealthArgs,
    InvalidRequest,
    ListArgs,
    Request,
    RequestId,
    RetryArgs,
    StartArgs,
    StartManyArgs,
    WaitArgs,
    authorize,
    compact_outcome,
    error_map,
    error_reply,
    ok_reply,
    parse_request,
    require_role,
)
from tamma_actors._server_socket import bind_server, forget_ipc_file, prepare_ipc_endpoint
from tamma_actors._socket_actor import SocketActor, send_frames

__all__ = ["ControlServer"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Completed:
    """Told to the server by an engine future's done-callback (from any thread)."""

    route: list[bytes]
    request_id: RequestId
    op: str
    future: Future[Any]


class ControlServer(SocketActor):
    """Serves control requests on ``endpoint`` against ``engine``.

    ``tokens`` maps token -> role name (``viewer``, ``operator``, ``admin``); empty means
    every caller is admin (guard the socket's directory instead).
    """

    def __init__(
        self,
        zmq_context: zmq.Context[Any],
        engine: AsyncEngine,
        *,
        endpoint: str,
        tokens: Mapping[str, str] | None = None,
        max_frame_bytes: int = 8 << 20,
        curve_secret_key: str | None = None,
    ) -> None:
        super().__init__(zmq_context)
        self._curve_secret = curve_secret_key
        self._engine = engine
        self._endpoint = endpoint
        self._tokens = dict(tokens or {})
        self._max_frame_bytes = max_frame_bytes
        self._sock: zmq.Socket[Any] | None = None
        self._bound = endpoint
        self._ipc_file: tuple[int, int] | None = None  # its socket file (ipc://)
        self._requests = 0
        self._errors = 0
        self._in_flight = 0

    # -- life cycle (actor thread) --------------------------------------------------------

    def on_start(self) -> None:
        prepare_ipc_endpoint(self._endpoint)
        options = {
            zmq.LINGER: 0,
            zmq.MAXMSGSIZE: 2 * self._max_frame_bytes,
            # A reconnecting client with the same identity takes over its old route.
            zmq.ROUTER_HANDOVER: 1,
            # Report a reply that cannot be delivered instead of dropping it silently.
            zmq.ROUTER_MANDATORY: 1,
        }
        sock, self._bound, self._ipc_file = bind_server(
            self.zmq_context, zmq.ROUTER, self._endpoint, options, self._curve_secret,
            "control socket",
        )  # fmt: skip
        self._sock = sock
        self.watch(sock, self._on_readable, drains=True)
        log.info("control server listening on %s", self._bound)

    def on_stop(self) -> None:
        self._close_socket()

    def on_failure(self, *exc_info: Any) -> None:
        self._close_socket()

    def _close_socket(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            self.unwatch(sock)
            sock.close(linger=0)
            forget_ipc_file(self._bound, self._ipc_file)

    # -- queries (run on the actor thread via ask/proxy) -------------------------------------

    def address(self) -> str:
        """The bound endpoint (with the real port when bound to ``tcp://...:*``)."""
        return self._bound

    def stats(self) -> dict[str, int]:
        return {
            "requests": self._requests,
            "errors": self._errors,
            "in_flight": self._in_flight,
        }

    # -- serving ----------------------------------------------------------------------------

    def _on_readable(self) -> None:
        """Serve up to a batch of requests (watched with ``drains=True``)."""
        for _ in range(self.socket_batch):
            if self._sock is None or self.actor_stopped.is_set():
                return
            try:
                frames = self._sock.recv_multipart(zmq.NOBLOCK)
            except zmq.ZMQError as exc:  # Again included: readiness is only a hint
                if exc.errno != zmq.EAGAIN:
                    log.debug("control socket receive failed: %s", exc)
                return
            self._handle(frames)

    def _handle(self, frames: list[bytes]) -> None:
        self._requests += 1
        # A REQ client puts an empty delimiter after its identity and expects it back.
        is_req = len(frames) >= 3 and frames[1] == b""
        route = frames[:2] if is_req else frames[:1]
        body = frames[len(route) :]
        if len(body) != 1:
            self._reply_error(route, None, InvalidRequest(f"expected 1 frame, got {len(body)}"))
            return
        try:
            request = parse_request(body[0], self._max_frame_bytes)
        except InvalidRequest as exc:
            self._reply_error(route, exc.request_id, self._unless_forbidden(body[0], exc))
            return
        except TammaError as exc:
            self._reply_error(route, None, exc)
            return
        refusal = self._start_many_refusal(request.args, len(body[0]))
        if refusal is not None:
            self._reply_error(route, request.id, refusal)
            return
        self._serve(route, request)

    def _unless_forbidden(self, frame: bytes, exc: InvalidRequest) -> TammaError:
        """``exc``, or ``Forbidden`` if the caller may not make the request it tried: a
        node with tokens tells a caller without the right one no more than that (the
        problems of a malformed request name its fields and values)."""
        if not self._tokens:
            return exc
        token, op = peek(frame, "token"), peek(frame, "op")
        try:
            role = authorize(token if isinstance(token, str) else None, self._tokens)
            if isinstance(op, str) and op in OPS:
                require_role(role, op)
        except Forbidden as refused:
            return refused
        return exc

    def _start_many_refusal(self, args: Any, size: int) -> FrameTooLarge | None:
        """Why a 'start_many' request of more than one start is refused before it starts
        anything, if it is: its reply would hold a record per start, each with its inputs
        again, and should even those not fit, a compact outcome per start must (see
        ``_reply_from``); a reply that could not be sent would leave the starts made and
        their ids unknown. ``details.started`` is ``[]``: the client may send the starts
        again in smaller requests."""
        if not isinstance(args, StartManyArgs) or len(args.items) < 2:
            return None
        n, cap = len(args.items), self._max_frame_bytes
        if size > cap // 2:
            why = f"{size:,} bytes is over half the {cap:,}-byte cap (max_frame_bytes)"
        elif n * COMPACT_OUTCOME_BYTES + 64 > cap:
            why = f"more starts than one reply within the {cap:,}-byte cap can answer"
        else:
            return None
        return FrameTooLarge(
            f"a 'start_many' request of {n} starts and {why}, so its reply might not fit: "
            "send fewer starts per request",
            details={"started": []},
        )

    def _serve(self, route: list[bytes], request: Request) -> None:
        try:
            require_role(authorize(request.token, self._tokens), request.op)
            future = self._invoke(request)
        except Exception as exc:
            self._reply_error(route, request.id, exc)
            return
        if future.done():
            self._reply_from(route, request.id, request.op, future)
            return
        self._in_flight += 1
        future.add_done_callback(
            lambda fut: self._tell_completed(_Completed(route, request.id, request.op, fut))
        )

    def _tell_completed(self, message: _Completed) -> None:
        # Runs on whichever thread completed the future: never touch the socket here.
        try:
            self.actor_ref.tell(message)
        except pykka.ActorDeadError:
            log.debug("control server stopped before request %r completed", message.request_id)

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, _Completed):
            self._in_flight -= 1
            self._reply_from(message.route, message.request_id, message.op, message.future)
            return None
        return super().on_receive(message)

    def _invoke(self, request: Request) -> Future[Any]:
        engine, args, op = self._engine, request.args, request.op
        if isinstance(args, StartArgs):
            return engine.start_workflow(
                args.workflow, args.inputs, source=args.source, requested_id=args.id
            )
        if isinstance(args, StartManyArgs):
            return self._start_many(request.id, args)
        if isinstance(args, ListArgs):
            return engine.list_workflows(
                status=None if args.status is None else list(args.status),
                workflow_id=args.workflow_id,
                limit=args.limit,
                offset=args.offset,
                most=LIST_MOST,
                view=args.view,
            )
        if isinstance(args, HealthArgs):
            return engine.health()
        if isinstance(args, AdminVerifyArgs):
            return engine.admin_verify()
        if isinstance(args, AdminBackupArgs):
            return engine.admin_backup(args.dest)
        if isinstance(args, AdminCleanupArgs):
            return engine.admin_cleanup(args.older_than_days)
        if isinstance(args, AbortArgs):
            return engine.abort_workflow(args.id, args.reason)
        if isinstance(args, ExecuteArgs):
            return engine.execute_step(args.id, args.step, args.context, timeout=args.timeout)
        if isinstance(args, RetryArgs):
            return engine.retry_step(args.id, args.step)
        if isinstance(args, EventsArgs):
            return engine.get_events(args.id, args.from_seq, args.limit, most=LIST_MOST)
        if isinstance(args, WaitArgs):
            return engine.wait(args.id, args.timeout)
        if isinstance(args, ExecutionArgs):
            simple = {
                "pause": engine.pause_workflow,
                "resume": engine.resume_workflow,
                "get": engine.get_workflow,
                "status": engine.get_workflow_status,
                "explain": engine.explain,
            }
            return simple[op](args.id)
        raise AssertionError(f"op {op!r} has no engine call")  # pragma: no cover

    def _start_many(self, request_id: RequestId, args: StartManyArgs) -> Future[Any]:
        """Every item started as 'start' would start it, in one go on this thread; the
        reply waits for them all and holds each one's outcome, in order."""
        starts: list[Future[Any]] = []
        for item in args.items:
            try:
                fut = self._engine.start_workflow(
                    args.workflow, item.inputs, source=args.source, requested_id=item.id
                )
            except Exception as exc:  # only this item failed: the others are started
                fut = failed(exc)
            starts.append(fut)
        out: Future[Any] = Future()

        def outcome(fut: Future[Any]) -> dict[str, Any]:
            exc = fut.exception()
            if exc is None:
                return {"ok": True, "result": fut.result()}
            return {"ok": False, "error": error_map(request_id, exc)}

        when_all(starts, lambda: out.set_result([outcome(fut) for fut in starts]))
        return out

    def _reply_from(
        self, route: list[bytes], request_id: RequestId, op: str, future: Future[Any]
    ) -> None:
        if future.cancelled():
            self._reply_error(route, request_id, TransportError("the node is shutting down"))
            return
        exc = future.exception()
        if exc is not None:
            self._reply_error(route, request_id, exc)
            return
        result = future.result()
        try:
            data = pack(ok_reply(request_id, result))
        except CodecError as codec_exc:
            log.error("reply to %r cannot be encoded", request_id, exc_info=codec_exc)
            self._reply_error(route, request_id, RuntimeError("unencodable reply"))
            return
        if len(data) > self._max_frame_bytes and op == "start_many":
            # The records together are over the cap, not the starts: each outcome goes
            # compact (an id, or a failure's code and message), which the request's size
            # was checked to fit; the client reads the records with 'get'.
            data = pack(ok_reply(request_id, [compact_outcome(o) for o in result]))
        if len(data) > self._max_frame_bytes:
            too_large = self._reply_too_large(op, result, len(data))
            log.warning("request %r: %s", request_id, too_large)
            self._reply_error(route, request_id, too_large)
            return
        self._send(route, data)

    def _reply_too_large(self, op: str, result: Any, size: int) -> FrameTooLarge:
        """The error sent instead of a reply of ``size`` bytes, over the cap. A 'start'
        was made all the same: the error names its execution (``details.started``)."""
        over = (
            f"the reply to {op!r} is {size:,} bytes, over the "
            f"{self._max_frame_bytes:,}-byte cap (max_frame_bytes)"
        )
        raise_cap = "or raise max_frame_bytes on the node and the client"
        if op == "start":
            return FrameTooLarge(
                f"{over}: execution {result['id']!r} was started; read it in parts ('events' "
                f"takes a from_seq and a limit) {raise_cap}",
                details={"started": [result["id"]]},
            )
        return FrameTooLarge(
            f"{over}: ask for less ('list' takes a limit and an offset, 'events' a from_seq "
            f"and a limit) {raise_cap}"
        )

    def _reply_error(
        self, route: list[bytes], request_id: RequestId | None, exc: BaseException
    ) -> None:
        self._errors += 1
        self._send(route, pack(error_reply(request_id, exc)))

    def _send(self, route: list[bytes], data: bytes) -> None:
        assert self._sock is not None, "replies are sent only while open"
        try:
            send_frames(self._sock, (*route, data))
        except zmq.ZMQError as exc:
            # ROUTER_MANDATORY: the client left (EHOSTUNREACH) or its queue is full (EAGAIN).
            log.warning("reply dropped: %s", exc)
