"""``dates``: a *generated* translation set, not real data: calendar dates written in five styles
(the source) and their ISO 8601 form (the target), e.g. ``22 november 2026`` → ``2026-11-22``.

Dates are drawn uniformly from 1950-01-01 to 2049-12-31 with a seeded generator; the style index is
the example's label, so label-skewed partitions give sites different writing habits.
"""

from __future__ import annotations

import datetime as dt

import numpy as np

MONTHS = ("january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
          "november", "december")
STYLES = ("day month year", "month day, year", "dd/mm/yyyy", "mon dd yyyy", "weekday, day month year")
DEFAULT_SIZE = 3000
_START = dt.date(1950, 1, 1)
_DAYS = (dt.date(2049, 12, 31) - _START).days + 1


def render(date: dt.date, style: int) -> str:
    """``date`` written in style ``style`` (an index into :data:`STYLES`), lower case."""
    month = MONTHS[date.month - 1]
    if style == 0:
        return f"{date.day} {month} {date.year}"
    if style == 1:
        return f"{month} {date.day}, {date.year}"
    if style == 2:
        return f"{date.day:02d}/{date.month:02d}/{date.year}"
    if style == 3:
        return f"{month[:3]} {date.day:02d} {date.year}"
    return f"{date.strftime('%A').lower()}, {date.day} {month} {date.year}"


def generate_dates(n: int = DEFAULT_SIZE, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(pairs, styles): pairs (n, 2) unicode [source, target]; styles (n,) int64, balanced."""
    rng = np.random.default_rng(seed)
    styles = np.arange(n, dtype=np.int64) % len(STYLES)
    rng.shuffle(styles)
    days = rng.integers(0, _DAYS, size=n)
    pairs = []
    for offset, style in zip(days, styles, strict=True):
        date = _START + dt.timedelta(days=int(offset))
        pairs.append((render(date, int(style)), date.isoformat()))
    return np.array(pairs, dtype=str), styles
