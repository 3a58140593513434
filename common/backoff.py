"""The wait between idle polls: short after activity, growing geometrically to a cap.

FedShield shortens three of Flower's fixed polling sleeps (the SuperNode's idle pulls, the warm
executor's task polls, the ServerApp's reply polls); all three back off by this one rule.
"""

from __future__ import annotations


class Backoff:
    """``interval`` (s) starts at ``start``, grows ``growth``× per :meth:`grow`, never past ``cap``."""

    def __init__(self, start: float, cap: float, growth: float = 1.5) -> None:
        if not 0 < start <= cap or growth < 1:
            raise ValueError(f"backoff needs 0 < start <= cap and growth >= 1 (got {start}, {cap}, {growth})")
        self.start, self.cap, self.growth = start, cap, growth
        self.interval = start

    def reset(self) -> None:
        """Activity: the next wait is ``start`` again."""
        self.interval = self.start

    def grow(self) -> None:
        """An idle poll: the next wait is longer, up to ``cap``."""
        self.interval = min(self.interval * self.growth, self.cap)
