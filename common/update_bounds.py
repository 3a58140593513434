"""The bounds a site's update must keep: ``--max-update-norm`` (how large, absolutely or relative to the
round's median) and ``--min-update-cosine`` (how far it may point away from the round's median update).

Parsed where the run config is checked (a one-line error before anything starts) and applied by the
coordinator's update checks (:mod:`fedshield.strategies.update_checks`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fedshield.common.errors import ConfigError

DEFAULT_NORM_BOUND = "5x"
DEFAULT_MIN_COSINE = "off"


@dataclass(frozen=True)
class DirectionTest:
    """``--min-update-cosine``: how far a site's updates may point away from the other sites' median update.

    ``least``: the least cosine similarity a site's updates keep with it on average (None: no test);
    ``among_peers``: a site must also stand out from the round's other sites, by their own spread, before it
    is held back (``auto``: sites whose data differ disagree with the median honestly, and then with one
    another as much). :mod:`fedshield.strategies.update_checks` applies it.
    """

    least: float | None = None
    among_peers: bool = False

    @property
    def on(self) -> bool:
        return self.least is not None


def parse_min_cosine(text: str) -> DirectionTest:
    """``"off"`` (the default) → no direction test; ``"auto"`` → against 0, among peers; ``"0"`` → no site's
    updates may point against the other sites' median update, whatever the others do (similar sites).

    Off by default: a site whose data no other site holds (on digits at Dirichlet 0.1, one holding most of
    class 1) points away from the others' median as far as a sign-flipper, and stands out from them as
    clearly; holding it back cost 12 points of accuracy (even with ``auto``).

    A threshold is in [-1, 1): a cosine similarity of 1 would refuse everything but the median itself.
    """
    text = str(text).strip().lower()
    if text == "off":
        return DirectionTest()
    if text == "auto":
        return DirectionTest(0.0, among_peers=True)
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not -1.0 <= value < 1.0:
        raise ConfigError(f"--min-update-cosine {text!r}: use auto, a cosine similarity in [-1, 1) such as 0, "
                          "or off")
    return DirectionTest(value)


@dataclass(frozen=True)
class NormBound:
    """``--max-update-norm``: an absolute L2 bound, ``factor``× the round's median, or none."""

    absolute: float | None = None
    factor: float | None = None

    @classmethod
    def parse(cls, text: str) -> NormBound:
        """``"5x"`` → 5× the median; ``"12.5"`` → 12.5; ``"off"`` → no bound. One-line error otherwise."""
        text = str(text).strip().lower()
        if text == "off":
            return cls()
        try:
            value = float(text[:-1] if text.endswith("x") else text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value > 0) or (text.endswith("x") and value < 1):
            raise ConfigError(f"--max-update-norm {text!r}: use a factor of the round's median such as 5x (at least "
                              "1x), an absolute L2 norm such as 20, or off")
        return cls(factor=value) if text.endswith("x") else cls(absolute=value)

    def limit(self, norms: list[float]) -> float:
        """The bound for a round whose candidate norms are ``norms`` (inf when none applies)."""
        if self.absolute is not None:
            return self.absolute
        if self.factor is not None and norms:
            return self.factor * float(np.median(norms))
        return math.inf
