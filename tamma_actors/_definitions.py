"""Starts' workflow definitions, parsed once: validated and hashed once per distinct
definition (and set of known implementations), not per start.

Only a definition that is plain JSON (it round-trips exactly) is cached: its canonical
text is then a faithful key. A rejected definition is never cached. The definition's exact
msgpack bytes map to that text, so one sent again as it was is found without computing it.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Collection
from typing import Any

import msgpack

from tamma_actors._deadlines import COORDINATOR_IMPLEMENTATIONS
from tamma_actors._models import WorkflowConfig
from tamma_actors._recovery import keep_bounded
from tamma_actors._workflow_file import parse_workflow

__all__ = ["ParsedDefinitions"]

_PARSED_CACHE_SIZE = 64  # distinct definitions kept parsed for start_workflow

Parsed = tuple[WorkflowConfig, str, dict[str, Any]]  # the config, its digest, stored form


def _canonical(definition: Any) -> str | None:
    """Canonical JSON text of ``definition``, or None unless it is plain JSON data that
    round-trips exactly (no tuples, non-string keys, NaN or other Python objects)."""
    try:
        text = json.dumps(definition, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError, RecursionError):  # the validation names what is wrong
        return None
    return text if json.loads(text) == definition else None


def _exact(definition: Any) -> bytes | None:
    """The exact msgpack bytes of ``definition`` (dicts, lists, str, bytes, numbers, bool,
    None: exact types only, so a tuple is not a list), or None. Equal bytes mean equal
    definitions, in the same key order: a quick first key before the canonical text."""
    try:
        return msgpack.packb(definition, use_bin_type=True, strict_types=True)  # type: ignore[no-any-return]
    except (TypeError, ValueError, OverflowError):
        return None


class ParsedDefinitions:
    """The parsed definitions of recent starts; thread-safe (any caller's thread starts)."""

    def __init__(self, implementations: Callable[[], Collection[str]]) -> None:
        self._implementations = implementations
        self._lock = threading.Lock()
        # (canonical definition, known implementations) -> parsed
        self._parsed: dict[tuple[str, frozenset[str]], Parsed] = {}
        # (the definition's exact msgpack bytes, known) -> its canonical text: a cheaper
        # lookup for a definition sent again as it was (same keys in the same order)
        self._exact_keys: dict[tuple[bytes, frozenset[str]], str] = {}

    def get(self, definition: dict[str, Any], source: str | None) -> Parsed:
        """The parsed ``definition``, its digest and its stored form (WorkflowValidationError
        if it is not a valid workflow with the implementations known now)."""
        known = frozenset({*self._implementations(), *COORDINATOR_IMPLEMENTATIONS})
        exact = _exact(definition)
        key = self._exact_keys.get((exact, known)) if exact is not None else None
        hit = self._parsed.get((key, known)) if key is not None else None
        if hit is not None:
            return hit  # sent again as it was: no canonical text needed
        key = _canonical(definition)
        hit = self._parsed.get((key, known)) if key is not None else None
        parsed = hit
        if parsed is None:
            cfg = parse_workflow(definition, source=source, known_implementations=known)
            parsed = (cfg, cfg.digest(), cfg.model_dump(mode="json", by_alias=False))
        if key is not None:
            with self._lock:
                if hit is None:
                    keep_bounded(self._parsed, (key, known), parsed, _PARSED_CACHE_SIZE)
                if exact is not None:
                    keep_bounded(self._exact_keys, (exact, known), key, 4 * _PARSED_CACHE_SIZE)
        return parsed
