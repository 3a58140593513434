"""The Gaussian mechanism for what a reply says about the site's data besides its update.

A training reply carries a training loss and an example count, an evaluation reply a loss, metrics
and a count. Sent exactly, they are statistics of private data outside DP-SGD's guarantee (one added
record moved a site's evaluation loss from 1.14 to 36.9; no finite ε covers that). Here each is a
mean of per-record values, each value clipped to ``[0, bound]``: the k statistics of a reply are
released together as

    mean_j = bound_j · clip( (Σ_i clip(v_ij, 0, bound_j) / bound_j + N(0, σ²·k)) / n', 0, 1 )

where ``n'`` is the site's released count (public) and σ the ledger's ``statistics_noise``. One
record moves the vector of normalised sums by at most √k in L2 norm, and the noise per coordinate is
σ√k: the Gaussian mechanism at noise multiplier σ (Dwork & Roth 2014, Thm. A.1; in RDP, α/2σ², which
is the ledger's ``(σ, 1.0, 1)`` entry). Clamping to ``[0, bound]`` is post-processing.

The example counts themselves are released once per data folder (``PrivacyLedger.draw_counts``).
"""

from __future__ import annotations

import math

import numpy as np

from fedshield.tasks.base import RecordStatistics


def released_means(stats: RecordStatistics, *, count: int, noise_multiplier: float,
                   rng: np.random.Generator) -> dict[str, float]:
    """Noisy means of ``stats`` over ``count`` records (the released count), plus derived names.

    A value that is NaN or infinite (a diverged model) counts as its bound: the worst case, still
    inside the clipping range.
    """
    names = list(stats.values)
    k = len(names)
    sums = np.empty(k)
    for j, name in enumerate(names):
        bound = float(stats.bounds[name])
        values = np.nan_to_num(np.asarray(stats.values[name], dtype=np.float64), nan=bound, posinf=bound, neginf=0.0)
        sums[j] = np.clip(values, 0.0, bound).sum() / bound
    noisy = sums + rng.normal(0.0, noise_multiplier * math.sqrt(k), size=k)
    means = {name: float(np.clip(noisy[j] / max(count, 1), 0.0, 1.0) * stats.bounds[name])
             for j, name in enumerate(names)}
    for alias, source in stats.derived.items():
        means[alias] = means[source]
    return means

