"""W1-W4, W7 and W8: one run of each against a live node (the runner repeats them).

Each function takes a :class:`Bench` (the node, a control client, an event tap) and returns
the figures of one run. Nothing is faked: a workload that cannot run (a missing engine
feature) raises :class:`Unavailable` with the reason, and the suite reports it as such.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psutil

from benchmarks._calibrate import stolen_s
from benchmarks._cpu import cpu_by_process, cpu_spent
from benchmarks._node import BenchmarkError, EventTap, NodeProcess
from benchmarks._stats import latency_figures, percentile
from tamma_actors import Client
from tamma_actors._errors import TammaError

__all__ = ["Bench", "Sizes", "Unavailable", "chain", "w1", "w2", "w3", "w4", "w7"]

Progress = Callable[[str, float, float], None]  # (what, done, total)


class Unavailable(Exception):
    """The workload needs an engine feature this node does not have (the reason)."""


@dataclass(frozen=True)
class Sizes:
    w1_starts: int = 200
    w2_workflows: int = 100
    w2_steps: int = 10
    w3_items: int = 200
    w4_workflows: int = 20
    w4_steps: int = 5
    w4_cpu_ms: float = 20.0
    w5_executions: int = 10_000
    w6_executions: int = 100_000
    w8_steps: int = 1_000
    timeout: float = 300.0

    @classmethod
    def quick(cls) -> Sizes:
        return cls(
            w1_starts=20,
            w2_workflows=10,
            w3_items=20,
            w4_workflows=4,
            w4_steps=2,
            w5_executions=100,
            w6_executions=300,
            w8_steps=50,
            timeout=60.0,
        )


@dataclass
class Bench:
    node: NodeProcess
    client: Client
    tap: EventTap
    sizes: Sizes
    progress: Progress


def chain(name: str, steps: int, implementation: str = "noop", **config: Any) -> dict[str, Any]:
    """A workflow of ``steps`` steps, each depending on the one before."""
    return {
        "name": name,
        "steps": [
            {
                "name": f"s{i}",
                "implementation": implementation,
                "config": dict(config),
                "dependencies": [f"s{i - 1}"] if i else [],
            }
            for i in range(steps)
        ],
    }


NOOP1 = chain("bench-noop-1", 1)


def _all_completed(ended: dict[str, tuple[str, float]]) -> None:
    failed = [eid for eid, (kind, _) in ended.items() if kind != "workflow.completed"]
    if failed:
        raise BenchmarkError(f"{len(failed)} execution(s) did not complete, e.g. {failed[0]}")


def _burst(b: Bench, workflow: dict[str, Any], count: int, what: str) -> tuple[float, float]:
    """Start ``count`` executions at once (pipelined); returns (seconds from the first
    submit to the last end, seconds to have every start accepted)."""
    b.tap.forget()
    began = time.perf_counter()
    started = b.client.start_workflows(workflow, ({"n": i} for i in range(count)))
    accepted = time.perf_counter() - began
    ended = b.tap.wait_for(
        [s.id for s in started], b.sizes.timeout, lambda n: b.progress(what, n, count)
    )
    _all_completed(ended)
    return max(t for _, t in ended.values()) - began, accepted


def w1(b: Bench) -> dict[str, float]:
    """Sequential 1-step starts: start→accepted (durable) and start→completed; also the
    CPU time each process spent per workflow (``node_cpu_ms_per_workflow``, ...)."""
    accepted: list[float] = []
    completed: list[float] = []
    n = b.sizes.w1_starts
    b.tap.forget()
    before = cpu_by_process(b.node.pid)
    for i in range(n):
        began = time.perf_counter()
        execution = b.client.start_workflow(NOOP1)
        accepted.append((time.perf_counter() - began) * 1000)
        kind, at = b.tap.wait_for([execution.id], b.sizes.timeout)[execution.id]
        if kind != "workflow.completed":
            raise BenchmarkError(f"W1 execution {execution.id} ended with {kind}")
        completed.append((at - began) * 1000)
        if i % 20 == 0:
            b.progress("W1", i, n)
    spent = cpu_spent(before, cpu_by_process(b.node.pid))
    return {
        **latency_figures(accepted, completed),
        **{f"{role}_cpu_ms_per_workflow": 1000 * sec / n for role, sec in spent.items()},
    }


def w2(b: Bench) -> dict[str, float]:
    """Many chains submitted at once: durable steps per second, and the CPU time each
    process spent per step meanwhile (``node_cpu_ms_per_step``, ``writer_...``,
    ``workers_...``, ``client_...``: this process)."""
    s = b.sizes
    steps = s.w2_workflows * s.w2_steps
    before = cpu_by_process(b.node.pid)
    wall, accepted = _burst(b, chain("bench-w2", s.w2_steps), s.w2_workflows, "W2")
    spent = cpu_spent(before, cpu_by_process(b.node.pid))
    return {
        "steps_per_s": steps / wall,
        "wall_s": wall,
        "submit_s": accepted,
        **{f"{role}_cpu_ms_per_step": 1000 * sec / steps for role, sec in spent.items()},
    }


def w3(b: Bench) -> dict[str, float]:
    """1 step → parallel over N items → join: wall time."""
    items = b.sizes.w3_items
    workflow = {
        "name": "bench-w3",
        "steps": [
            {"name": "first", "implementation": "noop"},
            {
                "name": "fan",
                "type": "parallel",
                "implementation": "noop",
                "config": {"items": list(range(items))},
                "dependencies": ["first"],
            },
            {"name": "join", "implementation": "noop", "dependencies": ["fan"]},
        ],
    }
    try:
        wall, _ = _burst(b, workflow, 1, "W3")
    except TammaError as exc:
        raise Unavailable(f"the node refused a parallel step: {exc}") from exc
    last = b.client.list_workflows({"workflow_id": "bench-w3"})[-1]
    done = sum(1 for e in b.client.get_events(last.id) if e.type == "step.item_completed")
    output = last.results["fan"].data
    if done < items and not (isinstance(output, list) and len(output) == items):
        raise Unavailable(
            f"parallel steps do not fan out yet ({done} item results for {items} items)"
        )
    return {"wall_s": wall}


def w4(b: Bench) -> dict[str, float]:
    """CPU-bound chains on 2 workers: wall time (ideal: total CPU / 2 cores). Also the
    machine's idle and stolen core-seconds meanwhile (on a virtual machine the hypervisor
    may take CPU time, steal, the run waited for) and each process's core-seconds."""
    s = b.sizes
    workflow = chain("bench-w4", s.w4_steps, "cpu", ms=s.w4_cpu_ms)
    before, processes = psutil.cpu_times(), cpu_by_process(b.node.pid)
    wall, _ = _burst(b, workflow, s.w4_workflows, "W4")
    after, spent = psutil.cpu_times(), cpu_spent(processes, cpu_by_process(b.node.pid))
    ideal = s.w4_workflows * s.w4_steps * s.w4_cpu_ms / 1000 / max(1, b.node.workers)
    return {
        "wall_s": wall,
        "ideal_s": ideal,
        "idle_cpu_s": after.idle - before.idle,
        "steal_cpu_s": stolen_s(before, after),
        **{f"{role}_cpu_s": sec for role, sec in spent.items()},
    }


def w7(b: Bench) -> dict[str, float]:
    """Under W2 load: how long a transition waits for its durable commit, and how long an
    event takes from its publishing to a subscriber (and from its transition: the commit
    wait, then the node's way from the commit to the publishing, come first)."""
    s = b.sizes
    workflow = chain("bench-w7", s.w2_steps)
    halfway: dict[str, Any] = {}

    def progress(n: int) -> None:
        b.progress("W7", n, s.w2_workflows)
        if not halfway and n >= s.w2_workflows // 2:
            # The writer keeps its latest commits: sample them while the load is on.
            halfway.update(b.client.health()["writer"])

    # Every event is timed, not only the workflow.* ones the other workloads wait for: a
    # subscriber of its own, so that theirs costs this process only what they need.
    with EventTap(b.node.events, prefixes=[b""]) as tap:
        tap.sync(b.client, chain("bench-sync", 1))
        tap.forget()
        tap.record_lags = True
        started = b.client.start_workflows(workflow, ({"n": i} for i in range(s.w2_workflows)))
        _all_completed(tap.wait_for([x.id for x in started], s.timeout, progress))
        lags, published = tap.lags(), tap.publish_lags()
    writer = halfway or b.client.health()["writer"]
    if "transition_ms_p99" not in writer:
        raise Unavailable("the node's writer does not report transition latencies")
    if not published:
        raise Unavailable("the node's events carry no publish time (events_publish_time)")
    return {
        "commit_p50_ms": float(writer["transition_ms_p50"]),
        "commit_p99_ms": float(writer["transition_ms_p99"]),
        "fsync_p50_ms": float(writer["commit_ms_p50"]),
        "fsync_p99_ms": float(writer["commit_ms_p99"]),
        "batch_avg": float(writer["average_batch"]),
        "event_p50_ms": percentile(published, 0.5),
        "event_p99_ms": percentile(published, 0.99),
        "event_from_transition_p50_ms": percentile(lags, 0.5),
        "event_from_transition_p99_ms": percentile(lags, 0.99),
    }


def w8(b: Bench) -> dict[str, float]:
    """Big workflows, one at a time: a chain of N ``noop`` steps, then N independent ones
    joined by one more. Wall time, and the node's CPU time per step of each: a transition
    should cost the same in a workflow of 10 steps or of 1,000."""
    n = b.sizes.w8_steps
    fan_in = {
        "name": "bench-w8-fan-in",
        "steps": [
            *({"name": f"s{i}", "implementation": "noop"} for i in range(n)),
            {"name": "join", "implementation": "noop", "dependencies": [f"s{i}" for i in range(n)]},
        ],
    }
    figures: dict[str, float] = {}
    for label, workflow, steps in (
        ("chain", chain("bench-w8-chain", n), n),
        ("fan_in", fan_in, n + 1),
    ):
        before = cpu_by_process(b.node.pid)
        wall, _ = _burst(b, workflow, 1, f"W8 {label.replace('_', '-')}")
        spent = cpu_spent(before, cpu_by_process(b.node.pid))
        figures[f"{label}_wall_s"] = wall
        figures[f"{label}_node_cpu_ms_per_step"] = 1000 * spent["node"] / steps
    return figures
