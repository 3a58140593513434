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
from typing import Any, cast

import torch
from opacus import GradSampleModule, PrivacyEngine
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedshield.client.book_keeping import BookKeepingUnsupported, make_private_book_keeping
from fedshield.client.empty_batches import NoiseOnEmptyBatches
from fedshield.client.privacy_ledger import LedgerEntry
from fedshield.client.private_randomness import DPRandomness, dp_randomness, simulation_noise_seed
from fedshield.client.site_privacy import PrivacySession, PrivacySettings, privacy_session, sampling
from fedshield.common.allocator import retain_freed_memory
from fedshield.common.kernel_cache import bound_kernel_cache
from fedshield.common.run_config import RunConfig
from fedshield.tasks.base import RecordStatistics, SiteData, Task, TrainResult

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RoundOutcome:
    """Training result plus what the reply may say: the site's privacy position after the round, the
    training loss and the example count to report (released under DP, exact without)."""

    result: TrainResult
    epsilon: float
    delta: float
    noise_multiplier: float
    sample_rate: float
    loss: float | None = None
    count: int = 0
    statistics: str = "exact"


@dataclass
class PrivateTraining:
    """What Opacus' ``make_private`` returns: model, DP optimizer, Poisson loader, and (bk, ghost) criterion."""

    engine: PrivacyEngine
    model: GradSampleModule  # Opacus' wrapper (or book-keeping's, which has the same to_standard_module)
    optimizer: torch.optim.Optimizer
    loader: NoiseOnEmptyBatches  # the Poisson DPDataLoader, taking empty batches' steps itself
    criterion: nn.Module | None
    mode: str


def make_private(task: Task, site: SiteData, model: nn.Module, optimizer: torch.optim.Optimizer,
                 loader: DataLoader, *, noise_multiplier: float, max_grad_norm: float,
                 noise_generator: torch.Generator | None = None, expected_batch_size: int | None = None,
                 after: str | None = None) -> PrivateTraining:
    """Opacus' front door with the task's fastest supported mode; falls back (``bk`` → ``ghost`` →
    ``hooks``) explicitly, with a warning naming the layer that forced it.

    Poisson sampling is always on (the accountant's assumption), drawn from ``loader``'s generator;
    the noise from ``noise_generator`` (:mod:`fedshield.client.private_randomness`). ``bk`` and
    ``ghost`` need the loss as a module, which is wrapped to run book-keeping's one backward pass or
    Opacus' two; the task receives that wrapper. The loader takes the noise-only DP-SGD step of every
    empty Poisson batch itself (:mod:`fedshield.client.empty_batches`). ``expected_batch_size``: the E[B]
    the mean reduction divides by, when it must come from the released count rather than from
    ``len(loader.dataset)`` (Opacus' choice: the exact N, which would then leave in every update's scale).
    ``after``: a mode that failed once training began; the modes after it in the fallback order are tried.
    """
    modes = {"hooks": ["hooks"], "bk": ["bk", "ghost", "hooks"]}.get(task.dp_mode, [task.dp_mode, "hooks"])
    if after is not None:
        modes = modes[modes.index(after) + 1:] if after in modes else []
        if not modes:
            raise RuntimeError(f"Opacus cannot train task {task.name} privately: no mode after {after}")
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
                    private_model, dp_optimizer, dp_criterion, dp_loader = make_private_book_keeping(  # type: ignore[assignment]  # book-keeping's module and loss stand in for Opacus'
                        engine, module=model, optimizer=optimizer, criterion=task.criterion(site.schema),
                        data_loader=loader, noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm,
                        noise_generator=noise_generator, expected_batch_size=expected_batch_size)
                elif mode == "ghost":
                    private_model, dp_optimizer, dp_criterion, dp_loader = engine.make_private(
                        criterion=task.criterion(site.schema), **kwargs)
                else:
                    private_model, dp_optimizer, dp_loader = engine.make_private(**kwargs)
                if expected_batch_size is not None and mode != "bk":  # Opacus' optimizers read it at every step
                    dp_optimizer.expected_batch_size = expected_batch_size
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


class ReleasedLengthLoader(DataLoader):
    """A loader whose length is the number of batches the site's *released* count implies.

    Opacus derives the Poisson rate as ``1/len(loader)``; with the exact N that rate, the step count
    and E[B] would reveal N (to within a batch) in every reply. The sampler still draws from the real
    examples.
    """

    def __init__(self, dataset: TensorDataset, *, batches: int, **kwargs: Any) -> None:
        super().__init__(dataset, **kwargs)
        self._batches = batches

    def __len__(self) -> int:
        return self._batches


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
    """Train ``model`` in place for one round; with DP, plan, record and release it in the site's ledger.

    Under DP the whole round runs under the ledger lock (:func:`privacy_session`): the Poisson rate,
    step count and E[B] come from the released count, the round is recorded pending before training
    (a replay or a round past the budget is refused there), recorded as the DP optimizer's accountant
    saw it afterwards, and its training loss is released by the Gaussian mechanism (or, with
    ``--site-metrics exact``, sent exactly and recorded as such).
    """
    retain_freed_memory()  # once per process: keeps a step's freed tensors mapped for the next (common/allocator.py)
    bound_kernel_cache(model, cfg.batch_size)  # before the first convolution (common/kernel_cache.py)
    n = len(site.train)
    seed = None if privacy.virtual_site is None else simulation_noise_seed(cfg.seed, privacy.virtual_site, rnd)
    if seed is not None:  # a simulation's other draws (dropout, a GAN's latents) repeat with the run seed too
        torch.manual_seed(seed ^ 0x5EED)
    model.to(device)
    model.train()
    # A task whose private data reaches only one submodule (a GAN's discriminator) names it: the
    # platform's optimizer and Opacus cover that part; the task trains the rest from it alone.
    part = getattr(task, "private_part", None)
    trained = part(model) if callable(part) else model
    optimizer = torch.optim.SGD(trained.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    if not privacy.enabled:
        generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + rnd)
        loader = DataLoader(site.train, batch_size=min(cfg.batch_size, n), shuffle=True, generator=generator)
        result = task.train(model, loader, optimizer, epochs=cfg.local_epochs, device=device)
        return RoundOutcome(result, epsilon=math.inf, delta=0.0, noise_multiplier=0.0, sample_rate=0.0,
                            loss=result.loss, count=n)

    # which examples each step samples stays as secret as the noise
    randomness: DPRandomness = dp_randomness(seed, device)
    with privacy_session(privacy, site, cfg, run_id=run_id, rnd=rnd, purpose="train") as session:
        plan = session.plan(cfg)
        draw = sampling(session.counts.released_train, cfg.batch_size)
        loader = ReleasedLengthLoader(site.train, batches=draw.batches, batch_size=min(cfg.batch_size, n),
                                      shuffle=True, generator=randomness.sampling)
        private = make_private(task, site, trained, optimizer, loader, noise_multiplier=plan.noise_multiplier,
                               max_grad_norm=privacy.max_grad_norm, noise_generator=randomness.noise,
                               expected_batch_size=draw.expected_batch)
        try:
            entry = session.begin(rnd, "train", plan, steps=len(private.loader) * cfg.local_epochs)
            try:
                result = _train_privately(task, model, trained, private, cfg, device)
            except BookKeepingUnsupported as refused:
                if private.mode != "bk" or private.engine.accountant.history:
                    raise  # a step was taken: its noise and its accounting belong to this mode's round
                # A layer book-keeping has no rule for can show itself only in the first backward pass (a norm
                # layer called twice in one forward). No step was taken: no noise drawn, no parameter moved,
                # nothing recorded or sent. The round starts again with Opacus' next mode, as make_private
                # falls back for a layer it sees when wrapping the model.
                log.warning("task %s: book-keeping clipping stopped at the first step (%s); falling back",
                            task.name, refused)
                private.model.to_standard_module()
                optimizer.zero_grad(set_to_none=True)
                private = make_private(task, site, trained, optimizer, loader, noise_multiplier=plan.noise_multiplier,
                                       max_grad_norm=privacy.max_grad_norm, noise_generator=randomness.noise,
                                       expected_batch_size=draw.expected_batch, after="bk")
                result = _train_privately(task, model, trained, private, cfg, device)
        finally:
            # Detach Opacus from the model (hooks, per-sample gradient buffers) so it can be reused, also
            # after a refusal: a warm process (a Ray actor) trains the next site on the same model object.
            private.model.to_standard_module()
        loss = _released_training_loss(task, model, site, session, entry, device) if entry.statistics_noise else \
            (result.loss if privacy.site_metrics == "exact" else None)
        if entry.statistics_noise and loss is None:
            entry.statistics_noise = 0.0  # the task reports no per-example loss: nothing was released
        session.ledger.settle(entry, ran=list(private.engine.accountant.history))
        epsilon = session.ledger.epsilon_spent()
        log.info("round %s: %d DP-SGD steps, σ=%.3f, q=%.4f, ε spent %.3f of %.3g (δ=%.1e)",
                 rnd, entry.steps, entry.noise_multiplier, entry.sample_rate, epsilon, privacy.epsilon,
                 session.ledger.delta)
        return RoundOutcome(result, epsilon=epsilon, delta=session.ledger.delta,
                            noise_multiplier=entry.noise_multiplier, sample_rate=entry.sample_rate, loss=loss,
                            count=session.counts.released_train if privacy.private_statistics else n,
                            statistics=privacy.site_metrics)


def _train_privately(task: Task, model: nn.Module, trained: nn.Module, private: PrivateTraining, cfg: RunConfig,
                     device: torch.device) -> TrainResult:
    """The task's local epochs through the private model, optimizer, loader and criterion."""
    with warnings.catch_warnings():
        # A frozen feature extractor (transfer-mobilenet --model head) or a detached input (the generated
        # half of dcgan's batch) leaves no input needing a gradient, and torch says so at every step of
        # Opacus' per-sample hooks; the per-sample gradients are unaffected.
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        # the private loader iterates, has len() and .dataset: a DataLoader to the task
        loader_view = cast(DataLoader, private.loader)
        if trained is model:
            return task.train(private.model, loader_view, private.optimizer, epochs=cfg.local_epochs, device=device,
                              criterion=private.criterion)
        # the hooks live on the part's layers, so the task calls the part through the whole model
        return task.train(model, loader_view, private.optimizer, epochs=cfg.local_epochs,  # type: ignore[call-arg]  # a task with a private_part takes private_module
                          device=device, criterion=private.criterion, private_module=private.model)


def _released_training_loss(task: Task, model: nn.Module, site: SiteData, session: PrivacySession, entry: LedgerEntry,
                            device: torch.device) -> float | None:
    """The trained model's mean loss over the site's training records, as a Gaussian release (None when
    the task cannot give per-example losses)."""
    per_example = getattr(task, "per_example_statistics", None)
    if not callable(per_example):
        return None
    stats: RecordStatistics = per_example(model, site.train, device=device, loss_only=True)
    model.train()
    return session.release_means(stats, entry)["loss"]
