"""One round of local training at a site: plain SGD, or DP-SGD through Opacus' ``PrivacyEngine``.

The platform, not the task, builds the loader, the optimizer and the privacy engine, so every task is
private the same way: Poisson sampling (the sampling the RDP analysis of Mironov et al. 2019,
"Rényi Differential Privacy of the Sampled Gaussian Mechanism", assumes), per-sample clipping to
``max_grad_norm`` and Gaussian noise ``σ·C``. σ comes from the site's ledger plan for the whole run.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from opacus import PrivacyEngine
from torch import nn
from torch.utils.data import DataLoader

from fedshield.client.privacy_ledger import PrivacyLedger
from fedshield.common.run_config import RunConfig
from fedshield.tasks.base import SiteData, Task, TrainResult

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrivacySettings:
    """A site's DP settings: on/off, lifetime budget (ε, δ; δ=0 means below 1/N), clip C, ledger folder."""

    enabled: bool
    epsilon: float
    delta: float
    max_grad_norm: float
    state_dir: Path


@dataclass(frozen=True)
class RoundOutcome:
    """Training result plus the site's privacy position after the round."""

    result: TrainResult
    epsilon: float
    delta: float
    noise_multiplier: float
    sample_rate: float


def site_delta(settings: PrivacySettings, n_train: int) -> float:
    """δ to account at: the site's own, or ``min(1e-5, 1/(10·N))`` which is below 1/N."""
    return settings.delta if settings.delta > 0 else min(1e-5, 1.0 / (10.0 * max(n_train, 1)))


def train_round(
    task: Task,
    site: SiteData,
    model: nn.Module,
    cfg: RunConfig,
    *,
    run_id: str,
    rnd: int,
    privacy: PrivacySettings,
    device: torch.device,
) -> RoundOutcome:
    """Train ``model`` in place for one round; with DP, check and record the spend in the ledger."""
    n = len(site.train)
    generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + rnd)
    loader = DataLoader(site.train, batch_size=min(cfg.batch_size, n), shuffle=True, generator=generator)
    model.to(device)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    if not privacy.enabled:
        result = task.train(model, loader, optimizer, epochs=cfg.local_epochs, device=device)
        return RoundOutcome(result, epsilon=math.inf, delta=0.0, noise_multiplier=0.0, sample_rate=0.0)

    delta = site_delta(privacy, n)
    # Opacus' DPDataLoader samples each example with q = 1/len(loader) and takes len(loader) steps
    # per epoch (opacus/data_loader.py); plan and record exactly that.
    sample_rate = 1.0 / len(loader)
    steps = len(loader) * cfg.local_epochs
    ledger = PrivacyLedger.open(privacy.state_dir, epsilon_budget=privacy.epsilon, delta=delta)
    plan = ledger.plan_run(run_id, sample_rate=sample_rate, steps_per_round=steps, rounds=cfg.rounds)
    engine = PrivacyEngine(accountant="rdp", secure_mode=False)
    with warnings.catch_warnings():
        # Opacus warns that secure_mode is off; the CSPRNG noise is an opt-in left for GPU sites.
        warnings.simplefilter("ignore")
        private_model, dp_optimizer, dp_loader = engine.make_private(
            module=model,
            optimizer=optimizer,
            data_loader=loader,
            noise_multiplier=plan.noise_multiplier,
            max_grad_norm=privacy.max_grad_norm,
            poisson_sampling=True,
        )
    entry = ledger.begin_round(run_id, rnd, steps=steps, plan=plan)
    result = task.train(private_model, dp_loader, dp_optimizer, epochs=cfg.local_epochs, device=device)
    taken = sum(s for _, _, s in engine.accountant.history)
    if taken > steps:  # the ledger must never under-count what Opacus' own accountant saw
        entry.steps = taken
    ledger.release_round(entry)
    epsilon = ledger.epsilon_spent()
    log.info("round %s: %d DP-SGD steps, σ=%.3f, q=%.4f, ε spent %.3f of %.3g (δ=%.1e)",
             rnd, entry.steps, plan.noise_multiplier, sample_rate, epsilon, privacy.epsilon, ledger.delta)
    return RoundOutcome(result, epsilon=epsilon, delta=ledger.delta,
                        noise_multiplier=plan.noise_multiplier, sample_rate=sample_rate)
