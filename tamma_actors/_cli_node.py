"""The ``tamma-node`` command: run a node, run a worker, or run a workflow once (demo).

Only this top process installs signal handlers; its children (local workers) are told to
stop by the node.

The commands on a store (``verify``, ``cleanup``, ``restore``, ``backup``) are in
``_cli_store``, with the check of the store before ``run`` and ``demo`` open it: a damaged
file exits ``EXIT_DAMAGED`` (65) whichever command meets it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tamma_actors._cli_store import (
    EXIT_DAMAGED,
    EXIT_FAILED,
    EXIT_OK,
    damaged,
    run_store_command,
    store_parsers,
    walk_before_open,
)
from tamma_actors._config import NodeConfig, load_node_config, unknown_variables
from tamma_actors._errors import ConfigError, StoreCorrupted, TammaError, WorkflowValidationError
from tamma_actors._gc import tune_gc
from tamma_actors._plugins import GATED_BUILTINS, add_gated_flags, allow_entry, gated_enabled
from tamma_actors._wire import DEFAULT_WORKER_SLOTS

__all__ = ["main"]

EXIT_USAGE = 2


def _node_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="node config file (TOML or YAML)")
    # paths as text: the configuration refuses an empty one ('' would be the cwd as a Path)
    parser.add_argument("--data-dir", help="data directory (default ./var)")
    parser.add_argument("--workers", type=int, help="local worker processes (default: CPUs)")
    parser.add_argument("--worker-slots", type=int, help="concurrent steps per worker")
    parser.add_argument(
        "--control-endpoint", help="control socket (default ipc://DATA/control.sock)"
    )
    parser.add_argument(
        "--workers-endpoint", help="workers socket (default ipc://DATA/workers.sock)"
    )
    parser.add_argument(
        "--events-endpoint", help="events PUB socket (default ipc://DATA/events.sock)"
    )
    add_gated_flags(parser, default=None)
    parser.add_argument(
        "--workflow-dir",
        dest="workflow_dirs",
        action="append",
        help="a directory subflows may read workflow files from (repeatable)",
    )
    parser.add_argument(
        "--durability", choices=["full", "relaxed"], help="fsync every commit (full)"
    )
    parser.add_argument("--log-level", help="DEBUG, INFO, WARNING, ERROR")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tamma-node", description="Run a tamma_actors node.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run", help="run a node in the foreground (SIGINT, SIGTERM or SIGHUP stops it)"
    )
    _node_options(run)
    demo = sub.add_parser("demo", help="start a node, run one workflow to its end, stop")
    _node_options(demo)
    demo.add_argument("workflow", type=Path, help="workflow file (YAML)")
    demo.add_argument("--input", action="append", default=[], metavar="KEY=VALUE")
    demo.add_argument("--json", action="store_true", help="print the execution as JSON")
    demo.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the end")
    store_parsers(sub)
    worker = sub.add_parser("worker", help="run one worker that joins a node")
    worker.add_argument("--connect", required=True, help="the node's workers endpoint")
    worker.add_argument("--slots", type=int, default=DEFAULT_WORKER_SLOTS)
    worker.add_argument("--worker-id")
    worker.add_argument("--heartbeat", type=float, default=1.0)
    add_gated_flags(worker)
    worker.add_argument(
        "--allow",
        type=allow_entry,
        action="append",
        default=[],
        metavar="NAME=MODULE:ATTR",
        help="an extra step implementation this worker may run",
    )
    worker.add_argument(
        "--curve-server-key", help="the node's CURVE public key (a tcp:// endpoint with CURVE)"
    )
    worker.add_argument(
        "--token",
        help="one of the node's worker_tokens (or an admin token) when it has tokens (prefer "
        "TAMMA_WORKER_TOKEN: ps shows a command's arguments)",
    )
    sub.add_parser("keygen", help="print a new CURVE key pair for a node's tcp:// endpoints")
    return parser


def _config_from(args: argparse.Namespace) -> NodeConfig:
    overrides: dict[str, Any] = {
        key: value
        for key, value in {
            "data_dir": args.data_dir,
            "workers": args.workers,
            "worker_slots": args.worker_slots,
            "control_endpoint": args.control_endpoint,
            "workers_endpoint": args.workers_endpoint,
            "events_endpoint": args.events_endpoint,
            **{setting: getattr(args, setting) for setting in GATED_BUILTINS.values()},
            "workflow_dirs": args.workflow_dirs,
            "durability": args.durability,
            "log_level": args.log_level,
        }.items()
        if value is not None
    }
    return load_node_config(args.config, **overrides)


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )


def _cmd_run(args: argparse.Namespace) -> int:
    cfg = _config_from(args)
    try:
        return _run(cfg)
    except StoreCorrupted as exc:
        return damaged(exc, cfg.data_dir)


def _run(cfg: NodeConfig) -> int:
    with walk_before_open(cfg.data_dir) as walked:  # runs while the node is imported
        from tamma_actors._node import Node

        walked()
    _setup_logging(cfg.log_level)
    for variable in unknown_variables(os.environ):
        logging.getLogger("tamma_actors").warning(
            "environment variable %s names no node setting; it is ignored", variable
        )
    stop, hurry = threading.Event(), threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        if stop.is_set():  # a second signal: no more grace
            logging.getLogger("tamma_actors").info("signal %d: stopping now", signum)
            hurry.set()
            return
        logging.getLogger("tamma_actors").info("signal %d: shutting down", signum)
        stop.set()

    # SIGHUP too (its terminal closed, a session ended): the default would kill the node
    # without draining it.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, on_signal)
    tune_gc()
    with Node(cfg) as node:
        node.pin_coordinator()  # this process is the node: its threads may share a CPU
        print(
            f"tamma-node: control {cfg.control_address}  workers {cfg.workers_address}  "
            f"events {cfg.events_address}  ({node.recovered} executions recovered)",
            flush=True,
        )
        code = node.run(stop)
        if code == EXIT_OK:
            node.drain(cfg.shutdown_grace, hurry)
    return code


def _parse_inputs(pairs: Sequence[str]) -> dict[str, Any]:
    """``--input KEY=VALUE`` values read as YAML, as a workflow file is: ``n=3`` is a
    number, ``due=2026-12-01`` the text it is written as."""
    import yaml

    from tamma_actors._workflow_file import yaml_data

    inputs: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--input expects KEY=VALUE, got {pair!r}")
        try:
            inputs[key] = yaml_data(value) if value else ""
        except yaml.YAMLError as exc:
            what = " ".join(str(exc).split())  # one line
            raise ValueError(f"--input {key}: not a YAML value ({what})") from exc
    return inputs


def _cmd_demo(args: argparse.Namespace) -> int:
    from tamma_actors._cli_output import DEFAULT_TIMEOUT
    from tamma_actors._client import Client
    from tamma_actors._node import Node
    from tamma_actors._workflow_file import load_workflow

    if args.log_level is None:
        args.log_level = "WARNING"  # the demo prints its result, not the node's chatter
    cfg = _config_from(args)
    _setup_logging(cfg.log_level)
    inputs = _parse_inputs(args.input)
    load_workflow(args.workflow)  # a file that cannot be started starts no node either
    token, key = _starting_token(cfg), cfg.curve_public_key
    try:
        with walk_before_open(cfg.data_dir) as walked:
            walked()
    except StoreCorrupted as exc:
        return damaged(exc, cfg.data_dir)
    with (
        Node(cfg) as node,
        Client(
            cfg.control_address, token=token, timeout=DEFAULT_TIMEOUT, curve_server_key=key
        ) as client,
    ):
        print(
            f"node up on {cfg.data_dir} with {cfg.workers} local workers "
            f"({node.recovered} executions recovered)",
            file=sys.stderr,
        )
        started = client.start_workflow(args.workflow, inputs)
        print(f"started {started.id} ({started.workflow_id})", file=sys.stderr)
        final = client.wait(started.id, timeout=args.timeout)
        events = client.get_events(final.id)
    if args.json:
        print(json.dumps(final.model_dump(mode="json"), indent=2))
    else:
        _print_execution(final.model_dump(mode="json"), len(events))
    return EXIT_OK if final.status == "completed" else EXIT_FAILED


def _starting_token(cfg: NodeConfig) -> str | None:
    """A token of the node's that may start workflows (the least role that may), or None
    for a node without tokens."""
    if not cfg.tokens:
        return None
    for role in ("operator", "admin"):
        for token, given in cfg.tokens.items():
            if given == role:
                return token
    raise ConfigError("demo starts a workflow: tokens needs one with the operator or admin role")


def _print_execution(record: dict[str, Any], event_count: int) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{record['workflow_id']} — {record['id']}: {record['status']}")
    for column in ("step", "status", "attempts", "output"):
        table.add_column(column)
    for name, result in record["results"].items():
        output = result.get("data") if result.get("error") is None else result["error"]
        table.add_row(
            name,
            str(result["status"]),
            str(result["attempts"]),
            json.dumps(output, default=str)[:80],
        )
    console = Console()
    console.print(table)
    duration = record["metrics"].get("duration_ms")
    console.print(
        f"{event_count} events recorded; duration {duration:.1f} ms"
        if duration is not None
        else f"{event_count} events"
    )


def _cmd_keygen() -> int:
    from tamma_actors._curve import keypair

    public, secret = keypair()
    print("# node configuration (keep the secret key secret):")
    print(f'curve_public_key = "{public}"')
    print(f'curve_secret_key = "{secret}"')
    print("# clients and remote workers need only the public key:")
    # (with '=': a z85 key may begin with '-', which would be taken for an option)
    print(f"#   tamma --curve-server-key='{public}' ...  (or TAMMA_CURVE_SERVER_KEY)")
    print(f"#   tamma-node worker --connect tcp://HOST:PORT --curve-server-key='{public}'")
    return EXIT_OK


def _cmd_worker(args: argparse.Namespace) -> int:
    from tamma_actors._worker import EXIT_OK as WORKER_OK
    from tamma_actors._worker import CurveKeys, run_worker

    _setup_logging("INFO")
    tune_gc()
    code = run_worker(  # arguments it cannot use raise: a usage error (2)
        args.connect,
        slots=args.slots,
        worker_id=args.worker_id,
        heartbeat_interval=args.heartbeat,
        enabled=gated_enabled(args),
        allowlist=dict(args.allow),
        managed=False,
        curve=CurveKeys(args.curve_server_key) if args.curve_server_key else None,
        token=args.token,
    )
    return EXIT_OK if code == WORKER_OK else EXIT_FAILED  # its transport failed meanwhile


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            return _cmd_run(args)
        if args.command == "demo":
            return _cmd_demo(args)
        if args.command in ("verify", "cleanup", "restore", "backup"):
            return run_store_command(args)
        if args.command == "keygen":
            return _cmd_keygen()
        return _cmd_worker(args)
    except StoreCorrupted as exc:  # the demo's node, or a store command's file
        print(f"tamma-node: {exc}", file=sys.stderr)
        return EXIT_DAMAGED
    except (TammaError, ValueError) as exc:
        print(f"tamma-node: {exc}", file=sys.stderr)
        usage = isinstance(exc, (ValueError, WorkflowValidationError))  # as `tamma`'s
        # a worker's configuration is its arguments (an --allow entry that does not load)
        usage = usage or (args.command == "worker" and isinstance(exc, ConfigError))
        return EXIT_USAGE if usage else EXIT_FAILED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
