"""The shared idle-poll backoff: starts short, grows geometrically, never past its cap."""

from __future__ import annotations

import pytest

from fedshield.common.backoff import Backoff


def test_backoff_grows_to_its_cap_and_restarts_after_activity() -> None:
    backoff = Backoff(0.02, 0.25)
    waits = []
    for _ in range(10):
        waits.append(backoff.interval)
        backoff.grow()
    assert waits[:3] == pytest.approx([0.02, 0.03, 0.045])
    assert waits == sorted(waits) and max(waits) == 0.25 and waits.count(0.25) >= 3
    backoff.reset()
    assert backoff.interval == 0.02


@pytest.mark.parametrize("start, cap, growth", [(0, 1, 1.5), (2, 1, 1.5), (0.1, 1, 0.5)])
def test_backoff_refuses_settings_that_would_spin_or_shrink(start: float, cap: float, growth: float) -> None:
    with pytest.raises(ValueError, match="backoff needs"):
        Backoff(start, cap, growth)
