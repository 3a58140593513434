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

from fedshield.client.book_keeping import make_private_book_keeping
from fedshield.client.empty_batches import NoiseOnEmptyBatches
from fedshield.client.private_randomness import DPRandomness, dp_randomness, simulation_noise_seed
from fedshield.client.privacy_ledger import PrivacyLedger
from fedshield.common.allocator import retain_freed_memory
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
    accountant: str = "rdp"
    virtual_site: int | None = None  # a simulation's virtual site: its DP randomness repeats with the run seed


@dataclass(frozen=True)
class RoundOutcome:
    """Training result plus the site's privacy position after the round."""

    result: TrainResult
    epsilon: float
    delta: float
    noise_multiplier: float
    sample_rate: float


@dataclass
class PrivateTraining:
    """What Opacus' ``make_private`` returns: model, DP optimizer, Poisson loader, and (bk, ghost) criterion."""

    engine: PrivacyEngine
    model: nn.Module
    optimizer: torch.optim.Optimizer
    loader: NoiseOnEmptyBatches  # the Poisson DPDataLoader, taking empty batches' steps itself
    criterion: nn.Module | None
    mode: str


def make_private(task: Task, site: SiteData, model: nn.Module, optimizer: torch.optim.Optimizer,
                 loader: DataLoader, *, noise_multiplier: float, max_grad_norm: float,
                 noise_generator: torch.Generator | None = None) -> PrivateTraining:
    """Opacus' front door with the task's fastest supported mode; falls back (``bk`` → ``ghost`` →
    ``hooks``) explicitly, with a warning naming the layer that forced it.

    Poisson sampling is always on (the accountant's assumption), drawn from ``loader``'s generator;
    the noise from ``noise_generator`` (:mod:`fedshield.client.private_randomness`). ``bk`` and
    ``ghost`` need the loss as a module, which is wrapped to run book-keeping's one backward pass or
    Opacus' two; the task receives that wrapper. The loader takes the noise-only DP-SGD step of every
    empty Poisson batch itself (:mod:`fedshield.client.empty_batches`).
    """
    modes = {"hooks": ["hooks"], "bk": ["bk", "ghost", "hooks"]}.get(task.dp_mode, [task.dp_mode, "hooks"])
    last_error: Exception | None = None
    for mode in modes:
        kwargs = dict(module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=noise_multiplier,
                      max_grad_norm=max_grad_norm, poisson_sampling=True, grad_sample_mode=mode,
                      noise_generator=noise_generator)
        try:
            if mode != "bk":
                _refuse_padding_modes_opacus_gets_wrong(model)
            with warnings.catch_warnings():
                # Opacus warns that secure_mode is off (its CSPRNG noise is an opt-in, slow on CPU).
                warnings.simplefilter("ignore")
                engine = PrivacyEngine(accountant="rdp", secure_mode=False)
                dp_criterion: nn.Module | None = None
                if mode == "bk":  # one backward pass instead of ghost clipping's two (client/book_keeping.py)
                    private_model, dp_optimizer, dp_criterion, dp_loader = make_private_book_keeping(  # type: ignore[assignment]
                        engine, module=model, optimizer=optimizer, criterion=task.criterion(site.schema),
                        data_loader=loader, noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm,
                        noise_generator=noise_generator)
                elif mode == "ghost":
                    private_model, dp_optimizer, dp_criterion, dp_loader = engine.make_private(
                        criterion=task.criterion(site.schema), **kwargs)
                else:
                    private_model, dp_optimizer, dp_loader = engine.make_private(**kwargs)
            return PrivateTraining(engine, private_model, dp_optimizer, NoiseOnEmptyBatches(dp_loader, dp_optimizer),
                                   dp_criterion, mode)
        except Exception as exc:  # an Opacus mode that does not support a layer of this model
            last_error = exc
            log.warning("task %s: Opacus mode %s unavailable (%s); falling back", task.name, mode, exc)
    raise RuntimeError(f"Opacus cannot train task {task.name} privately: {last_error}")


def _refuse_padding_modes_opacus_gets_wrong(model: nn.Module) -> None:
    """Opacus 1.6.0 unfolds convolution inputs with zero padding whatever the layer's ``padding_mode``:
    for ``reflect``, ``replicate`` or ``circular`` its per-sample gradients, hence the norms it clips,
    are wrong (42-60% off, tests/test_book_keeping.py), and the clipping bound DP rests on does not hold.
    Book-keeping pads as the layer does; Opacus' modes refuse such a model."""
    for name, layer in model.named_modules():
        if (isinstance(layer, nn.modules.conv._ConvNd) and layer.padding_mode != "zeros"
                and any(p.requires_grad for p in layer.parameters(recurse=False))):
            raise ValueError(f"layer {name} has padding_mode={layer.padding_mode!r}, for which Opacus computes wrong "
                             "per-sample gradients; use zero padding or a model book-keeping clips")


def site_delta(settings: PrivacySettings, n_train: int) -> float:
    """δ to account at: the site's own, or ``min(1e-5, 1/(10·N))`` which is below 1/N."""
    return settings.delta if settings.delta > 0 else min(1e-5, 1.0 / (10.0 * max(n_train, 1)))


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
    retain_freed_memory()  # once per process: keeps a step's freed tensors mapped for the next (common/allocator.py)
    n = len(site.train)
    seed = None if privacy.virtual_site is None else simulation_noise_seed(cfg.seed, privacy.virtual_site, rnd)
    if seed is not None:  # a simulation's other draws (dropout, a GAN's latents) repeat with the run seed too
        torch.manual_seed(seed ^ 0x5EED)
    if privacy.enabled:  # which examples each step samples must stay as secret as the noise
        randomness: DPRandomness | None = dp_randomness(seed, device)
        generator = randomness.sampling
    else:
        randomness, generator = None, torch.Generator().manual_seed(cfg.seed * 1_000_003 + rnd)
    loader = DataLoader(site.train, batch_size=min(cfg.batch_size, n), shuffle=True, generator=generator)
    model.to(device)
    model.train()
    # A task whose private data reaches only one submodule (a GAN's discriminator) names it: the
    # platform's optimizer and Opacus cover that part; the task trains the rest from it alone.
    part = getattr(task, "private_part", None)
    trained = part(model) if callable(part) else model
    optimizer = torch.optim.SGD(trained.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    if randomness is None:
        result = task.train(model, loader, optimizer, epochs=cfg.local_epochs, device=device)
        return RoundOutcome(result, epsilon=math.inf, delta=0.0, noise_multiplier=0.0, sample_rate=0.0)

    delta = site_delta(privacy, n)
    # Opacus' DPDataLoader samples each example with q = 1/len(loader) and takes len(loader) steps
    # per epoch (opacus/data_loader.py); plan and record exactly that.
    sample_rate = 1.0 / len(loader)
    steps = len(loader) * cfg.local_epochs
    ledger = PrivacyLedger.open(privacy.state_dir, epsilon_budget=privacy.epsilon, delta=delta,
                                accountant=privacy.accountant)
    plan = ledger.plan_run(run_id, sample_rate=sample_rate, steps_per_round=steps, rounds=planned_rounds(cfg))
    private = make_private(task, site, trained, optimizer, loader, noise_multiplier=plan.noise_multiplier,
                           max_grad_norm=privacy.max_grad_norm, noise_generator=randomness.noise)
    try:
        entry = ledger.begin_round(run_id, rnd, steps=steps, plan=plan)  # refuses a round past the budget
        with warnings.catch_warnings():
            # A frozen feature extractor (transfer-mobilenet --model head) or a detached input (the
            # generated half of dcgan's batch) leaves no input needing a gradient, and torch says so
            # at every step of Opacus' per-sample hooks; the per-sample gradients are unaffected.
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            if trained is model:
                result = task.train(private.model, private.loader, private.optimizer, epochs=cfg.local_epochs,
                                    device=device, criterion=private.criterion)
            else:  # the hooks live on the part's layers, so the task calls the part through the whole model
                result = task.train(model, private.loader, private.optimizer, epochs=cfg.local_epochs,  # type: ignore[call-arg]
                                    device=device, criterion=private.criterion, private_module=private.model)
    finally:
        # Detach Opacus from the model (hooks, per-sample gradient buffers) so it can be reused, also
        # after a refusal: a warm process (a Ray actor) trains the next site on the same model object.
        private.model.to_standard_module()
    taken = sum(s for _, _, s in private.engine.accountant.history)
    if taken > steps:  # the ledger must never under-count what Opacus' own accountant saw
        entry.steps = taken
    ledger.release_round(entry)
    epsilon = ledger.epsilon_spent()
    log.info("round %s: %d DP-SGD steps, σ=%.3f, q=%.4f, ε spent %.3f of %.3g (δ=%.1e)",
             rnd, entry.steps, plan.noise_multiplier, sample_rate, epsilon, privacy.epsilon, ledger.delta)
    return RoundOutcome(result, epsilon=epsilon, delta=ledger.delta,
                        noise_multiplier=plan.noise_multiplier, sample_rate=sample_rate)
