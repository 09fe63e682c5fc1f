"""Ping-pong tells between pairs of actors: ThreadingActor vs PoolActor at 100 and 10,000 actors.

Run: ``.venv/bin/python benchmarks/bench_dispatch.py [--actors 100 10000] [--rounds N]``.
Prints messages per second (median of ``--repeat`` runs). Not run by the tests.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from typing import Any

import pykka
from pykka import ActorRegistry

from tamma_actors._dispatch import Dispatcher, PoolActor


class _Finish:
    """Counts pairs that finished their rally; sets ``done`` when all have."""

    def __init__(self, pairs: int) -> None:
        self.left = pairs
        self.lock = threading.Lock()
        self.done = threading.Event()

    def one(self) -> None:
        with self.lock:
            self.left -= 1
            if self.left == 0:
                self.done.set()


def _on_receive(actor: Any, message: Any) -> None:
    remaining, peer, finish = message
    if remaining == 0:
        finish.one()
    else:
        peer.tell((remaining - 1, actor.actor_ref, finish))


class ThreadedPinger(pykka.ThreadingActor):
    def on_receive(self, message: Any) -> None:
        _on_receive(self, message)


class PooledPinger(PoolActor):
    def on_receive(self, message: Any) -> None:
        _on_receive(self, message)


def _rally(refs: list[pykka.ActorRef[Any]], rounds: int) -> float:
    pairs = len(refs) // 2
    finish = _Finish(pairs)
    started = time.perf_counter()
    for i in range(pairs):
        refs[2 * i].tell((rounds, refs[2 * i + 1], finish))
    if not finish.done.wait(600):
        raise RuntimeError("rally did not finish in 10 minutes")
    elapsed = time.perf_counter() - started
    return pairs * (rounds + 1) / elapsed


def bench(kind: str, actors: int, rounds: int, repeat: int, threads: int) -> float:
    dispatcher = Dispatcher(threads=threads) if kind == "pool" else None
    refs: list[pykka.ActorRef[Any]]
    try:
        if dispatcher is not None:
            refs = [PooledPinger.start(dispatcher) for _ in range(actors)]
        else:
            refs = [ThreadedPinger.start() for _ in range(actors)]
        rates = [_rally(refs, rounds) for _ in range(repeat)]
        return statistics.median(rates)
    finally:
        ActorRegistry.stop_all(timeout=60)
        if dispatcher is not None:
            dispatcher.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--actors", type=int, nargs="+", default=[100, 10_000])
    parser.add_argument("--rounds", type=int, default=200, help="tells per pair per run")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="dispatcher threads")
    args = parser.parse_args()
    print(f"{'actors':>8} {'ThreadingActor':>16} {'PoolActor':>12} {'ratio':>7}  (msg/s, median)")
    for actors in args.actors:
        # Keep total work per run roughly constant so large runs stay short.
        rounds = max(10, args.rounds * 100 // max(actors, 100) * 10)
        threaded = bench("thread", actors, rounds, args.repeat, args.threads)
        pooled = bench("pool", actors, rounds, args.repeat, args.threads)
        print(f"{actors:>8} {threaded:>16,.0f} {pooled:>12,.0f} {pooled / threaded:>6.1f}x")


if __name__ == "__main__":
    main()
