"""The registry of step implementations a worker may run.

Names come from exactly three places, in this order: the built-ins, the entry points of
group ``tamma_actors.steps`` (installed packages), and the operator's allowlist
(``name -> "module:attr"``). A client only ever sends a *name*, so it can never make a
node import arbitrary code. The first source to claim a name keeps it; built-in names
(``shell`` and ``record`` included, even when they are disabled) are reserved so that a
package cannot smuggle a shell runner in under that name. Those two act on the worker's
machine beyond the step (a command; a file named by the step's config), so a node
registers them only when its operator enables them (``GATED_BUILTINS``).

Listing names imports nothing: a plugin module is imported the first time its step runs.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import re
import sys
import threading
from collections.abc import Callable, Collection, Iterator, Mapping
from importlib import metadata

from tamma_actors._errors import ConfigError, UnknownImplementation
from tamma_actors._step_api import StepFunction

__all__ = [
    "BUILTIN_NAMES",
    "ENTRY_POINT_GROUP",
    "GATED_BUILTINS",
    "PluginRegistry",
    "add_gated_flags",
    "allow_entry",
    "check_modules",
    "gated_enabled",
    "load_registry",
]

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "tamma_actors.steps"
BUILTIN_NAMES = ("noop", "echo", "sleep", "cpu", "fail", "record", "crash", "hang", "shell")
# built-ins registered only when enabled: name -> the node's setting (a worker's flag is
# --allow-NAME)
GATED_BUILTINS = {"shell": "allow_shell", "record": "allow_record"}


def add_gated_flags(parser: argparse.ArgumentParser, default: bool | None = False) -> None:
    """An ``--allow-NAME`` flag for each gated built-in (its dest: the node's setting);
    ``default`` None for a node's, so that an absent flag leaves its config file's value."""
    for name, setting in GATED_BUILTINS.items():
        parser.add_argument(
            f"--allow-{name}",
            dest=setting,
            action="store_true",
            default=default,
            help=f"register the `{name}` step implementation",
        )


def allow_entry(text: str) -> tuple[str, str]:
    """An ``--allow NAME=MODULE:ATTR`` flag (an argparse type): a worker's own allowlist
    entry; its target is checked as the node's allowlist is, when the registry loads."""
    name, sep, target = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=module:attr, got {text!r}")
    return name, target


def gated_enabled(values: object) -> frozenset[str]:
    """The gated built-ins whose setting (``allow_NAME``) is on in ``values``: a node's
    configuration or a worker's parsed flags."""
    return frozenset(name for name, setting in GATED_BUILTINS.items() if getattr(values, setting))


_BUILTINS_MODULE = "tamma_actors._builtins"
_TARGET = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")

Loader = Callable[[], object]


def import_target(target: str) -> object:
    """Import ``"package.module:attr.path"`` and return the attribute."""
    module_name, _, attr_path = target.partition(":")
    obj: object = importlib.import_module(module_name)
    for part in attr_path.split("."):
        obj = getattr(obj, part)
    return obj


def check_modules(allowlist: Mapping[str, str]) -> None:
    """Raise ConfigError for an allowlist entry whose module cannot be found: an argument a
    worker started by hand cannot use, refused at its start rather than at its first step.
    The module is found, not imported (its parent packages are, as an import would); a
    malformed entry is left to :func:`load_registry`."""
    for name, target in allowlist.items():
        if not _TARGET.match(target):
            continue
        module = target.partition(":")[0]
        try:
            found = module in sys.modules or importlib.util.find_spec(module) is not None
            problem = None if found else f"no module named {module!r}"
        except Exception as exc:  # a parent package can fail to import in any way
            problem = f"{type(exc).__name__}: {exc}"
        if problem is not None:
            raise ConfigError(f"allowlist entry {name!r} = {target!r}: {problem}")


class PluginRegistry:
    """Step names mapped to lazy loaders; ``get`` imports once and caches."""

    def __init__(self, loaders: Mapping[str, Loader]) -> None:
        self._loaders = dict(loaders)
        self._loaded: dict[str, StepFunction] = {}
        self._lock = threading.Lock()  # step runner threads resolve concurrently

    def names(self) -> list[str]:
        return sorted(self._loaders)

    def __contains__(self, name: object) -> bool:
        return name in self._loaders

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._loaders)

    def get(self, name: str) -> StepFunction:
        """The implementation called ``name``; UnknownImplementation if absent or broken."""
        with self._lock:
            cached = self._loaded.get(name)
            if cached is not None:
                return cached
            loader = self._loaders.get(name)
            if loader is None:
                known = ", ".join(self.names()) or "none"
                raise UnknownImplementation(
                    f"unknown step implementation {name!r} (registered: {known})"
                )
            fn = self._load(name, loader)
            self._loaded[name] = fn
            return fn

    def loaded(self, name: str) -> StepFunction | None:
        """``name``'s implementation if it is already loaded, else None. Never imports: the
        socket thread asks this (is it inline? cpu-bound?), and a plugin's first import
        (which can take any time) happens on a step runner thread."""
        return self._loaded.get(name)

    def load_builtins(self) -> None:
        """Load the built-ins registered here now: they are ours and quick to load, so even
        their first run is known to be inline or cpu-bound."""
        for name in BUILTIN_NAMES:
            if name in self._loaders:
                self.get(name)

    @staticmethod
    def _load(name: str, loader: Loader) -> StepFunction:
        try:
            obj = loader()
        except Exception as exc:  # plugin code can fail to import in any way
            raise UnknownImplementation(
                f"step implementation {name!r} could not be loaded: {type(exc).__name__}: {exc}"
            ) from exc
        if not callable(obj):
            raise UnknownImplementation(f"step implementation {name!r} is not callable")
        return obj


def _target_loader(target: str) -> Loader:
    return lambda: import_target(target)


def _entry_point_loaders(reserved: set[str]) -> dict[str, Loader]:
    loaders: dict[str, Loader] = {}
    try:
        found = list(metadata.entry_points(group=ENTRY_POINT_GROUP))
    except Exception:  # broken distribution metadata must not stop a worker
        log.exception("could not read entry points of group %s", ENTRY_POINT_GROUP)
        return loaders
    for ep in found:
        target = ep.value.split("[", 1)[0].replace(" ", "")  # extras ("[x]") are pip's
        if not _TARGET.match(target):
            log.warning("skipping entry point %s = %r: not 'module:attr'", ep.name, ep.value)
        elif ep.name in reserved or ep.name in loaders:
            log.warning("skipping entry point %s: name already registered", ep.name)
        else:
            loaders[ep.name] = ep.load
    return loaders


def load_registry(
    *, enabled: Collection[str] = (), allowlist: Mapping[str, str] | None = None
) -> PluginRegistry:
    """Built-ins (of the gated ones, those ``enabled``), then installed entry points, then
    the operator's allowlist.

    A malformed allowlist entry is the operator's configuration error (ConfigError); a
    broken entry point is logged and skipped.
    """
    # "wait" is kept by the coordinator (tamma_actors._deadlines): no plugin may take it.
    reserved = {*BUILTIN_NAMES, "wait"}
    loaders: dict[str, Loader] = {
        name: _target_loader(f"{_BUILTINS_MODULE}:{name}")
        for name in BUILTIN_NAMES
        if name not in GATED_BUILTINS or name in enabled
    }
    for name, loader in _entry_point_loaders(reserved).items():
        loaders[name] = loader
    for name, target in (allowlist or {}).items():
        if not name or not _TARGET.match(target):
            raise ConfigError(f"allowlist entry {name!r} = {target!r}: expected 'module:attr'")
        if name in reserved or name in loaders:
            log.warning("allowlist entry %s ignored: name already registered", name)
            continue
        loaders[name] = _target_loader(target)
    return PluginRegistry(loaders)
