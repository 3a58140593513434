"""A Poisson batch that samples no example is still a DP-SGD step: zero clipped sum plus the noise.

Opacus' ``DPDataLoader`` draws each example with probability q, so a batch can be empty (probability
about e^-E[B] per step). The privacy analysis of the subsampled Gaussian mechanism (Mironov, Talwar,
Zhang 2019) assumes every step releases ``Σ clipped gradients + N(0, σ²C²)``, which for an empty
batch is the noise alone. The task training loops skip an empty batch (nothing to learn from), and a
skipped step would show which steps sampled nobody: between datasets with and without one person,
"no step" against "a step carrying that person's gradient" cannot be bounded by σ, a failure whose
probability grows like T·q·e^-E[B] (negligible at the default batch of 32, not at a batch of 4).

:class:`NoiseOnEmptyBatches` wraps the private loader: before it hands the loop an empty batch, it
takes that step itself through the DP optimizer's own path for an empty batch (Opacus'
``clip_and_accumulate`` handles zero per-sample gradients; the ghost and book-keeping optimizers take
``p.grad`` as the clipped sum), so the noise is added, the parameters move, and the accountant counts
the step, exactly as for a step with examples.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from opacus.optimizers import DPOptimizer, DPOptimizerFastGradientClipping
from torch.utils.data import DataLoader


def noise_only_step(optimizer: DPOptimizer) -> None:
    """One DP-SGD step with no example in the batch: the clipped sum is zero, the noise is drawn and
    applied, the accountant's hook runs."""
    optimizer.zero_grad(set_to_none=True)
    for p in optimizer.params:  # the trained parameters (Opacus lists those with requires_grad)
        if isinstance(optimizer, DPOptimizerFastGradientClipping):  # ghost and book-keeping: p.grad is Σ c_i g_i
            p.grad = torch.zeros_like(p)
        else:  # per-sample gradients of zero examples
            p.grad_sample = p.new_zeros((0, *p.shape))
    optimizer.step()


def _is_empty(batch: Any) -> bool:
    first = batch[0] if isinstance(batch, (tuple, list)) else batch
    return isinstance(first, torch.Tensor) and first.shape[0] == 0


class NoiseOnEmptyBatches:
    """The private loader, taking the DP-SGD step of every empty Poisson batch before yielding it.

    ``empty_steps`` counts those steps. Every other attribute (``dataset``, ``batch_sampler``, ...)
    is the wrapped loader's.
    """

    def __init__(self, loader: DataLoader, optimizer: DPOptimizer) -> None:
        self.loader = loader
        self.optimizer = optimizer
        self.empty_steps = 0

    def __iter__(self) -> Iterator[Any]:
        for batch in self.loader:
            if _is_empty(batch):
                noise_only_step(self.optimizer)
                self.empty_steps += 1
            yield batch

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)
