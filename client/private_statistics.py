"""The Gaussian mechanism for what a reply says about the site's data besides its update.

A training reply carries a training loss and an example count, an evaluation reply a loss, metrics
and a count. Sent exactly, they are statistics of private data outside DP-SGD's guarantee (one added
record moved a site's evaluation loss from 1.14 to 36.9; no finite ε covers that). Here each is a
mean of per-record values, each value clipped to ``[0, bound]``. A reply's k statistics and the
record count are released together, as one vector of k + 1 sums

    s_j = Σ_i clip(v_ij, 0, bound_j) / bound_j + N(0, σ²·(k + 1)),   s_0 = n + N(0, σ²·(k + 1))
    mean_j = bound_j · clip(s_j / max(s_0, 1), 0, 1)

with σ the ledger's ``statistics_noise``. One record moves the vector by at most √(k + 1) in L2 norm
and the noise per coordinate is σ√(k + 1): the Gaussian mechanism at noise multiplier σ (Dwork & Roth
2014, Thm. A.1; in RDP α/2σ², the ledger's ``(σ, 1.0, 1)`` entry). The ratio and the clamp are
post-processing. The count is released with the sums, not taken from the site's once-released
counts: those carry ±20 records of noise, which at a hundred held-out records scaled every mean by
up to a third (an accuracy clamped at 1.0 beside a loss that had not fallen).

The example counts that weight replies are released once per data size (``PrivacyLedger.draw_counts``).
"""

from __future__ import annotations

import math

import numpy as np

from fedshield.tasks.base import RecordStatistics


def released_means(stats: RecordStatistics, *, noise_multiplier: float, rng: np.random.Generator) -> dict[str, float]:
    """Noisy means of ``stats`` (ratios of noisy sums to a noisy count released with them), plus derived names.

    A value that is NaN or infinite (a diverged model) counts as its bound: the worst case, still
    inside the clipping range.
    """
    names = list(stats.values)
    k = len(names) + 1  # the statistics and the count
    sums = np.empty(k)
    sums[0] = len(next(iter(stats.values.values()))) if names else 0
    for j, name in enumerate(names, start=1):
        bound = float(stats.bounds[name])
        values = np.nan_to_num(np.asarray(stats.values[name], dtype=np.float64), nan=bound, posinf=bound, neginf=0.0)
        sums[j] = np.clip(values, 0.0, bound).sum() / bound
    noisy = sums + rng.normal(0.0, noise_multiplier * math.sqrt(k), size=k)
    count = max(float(noisy[0]), 1.0)
    means = {name: float(np.clip(noisy[j] / count, 0.0, 1.0) * stats.bounds[name])
             for j, name in enumerate(names, start=1)}
    for alias, source in stats.derived.items():
        means[alias] = means[source]
    return means
