"""The data a fan-out's items share, sent to each worker once (see tamma_actors/_wire.py).

Every item of a parallel step gets the workflow's ``inputs`` and its dependencies' outputs
(``upstream``), and those are often the big part: a step fanning out over a list of
10,000 entries has that list upstream. Sent with each item, the node encoded it, and each
worker decoded it, 10,000 times (5,000 items of 100 bytes took 6.9 s and 830 MiB of the
node's memory, against 1.1 s when the same items came from the step's config). Here it is
encoded once per fan-out (``SharedPayloads.encode``), sent once to each worker that runs
one of its items (``SharedPayloads.frames_for``, in a ``blob`` frame before the item's
``run``), and dropped when the fan-out's last task is gone (``release``), on the node and
on the workers holding it (``forget``). A worker holds at most ``PER_WORKER`` blobs: the
node makes it forget the one it used least recently before sending another. The tasks of
a small blob (under ``MIN_SHARED_BYTES`` encoded) are sent as any task is: a frame more
per worker would cost more than it saves.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tamma_actors import _wire as wire

__all__ = ["MIN_SHARED_BYTES", "PER_WORKER", "Encoded", "SharedPayloads"]

MIN_SHARED_BYTES = 2048
PER_WORKER = 16


@dataclass(slots=True)
class _Blob:
    frame: bytes | None  # the encoded blob frame; None: too small to be worth sharing
    tasks: int = 0  # the pool's tasks that name it (queued or running)


@dataclass(slots=True)
class Encoded:
    """A task as the pool sends it: its run frame and, for a fan-out item whose shared
    data goes on its own, the key and frame of that blob, and the whole task (for a worker
    that does not take shared runs)."""

    frame: bytes
    key: str | None = None  # a fan-out item's (held, or to drop: see SharedPayloads.encode)
    blob: bytes | None = None
    whole: dict[str, Any] | None = None
    _whole_frame: bytes | None = None

    def whole_frame(self) -> bytes:
        """The task's run frame with its shared data in it (encoded once, when first asked:
        only for a worker that does not take shared runs)."""
        if self._whole_frame is None:
            self._whole_frame = wire.encode(wire.run(self.whole or {}))
        return self._whole_frame

    @property
    def size(self) -> int:
        """Its biggest frame (a blob goes in one of its own)."""
        return max(len(self.frame), len(self.blob or b""))


class SharedPayloads:
    """The pool's blobs, by key (the pool's thread only)."""

    def __init__(self) -> None:
        self._blobs: dict[str, _Blob] = {}

    def encode(self, task: Mapping[str, Any]) -> Encoded:
        """``task`` encoded (TammaError if it cannot be). A fan-out item's (``shared``: its
        key) counts as one of its blob's tasks: ``release`` it when the task is gone."""
        key = task.get("shared")
        if not isinstance(key, str):
            return Encoded(wire.encode(wire.run(task)))
        whole = {k: v for k, v in task.items() if k != "shared"}
        found = self._blobs.get(key)
        if found is None:
            blob = wire.encode(wire.blob(key, whole["inputs"], whole["upstream"]))
            found = _Blob(blob if len(blob) >= MIN_SHARED_BYTES else None)
        if found.frame is None:
            encoded = Encoded(wire.encode(wire.run(whole)), key)
        else:
            encoded = Encoded(wire.encode(wire.run_shared(whole, key)), key, found.frame, whole)
        self._blobs[key] = found  # (only once all of it could be encoded)
        found.tasks += 1
        return encoded

    def release(self, key: str) -> bool:
        """One task of ``key`` is gone; True when it was the last: the blob is dropped here,
        and the workers holding it are to be told to forget it."""
        found = self._blobs.get(key)
        if found is None:
            return False
        found.tasks -= 1
        if found.tasks > 0:
            return False
        del self._blobs[key]
        return True

    @staticmethod
    def frames_for(held: OrderedDict[str, None], key: str, blob: bytes) -> list[bytes]:
        """What to send a worker holding ``held`` before a run naming ``key``: nothing if it
        holds the blob, else the blob (after a ``forget`` of the one it used least
        recently, when it holds ``PER_WORKER``); ``held`` is updated as sent."""
        if key in held:
            held.move_to_end(key)
            return []
        frames = []
        while len(held) >= PER_WORKER:
            old, _ = held.popitem(last=False)
            frames.append(wire.encode(wire.forget(old)))
        held[key] = None
        frames.append(blob)
        return frames

    def __len__(self) -> int:
        return len(self._blobs)
