"""ε of an Opacus accountant history: the arithmetic a site's ledger and the coordinator's central DP share.

A history is Opacus' list of ``(noise_multiplier σ, sample_rate q, steps)`` triples; a Gaussian
release (a reply's statistics, a count) is ``(σ, 1.0, 1)``. The arithmetic is Opacus' own; this module
caches what is expensive so that a ledger re-read after every round, and a σ search that evaluates ε
dozens of times, stay cheap.
"""

from __future__ import annotations

import warnings
from functools import lru_cache

import numpy as np
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.analysis import rdp as privacy_analysis

Mechanism = tuple[float, float, int]  # (noise multiplier σ, sample rate q, steps): one Opacus history item

ACCOUNTANTS = {"rdp": RDPAccountant, "prv": PRVAccountant}
RDP_ORDERS: tuple[float, ...] = tuple(RDPAccountant.DEFAULT_ALPHAS)
# Half-integer and integer orders only: a subset of Opacus' orders, so ε over it is an upper bound of
# ε over all of them (the minimum is taken over fewer orders); ~4x cheaper, used to search σ.
SEARCH_ORDERS: tuple[float, ...] = tuple(a for a in RDP_ORDERS if float(a * 2).is_integer())


@lru_cache(maxsize=8192)
def _rdp_per_step(sigma: float, q: float, orders: tuple[float, ...]) -> np.ndarray:
    """RDP of one step of the sampled Gaussian mechanism at each order (Mironov et al. 2019).

    Opacus' ``compute_rdp(q, σ, steps, orders)`` is exactly ``steps`` times this vector, and its
    fractional orders cost milliseconds each, so the per-step vector is computed once per (σ, q) and
    scaled: a ledger is re-read after every round and a σ search evaluates ε dozens of times.
    """
    return np.asarray(privacy_analysis.compute_rdp(q=q, noise_multiplier=sigma, steps=1, orders=list(orders)))


def _rdp_epsilon(history: list[Mechanism], delta: float, orders: tuple[float, ...]) -> float:
    """What ``RDPAccountant.get_epsilon(delta)`` returns for ``history`` (same arithmetic, cached)."""
    rdp = sum(_rdp_per_step(float(sigma), float(q), orders) * steps for sigma, q, steps in history)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "optimal order is the largest alpha": still valid
        eps, _ = privacy_analysis.get_privacy_spent(orders=list(orders), rdp=rdp, delta=delta)
    return float(eps)


def epsilon_of(history: list[Mechanism], delta: float, accountant_name: str = "rdp",
               *, orders: tuple[float, ...] = RDP_ORDERS) -> float:
    """ε at ``delta`` for an Opacus accountant history ``[(σ, q, steps)]``; 0 for an empty history.

    ``rdp``: Rényi DP of the sampled Gaussian mechanism (Mironov et al. 2019); ``prv``: privacy loss
    random variables (Gopi, Lee & Wutschitz 2021), usually tighter. ``orders``: RDP orders (Opacus'
    defaults; :data:`SEARCH_ORDERS` gives an upper bound, faster).
    """
    if not history:
        return 0.0
    if accountant_name == "rdp":
        return _rdp_epsilon(history, delta, orders)
    accountant = ACCOUNTANTS[accountant_name]()
    accountant.history = list(history)
    with warnings.catch_warnings():
        # "optimal order is the largest alpha" only says the bound could be tighter: it stays valid;
        # q = 1 (a Gaussian release) takes log(0) inside the PRV construction, harmlessly.
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(accountant.get_epsilon(delta=delta))
