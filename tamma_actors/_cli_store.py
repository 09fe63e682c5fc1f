"""``tamma-node verify|cleanup|restore|backup`` (a stopped node's store), and the check of
the store before ``tamma-node run`` and ``demo`` open it.

A damaged LMDB file can make liblmdb abort the process that reads it (an assertion, or a
SIGBUS past the end of a truncated file), so these commands read it in child processes
(``_store_check``) and exit ``EXIT_DAMAGED`` (65, sysexits' EX_DATAERR) naming the file:
``verify`` says where it was reading, ``restore`` and ``backup`` refuse the store before
copying anything, and ``run`` (as ``cleanup``) does not open it.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tamma_actors._data_dir import directory_arg
from tamma_actors._durations import positive_days
from tamma_actors._errors import StoreCorrupted

__all__ = ["EXIT_DAMAGED", "damaged", "run_store_command", "store_parsers", "walk_before_open"]

EXIT_OK, EXIT_FAILED = 0, 1
EXIT_DAMAGED = 65  # the store's LMDB file is damaged
# The walk before a node opens its store: ~10 ms of reading for 10,000 executions (12 MB)
# in the page cache; a multi-GB file read from the disk takes its read time.
WALK_TIMEOUT = 600.0
_GOOD_COPY = (
    "a backup made by `tamma admin backup` or `tamma-node backup`, not a copy of a "
    "data.mdb taken while its node ran"
)


def store_parsers(sub: Any) -> None:
    verify = sub.add_parser(
        "verify", help="check the store of a stopped node; exit 1 on faults, 65 if damaged"
    )
    verify.add_argument("--data-dir", type=directory_arg, default=Path("var"))
    verify.add_argument("--json", action="store_true")
    cleanup = sub.add_parser("cleanup", help="delete old terminal executions (node stopped)")
    cleanup.add_argument("--data-dir", type=directory_arg, default=Path("var"))
    cleanup.add_argument("--older-than", type=positive_days, required=True, metavar="DAYS")
    restore = sub.add_parser("restore", help="check a backup and copy it into a new data dir")
    restore.add_argument(
        "backup", type=directory_arg, help="a directory made by `tamma admin backup`"
    )
    restore.add_argument(
        "--data-dir", type=directory_arg, required=True, help="new or empty directory"
    )
    backup = sub.add_parser("backup", help="check a stopped node's store and copy it")
    backup.add_argument("dest", type=directory_arg, help="new or empty directory")
    backup.add_argument("--data-dir", type=directory_arg, default=Path("var"))


def run_store_command(args: argparse.Namespace) -> int:
    import time

    from tamma_actors._admin import backup_offline, cleanup_store, offline_store, restore_backup

    if args.command == "restore":
        report = restore_backup(args.backup, args.data_dir)
        print(f"restored {report.executions} executions into {args.data_dir}")
        return EXIT_OK
    if args.command == "backup":
        made = backup_offline(args.data_dir, args.dest.absolute())
        print(f"backed up {made['verify']['executions']} executions into {made['path']}")
        return EXIT_OK
    if args.command == "cleanup":
        try:
            with offline_store(args.data_dir) as store:  # walked first, under the lock
                deleted = cleanup_store(store, args.older_than, time.time())["deleted"]
        except StoreCorrupted as exc:
            return damaged(exc, args.data_dir)
        print(f"deleted {len(deleted)} execution(s)")
        return EXIT_OK
    return _verify(args)


def _verify(args: argparse.Namespace) -> int:
    from tamma_actors._admin import data_dir_locked
    from tamma_actors._store_check import verify_file

    with data_dir_locked(args.data_dir) as path:
        report = verify_file(path)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    elif report.damaged:
        print(f"store file is damaged: {report.problems[0]}")
        for problem in report.problems[1:]:  # what the records' check found before
            print(f"  - {problem}")
        print(f"restore a backup with `tamma-node restore BACKUP --data-dir NEW` ({_GOOD_COPY})")
    elif report.ok:
        print(f"store OK: {report.executions} executions, {report.events} events")
    else:
        print(f"store has {len(report.problems)} problem(s):")
        for problem in report.problems:
            print(f"  - {problem}")
    if report.damaged:
        return EXIT_DAMAGED
    return EXIT_OK if report.ok else EXIT_FAILED


def damaged(exc: StoreCorrupted, data_dir: Path) -> int:
    """Say that the store of ``data_dir`` is damaged and what to do; the exit code."""
    print(f"tamma-node: {exc}", file=sys.stderr)
    print(
        f"tamma-node: a node does not use a damaged store: `tamma-node verify --data-dir "
        f"{data_dir}` says what is damaged; `tamma-node restore BACKUP --data-dir NEW` "
        f"restores {_GOOD_COPY}",
        file=sys.stderr,
    )
    return EXIT_DAMAGED


@contextmanager
def walk_before_open(data_dir: Path) -> Iterator[Callable[[], None]]:
    """Start a child process that reads every page of the store of ``data_dir``; the
    block gets a function that waits for it and raises StoreCorrupted for a damaged file
    (a new data directory has nothing to read). Started first so that it runs while this
    process imports the node; a child still running when the block ends is killed."""
    from tamma_actors._lmdb_env import DATA_FILE
    from tamma_actors._store_check import StoreCheck

    store = Path(data_dir) / "store"
    if not (store / DATA_FILE).is_file():
        yield lambda: None
        return
    with StoreCheck("walk", store) as check:

        def wait() -> None:
            check.result(WALK_TIMEOUT)

        yield wait
