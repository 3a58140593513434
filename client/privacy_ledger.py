"""A site's persistent privacy ledger: every release its data ever took part in, composed by RDP.

Why our own file and not Opacus' in-memory accountant alone: a site's ε must compose across rounds,
runs and process restarts (Flower starts a fresh ClientApp process per message in deployment), so the
accountant's history — the ``(noise_multiplier, sample_rate, steps)`` triples Opacus' ``RDPAccountant``
keeps — is stored on disk and handed back to Opacus to compute ε (:mod:`fedshield.common.privacy_accounting`).

What counts: every release whose result can leave the site is an entry (``kind``):

- ``train``: a round of DP-SGD (σ, q, steps as the DP optimizer and sampler ran them) plus the
  Gaussian release of that reply's statistics (the training loss), noise multiplier ``statistics_noise``;
- ``evaluate``: the Gaussian release of an evaluation reply's loss and metrics;
- ``count``: the one-off Gaussian release of the site's example counts, which every later reply uses
  (FedAvg weights, the handshake) and which sets the Poisson rate (:mod:`fedshield.client.site_privacy`);
  it is drawn once per data size and reused, never redrawn.

A Gaussian release of per-record values clipped so that one record moves the vector by at most 1 in
L2 norm, with noise N(0, σ²) per coordinate, is the sampled Gaussian mechanism at q = 1 for one step:
the same triple ``(σ, 1.0, 1)`` (Mironov 2017, Prop. 7), so it composes with DP-SGD in one history.

Replays: a ``(run, round, kind)`` the site already released is refused (a curious coordinator asking
again gets fresh noise on the same data, and averaging removes it) unless the site allows repeats, in
which case it is counted again. An entry still ``pending`` (the process died before its result left)
is replaced by the retry. Crash safety: entries are recorded ``pending`` before training and marked
``released`` just before the reply is handed to Flower; every write is atomic. The caller holds the
ledger lock (:mod:`fedshield.client.ledger_lock`) from plan to release.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from fedshield.client.ledger_anchor import anchor_paths, check_anchors, write_anchors
from fedshield.client.site_audit import record_site_event
from fedshield.common.atomic_io import atomic_write_json
from fedshield.common.errors import ConfigError
from fedshield.common.privacy_accounting import ACCOUNTANTS, SEARCH_ORDERS, Mechanism, epsilon_of

__all__ = ["BudgetExhaustedError", "LedgerEntry", "PrivacyLedger", "ReleasedCounts", "ReplayRefusedError", "RunPlan",
           "epsilon_of"]

LEDGER_FORMAT = "fedshield-privacy-ledger"
LEDGER_VERSION = 2
LEDGER_FILE = "privacy-ledger.json"
# Beyond this noise multiplier an update is noise (σ·C/B per coordinate); a plan that needs more is
# refused as "budget too small" rather than run uselessly.
MAX_NOISE_MULTIPLIER = 20.0
# Statistics noise is searched up to this multiplier (a release this noisy says nothing, but costs nothing).
MAX_STATISTICS_NOISE = 1e4
# A run's plan reserves budget for its remaining rounds against other runs on the same data, until the run
# ends (its end-of-run notice closes the plan) or it has been idle this long (a coordinator that vanished).
RESERVATION_IDLE_S = 24 * 3600.0
KINDS = ("train", "evaluate", "count")


class BudgetExhaustedError(ConfigError):
    """The next release would take the site past its ε budget."""


class ReplayRefusedError(ConfigError):
    """The coordinator asked for a release the site already made."""


@dataclass
class LedgerEntry:
    """One release: ``steps`` DP-SGD steps at Poisson rate ``sample_rate`` and noise multiplier
    ``noise_multiplier`` (none when ``steps`` is 0), plus a Gaussian release of statistics at
    ``statistics_noise`` (none when 0). ``exact_statistics``: the reply carried exact statistics,
    which no ε covers (``--site-metrics exact``). ``release``: 1 for the first release of this
    (run, round, kind), more only where the site allows repeats."""

    run_id: str
    round: int
    steps: int
    sample_rate: float
    noise_multiplier: float
    status: str = "pending"
    recorded_at: float = field(default_factory=time.time)
    kind: str = "train"
    statistics_noise: float = 0.0
    exact_statistics: bool = False
    release: int = 1

    def mechanisms(self) -> list[Mechanism]:
        """This entry's part of the accountant's history."""
        out: list[Mechanism] = []
        if self.steps > 0:
            out.append((self.noise_multiplier, self.sample_rate, self.steps))
        if self.statistics_noise > 0:
            out.append((self.statistics_noise, 1.0, 1))
        return out

    def validate(self) -> None:
        """Raise ``ValueError`` for a value no release can have (a corrupt or edited ledger)."""
        where = f"entry {self.run_id!r}/{self.round!r}"
        _require(isinstance(self.run_id, str) and _is_int(self.round) and _is_int(self.steps)
                 and _is_int(self.release), f"{where}: run, round, steps or release of the wrong type")
        _require(self.kind in KINDS and self.status in ("pending", "released") and self.steps >= 0
                 and self.release >= 1 and self.round >= 0, f"{where}: kind, status, steps or release out of range")
        _require(_finite(self.sample_rate, self.noise_multiplier, self.statistics_noise, self.recorded_at)
                 and 0 <= self.sample_rate <= 1 and self.noise_multiplier >= 0 and self.statistics_noise >= 0,
                 f"{where}: sample rate or noise multipliers not finite or out of range")
        _require(self.steps == 0 or (self.sample_rate > 0 and self.noise_multiplier > 0),
                 f"{where}: DP-SGD steps without a sample rate or noise multiplier")
        _require(isinstance(self.exact_statistics, bool), f"{where}: exact_statistics is not true or false")


@dataclass
class RunPlan:
    """The noise a run was planned with so that all its releases fit the budget.

    ``rounds`` training rounds of ``steps_per_round`` steps at ``sample_rate`` and ``noise_multiplier``,
    and ``evaluations`` evaluation replies, each reply's statistics at ``statistics_noise`` (0: the
    site releases none privately). A round run with other settings re-plans (:meth:`PrivacyLedger.plan_run`).
    """

    noise_multiplier: float
    sample_rate: float
    steps_per_round: int
    rounds: int
    statistics_noise: float = 0.0
    evaluations: int = 0
    closed: bool = False
    updated_at: float = field(default_factory=time.time)


@dataclass
class ReleasedCounts:
    """The site's example counts as released once (``released_*``, Gaussian noise ``noise_multiplier``)
    for the exact counts ``train``/``val`` they were drawn from (kept here only, never sent)."""

    train: int
    val: int
    released_train: int
    released_val: int
    noise_multiplier: float
    recorded_at: float = field(default_factory=time.time)


@dataclass
class PrivacyLedger:
    """The ledger of one site (one data folder): budget, δ and every release."""

    path: Path
    epsilon_budget: float
    delta: float
    accountant: str = "rdp"
    entries: list[LedgerEntry] = field(default_factory=list)
    plans: dict[str, RunPlan] = field(default_factory=dict)
    counts: list[ReleasedCounts] = field(default_factory=list)
    anchors: list[Path] = field(default_factory=list)
    audited: bool = True  # releases go to the site's audit log (a simulation's virtual sites keep none)

    # ----------------------------------------------------------------- persistence
    @classmethod
    def open(cls, state_dir: Path, *, epsilon_budget: float | None, delta: float | None,
             accountant: str | None = "rdp", data_dir: Path | None = None) -> PrivacyLedger:
        """Open (or create in memory) the ledger in ``state_dir``; a foreign, newer, corrupt, missing or
        rolled-back file is refused (:mod:`fedshield.client.ledger_anchor`; ``data_dir``: the site's data
        folder, which keeps a second anchor).

        The budget, δ and accountant given now are the site's current settings; δ cannot change once
        releases are recorded, since ε at a different δ would not describe the same guarantee. The
        accountant may change: both bound the same recorded mechanisms, so ε is recomputed.
        ``None`` keeps what the file records (δ of a fresh ledger is then 0 until :meth:`fix_delta`).
        """
        if accountant is not None and accountant not in ACCOUNTANTS:
            raise ConfigError(f"--accountant {accountant!r}: use rdp or prv")
        path = Path(state_dir) / LEDGER_FILE
        anchors = anchor_paths(Path(state_dir), data_dir)
        if epsilon_budget is not None and not (math.isfinite(epsilon_budget) and epsilon_budget > 0):
            raise ConfigError(f"--epsilon {epsilon_budget}: the budget must be a positive number")
        if not path.exists():
            check_anchors(path, 0, anchors)
            return cls(path=path, epsilon_budget=epsilon_budget or 0.0, delta=delta or 0.0,
                       accountant=accountant or "rdp", anchors=anchors)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: privacy ledger is unreadable ({exc}); restore it from backup — "
                              "never delete it, that would forget spent privacy") from None
        if not isinstance(raw, dict) or raw.get("format") != LEDGER_FORMAT:
            raise ConfigError(f"{path}: not a FedShield privacy ledger; point --state-dir at the site's own state "
                              "folder")
        try:
            version = int(raw.get("version", 0))
        except (TypeError, ValueError):
            version = LEDGER_VERSION + 1
        if version > LEDGER_VERSION:
            raise ConfigError(f"{path}: ledger written by a newer FedShield (version {raw.get('version')}); upgrade "
                              "FedShield")
        try:
            entries = [_entry(e, version) for e in raw["entries"]]
            plans = {str(k): RunPlan(**v) for k, v in raw.get("plans", {}).items()}
            counts = [ReleasedCounts(**c) for c in raw.get("counts", [])]
            old_delta = float(raw["delta"])
            if epsilon_budget is None:
                epsilon_budget = float(raw["epsilon_budget"])
            if accountant is None:
                accountant = str(raw.get("accountant", "rdp"))
            stored_accountant = str(raw.get("accountant", "rdp"))
            _validate(entries, plans, counts, old_delta, float(raw["epsilon_budget"]), stored_accountant)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ConfigError(f"{path}: privacy ledger is corrupt ({exc}); restore it from backup") from None
        check_anchors(path, len(entries), anchors)
        if entries or delta is None:
            delta = old_delta  # keep the recorded δ: ε is only comparable at one δ
        return cls(path=path, epsilon_budget=epsilon_budget, delta=delta, accountant=accountant,
                   entries=entries, plans=plans, counts=counts, anchors=anchors)

    def fix_delta(self, delta: float) -> None:
        """Set δ of a ledger that records no release yet (its δ depends on the released count)."""
        if not self.entries:
            self.delta = delta

    def save(self) -> float:
        """Write the ledger atomically (owner-only: it reveals how the site trained), then its anchors; ε spent."""
        spent = self.epsilon_spent()
        atomic_write_json(
            self.path,
            {
                "format": LEDGER_FORMAT,
                "version": LEDGER_VERSION,
                "accountant": self.accountant,
                "epsilon_budget": self.epsilon_budget,
                "delta": self.delta,
                "epsilon_spent": spent,
                "entries": [asdict(e) for e in self.entries],
                "plans": {k: asdict(v) for k, v in self.plans.items()},
                "counts": [asdict(c) for c in self.counts],
            },
            mode=0o600,
        )
        write_anchors(self.path, len(self.entries), spent, self.anchors or anchor_paths(self.path.parent, None))
        return spent

    def _audit(self, event: str, **fields: object) -> None:
        """Append to the site's own signed audit log beside the ledger (:mod:`fedshield.client.site_audit`)."""
        if not self.audited:
            return
        record_site_event(self.path.parent, event, **fields, epsilon_budget=self.epsilon_budget, delta=self.delta)

    # ----------------------------------------------------------------- accounting
    def history(self, *, exclude_run: str | None = None) -> list[Mechanism]:
        """Opacus accountant history ``[(σ, q, steps), ...]`` of every recorded release."""
        return [m for e in self.entries if exclude_run is None or e.run_id != exclude_run for m in e.mechanisms()]

    def epsilon_spent(self, extra: list[Mechanism] | None = None) -> float:
        """ε at the ledger's δ for all recorded releases (plus ``extra``), by the ledger's Opacus accountant."""
        return epsilon_of(self.history() + list(extra or []), self.delta, self.accountant)

    def exact_releases(self) -> int:
        """Replies that carried exact statistics (``--site-metrics exact``): ε does not cover them."""
        return sum(1 for e in self.entries if e.exact_statistics)

    def reserved(self, *, exclude_run: str | None, now: float | None = None) -> list[Mechanism]:
        """What the other open runs' plans still reserve: their remaining rounds and evaluations."""
        now = time.time() if now is None else now
        out: list[Mechanism] = []
        for run_id, plan in self.plans.items():
            if run_id == exclude_run or plan.closed or now - plan.updated_at > RESERVATION_IDLE_S:
                continue
            done = self._released(run_id)
            rounds = max(0, plan.rounds - done["train"])
            evaluations = max(0, plan.evaluations - done["evaluate"])
            if rounds and plan.steps_per_round:
                out.append((plan.noise_multiplier, plan.sample_rate, plan.steps_per_round * rounds))
            if plan.statistics_noise > 0 and rounds + evaluations:
                out.append((plan.statistics_noise, 1.0, rounds + evaluations))
        return out

    def _released(self, run_id: str) -> dict[str, int]:
        done = {kind: 0 for kind in KINDS}
        for e in self.entries:
            if e.run_id == run_id and e.status == "released":
                done[e.kind] += 1
        return done

    def _check_budget(self, what: str, extra: list[Mechanism], *, run_id: str) -> None:
        after = self.epsilon_spent(extra + self.reserved(exclude_run=run_id))
        if after > self.epsilon_budget * (1 + 1e-6):
            raise BudgetExhaustedError(
                f"{self.path}: {what} would spend ε up to {after:.3g} (with what other runs on this data have "
                f"reserved), above the site's budget {self.epsilon_budget:g}; the site refuses it"
            )

    # ----------------------------------------------------------------- counts
    def counts_for(self, n_train: int, n_val: int) -> ReleasedCounts | None:
        """The counts released for exactly these sizes, if any (a release is reused, never redrawn)."""
        for c in self.counts:
            if c.train == n_train and c.val == n_val:
                return c
        return None

    @staticmethod
    def draw_counts(n_train: int, n_val: int, *, noise_multiplier: float, rng: np.random.Generator) -> ReleasedCounts:
        """``(n_train, n_val) + N(0, σ²)``, rounded, each at least 1; recorded by :meth:`record_counts`.

        One record is in exactly one split, so it moves the pair by 1 in L2 norm: a Gaussian release at
        q = 1 with noise multiplier ``noise_multiplier``.
        """
        noisy = np.array([n_train, n_val], dtype=np.float64) + rng.normal(0.0, noise_multiplier, size=2)
        return ReleasedCounts(n_train, n_val, max(1, int(round(noisy[0]))), max(1, int(round(noisy[1]))),
                              noise_multiplier)

    def record_counts(self, counts: ReleasedCounts) -> None:
        """Record the counts' release as a ``count`` entry (refused past the budget, nothing recorded)."""
        entry = LedgerEntry(run_id="", round=0, steps=0, sample_rate=0.0, noise_multiplier=0.0, kind="count",
                            statistics_noise=counts.noise_multiplier, status="released")
        self._check_budget("releasing the site's example counts", entry.mechanisms(), run_id="")
        self.entries.append(entry)
        self.counts.append(counts)
        spent = self.save()
        self._audit("counts released", train=counts.released_train, validation=counts.released_val,
                    noise_multiplier=counts.noise_multiplier, epsilon_spent=spent)

    # ----------------------------------------------------------------- plans
    def plan_run(self, run_id: str, *, sample_rate: float, steps_per_round: int, rounds: int, evaluations: int,
                 private_statistics: bool, metrics_cost: float) -> RunPlan:
        """This run's plan: the one recorded, or a new one when there is none or the run changed.

        A run changes when the coordinator sends other DP-relevant settings than it planned with (batch
        size → q, local epochs → steps, rounds, sampling); the run is then re-planned for its remaining
        releases against everything recorded (its own earlier rounds included), never mis-recorded.

        The noise multipliers: σ of DP-SGD is the smallest whose RDP composition with the site's
        history, the other open runs' reservations, and all of this run's releases stays within the
        budget (bisection on an upper bound of the accountant's ε over :data:`SEARCH_ORDERS`; the ε
        recorded and reported is always over all of Opacus' orders). With ``private_statistics`` each
        reply's statistics get the smallest noise multiplier that raises σ by at most ``metrics_cost``
        (a fraction, e.g. 0.05) over σ without statistics.
        """
        plan = self.plans.get(run_id)
        stats_wanted = private_statistics
        if plan is not None and (plan.sample_rate, plan.steps_per_round, plan.rounds, plan.evaluations,
                                 plan.statistics_noise > 0) == (sample_rate, steps_per_round, rounds, evaluations,
                                                                stats_wanted):
            return plan
        done = self._released(run_id)
        left_rounds = max(1, rounds - done["train"]) if plan is not None else rounds
        left_evaluations = max(1, evaluations - done["evaluate"]) if plan is not None else evaluations
        prior = self.history() + self.reserved(exclude_run=run_id)
        spent = epsilon_of(prior, self.delta, self.accountant)
        if spent >= self.epsilon_budget:
            raise BudgetExhaustedError(
                f"{self.path}: privacy budget spent (ε {spent:.3g} of {self.epsilon_budget:g}, with what other runs "
                "on this data have reserved); this site cannot train again on this data"
            )
        sigma, stats_sigma = _plan_noise(tuple(prior), sample_rate, steps_per_round * left_rounds,
                                         left_rounds + left_evaluations if stats_wanted else 0, self.delta,
                                         self.epsilon_budget, self.accountant, metrics_cost)
        if sigma is None:
            left = self.epsilon_budget - spent
            raise BudgetExhaustedError(
                f"{self.path}: the privacy budget left (ε {left:.3g} of {self.epsilon_budget:g}) cannot cover "
                f"{left_rounds} round(s) even at noise multiplier {MAX_NOISE_MULTIPLIER:g}; raise --epsilon or plan "
                "fewer --rounds"
            )
        new = RunPlan(noise_multiplier=sigma, sample_rate=sample_rate, steps_per_round=steps_per_round,
                      rounds=rounds, statistics_noise=stats_sigma, evaluations=evaluations)
        if plan is not None:  # keep the totals the coordinator now announces; left_* counted what is done
            new.rounds = done["train"] + left_rounds
            new.evaluations = done["evaluate"] + left_evaluations
        self.plans[run_id] = new
        return new

    def close_run(self, run_id: str) -> None:
        """The run ended: its plan no longer reserves budget."""
        plan = self.plans.get(run_id)
        if plan is not None and not plan.closed:
            plan.closed = True
            self.save()

    # ----------------------------------------------------------------- releases
    def begin(self, run_id: str, rnd: int, kind: str, *, plan: RunPlan, steps: int, allow_repeat: bool,
              exact_statistics: bool = False) -> LedgerEntry:
        """Record a release as pending before its computation; refuse a replay or a release past the budget.

        ``steps``: DP-SGD steps (0 for an evaluation); the entry takes σ, q and the statistics noise from
        ``plan``. A (run, round, kind) already released is refused unless ``allow_repeat``, and then
        counted again; a pending one (its process died before the result left) is replaced.
        """
        same = [e for e in self.entries if e.run_id == run_id and e.round == rnd and e.kind == kind]
        released = [e for e in same if e.status == "released"]
        if released and not allow_repeat:
            self._audit("release refused", run=run_id, round=rnd, kind=kind, reason="already released (a replay)")
            raise ReplayRefusedError(
                f"{self.path}: run {run_id} round {rnd} ({kind}) was already released by this site; a repeat would "
                "spend privacy again on the same data, so it is refused (a site that accepts repeats joins with "
                "--allow-repeated-rounds, and each repeat is counted)"
            )
        entry = LedgerEntry(run_id=run_id, round=rnd, steps=steps,
                            sample_rate=plan.sample_rate if steps else 0.0,
                            noise_multiplier=plan.noise_multiplier if steps else 0.0, kind=kind,
                            statistics_noise=0.0 if exact_statistics else plan.statistics_noise,
                            exact_statistics=exact_statistics, release=len(released) + 1)
        retried = {id(e) for e in same if e.status == "pending"}
        kept = [e for e in self.entries if id(e) not in retried]
        after = epsilon_of([m for e in kept for m in e.mechanisms()] + entry.mechanisms()
                           + self.reserved(exclude_run=run_id), self.delta, self.accountant)
        if after > self.epsilon_budget * (1 + 1e-6):
            self._audit("release refused", run=run_id, round=rnd, kind=kind, reason=f"past the budget (ε {after:.4g})")
            raise BudgetExhaustedError(
                f"{self.path}: round {rnd} ({kind}) would spend ε up to {after:.3g}, above the site's budget "
                f"{self.epsilon_budget:g}; the site refuses this round"
            )
        self.entries = kept + [entry]
        plan.updated_at = time.time()
        self.save()
        return entry

    def settle(self, entry: LedgerEntry, *, ran: list[Mechanism]) -> None:
        """Replace the entry's DP-SGD part by what the DP optimizer's accountant saw (``ran``), then release.

        The entry was written with the plan's σ, q and steps before training; the record must be what
        ran. A round that ran with other values than planned is recorded as it ran and refused past the
        budget (its result is then withheld: the caller raises before replying).
        """
        if ran:
            sigmas, rates = {round(s, 12) for s, _, _ in ran}, {round(q, 12) for _, q, _ in ran}
            if len(sigmas) != 1 or len(rates) != 1:
                raise RuntimeError(f"one round ran with several noise multipliers or sample rates: {ran}")
            entry.noise_multiplier, entry.sample_rate = ran[0][0], ran[0][1]
            entry.steps = sum(s for _, _, s in ran)
        after = self.epsilon_spent()
        if after > self.epsilon_budget * (1 + 1e-6):
            self.save()  # recorded as it ran, still pending: it counts, though nothing leaves
            raise BudgetExhaustedError(f"{self.path}: round {entry.round} ran more DP-SGD steps than planned (ε "
                                       f"{after:.3g} of {self.epsilon_budget:g}); its update is withheld")
        self.release(entry)  # one atomic write: what ran, and that it is released

    def release(self, entry: LedgerEntry) -> None:
        """Mark a recorded release as released (its result is about to leave the site)."""
        entry.status = "released"
        spent = self.save()
        self._audit("released", run=entry.run_id, round=entry.round, kind=entry.kind, release=entry.release,
                    steps=entry.steps, noise_multiplier=entry.noise_multiplier, sample_rate=entry.sample_rate,
                    statistics_noise=entry.statistics_noise, exact_statistics=entry.exact_statistics,
                    epsilon_spent=spent)


def _finite(*values: object) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _require(condition: bool, problem: str) -> None:
    if not condition:
        raise ValueError(problem)


def _validate(entries: list[LedgerEntry], plans: dict[str, RunPlan], counts: list[ReleasedCounts], delta: float,
              budget: float, accountant: str) -> None:
    """Raise ``ValueError`` for any value in a stored ledger that no release can have.

    A ledger is read by the accountant and the noise search; a NaN, a negative step count or a δ that
    allows releasing a whole record would make ε meaningless (negative, NaN, or a search that never
    ends), so the whole file is refused instead.
    """
    _require(_finite(budget) and budget > 0, f"epsilon_budget {budget!r} is not a positive number")
    _require(accountant in ACCOUNTANTS, f"accountant {accountant!r} is not rdp or prv")
    for entry in entries:
        entry.validate()
    for run_id, plan in plans.items():
        _require(_finite(plan.noise_multiplier, plan.sample_rate, plan.statistics_noise, plan.updated_at)
                 and plan.noise_multiplier > 0 and 0 < plan.sample_rate <= 1 and plan.statistics_noise >= 0
                 and all(_is_int(v) and v >= 0 for v in (plan.steps_per_round, plan.rounds, plan.evaluations))
                 and isinstance(plan.closed, bool), f"plan of run {run_id!r} out of range")
    for c in counts:
        _require(all(_is_int(v) for v in (c.train, c.val, c.released_train, c.released_val))
                 and min(c.train, c.val) >= 0 and min(c.released_train, c.released_val) >= 1
                 and _finite(c.noise_multiplier, c.recorded_at) and c.noise_multiplier > 0,
                 "released counts out of range")
    if entries:
        _require(_finite(delta) and 0 < delta < 1, f"delta {delta!r} is not in (0, 1)")
        smallest = min((c.train for c in counts if c.train > 0), default=0)
        # δ ≥ 1/N admits "publish one random record" as (0, δ)-DP: no guarantee at all
        _require(not smallest or delta < 1.0 / smallest,
                 f"delta {delta:g} is not below 1/N = {1.0 / max(smallest, 1):.2e} for the site's {smallest} records")


def _entry(raw: dict, version: int) -> LedgerEntry:
    """A stored entry; version-1 ledgers recorded DP-SGD rounds only, whose replies carried exact metrics."""
    if not isinstance(raw, dict):
        raise TypeError("entry is not an object")
    if version < 2:
        return LedgerEntry(**raw, kind="train", exact_statistics=True)
    return LedgerEntry(**raw)


def _smallest_sigma(eps: Callable[[float], float], budget: float, *, limit: float = MAX_NOISE_MULTIPLIER * 64
                    ) -> float | None:
    """Bisection for the smallest σ with ``eps(σ) <= budget`` (ε falls as σ grows), to 0.1 % of σ;
    None when even ``limit`` is not enough."""
    lo, hi = 0.05, 1.0
    while eps(hi) > budget:
        if hi >= limit:
            return None
        lo, hi = hi, min(hi * 2, limit)
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
def _plan_noise(prior: tuple[Mechanism, ...], sample_rate: float, steps: int, statistics_releases: int, delta: float,
                budget: float, accountant: str, metrics_cost: float) -> tuple[float | None, float]:
    """(σ of DP-SGD or None if it cannot fit, noise multiplier of the statistics or 0) for a run's plan.

    The same for every fresh site of a simulation with equal sizes, so cached. The split between the
    two (σ_m so that σ grows by ``metrics_cost``) is found with the RDP accountant, cheap at every
    order; σ itself is then fitted with the ledger's own accountant (PRV costs ~0.1 s an evaluation).
    """
    def eps(sigma: float, stats_sigma: float | None, name: str = accountant) -> float:  # ≥ the accountant's ε
        extra = [(stats_sigma, 1.0, statistics_releases)] if stats_sigma else []
        return epsilon_of(list(prior) + [(sigma, sample_rate, steps)] + extra, delta, name, orders=SEARCH_ORDERS)

    if eps(MAX_NOISE_MULTIPLIER, None) > budget:
        return None, 0.0
    if not statistics_releases:
        return _smallest_sigma(lambda s: eps(s, None), budget), 0.0
    free = _smallest_sigma(lambda s: eps(s, None, "rdp"), budget) or MAX_NOISE_MULTIPLIER
    target = min(free * (1 + metrics_cost), MAX_NOISE_MULTIPLIER)
    stats_sigma = _smallest_sigma(lambda sm: eps(target, sm, "rdp"), budget, limit=MAX_STATISTICS_NOISE)
    if stats_sigma is None:  # no room beside σ at its cap: statistics as noisy as they come
        stats_sigma = MAX_STATISTICS_NOISE
    return _smallest_sigma(lambda s: eps(s, stats_sigma), budget), stats_sigma
