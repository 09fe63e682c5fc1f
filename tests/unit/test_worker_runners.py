"""How long an inline implementation's slow runs held the worker's socket thread."""

from __future__ import annotations

import pytest

from tamma_actors._worker_runners import INLINE_WINDOW, _SlowRuns


def test_slow_runs_count_within_the_window_only() -> None:
    slow = _SlowRuns()
    assert slow.add(1.0, 0.1) == pytest.approx(0.1)
    assert slow.add(30.0, 0.2) == pytest.approx(0.3)
    # The run that ended at 1.0 is now out of the window: only the last two count.
    assert slow.add(1.0 + INLINE_WINDOW + 0.5, 0.05) == pytest.approx(0.25)
    assert [took for _, took in slow.runs] == [0.2, 0.05]
    # A run long after all of them counts alone.
    assert slow.add(1000.0, 0.03) == pytest.approx(0.03) and len(slow.runs) == 1
