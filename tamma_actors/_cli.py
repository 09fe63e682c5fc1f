"""The ``tamma`` command: talk to a running node through its control socket.

Exit codes (:class:`ExitCode`): 0 success; 1 a failed request, or an execution that did
not complete (``start --wait``, ``wait``); 2 usage errors, rejected requests and invalid workflow
files (every problem listed); 3 the node could not be reached in time; 130 interrupted.
A reader of the output that goes away (``tamma watch | head -n 1``) ends the command
quietly, with 0 (or the code it had already, when it goes at the last flush).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from tamma_actors._cli_admin import add_admin_parser, cmd_admin
from tamma_actors._cli_output import (
    DEFAULT_TIMEOUT,
    ExitCode,
    Output,
    discard_stdout,
    show_events,
    show_execution,
)
from tamma_actors._cli_watch import cmd_watch
from tamma_actors._client import Client
from tamma_actors._data_dir import directory_arg
from tamma_actors._durations import positive_seconds, wait_seconds
from tamma_actors._errors import (
    FrameTooLarge,
    ProtocolError,
    RemoteError,
    TammaError,
    TransportError,
    WorkflowValidationError,
)
from tamma_actors._models import WorkflowExecution, WorkflowStatusInfo, WorkflowSummary
from tamma_actors._status import ExecutionStatus, StepStatus

__all__ = ["ExitCode", "build_parser", "main"]

_STATUSES = [s.value for s in ExecutionStatus]
_UNREACHABLE_CODES = {"unavailable", "timeout"}
_USAGE_CODES = {"bad_request", "unknown_op", "unsupported_version", "too_large"}


# -- argument parsing ----------------------------------------------------------------------


def _scalar(text: str) -> Any:
    """``--input`` values: YAML scalars (numbers, booleans, null) are typed, the rest text."""
    try:
        value = yaml.safe_load(text)
    except (yaml.YAMLError, RecursionError):  # not a YAML scalar: the text itself
        return text
    return value if value is None or isinstance(value, bool | int | float | str) else text


def _json_value(text: str) -> Any:
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:  # RecursionError: nested too deeply
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from exc


def _key_value(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, _scalar(value)


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:  # RecursionError: nested too deeply
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("--inputs-json must be a JSON object")
    return value


def _json_lines(text: str) -> list[tuple[str, dict[str, Any]]]:
    """``start --each``: a JSON Lines file (``-``: standard input), one inputs object per
    line; blank lines are skipped. Each object comes with where it is ("FILE, line N")."""
    name = "standard input" if text == "-" else text
    try:
        raw = sys.stdin.read() if text == "-" else Path(text).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise argparse.ArgumentTypeError(f"cannot read {name}: {exc}") from exc
    each: list[tuple[str, dict[str, Any]]] = []
    for number, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as exc:  # RecursionError: nested too deeply
            problem = f"{name}, line {number}: not valid JSON: {exc}"
            raise argparse.ArgumentTypeError(problem) from exc
        if not isinstance(value, dict):
            raise argparse.ArgumentTypeError(
                f"{name}, line {number}: expected a JSON object (one execution's inputs)"
            )
        each.append((f"{name}, line {number}", value))
    if not each:
        raise argparse.ArgumentTypeError(f"{name} holds no inputs (one JSON object per line)")
    return each


def _count(text: str) -> int:
    """``watch --count``: a whole number of events, 1 or more (0 would print nothing)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of 1 or more, not {text!r}")
    return value


def _common(*, with_timeout: bool = True) -> argparse.ArgumentParser:
    # SUPPRESS defaults: an option given before the sub-command is not reset by the
    # sub-parser, so global options work on either side of it.
    common = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    common.add_argument("--data-dir", type=directory_arg, help="node data directory (./var)")
    common.add_argument("--endpoint", help="control endpoint (ipc://DATA_DIR/control.sock)")
    common.add_argument("--token", help="access token (TAMMA_TOKEN)")
    common.add_argument(
        "--curve-server-key",
        help="the node's CURVE public key, for tcp:// (TAMMA_CURVE_SERVER_KEY)",
    )
    if with_timeout:
        common.add_argument(
            "--timeout", type=positive_seconds, help="request timeout in seconds (30)"
        )
    common.add_argument("--json", action="store_true", help="machine-readable output")
    return common


def build_parser() -> argparse.ArgumentParser:
    common, no_timeout = _common(), _common(with_timeout=False)
    parser = argparse.ArgumentParser(
        prog="tamma", description="Control a tamma-node.", parents=[common]
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help: str, parent: argparse.ArgumentParser = common) -> Any:
        return sub.add_parser(name, help=help, parents=[parent])

    start = add("start", "start an execution of a workflow file")
    start.add_argument("file", type=Path)
    start.add_argument("--input", action="append", type=_key_value, default=[], dest="inputs")
    start.add_argument("--inputs-json", type=_json_object, default={})
    start.add_argument(
        "--id",
        default=None,
        dest="execution_id",
        help="the execution's id (letters, digits, ._:@-): the same start again returns it",
    )
    start.add_argument(
        "--each",
        type=_json_lines,
        default=None,
        metavar="JSONL",
        help="start one execution per line of this JSON Lines file ('-': stdin), each line "
        "its inputs (over --input and --inputs-json), in batched requests",
    )
    start.add_argument(
        "--id-from",
        default=None,
        metavar="FIELD",
        help="with --each: each execution's id is its line's FIELD (a string): running the "
        "same command again starts nothing new",
    )
    start.add_argument("--wait", action="store_true", help="wait for the execution to end")
    start.add_argument("--wait-timeout", type=wait_seconds, default=None)
    lst = add("list", "list executions")
    lst.add_argument("--status", action="append", choices=_STATUSES, default=None)
    lst.add_argument("--workflow", default=None)
    lst.add_argument("--limit", type=int, default=None)
    lst.add_argument("--offset", type=int, default=None, help="skip the first N matches")
    for name, text in [
        ("status", "an execution's status and progress"),
        ("get", "an execution's full record"),
        ("pause", "pause an execution"),
        ("resume", "resume a paused execution"),
    ]:
        add(name, text).add_argument("id")
    events = add("events", "an execution's event log")
    events.add_argument("id")
    events.add_argument("--from-seq", type=int, default=0)
    abort = add("abort", "abort an execution")
    abort.add_argument("id")
    abort.add_argument("--reason", default=None)
    retry = add("retry", "run a failed step again")
    retry.add_argument("id")
    retry.add_argument("step")
    execute = add("exec", "run one step of an execution once, outside its schedule")
    execute.add_argument("id")
    execute.add_argument("step")
    execute.add_argument(
        "--context-json", type=_json_value, default=None, help="the step's input, as JSON"
    )
    execute.add_argument("--step-timeout", type=positive_seconds, default=300.0)
    wait = add("wait", "wait until an execution ends", no_timeout)
    wait.add_argument("id")
    wait.add_argument("--timeout", type=wait_seconds, default=None, dest="wait_timeout")
    add("health", "node health")
    add("explain", "why an execution is where it is").add_argument("id")
    watch = add("watch", "follow live events")
    watch.add_argument("patterns", nargs="*", metavar="PATTERN", help="glob, e.g. step.*")
    watch.add_argument("--count", type=_count, default=None, help="stop after N events")
    watch.add_argument("--events-endpoint", default=None)
    add_admin_parser(add("admin", "store administration (admin role)"), _common())
    schema = add("schema", "print a JSON Schema")
    schema.add_argument("kind", choices=["workflow", "node"])
    return parser


# -- commands ------------------------------------------------------------------------------


def _ended(out: Output, execution: WorkflowExecution) -> int:
    """Exit 0 only for a completed execution (scripts branch on it)."""
    show_execution(out, execution)
    if execution.status is ExecutionStatus.COMPLETED:
        return ExitCode.OK
    print(f"execution {execution.id} is {execution.status.value}", file=sys.stderr)
    return ExitCode.FAILURE


def _cmd_wait(client: Client, args: argparse.Namespace, out: Output) -> int:
    return _ended(out, client.wait(args.id, timeout=args.wait_timeout))


def _cmd_start(client: Client, args: argparse.Namespace, out: Output) -> int:
    inputs = {**args.inputs_json, **dict(args.inputs)}
    if args.each is not None:
        return _start_each(client, args, out, inputs)
    if args.id_from is not None:
        print("error: --id-from goes with --each", file=sys.stderr)
        return ExitCode.USAGE
    execution = client.start_workflow(args.file, inputs, execution_id=args.execution_id)
    if args.wait:
        return _ended(out, client.wait(execution.id, timeout=args.wait_timeout))
    show_execution(out, execution)
    return ExitCode.OK


def _start_each(
    client: Client, args: argparse.Namespace, out: Output, common: dict[str, Any]
) -> int:
    """``start --each``: every execution started (``start_many`` batches) and listed; with
    ``--wait``, listed once each has ended, and exit 0 only if all completed."""
    if args.execution_id is not None:
        print("error: --id names one execution; it cannot go with --each", file=sys.stderr)
        return ExitCode.USAGE
    inputs = [{**common, **each} for _, each in args.each]
    ids: list[str] | None = None
    if args.id_from is not None:
        ids = []
        for (where, _), one in zip(args.each, inputs, strict=True):
            eid = one.get(args.id_from)
            if not isinstance(eid, str):
                print(f"error: {where}: no string {args.id_from!r} (--id-from)", file=sys.stderr)
                return ExitCode.USAGE
            ids.append(eid)
    executions = client.start_workflows(args.file, inputs, execution_ids=ids)
    if args.wait:
        executions = [client.wait(ex.id, timeout=args.wait_timeout) for ex in executions]
    _show_executions(out, executions)
    unfinished = [ex for ex in executions if ex.status is not ExecutionStatus.COMPLETED]
    if args.wait and unfinished:
        first = unfinished[0]
        print(
            f"{len(unfinished)} of {len(executions)} executions did not complete "
            f"(the first: {first.id}, {first.status.value})",
            file=sys.stderr,
        )
        return ExitCode.FAILURE
    return ExitCode.OK


def _show_executions(
    out: Output, executions: Sequence[WorkflowExecution | WorkflowSummary]
) -> None:
    if out.as_json:
        out.json([ex.model_dump(mode="json") for ex in executions])
        return
    rows = [
        [ex.id, ex.workflow_id, ex.status.value, ex.start_time, ex.end_time, ex.current_step]
        for ex in executions
    ]
    out.listing(["id", "workflow", "status", "started", "ended", "step"], rows)


def _cmd_list(client: Client, args: argparse.Namespace, out: Output) -> int:
    query = {
        "status": args.status,
        "workflow_id": args.workflow,
        "limit": args.limit,
        "offset": args.offset,
    }
    wanted = {k: v for k, v in query.items() if v is not None}
    # The table shows what a summary holds: no record need be built for it. --json
    # prints the whole records.
    listed = client.list_workflows(wanted) if out.as_json else client.list_summaries(wanted)
    _show_executions(out, listed)
    return ExitCode.OK


def _cmd_status(client: Client, args: argparse.Namespace, out: Output) -> int:
    status: WorkflowStatusInfo = client.get_workflow_status(args.id)
    if out.as_json:  # the whole record with the status's figures; the table needs only these
        extra = status.model_dump(mode="json", include={"progress", "steps", "waiting"})
        show_execution(out, client.get_workflow(args.id), extra)
        return ExitCode.OK
    p = status.progress
    rows: list[list[Any]] = [
        ["status", status.status.value],
        ["current step", status.current_step],
        ["reason", status.reason],
        [
            "progress",
            f"{p.succeeded}/{p.total} succeeded, {p.failed} failed, "
            f"{p.skipped} skipped, {p.running} running",
        ],
    ]
    if status.compensations:
        rows.append(["compensation", _compensation_progress(status.compensations)])
    out.table(f"execution {status.id} ({status.workflow_id})", ["field", "value"], rows)
    out.listing(
        ["step", "status", "waiting for"],
        [[k, v.value, status.waiting.get(k, "")] for k, v in status.steps.items()],
        "steps",
    )
    return ExitCode.OK


def _compensation_progress(compensations: list[dict[str, str]]) -> str:
    ended = [c for c in compensations if c["status"] not in ("pending", "running")]
    text = f"{len(ended)} of {len(compensations)} done"
    failed = sum(1 for c in ended if c["status"] != "succeeded")
    if failed:
        text += f" ({failed} did not succeed)"
    running = [c["step"] for c in compensations if c["status"] == "running"]
    return f"{text}; undoing {running[0]!r} now" if running else text


def _cmd_explain(client: Client, args: argparse.Namespace, out: Output) -> int:
    report = client.explain(args.id)
    if out.as_json:
        out.json(report)
        return ExitCode.OK
    print(f"{report['id']}: {report['summary']}")
    rows = [[k, s["status"], s["waiting_for"]] for k, s in report.get("steps", {}).items()]
    if rows:
        out.listing(["step", "status", "waiting for"], rows)
    return ExitCode.OK


def _cmd_events(client: Client, args: argparse.Namespace, out: Output) -> int:
    events = client.get_events(args.id, from_seq=args.from_seq)
    show_events(out, events)
    return ExitCode.OK


def _execution_command(
    call: Callable[[Client, argparse.Namespace], WorkflowExecution],
) -> Callable[[Client, argparse.Namespace, Output], int]:
    def command(client: Client, args: argparse.Namespace, out: Output) -> int:
        show_execution(out, call(client, args))
        return ExitCode.OK

    return command


def _cmd_health(client: Client, args: argparse.Namespace, out: Output) -> int:
    health = client.health()
    if out.as_json:
        out.json(health)
    else:
        out.table("node health", ["check", "value"], [[k, v] for k, v in health.items()])
    return ExitCode.OK


def _cmd_exec(client: Client, args: argparse.Namespace, out: Output) -> int:
    result = client.execute_step(args.id, args.step, args.context_json, timeout=args.step_timeout)
    if out.as_json:
        out.json(result.model_dump(mode="json"))
    else:
        error = result.error.message if result.error else None
        row = [args.step, result.status.value, error, result.data]
        out.table(f"execution {args.id}", ["step", "status", "error", "data"], [row])
    return ExitCode.OK if result.status is StepStatus.SUCCEEDED else ExitCode.FAILURE


_CLIENT_COMMANDS: dict[str, Callable[[Client, argparse.Namespace, Output], int]] = {
    "admin": cmd_admin,
    "start": _cmd_start,
    "list": _cmd_list,
    "status": _cmd_status,
    "events": _cmd_events,
    "health": _cmd_health,
    "explain": _cmd_explain,
    "get": _execution_command(lambda c, a: c.get_workflow(a.id)),
    "pause": _execution_command(lambda c, a: c.pause_workflow(a.id)),
    "resume": _execution_command(lambda c, a: c.resume_workflow(a.id)),
    "abort": _execution_command(lambda c, a: c.abort_workflow(a.id, a.reason)),
    "retry": _execution_command(lambda c, a: c.retry_step(a.id, a.step)),
    "exec": _cmd_exec,
    "wait": _cmd_wait,
}


def _cmd_schema(args: argparse.Namespace, out: Output) -> int:
    if args.kind == "workflow":
        from tamma_actors._workflow_file import workflow_json_schema

        out.json(workflow_json_schema())
    else:
        from tamma_actors._config import node_config_json_schema

        out.json(node_config_json_schema())
    return ExitCode.OK


# -- main ----------------------------------------------------------------------------------


def _client(args: argparse.Namespace) -> Client:
    return Client(
        getattr(args, "endpoint", None),
        data_dir=getattr(args, "data_dir", None),
        token=getattr(args, "token", None),
        timeout=getattr(args, "timeout", None) or DEFAULT_TIMEOUT,
        curve_server_key=getattr(args, "curve_server_key", None),
    )


def _run(args: argparse.Namespace, out: Output) -> int:
    if args.command == "schema":
        return _cmd_schema(args, out)
    if args.command == "watch":
        return cmd_watch(args, out)
    with _client(args) as client:
        return _CLIENT_COMMANDS[args.command](client, args, out)


def _report(exc: TammaError) -> int:
    """Print ``exc`` to stderr; return its exit code."""
    message = exc.remote_message if isinstance(exc, RemoteError) else str(exc)
    if isinstance(exc, WorkflowValidationError):
        where = f"{exc.source}: " if exc.source else ""
        print(f"error: {where}invalid workflow ({len(exc.problems)} problem(s))", file=sys.stderr)
        for problem in exc.problems:
            print(f"  - {problem}", file=sys.stderr)
        return ExitCode.USAGE
    print(f"error: [{exc.code}] {message}", file=sys.stderr)
    if exc.code in _UNREACHABLE_CODES or (
        isinstance(exc, TransportError) and not isinstance(exc, RemoteError | FrameTooLarge)
    ):
        return ExitCode.UNAVAILABLE
    if exc.code in _USAGE_CODES or (
        isinstance(exc, ProtocolError) and not isinstance(exc, RemoteError)
    ):
        return ExitCode.USAGE
    return ExitCode.FAILURE


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return int(exc.code or 0)
    out = Output(bool(getattr(args, "json", False)))
    code: int = ExitCode.OK
    try:
        code = _outcome(args, out)
        sys.stdout.flush()  # a reader gone is found here, not at the interpreter's exit
    except BrokenPipeError:  # stdout's reader went away (`tamma list | head`): stop there
        discard_stdout()
    return code


def _outcome(args: argparse.Namespace, out: Output) -> int:
    try:
        return _run(args, out)
    except TammaError as exc:
        return _report(exc)
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
