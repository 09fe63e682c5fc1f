"""``tamma admin``: store administration sub-commands (verify, backup, cleanup) and their output."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from tamma_actors._cli_output import ExitCode, Output
from tamma_actors._client import Client
from tamma_actors._durations import positive_days

__all__ = ["add_admin_parser", "cmd_admin"]

_ADMIN_TIMEOUT = 600.0  # a whole-store check or copy may take minutes on a big store


def add_admin_parser(admin: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
    """The admin sub-commands under ``admin``; ``common`` is the global options' parent parser."""
    ops = admin.add_subparsers(dest="admin_command", required=True, metavar="ADMIN_COMMAND")
    ops.add_parser("verify", help="check the whole store; exit 1 on any fault", parents=[common])
    backup = ops.add_parser(
        "backup", help="consistent compacted copy into a new directory", parents=[common]
    )
    backup.add_argument("dest", type=Path, help="new or empty directory (node's machine)")
    cleanup = ops.add_parser(
        "cleanup", help="delete terminal executions older than N days", parents=[common]
    )
    cleanup.add_argument("--older-than", type=positive_days, required=True, metavar="DAYS")


def _show_verify(out: Output, report: dict[str, Any]) -> int:
    if out.as_json:
        out.json(report)
    elif report["ok"]:
        print(f"store OK: {report['executions']} executions, {report['events']} events")
    else:
        print(f"store has {len(report['problems'])} problem(s):")
        for problem in report["problems"]:
            print(f"  - {problem}")
    return ExitCode.OK if report["ok"] else ExitCode.FAILURE


def cmd_admin(client: Client, args: argparse.Namespace, out: Output) -> int:
    timeout = getattr(args, "timeout", None) or _ADMIN_TIMEOUT
    if args.admin_command == "verify":
        return _show_verify(out, client.admin_verify(timeout=timeout))
    if args.admin_command == "backup":
        result = client.admin_backup(args.dest, timeout=timeout)
        if out.as_json:
            out.json(result)
        else:
            print(f"backup written to {result['path']} ({result['bytes']} bytes)")
        return ExitCode.OK if result["verify"]["ok"] else ExitCode.FAILURE
    result = client.admin_cleanup(args.older_than, timeout=timeout)
    if out.as_json:
        out.json(result)
    else:
        print(f"deleted {len(result['deleted'])} execution(s)")
    return ExitCode.OK
