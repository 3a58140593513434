"""The run configuration: what the coordinator decides for every site of one run.

It travels as Flower's run config (``[tool.flwr.app.config]`` / ``flwr run --run-config``) with
hyphenated keys, and the server forwards the training part to sites in every TRAIN message's config.
A site's own privacy settings (its budget) come from the site, never from the server alone.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from fedshield.common.errors import ConfigError
from fedshield.common.update_bounds import DEFAULT_MIN_COSINE, DEFAULT_NORM_BOUND, NormBound, parse_min_cosine

# Strategies that need every site's own update (the median, trimming, Krum's distances): never under SecAgg+.
ROBUST_STRATEGIES = ("fedmedian", "fedtrimmedavg", "krum", "multikrum")


@dataclass
class RunConfig:
    """Run-wide settings.

    Attributes:
        task: registered task name (``fl-sim tasks`` lists them).
        rounds: federated rounds.
        local_epochs: passes over a site's training split per round.
        batch_size: expected batch size (Poisson-sampled when DP is on).
        lr: local SGD learning rate (see :func:`default_lr`).
        momentum: local SGD momentum.
        seed: seed of model initialisation, sampling and held-out splits.
        min_clients: sites that must be connected before round 1, and trained per round at least.
        fraction_train: share of connected sites sampled per round (1.0 = all).
        per_round: sites sampled per round, trained and evaluated (0 = use ``fraction_train``; training
            then samples that share and evaluation asks every site).
        strategy: aggregation strategy name (``fedavg``, ``fedprox``, ``fedadam``...).
        model: task-specific model variant (tabular: ``auto``, ``logistic``, ``linear``, ``mlp``).
        init_weights: absolute path of weights the global model starts from (``--init-weights``;
            :mod:`fedshield.tasks.init_weights`); empty for a fresh model from ``seed``.
        dp: sample-level DP-SGD at every site (``--no-dp`` turns it off, loudly).
        epsilon: each site's target ε for this run (a site may ask for less).
        delta: target δ; 0 means "below 1/N" chosen per site (N = the site's training examples).
        max_grad_norm: per-sample clipping bound C (L2).
        accountant: ``rdp`` (Mironov 2017) or ``prv`` (Gopi et al. 2021), both Opacus'.
        central_dp: client-level DP on the server: ``off``, ``fixed`` or ``adaptive`` clipping (Flower's
            ``DifferentialPrivacy{Server,Client}Side{Fixed,Adaptive}Clipping`` wrappers).
        central_dp_side: who clips each site's update: ``server`` (trusted server) or ``client``.
        central_noise: noise multiplier z of central DP (σ = z·C / sampled sites on the average).
        central_clip: clipping norm C of each site's update (initial norm when adaptive).
        central_delta: δ at which the client-level ε is reported.
        max_update_norm: the update checks' norm bound: ``Nx`` (N times the round's median update norm),
            an absolute L2 norm, or ``off`` (:mod:`fedshield.strategies.update_checks`).
        min_update_cosine: the update checks' direction test: ``auto`` (sites that point away from the
            others' median update and stand out from them), the least mean cosine similarity of a site's
            updates with the round's coordinate-wise median update, or ``off``.
        max_rejections: rejected updates after which a site is excluded for the rest of the run.
        trusted_data: absolute path of examples the coordinator holds and trusts (``--trusted-data``): the
            direction test compares each site's update with the coordinator's own update on them
            (:mod:`fedshield.server.trusted_reference`); empty for none. Never sent to sites.
        tolerate_attackers: f, the attacking sites Krum and Multi-Krum tolerate (they need 2f + 3 sites).
        secagg: run every training round under SecAgg+ (the server learns only the sum of the updates).
        secagg_shares: neighbours/secret shares per site (0 = automatic: all up to 7 sites, then
            ~2·log2(n)+1; else made odd, ≥ 3).
        secagg_threshold: share of a site's shares needed to reconstruct (fraction, Flower's default 0.5+).
        secagg_timeout: seconds a SecAgg+ stage waits for sites before treating the rest as dropped.
        run_dir: where the ServerApp writes ``results.json`` and checkpoints.
        sim_data_dir: simulation only: folder of per-site data folders (``site_NNNN``), or of the
            partition plan they are built from lazily (:mod:`fedshield.simulations.virtual_sites`).
        sim_state_dir: simulation only: folder of per-site state folders (privacy ledgers), one
            ``site_NNNN`` each; default ``<sim_data_dir>/../site-state``. Reusing it across runs makes
            the virtual sites' ε compose across those runs, as a real site's does.
        max_site_examples: simulation only: examples at the largest virtual site (the partition knows
            it), which SecAgg+'s weight quantisation must cover; 0 = the largest the handshake saw.
        sim_attack: simulation only: ``KIND:SITES``, the first SITES virtual sites attack
            (:mod:`fedshield.simulations.attacks`); empty for none.
        device: ``auto``, ``cpu`` or ``cuda`` for site training.
        site_metrics: simulation only: what virtual sites' replies say about their data: ``dp`` (losses,
            metrics and counts as Gaussian releases inside each site's ε) or ``exact`` (outside ε). A real
            site decides this itself (``fl-client join --site-metrics``); the server cannot.
        fedshield_run_id: the run's identity at the sites: their privacy ledgers key every release by it
            (with the round). Empty until the ServerApp sets it to its Flower run id; a resumed run
            (``fl-server start --resume``) is a new Flower run that keeps the original run's id, so each
            site's ledger and plan continue that run and refuse a round it already released.
    """

    task: str = "digits-cnn"
    rounds: int = 5
    local_epochs: int = 1
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.0
    seed: int = 0
    min_clients: int = 2
    fraction_train: float = 1.0
    per_round: int = 0
    strategy: str = "fedavg"
    model: str = "auto"
    init_weights: str = ""
    dp: bool = True
    epsilon: float = 8.0
    delta: float = 0.0
    max_grad_norm: float = 1.0
    accountant: str = "rdp"
    central_dp: str = "off"
    central_dp_side: str = "server"
    central_noise: float = 1.0
    central_clip: float = 0.5
    central_delta: float = 1e-5
    max_update_norm: str = DEFAULT_NORM_BOUND
    min_update_cosine: str = DEFAULT_MIN_COSINE
    max_rejections: int = 3
    tolerate_attackers: int = 1
    trusted_data: str = ""
    secagg: bool = False
    secagg_shares: int = 0
    secagg_threshold: float = 0.6
    secagg_timeout: float = 300.0
    run_dir: str = ""
    sim_data_dir: str = ""
    sim_state_dir: str = ""
    max_site_examples: int = 0
    sim_attack: str = ""
    device: str = "auto"
    site_metrics: str = "dp"
    fedshield_run_id: str = ""

    @staticmethod
    def default_lr(dp: bool) -> float:
        """0.5 with DP-SGD, 0.05 without: clipped, noised gradients need a larger step.

        Measured on one digits site (~570 examples, σ=0.7, C=1, batch 32, 5 epochs): lr 0.05 reached
        26% accuracy, 0.5 reached 86% (non-private lr 0.05: 90%).
        """
        return 0.5 if dp else 0.05

    def validate(self) -> RunConfig:
        """Raise ``ConfigError`` naming the flag and the fix for any out-of-range value."""
        checks: list[tuple[bool, str]] = [
            (self.rounds >= 1, "--rounds must be at least 1"),
            (self.local_epochs >= 1, "--local-epochs must be at least 1"),
            (self.batch_size >= 1, "--batch-size must be at least 1"),
            (self.lr > 0 and math.isfinite(self.lr), "--lr must be a positive number"),
            (0 <= self.momentum < 1, "--momentum must be in [0, 1)"),
            (self.min_clients >= 1, "--min-clients must be at least 1"),
            (0 < self.fraction_train <= 1, "--fraction-train must be in (0, 1]"),
            (self.per_round >= 0, "--per-round must be a positive number of sites (or 0 for every site)"),
            (self.epsilon > 0, "--epsilon must be positive (use --no-dp to train without privacy)"),
            (0 <= self.delta < 1, "--delta must be in [0, 1); 0 picks δ below 1/N per site"),
            (self.max_grad_norm > 0, "--max-grad-norm must be positive"),
            (self.device in ("auto", "cpu", "cuda"), "--device must be auto, cpu or cuda"),
            (self.site_metrics in ("dp", "exact"), "--site-metrics must be dp or exact"),
            (self.accountant in ("rdp", "prv"), "--accountant must be rdp or prv"),
            (self.central_dp in ("off", "fixed", "adaptive"), "--central-dp must be off, fixed or adaptive"),
            (self.central_dp_side in ("server", "client"), "--central-dp-side must be server or client"),
            (self.central_noise >= 0, "--noise-multiplier must be non-negative"),
            (self.central_clip > 0, "--clip must be positive"),
            (0 < self.central_delta < 1, "--central-delta must be in (0, 1)"),
            (self.secagg_shares >= 0, "--secagg-shares must be 0 (every sampled site) or a count"),
            (0 < self.secagg_threshold < 1, "--secagg-threshold must be a fraction in (0, 1)"),
            (self.secagg_timeout > 0, "--secagg-timeout must be positive seconds"),
            (self.max_rejections >= 1, "--max-rejections must be at least 1"),
            (self.tolerate_attackers >= 0, "--tolerate-attackers must be 0 or more"),
            (not (self.secagg and self.strategy in ROBUST_STRATEGIES),
             f"--strategy {self.strategy} needs every site's update, which --secagg hides from the server (it "
             "sees only the sum); use fedavg, fedavgm, fedadam, fedyogi or fedadagrad with --secagg, or drop --secagg"),
            (self.strategy not in ("krum", "multikrum") or self.min_clients >= 2 * self.tolerate_attackers + 3,
             f"--strategy {self.strategy} with --tolerate-attackers {self.tolerate_attackers} needs --min-clients of "
             f"at least {2 * self.tolerate_attackers + 3} (2f + 3 sites per round)"),
            (not (self.secagg and self.trusted_data),
             "--trusted-data compares each site's update with the coordinator's own, and --secagg hides single "
             "updates from the server: drop one of them"),
            (not (self.secagg and self.central_dp != "off" and self.central_dp_side == "server"),
             "--secagg hides single updates from the server, so it cannot clip them: use "
             "--central-dp-side client with --central-dp"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        NormBound.parse(self.max_update_norm)  # one-line errors naming --max-update-norm, --min-update-cosine
        parse_min_cosine(self.min_update_cosine)
        return self

    def to_flower(self) -> dict[str, Any]:
        """Hyphenated scalar dict for Flower's run config / message configs."""
        return {k.replace("_", "-"): v for k, v in asdict(self).items()}

    def to_toml(self) -> str:
        """The ``[tool.flwr.app.config]`` table body."""
        lines = []
        for key, value in self.to_flower().items():
            if isinstance(value, bool):
                rendered = "true" if value else "false"
            elif isinstance(value, str):
                rendered = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
            else:
                rendered = repr(value)
            lines.append(f"{key} = {rendered}")
        return "\n".join(lines) + "\n"

    @classmethod
    def from_flower(cls, cfg: Mapping[str, Any]) -> RunConfig:
        """Build from a Flower run/message config; unknown keys are ignored, types coerced."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            key = f.name.replace("_", "-")
            if key not in cfg:
                continue
            raw = cfg[key]
            default = f.default
            if isinstance(default, bool):
                values[f.name] = raw if isinstance(raw, bool) else str(raw).lower() in ("1", "true", "yes")
            elif isinstance(default, int):
                values[f.name] = int(raw)
            elif isinstance(default, float):
                values[f.name] = float(raw)
            else:
                values[f.name] = str(raw)
        return cls(**values)
