"""A site's persistent privacy ledger: every DP-SGD round it ever ran on its data, composed by RDP.

Why our own file and not Opacus' in-memory accountant alone: a site's ε must compose across rounds,
runs and process restarts (Flower starts a fresh ClientApp process per message in deployment), so the
accountant's history — the ``(noise_multiplier, sample_rate, steps)`` triples Opacus' ``RDPAccountant``
keeps — is stored on disk and handed back to Opacus to compute ε. The arithmetic stays Opacus'.

Crash safety: a round is recorded *before* its update leaves the site (status ``pending``) and marked
``released`` after; entries are keyed by ``(run_id, round)`` so a retried round replaces its own entry
instead of counting twice, and a killed round stays counted (conservatively). Every write is atomic.
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.analysis import rdp as privacy_analysis

from fedshield.common.atomic_io import atomic_write_json
from fedshield.common.errors import ConfigError

LEDGER_FORMAT = "fedshield-privacy-ledger"
LEDGER_VERSION = 1
LEDGER_FILE = "privacy-ledger.json"
# Beyond this noise multiplier an update is noise (σ·C/B per coordinate); a plan that needs more is
# refused as "budget too small" rather than run uselessly.
MAX_NOISE_MULTIPLIER = 20.0


class BudgetExhaustedError(ConfigError):
    """The next round would take the site past its ε budget."""


@dataclass
class LedgerEntry:
    """One DP-SGD round: ``steps`` noisy steps at ``sample_rate`` (Poisson q) and ``noise_multiplier`` σ."""

    run_id: str
    round: int
    steps: int
    sample_rate: float
    noise_multiplier: float
    status: str = "pending"
    recorded_at: float = field(default_factory=time.time)


@dataclass
class RunPlan:
    """The σ a run was planned with, fixed for all its rounds so every round fits the budget."""

    noise_multiplier: float
    sample_rate: float
    steps_per_round: int
    rounds: int


@dataclass
class PrivacyLedger:
    """The ledger of one site (one data folder): budget, δ and every round spent."""

    path: Path
    epsilon_budget: float
    delta: float
    accountant: str = "rdp"
    entries: list[LedgerEntry] = field(default_factory=list)
    plans: dict[str, RunPlan] = field(default_factory=dict)

    # ----------------------------------------------------------------- persistence
    @classmethod
    def open(cls, state_dir: Path, *, epsilon_budget: float | None, delta: float,
             accountant: str | None = "rdp") -> "PrivacyLedger":
        """Open (or create in memory) the ledger in ``state_dir``; a foreign or newer file is refused.

        The budget, δ and accountant given now are the site's current settings; δ cannot change once
        rounds are recorded, since ε at a different δ would not describe the same guarantee. The
        accountant may change: both bound the same recorded mechanism, so ε is recomputed.
        ``None`` for the budget or the accountant keeps the ones recorded in the file.
        """
        if accountant is not None and accountant not in ACCOUNTANTS:
            raise ConfigError(f"--accountant {accountant!r}: use rdp or prv")
        path = Path(state_dir) / LEDGER_FILE
        if not path.exists():
            return cls(path=path, epsilon_budget=epsilon_budget or 0.0, delta=delta, accountant=accountant or "rdp")
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{path}: privacy ledger is unreadable ({exc}); restore it from backup — "
                              "never delete it, that would forget spent privacy") from None
        if not isinstance(raw, dict) or raw.get("format") != LEDGER_FORMAT:
            raise ConfigError(f"{path}: not a FedShield privacy ledger; point --state-dir at the site's own state folder")
        if int(raw.get("version", 0)) > LEDGER_VERSION:
            raise ConfigError(f"{path}: ledger written by a newer FedShield (version {raw['version']}); upgrade FedShield")
        try:
            entries = [LedgerEntry(**e) for e in raw["entries"]]
            plans = {k: RunPlan(**v) for k, v in raw.get("plans", {}).items()}
            old_delta = float(raw["delta"])
            if epsilon_budget is None:
                epsilon_budget = float(raw["epsilon_budget"])
            if accountant is None:
                accountant = str(raw.get("accountant", "rdp"))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{path}: privacy ledger is corrupt ({exc}); restore it from backup") from None
        if entries and abs(old_delta - delta) > 1e-15:
            # Keep the recorded δ: ε is only comparable at one δ.
            delta = old_delta
        return cls(path=path, epsilon_budget=epsilon_budget, delta=delta, accountant=accountant,
                   entries=entries, plans=plans)

    def save(self) -> None:
        """Write the ledger atomically (owner-only: it reveals how the site trained)."""
        atomic_write_json(
            self.path,
            {
                "format": LEDGER_FORMAT,
                "version": LEDGER_VERSION,
                "accountant": self.accountant,
                "epsilon_budget": self.epsilon_budget,
                "delta": self.delta,
                "epsilon_spent": self.epsilon_spent(),
                "entries": [asdict(e) for e in self.entries],
                "plans": {k: asdict(v) for k, v in self.plans.items()},
            },
            mode=0o600,
        )

    # ----------------------------------------------------------------- accounting
    def history(self, *, exclude_run: str | None = None) -> list[tuple[float, float, int]]:
        """Opacus accountant history ``[(σ, q, steps), ...]`` of recorded rounds."""
        return [
            (e.noise_multiplier, e.sample_rate, e.steps)
            for e in self.entries
            if exclude_run is None or e.run_id != exclude_run
        ]

    def epsilon_spent(self, extra: list[tuple[float, float, int]] | None = None) -> float:
        """ε at the ledger's δ for all recorded rounds (plus ``extra``), by the ledger's Opacus accountant."""
        return epsilon_of(self.history() + list(extra or []), self.delta, self.accountant)

    def plan_run(self, run_id: str, *, sample_rate: float, steps_per_round: int, rounds: int) -> RunPlan:
        """Return this run's plan, creating it on first use.

        The noise multiplier is the smallest σ whose RDP composition with the site's earlier history
        and all ``rounds`` of this run stays within the budget (bisection, as Opacus'
        ``get_noise_multiplier`` does for an empty history, on an upper bound of the accountant's ε over
        :data:`SEARCH_ORDERS`; the ε recorded and reported is always over all of Opacus' orders).
        """
        if run_id in self.plans:
            return self.plans[run_id]
        prior = self.history(exclude_run=run_id)
        total_steps = steps_per_round * rounds

        def eps(sigma: float) -> float:  # an upper bound of the accountant's ε, so σ errs on the safe side
            return epsilon_of(prior + [(sigma, sample_rate, total_steps)], self.delta, self.accountant,
                              orders=SEARCH_ORDERS)

        spent = epsilon_of(prior, self.delta, self.accountant)
        if spent >= self.epsilon_budget:
            raise BudgetExhaustedError(
                f"{self.path}: privacy budget spent (ε {spent:.3g} of "
                f"{self.epsilon_budget:g}); this site cannot train again on this data"
            )
        if eps(MAX_NOISE_MULTIPLIER) > self.epsilon_budget:
            left = self.epsilon_budget - spent
            raise BudgetExhaustedError(
                f"{self.path}: the privacy budget left (ε {left:.3g} of {self.epsilon_budget:g}) cannot cover "
                f"{rounds} round(s) even at noise multiplier {MAX_NOISE_MULTIPLIER:g}; raise --epsilon or plan fewer --rounds"
            )
        sigma = _smallest_sigma(eps, self.epsilon_budget) if prior else _fresh_sigma(
            sample_rate, total_steps, self.delta, self.epsilon_budget, self.accountant)
        plan = RunPlan(noise_multiplier=sigma, sample_rate=sample_rate,
                       steps_per_round=steps_per_round, rounds=rounds)
        self.plans[run_id] = plan
        return plan

    def begin_round(self, run_id: str, rnd: int, *, steps: int, plan: RunPlan) -> LedgerEntry:
        """Record a round as pending before training; refuse it if it would exceed the budget."""
        self.entries = [e for e in self.entries if not (e.run_id == run_id and e.round == rnd)]
        entry = LedgerEntry(run_id=run_id, round=rnd, steps=steps,
                            sample_rate=plan.sample_rate, noise_multiplier=plan.noise_multiplier)
        after = self.epsilon_spent([(entry.noise_multiplier, entry.sample_rate, entry.steps)])
        if after > self.epsilon_budget * (1 + 1e-6):
            raise BudgetExhaustedError(
                f"{self.path}: round {rnd} would spend ε up to {after:.3g}, above the site's budget "
                f"{self.epsilon_budget:g}; the site refuses this round"
            )
        self.entries.append(entry)
        self.save()
        return entry

    def release_round(self, entry: LedgerEntry) -> None:
        """Mark a recorded round as released (its update left the site)."""
        entry.status = "released"
        self.save()


def _smallest_sigma(eps: Callable[[float], float], budget: float) -> float:
    """Bisection for the smallest σ with ``eps(σ) <= budget`` (ε falls as σ grows), to 0.1 % of σ."""
    lo, hi = 0.05, 1.0
    while eps(hi) > budget:
        lo, hi = hi, hi * 2
    for _ in range(60):
        mid = (lo + hi) / 2
        if eps(mid) > budget:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-3 * hi:  # leaves a fraction of a percent of the budget unused
            break
    return hi


@lru_cache(maxsize=1024)
def _fresh_sigma(sample_rate: float, steps: int, delta: float, budget: float, accountant: str) -> float:
    """σ for a site with no history: the same for every site of a simulation with equal sizes, so cached."""
    return _smallest_sigma(lambda sigma: epsilon_of([(sigma, sample_rate, steps)], delta, accountant,
                                                    orders=SEARCH_ORDERS), budget)


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


def _rdp_epsilon(history: list[tuple[float, float, int]], delta: float, orders: tuple[float, ...]) -> float:
    """What ``RDPAccountant.get_epsilon(delta)`` returns for ``history`` (same arithmetic, cached)."""
    rdp = sum(_rdp_per_step(float(sigma), float(q), orders) * steps for sigma, q, steps in history)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "optimal order is the largest alpha": still valid
        eps, _ = privacy_analysis.get_privacy_spent(orders=list(orders), rdp=rdp, delta=delta)
    return float(eps)


def epsilon_of(history: list[tuple[float, float, int]], delta: float, accountant_name: str = "rdp",
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
        # "optimal order is the largest alpha" only says the bound could be tighter: it stays valid.
        warnings.simplefilter("ignore", UserWarning)
        return float(accountant.get_epsilon(delta=delta))
