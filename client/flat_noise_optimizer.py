"""Opacus' DP optimizer for precomputed clipped sums, with the Gaussian noise drawn ahead of its step.

``DPOptimizerFastGradientClipping`` (what Opacus pairs with ghost clipping) copies each parameter's
clipped gradient sum, draws its noise, and scales it, tensor by tensor, with bookkeeping flags
between. For a model of a few small tensors (``tabular``: a 30-64-2 MLP, a 0.25 ms step) those
per-tensor calls cost as much as the model's own backward pass. This subclass keeps the same
mechanism, ``p.grad = (Σ_i c_i g_i + N(0, σ²C²·I)) / E[B]`` (Abadi et al. 2016, "Deep Learning with
Differential Privacy", Algorithm 1, with Opacus' mean reduction by the expected batch size), the same
accountant hook and the same skip queue, but (a) the book-keeping loss has already divided the
clipped sum by E[B] (``grad_scale``, folded into its clip factors), and (b) the noise of all
parameters is one vector of i.i.d. N(0, 1) coordinates, scaled by σC/E[B] and added with one fused
``foreach`` operation. On the CPU that vector is drawn ahead, a buffer of steps at a time, by a helper
thread (:mod:`fedshield.client.prefetched_noise`); elsewhere it is drawn at the step. Not for
``secure_mode`` (Opacus' own optimizer draws its hardened noise there).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from opacus.optimizers import DPOptimizerFastGradientClipping

from fedshield.client.prefetched_noise import PrefetchedNoise


class FlatNoiseDPOptimizer(DPOptimizerFastGradientClipping):
    """Expects ``p.grad`` = ``grad_scale`` × the clipped per-sample gradient sum of every trained parameter."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.secure_mode:
            raise ValueError("FlatNoiseDPOptimizer draws plain torch noise; use Opacus' optimizer in secure_mode")
        self._trained = list(self.params)
        # the mean reduction's 1/E[B], applied by whoever forms the clipped sum (client/book_keeping.py)
        self.grad_scale = 1.0 / self.expected_batch_size if self.loss_reduction == "mean" else 1.0
        first = self._trained[0] if self._trained else torch.zeros(0)
        shapes = [p.shape for p in self._trained]
        self._prefetched: PrefetchedNoise | None = None
        self._noise_views: list[torch.Tensor] = []
        if first.device.type == "cpu":
            self._prefetched = PrefetchedNoise(shapes, dtype=first.dtype, generator=self.generator)
        else:  # one buffer redrawn in place each step (a GPU draws it in microseconds), and its views, made once
            self._noise = torch.empty(sum(p.numel() for p in self._trained), dtype=first.dtype, device=first.device)
            self._noise_views = [n.view(shape) for n, shape in zip(self._noise.split([s.numel() for s in shapes]),
                                                                    shapes, strict=True)]

    def _standard_noise(self) -> list[torch.Tensor]:
        """This step's N(0, 1) noise, one tensor per trained parameter."""
        if self._prefetched is not None:
            return self._prefetched.take()
        self._noise.normal_(generator=self.generator)
        return self._noise_views

    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        try:
            return super().step(closure)
        finally:  # the noise is in the parameters: the helper may refill its buffer now
            if self._prefetched is not None:
                self._prefetched.release()

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Always to ``None`` (whatever ``set_to_none`` says): each backward pass assigns the step's clipped sums
        afresh, and a ``.grad`` still set then shows gradients about to accumulate, which book-keeping refuses
        (:func:`fedshield.client.book_keeping.clip_and_sum`). No ``p.summed_grad`` is kept on this path.

        Every parameter of the wrapped optimizer's groups is cleared here rather than by its own ``zero_grad``:
        with ``set_to_none`` that does the same assignments inside a profiler range and a dynamo guard, which
        cost 15 µs of a 0.2 ms private logistic-regression step, a tenth of it (docs/performance.md)."""
        for group in self.original_optimizer.param_groups:
            for p in group["params"]:
                p.grad = None

    def pre_step(self, closure: Callable[[], float] | None = None) -> bool:
        if self._check_skip_next_step():
            self._is_last_step_skipped = True
            return False
        grads = [p.grad for p in self._trained]
        std = self.noise_multiplier * self.max_grad_norm * self.grad_scale
        try:
            torch._foreach_add_(grads, self._standard_noise(), alpha=std)
        except (TypeError, RuntimeError):  # checked here, not before: a check per step costs a µs of a 0.2 ms step
            if any(g is None for g in grads):
                raise RuntimeError("a trained parameter has no clipped gradient sum: call loss.backward() on the "
                                   "book-keeping loss before optimizer.step()") from None
            raise
        if self.step_hook:
            self.step_hook(self)
        self._is_last_step_skipped = False
        return True
