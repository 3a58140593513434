"""Book-keeping's per-sample rules for ``nn.Embedding``, ``nn.LayerNorm`` and ``nn.GroupNorm`` (used by
client/book_keeping.py).

Book-keeping (Bu, Mao, Xu, Zha, Karypis 2023, "Differentially Private Optimization on Large Model at Small
Cost", ICML) needs, for each layer, every example's squared gradient norm and the clip-weighted sum of the
examples' gradients, from the layer's recorded input and its output gradient ``G = ∂L/∂Z`` alone. Neither
layer here is a product ``Z = A·Wᵀ``, but both have per-example gradients as cheap to form:

- ``nn.Embedding`` (``Z_t = W[x_t]``): example i's weight gradient ``Σ_t e_{x_it} G_itᵀ`` is nonzero only in
  the rows of the ids it holds, and its squared norm is ``Σ_{t,t'} [x_it = x_it'] ⟨G_it, G_it'⟩``. Summing
  ``G``'s rows per distinct (example, id) pair (one ``index_add_`` over the ``B·T`` rows, ``D`` values each)
  gives those nonzero rows themselves: the norm then costs ``B·T·D``, where the ghost form's ``(T, T)``
  Gram matrices cost ``B·T²·D`` and the dense per-example gradients ``B·V·D`` (a 2048-id vocabulary: 64×
  the 32 rows of a text). The clipped sum is one ``index_add_`` of those rows weighted by their example's
  ``c_i``. Rows at ``padding_idx`` get no gradient, as in ``nn.Embedding``'s own backward.
- ``nn.LayerNorm`` (``Z = x̂ ∘ γ + β`` over the normalised trailing dims): example i's gradients are
  ``Σ_t G_it ∘ x̂_it`` and ``Σ_t G_it``, materialised ``(B, numel)``; ``x̂`` is recomputed from the recorded
  input by ``F.layer_norm`` without the affine part, with the layer's ``eps``.
- ``nn.GroupNorm`` (``Z_c = x̂_c·γ_c + β_c``, ``x̂`` normalised over each example's group of channels and all
  positions, Wu & He 2018): example i's gradients are ``Σ_p G_icp·x̂_icp`` and ``Σ_p G_icp`` over the positions
  ``p``, materialised ``(B, C)``; ``x̂`` from ``F.group_norm`` without the affine part (same groups, same ``eps``).
  Each example is normalised with its own statistics only, so examples do not interact.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def embedding_unsupported(layer: nn.Embedding) -> str | None:
    """Why book-keeping cannot clip ``layer``'s per-sample gradients, or ``None`` when it can."""
    if layer.sparse:
        return "a sparse embedding (sparse=True)"
    if layer.max_norm is not None:
        return "an embedding that renormalises its rows in the forward pass (max_norm)"
    if layer.scale_grad_by_freq:
        return "an embedding whose gradient depends on the batch's id counts (scale_grad_by_freq)"
    return None


def _per_example(t: torch.Tensor, b: int) -> torch.Tensor:
    """``t`` ``(B, ...)`` as ``(B, T)`` (``flatten``, not ``reshape(b, -1)``: a Poisson batch can be empty)."""
    return t.flatten(1) if t.dim() > 1 else t.unsqueeze(1)


class EmbeddingTerms:
    """An ``nn.Embedding`` call's per-sample squared norms ``(B,)`` and clipped weight gradient sum.

    ``ids``: the call's integer input ``(B, ...)``; ``grad``: its output's gradient ``(B, ..., D)``.
    """

    def __init__(self, layer: nn.Embedding, ids: torch.Tensor, grad: torch.Tensor) -> None:
        self.layer = layer
        b, d, vocab = grad.shape[0], layer.embedding_dim, layer.num_embeddings
        ids = _per_example(ids, b)  # (B, T)
        rows = grad.reshape(-1, d)  # (B·T, D), example-major as ids
        if layer.padding_idx is not None:
            rows = rows.masked_fill(ids.reshape(-1, 1) == layer.padding_idx, 0.0)
        keys = ids + vocab * torch.arange(b, device=ids.device).unsqueeze(1)  # one key per (example, id)
        unique, inverse = torch.unique(keys.reshape(-1), return_inverse=True)
        # row u: example unique[u] // V's gradient in weight row unique[u] % V (its nonzero rows, nothing else)
        self.rows = torch.zeros(len(unique), d, dtype=grad.dtype, device=grad.device).index_add_(0, inverse, rows)
        self.example = unique // vocab
        self.id = unique - self.example * vocab
        self.squared_norms = torch.zeros(b, dtype=grad.dtype, device=grad.device).index_add_(
            0, self.example, torch.linalg.vecdot(self.rows, self.rows))

    def clipped_grads(self, factors: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``[(weight, Σ_i c_i ∂ℓ_i/∂W)]`` for the clip factors ``factors`` ``(B,)``."""
        weight = self.layer.weight
        summed = torch.zeros_like(weight, dtype=self.rows.dtype).index_add_(
            0, self.id, self.rows * factors[self.example].unsqueeze(1))
        return [(weight, summed)]


class LayerNormTerms:
    """An ``nn.LayerNorm`` call's per-sample squared norms ``(B,)`` and clipped weight and bias sums.

    ``x``: the call's input ``(B, ..., *normalized_shape)``; ``grad``: its output's gradient, same shape.
    """

    def __init__(self, layer: nn.LayerNorm, x: torch.Tensor, grad: torch.Tensor) -> None:
        g = grad.flatten(grad.dim() - len(layer.normalized_shape))  # (B, ..., numel)
        g = g.flatten(1, -2) if g.dim() > 2 else g.unsqueeze(1)  # (B, positions, numel); flatten: B can be 0
        self.per_sample: list[tuple[torch.Tensor, torch.Tensor]] = []  # (parameter, (B, numel))
        weight, bias = layer.weight, layer.bias
        if weight is not None and weight.requires_grad:
            x_hat = F.layer_norm(x, layer.normalized_shape, eps=layer.eps).reshape(g.shape)
            self.per_sample.append((weight, (g * x_hat).sum(1)))
        if bias is not None and bias.requires_grad:
            self.per_sample.append((bias, g.sum(1)))
        squared = [torch.linalg.vecdot(ps, ps) for _, ps in self.per_sample]
        self.squared_norms = squared[0] if len(squared) == 1 else squared[0] + squared[1]

    def clipped_grads(self, factors: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``[(parameter, Σ_i c_i ∂ℓ_i/∂θ)]`` for each trained parameter, ``factors`` ``(B,)``."""
        return [(p, (factors @ ps).reshape(p.shape)) for p, ps in self.per_sample]


def _channels_positions(t: torch.Tensor) -> torch.Tensor:
    """``t`` ``(B, C, *spatial)`` as ``(B, C, positions)`` (``(B, C)``: one position); a batch may be empty."""
    return t.flatten(2) if t.dim() > 2 else t.unsqueeze(2)


class GroupNormTerms:
    """An ``nn.GroupNorm`` call's per-sample squared norms ``(B,)`` and clipped weight and bias sums.

    ``x``: the call's input ``(B, C, *spatial)``; ``grad``: its output's gradient, same shape.
    """

    def __init__(self, layer: nn.GroupNorm, x: torch.Tensor, grad: torch.Tensor) -> None:
        g = _channels_positions(grad)  # (B, C, positions)
        self.per_sample: list[tuple[torch.Tensor, torch.Tensor]] = []  # (parameter, (B, C))
        weight, bias = layer.weight, layer.bias
        if weight is not None and weight.requires_grad:
            x_hat = _channels_positions(F.group_norm(x, layer.num_groups, eps=layer.eps))
            self.per_sample.append((weight, torch.linalg.vecdot(g, x_hat)))
        if bias is not None and bias.requires_grad:
            self.per_sample.append((bias, g.sum(2)))
        squared = [torch.linalg.vecdot(ps, ps) for _, ps in self.per_sample]
        self.squared_norms = squared[0] if len(squared) == 1 else squared[0] + squared[1]

    def clipped_grads(self, factors: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``[(parameter, Σ_i c_i ∂ℓ_i/∂θ)]`` for each trained parameter, ``factors`` ``(B,)``."""
        return [(p, factors @ ps) for p, ps in self.per_sample]
