"""Python's cyclic collector in the processes tamma starts itself (the node, its workers).

Never in a library user's process: an embedded node leaves its host's collector alone.
"""

from __future__ import annotations

import gc

__all__ = ["GC_YOUNG_THRESHOLD", "frozen_by_tamma", "tune_gc"]

# The youngest generation, in net allocations of tracked objects (the interpreter's
# default is 700). At 700, parking 40,000 executions spent ~15 % of the node's CPU
# collecting (then mostly the cycles stopped supervisors left; they are now freed at once)
# and a worker ~7 % of its CPU per step.
GC_YOUNG_THRESHOLD = 10_000

# How many objects ``tune_gc`` froze (None: it did not run in this process). Counted once:
# ``gc.get_freeze_count()`` walks every frozen object (~45,000 in the node: 4-7 ms), and
# the node's health report, asked for on its control thread, used to call it each time.
_frozen: int | None = None


def tune_gc() -> None:
    """What is loaded so far (modules, classes, schemas: tens of thousands of objects that
    live as long as the process) is moved out of the collector's way, and the youngest
    generation is collected every ``GC_YOUNG_THRESHOLD`` allocations.

    Call it before the process starts its work, so that nothing that work allocates is
    frozen (a frozen cycle is never collected). No collection first: the little garbage
    imports leave would cost a full collection (~25 ms) to find."""
    global _frozen
    gc.freeze()
    _frozen = gc.get_freeze_count()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, oldest)


def frozen_by_tamma() -> int | None:
    """The objects ``tune_gc`` froze in this process, or None if it did not run (an
    embedded node: the host's collector is the host's)."""
    return _frozen
