"""Supervision trees: their declaration (``supervisors/*.toml``) and pure restart policy.

The policy is a pure function of (strategy, which child failed, restart history, now) so it
can be property-tested; the node applies its decisions.
"""

from __future__ import annotations

import tomllib
from collections import deque
from collections.abc import Sequence
from enum import StrEnum
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tamma_actors._errors import ConfigError

__all__ = [
    "ChildSpec",
    "RestartIntensity",
    "Strategy",
    "SupervisorSpec",
    "children_to_restart",
    "default_tree_path",
    "load_tree",
]


class Strategy(StrEnum):
    ONE_FOR_ONE = "one_for_one"
    ONE_FOR_ALL = "one_for_all"
    REST_FOR_ONE = "rest_for_one"


class ChildSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    kind: Literal["store_writer", "event_bus", "worker_pool", "control_server"]
    restart: Literal["permanent", "transient", "temporary"] = "permanent"
    shutdown_timeout: float = Field(default=10.0, gt=0)


class SupervisorSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "node"
    strategy: Strategy = Strategy.ONE_FOR_ONE
    max_restarts: int = Field(default=3, ge=0)
    within_seconds: float = Field(default=10.0, gt=0)
    children: tuple[ChildSpec, ...]

    @model_validator(mode="after")
    def _unique_and_complete(self) -> SupervisorSpec:
        names = [c.name for c in self.children]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate child names: {', '.join(dupes)}")
        kinds = {c.kind for c in self.children}
        missing = {"store_writer", "worker_pool", "control_server"} - kinds
        if missing:
            raise ValueError(f"the node tree needs children of kind: {', '.join(sorted(missing))}")
        return self


def default_tree_path() -> Path:
    """``supervisors/node.toml`` of the source tree (the project root beside the package)."""
    return Path(__file__).resolve().parent.parent / "supervisors" / "node.toml"


BUILTIN_TREE = {
    "name": "node",
    "children": [
        {"name": "store_writer", "kind": "store_writer"},
        {"name": "event_bus", "kind": "event_bus"},
        {"name": "worker_pool", "kind": "worker_pool"},
        {"name": "control_server", "kind": "control_server"},
    ],
}


def load_tree(path: Path | None = None) -> SupervisorSpec:
    """Load a tree; without a path, ``supervisors/node.toml`` (or, in an installed package
    without the source tree, the same tree built in)."""
    if path is None:
        path = default_tree_path()
        if not path.exists():
            return SupervisorSpec.model_validate(BUILTIN_TREE)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the supervision tree: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from exc
    data = dict(raw.get("supervisor", {}))
    data["children"] = raw.get("child", [])
    unknown = set(raw) - {"supervisor", "child"}
    if unknown:
        raise ConfigError(f"{path}: unknown sections: {', '.join(sorted(unknown))}")
    try:
        return SupervisorSpec.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'supervisor'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"{path}: {problems}") from exc


def children_to_restart(strategy: Strategy, failed: int, count: int) -> list[int]:
    """Indices (in start order) of the children to restart when child ``failed`` died."""
    if not 0 <= failed < count:
        raise ValueError(f"child index {failed} outside 0..{count - 1}")
    if strategy is Strategy.ONE_FOR_ONE:
        return [failed]
    if strategy is Strategy.ONE_FOR_ALL:
        return list(range(count))
    return list(range(failed, count))


class RestartIntensity:
    """At most ``max_restarts`` restarts within any window of ``within`` seconds."""

    def __init__(self, max_restarts: int, within: float) -> None:
        self.max_restarts = max_restarts
        self.within = within
        self._history: deque[float] = deque()

    @property
    def history(self) -> Sequence[float]:
        return tuple(self._history)

    def allow(self, now: float) -> bool:
        """Record a restart at ``now``; False when it exceeds the intensity (escalate)."""
        while self._history and now - self._history[0] >= self.within:
            self._history.popleft()
        if len(self._history) >= self.max_restarts:
            return False
        self._history.append(now)
        return True
