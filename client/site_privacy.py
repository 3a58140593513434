"""One message's privacy at a site: under the ledger lock, what it may release and how it is recorded.

Every message that can release something about the site's data runs inside :func:`privacy_session`:
it takes the site's ledger lock (:mod:`fedshield.client.ledger_lock`), opens the ledger, makes sure
the site's example counts have been released once (:meth:`PrivacyLedger.draw_counts`), and
derives from those released counts — never from the exact ones — what a reply reveals about the
data's size: the Poisson sample rate and step count of DP-SGD, its expected batch size, δ and FedAvg's
weight (a released mean divides by a count released with it, :mod:`fedshield.client.private_statistics`).
The run's plan (σ for DP-SGD, the statistics' noise) comes from
the coordinator's settings of this round; a change mid-run re-plans (:meth:`PrivacyLedger.plan_run`).
"""

from __future__ import annotations

import hashlib
import math
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedshield.client.ledger_lock import ledger_lock
from fedshield.client.privacy_ledger import LedgerEntry, PrivacyLedger, ReleasedCounts, RunPlan
from fedshield.client.private_statistics import released_means
from fedshield.common.errors import ConfigError
from fedshield.common.run_config import RunConfig
from fedshield.tasks.base import RecordStatistics, SiteData

#: noise multiplier of the one-off release of a site's (train, validation) counts: ±20 records (one
#: standard deviation), about 0.24 ε on its own at δ = 1e-5, far less composed with DP-SGD
COUNT_NOISE = 20.0
#: by default, the statistics in the replies may raise DP-SGD's noise multiplier by at most this fraction
DEFAULT_METRICS_COST = 0.05
SITE_METRICS = ("dp", "exact")


@dataclass(frozen=True)
class PrivacySettings:
    """A site's DP settings.

    Attributes:
        enabled: DP-SGD on (a site's own ``--no-dp`` is the only way to switch it off).
        epsilon, delta: lifetime budget on this data (δ = 0: ``min(1e-5, 1/(10·N'))``, N' the released count).
        max_grad_norm: per-sample clipping bound C.
        state_dir: folder of the ledger and its lock.
        accountant: ``rdp`` or ``prv``.
        virtual_site: a simulation's virtual site: its DP randomness repeats with the run seed.
        site_metrics: ``dp`` (replies' statistics are Gaussian releases inside ε) or ``exact`` (a loud
            opt-out: exact statistics, recorded as such, outside any ε).
        allow_repeats: count a repeated (run, round) again instead of refusing it.
        metrics_cost: how much the statistics may raise DP-SGD's noise multiplier (a fraction).
        data_dir: the site's data folder, which keeps a second anchor of the ledger (None: a virtual site).
    """

    enabled: bool
    epsilon: float
    delta: float
    max_grad_norm: float
    state_dir: Path
    accountant: str = "rdp"
    virtual_site: int | None = None
    site_metrics: str = "dp"
    allow_repeats: bool = False
    metrics_cost: float = DEFAULT_METRICS_COST
    data_dir: Path | None = None

    @property
    def private_statistics(self) -> bool:
        return self.site_metrics == "dp"


def default_delta(settings: PrivacySettings, released_train: int) -> float:
    """δ to account at: the site's own, or ``min(1e-5, 1/(10·N'))`` (below 1/N for N near the released N')."""
    return settings.delta if settings.delta > 0 else min(1e-5, 1.0 / (10.0 * max(released_train, 1)))


def planned_rounds(cfg: RunConfig) -> int:
    """Rounds a site plans its noise for: all of them, or, when the server samples ``per_round`` of
    ``min_clients`` sites, the participations it can expect plus three standard deviations (binomial).

    Planning every round for a site that is sampled in one of twenty would spend a twentieth of its
    budget and drown its update in noise. The plan only sets σ: the ledger still refuses any round
    past the budget, so a site sampled more often than planned sits out the surplus rounds.
    """
    if not cfg.per_round or cfg.per_round >= cfg.min_clients:
        return cfg.rounds
    p = cfg.per_round / cfg.min_clients
    mean = cfg.rounds * p
    return max(1, min(cfg.rounds, math.ceil(mean + 3 * math.sqrt(mean * (1 - p)))))


def planned_evaluations(cfg: RunConfig) -> int:
    """Evaluation replies a site plans for: one before round 1 and one per round it is asked in (every
    round, unless the server samples ``--per-round`` sites for evaluation too)."""
    return (planned_rounds(cfg) if cfg.per_round else cfg.rounds) + 1


@dataclass(frozen=True)
class Sampling:
    """DP-SGD's Poisson sampling for one round, from the released count N' and batch size B.

    ``batches = ceil(N'/B)`` is the loader length Opacus derives the rate from: q = 1/batches. Opacus'
    sampler then takes ``int(1/q)`` steps per epoch, which float rounding makes one fewer than
    ``batches`` for some sizes (93, 99, 105, ...); ``steps_per_epoch`` is that count, what runs and is
    recorded. ``expected_batch`` = ``int(N'·q)``, the E[B] Opacus' mean reduction divides by.
    """

    batches: int
    expected_batch: int

    @property
    def sample_rate(self) -> float:
        return 1.0 / self.batches

    @property
    def steps_per_epoch(self) -> int:
        return int(1 / self.sample_rate)


def sampling(released_train: int, batch_size: int) -> Sampling:
    """The round's sampling from the released count (never the exact one, which would leave with it)."""
    batches = max(1, math.ceil(released_train / max(batch_size, 1)))
    return Sampling(batches, max(1, int(released_train * (1.0 / batches))))


@dataclass
class PrivacySession:
    """The ledger, opened under its lock for one message, with the site's released counts."""

    ledger: PrivacyLedger
    settings: PrivacySettings
    counts: ReleasedCounts
    run_id: str
    rng: np.random.Generator

    def plan(self, cfg: RunConfig) -> RunPlan:
        """This run's plan for the settings of this message (re-planned when they changed)."""
        s = sampling(self.counts.released_train, cfg.batch_size)
        return self.ledger.plan_run(self.run_id, sample_rate=s.sample_rate,
                                    steps_per_round=s.steps_per_epoch * cfg.local_epochs,
                                    rounds=planned_rounds(cfg), evaluations=planned_evaluations(cfg),
                                    private_statistics=self.settings.private_statistics,
                                    metrics_cost=self.settings.metrics_cost)

    def begin(self, rnd: int, kind: str, plan: RunPlan, *, steps: int) -> LedgerEntry:
        """Record the release as pending (refusing a replay or a release past the budget)."""
        return self.ledger.begin(self.run_id, rnd, kind, plan=plan, steps=steps,
                                 allow_repeat=self.settings.allow_repeats,
                                 exact_statistics=not self.settings.private_statistics)

    def release_means(self, stats: RecordStatistics, entry: LedgerEntry) -> dict[str, float]:
        """The statistics' Gaussian release at the entry's noise (the entry already records it)."""
        if entry.statistics_noise <= 0:
            raise RuntimeError("a private release needs a ledger entry with statistics noise")
        return released_means(stats, noise_multiplier=entry.statistics_noise, rng=self.rng)


def statistics_rng(settings: PrivacySettings, cfg: RunConfig, rnd: int, purpose: str) -> np.random.Generator:
    """The release noise's generator: 128 fresh OS-random bits at a real site, or (a simulation's
    virtual site) derived from the run seed, the site, the round and ``purpose``, so a simulation repeats."""
    if settings.virtual_site is None:
        return np.random.default_rng(secrets.randbits(128))
    digest = hashlib.sha256(f"fedshield-release/{cfg.seed}/{settings.virtual_site}/{rnd}/{purpose}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "big"))


@contextmanager
def privacy_session(settings: PrivacySettings, data: SiteData, cfg: RunConfig, *, run_id: str, rnd: int,
                    purpose: str) -> Iterator[PrivacySession]:
    """Lock and open the site's ledger, release the counts once, and hand the session to the message."""
    if settings.site_metrics not in SITE_METRICS:
        raise ConfigError(f"--site-metrics {settings.site_metrics!r}: use dp or exact")
    rng = statistics_rng(settings, cfg, rnd, purpose)
    with ledger_lock(settings.state_dir):
        ledger = PrivacyLedger.open(settings.state_dir, epsilon_budget=settings.epsilon, delta=None,
                                    accountant=settings.accountant, data_dir=settings.data_dir)
        ledger.audited = settings.virtual_site is None  # a simulation's virtual sites keep no audit log
        n_train, n_val = len(data.train), len(data.val)
        counts = ledger.counts_for(n_train, n_val)
        if counts is None:
            counts = ledger.draw_counts(n_train, n_val, noise_multiplier=COUNT_NOISE, rng=rng)
            ledger.fix_delta(default_delta(settings, counts.released_train))
            ledger.record_counts(counts)
        else:
            ledger.fix_delta(default_delta(settings, counts.released_train))
        yield PrivacySession(ledger, settings, counts, run_id, rng)


def released_counts(settings: PrivacySettings, data: SiteData, cfg: RunConfig, *, run_id: str) -> ReleasedCounts:
    """The site's released (train, validation) counts, releasing them now if this data has none yet."""
    with privacy_session(settings, data, cfg, run_id=run_id, rnd=0, purpose="counts") as session:
        return session.counts


def close_run(settings: PrivacySettings, run_id: str) -> None:
    """The coordinator ended the run: its plan no longer reserves budget on this data."""
    if not (Path(settings.state_dir) / "privacy-ledger.json").exists():
        return
    with ledger_lock(settings.state_dir):
        PrivacyLedger.open(settings.state_dir, epsilon_budget=None, delta=None, accountant=None,
                           data_dir=settings.data_dir).close_run(run_id)
