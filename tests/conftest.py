"""Shared fixtures."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short temporary directory: ipc:// socket paths must stay under ~100 bytes."""
    path = Path(tempfile.mkdtemp(prefix="tamma-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
