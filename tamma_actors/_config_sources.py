"""Where a node setting comes from: the caller (the command line), ``TAMMA_*`` variables,
the file; and a refused configuration described by where its faults came from.

:class:`Layers` gives :class:`~tamma_actors._config.NodeConfig` its values, each setting
taken whole from the strongest source that has it. :func:`environment` reads the
``TAMMA_*`` variables. :func:`describe` names, after each fault, the source of the values
at fault (``TAMMA_WORKERS``, or ``file node.toml``): a bad variable is not the file's
fault, nor the other way round. What the caller gave itself is not named (it knows).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, get_origin

from pydantic import ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from tamma_actors._errors import ConfigError

__all__ = ["Layers", "Sources", "describe", "environment", "unknown_variables"]

ENV_PREFIX = "TAMMA_"
_ENV_NESTED = "__"
# TAMMA_* variables of the tamma client (ClientSettings) and of a worker (its token): set in
# the same shell as a node's, they are no node setting, and no mistake either.
_NOT_THE_NODES = frozenset({"ENDPOINT", "TOKEN", "CURVE_SERVER_KEY", "WORKER_TOKEN"})

Fields = Mapping[str, FieldInfo]


class Layers(PydanticBaseSettingsSource):
    """The settings given, strongest source first, each taken whole from the first source
    that has it: a map or a list in the environment replaces the file's instead of being
    merged into it (a merge could never take a token of the file away)."""

    def __init__(
        self, settings_cls: type[BaseSettings], layers: tuple[Mapping[str, Any], ...]
    ) -> None:
        super().__init__(settings_cls)
        self._layers = layers

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ gives every value at once

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for layer in reversed(self._layers):
            values.update(layer)
        return values


def _setting_of(variable: str, fields: Fields) -> tuple[str, str, str] | None:
    """(setting, "__" if nested, key) of a ``TAMMA_*`` variable naming a setting."""
    if not variable.upper().startswith(ENV_PREFIX):
        return None
    name, nested, key = variable[len(ENV_PREFIX) :].partition(_ENV_NESTED)
    name = name.lower()
    return (name, nested, key) if name in fields else None


def environment(environ: Mapping[str, str], fields: Fields) -> dict[str, Any]:
    """The settings in ``TAMMA_*`` variables: ``TAMMA_WORKERS=4`` (the prefix and the name
    in any case), a map or a list as JSON, one key of a map as ``TAMMA_TOKENS__KEY``. KEY
    keeps its case: tokens and plugin names are case-sensitive. Variables that name no
    setting (the ``tamma`` client's) are left alone."""
    values: dict[str, Any] = {}
    entries: dict[str, dict[str, str]] = {}  # TAMMA_NAME__KEY, added to TAMMA_NAME's map
    for variable, text in environ.items():
        found = _setting_of(variable, fields)
        if found is None:
            continue
        name, nested, key = found
        kind = get_origin(fields[name].annotation)
        if nested and kind is not dict:
            raise ConfigError(f"invalid node configuration: {variable}: {name} is not a map")
        if nested:
            entries.setdefault(name, {})[key] = text
        else:
            values[name] = _json(variable, text) if kind in (dict, list) else text
    for name, given in entries.items():
        whole = values.get(name)
        values[name] = {**whole, **given} if isinstance(whole, dict) else given
    return values


def unknown_variables(environ: Mapping[str, str], fields: Fields) -> list[str]:
    """The ``TAMMA_*`` variables that name no node setting (nor one of the client's or a
    worker's), sorted."""
    unknown = []
    for variable in environ:
        if not variable.upper().startswith(ENV_PREFIX) or _setting_of(variable, fields):
            continue
        name = variable[len(ENV_PREFIX) :].partition(_ENV_NESTED)[0]
        if name.upper() not in _NOT_THE_NODES:
            unknown.append(variable)
    return sorted(unknown)


def _json(variable: str, text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"invalid node configuration: {variable} is not JSON ({exc}); a TAMMA_* variable "
            """for a map or a list holds JSON, e.g. TAMMA_TOKENS='{"s3cret": "operator"}'"""
        ) from exc


class Sources:
    """Which source gave each setting: None for the caller's own values (and defaults),
    else the ``TAMMA_*`` variables that gave it, or the file."""

    def __init__(
        self,
        given: Iterable[str],
        environ: Mapping[str, str],
        fields: Fields,
        file: tuple[Path | None, Mapping[str, Any]] | None,
    ) -> None:
        self._given = set(given)
        self._variables: dict[str, list[str]] = {}
        for variable in sorted(environ):
            found = _setting_of(variable, fields)
            if found is not None:
                self._variables.setdefault(found[0], []).append(variable)
        path, values = file if file is not None else (None, {})
        self._file = set(values)
        self._file_name = f"file {path}" if path is not None else "the file"

    def of(self, name: str) -> str | None:
        if name in self._given:
            return None
        if name in self._variables:
            return ", ".join(self._variables[name])
        return self._file_name if name in self._file else None


def describe(exc: ValidationError, sources: Sources, fields: Fields) -> str:
    """The faults of ``exc``, each followed by where the values at fault came from: its
    setting's source, or for a fault between settings (no location: its message names
    them) the source of each setting it names, in the order it names them."""
    faults = []
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        if key:
            source = sources.of(str(error["loc"][0]))
            faults.append(f"{key}: {message}" + (f" ({source})" if source else ""))
            continue
        found = ((re.search(rf"\b{name}\b", message), name) for name in fields)
        named = sorted((m.start(), name) for m, name in found if m is not None)
        given = [f"{name}: {source}" for _, name in named if (source := sources.of(name))]
        faults.append(message + (f" ({'; '.join(given)})" if given else ""))
    return "invalid node configuration: " + "; ".join(faults)
