"""The store writer process: ``python -m tamma_actors._writer_main`` (started by the node).

It opens the LMDB store, says ready on the socket it was given (``--fd``), then commits
each batch the node sends in one transaction (one fsync) and answers with the outcome;
a batch that fails is retried write by write so only the faulty writes fail. It is one
thread with no GIL to share: nothing waits between a commit's puts. It exits when the
node closes the socket (or dies), after the commit in progress. The frames are in
``_store_wire``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from tamma_actors._affinity import parse_cpus, restore
from tamma_actors._codec import pack, unpack
from tamma_actors._errors import CodecError, StoreError
from tamma_actors._lmdb_store import LmdbStore
from tamma_actors._store import Write
from tamma_actors._store_wire import error_to_wire, write_from_wire
from tamma_actors._writer import commit_or_each

__all__ = ["main", "serve"]

log = logging.getLogger(__name__)
EXIT_OK, EXIT_STORE, EXIT_USAGE = 0, 74, 64


def handle(store: LmdbStore, frame: Any) -> list[Any]:
    """The answer to one batch frame (see ``_store_wire``)."""
    if not (isinstance(frame, list) and len(frame) == 2 and isinstance(frame[1], list)):
        raise StoreError(f"malformed batch from the node: {frame!r:.200}")
    batch_no, items = frame
    writes: list[Write | StoreError] = []
    for item in items:
        try:
            writes.append(write_from_wire(item))
        except StoreError as exc:  # a malformed write fails alone, and never reaches LMDB
            writes.append(exc)
    commits: list[list[float]] = []

    def commit(batch: list[Write]) -> Exception | None:
        started = time.perf_counter()
        try:
            store.commit(batch)
        except StoreError as exc:
            return exc
        finally:
            commits.append([len(batch), time.perf_counter() - started])
        return None

    good = [w for w in writes if isinstance(w, Write)]
    results = iter(commit_or_each(commit, good) if good else [])
    outcomes = [w if isinstance(w, StoreError) else next(results) for w in writes]
    if all(o is None for o in outcomes):
        return [batch_no, commits, None]
    return [batch_no, commits, [None if o is None else error_to_wire(o) for o in outcomes]]


def serve(conn: Connection, store: LmdbStore) -> None:
    """Answer batches until the node closes the socket. A node that died while its batch
    was being committed is not an error: the batch is in the store, where the next node
    reads it, and this process stops as it would at the node's close."""
    conn.send_bytes(pack(["ready", os.getpid()]))
    while True:
        try:
            data = conn.recv_bytes()
        except (EOFError, ConnectionResetError):
            return  # the node closed its end (or died with our last answer unread)
        answer = pack(handle(store, unpack(data)))
        try:
            conn.send_bytes(answer)
        except (BrokenPipeError, ConnectionResetError):
            log.info("the node went away before the answer to its last batch (committed)")
            return


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tamma-store-writer", description=__doc__.split("\n")[0])
    p.add_argument("--fd", type=int, required=True, help="the socket to the node")
    p.add_argument("--path", type=Path, required=True, help="the LMDB store directory")
    p.add_argument("--durability", choices=("full", "relaxed"), default="full")
    p.add_argument("--map-size", type=int, required=True)
    p.add_argument("--max-map-size", type=int)
    p.add_argument("--cpus", type=parse_cpus, help="the CPUs to run on (the node's: 0,1)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    restore(args.cpus)
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s store-writer[{os.getpid()}] %(levelname)s %(name)s: %(message)s",
    )
    conn = Connection(args.fd)
    try:
        store = LmdbStore(
            args.path,
            durability=args.durability,
            map_size=args.map_size,
            max_map_size=args.max_map_size,
        )
    except StoreError as exc:
        log.error("cannot open the store: %s", exc)
        conn.send_bytes(pack(["failed", str(exc)]))
        return EXIT_STORE
    try:
        store.mark_writer(os.getpid(), time.time())
    except StoreError as exc:  # a full disk: writes are refused anyway, one by one
        log.warning("cannot mark this writer in the store: %s", exc)
    try:
        serve(conn, store)
    except (OSError, CodecError, StoreError) as exc:
        log.error("store writer stops: %s", exc)
        return EXIT_STORE
    finally:
        store.close()
        conn.close()
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
