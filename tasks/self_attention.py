"""Multi-head self-attention built from two ``nn.Linear`` layers, equal to ``nn.MultiheadAttention``.

Stock ``nn.MultiheadAttention`` keeps its input projection as a bare parameter, for which Opacus has no
per-sample gradient rule; Opacus' replacement, ``DPMultiheadAttention``, does not compute multi-head
attention when built with ``batch_first=True`` (Opacus 1.6: with ``nn.MultiheadAttention``'s weights its
output differed by up to 0.74, meta-pytorch/opacus#825). Here the projections are ``nn.Linear`` layers,
which every per-sample mode handles (Opacus' hooks and ghost clipping, FedShield's book-keeping), and the
attention itself, which has no parameters, is ``F.scaled_dot_product_attention`` (Vaswani et al. 2017,
"Attention Is All You Need", eq. 1 and the multi-head form of section 3.2.2).

With ``in_proj.weight`` = ``nn.MultiheadAttention.in_proj_weight`` (queries, keys, values stacked in that
order), ``in_proj.bias`` = ``in_proj_bias`` and ``out_proj`` = ``out_proj``, the output equals
``nn.MultiheadAttention(width, heads, batch_first=True)(x, x, x, key_padding_mask=padding)[0]``
(tests/test_task_text.py compares them).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MultiheadSelfAttention(nn.Module):
    """Self-attention over (N, L, width) with ``heads`` heads; no dropout, no extra key/value biases."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.in_proj = nn.Linear(width, 3 * width)
        self.out_proj = nn.Linear(width, width)
        # nn.MultiheadAttention's initialisation (its _reset_parameters); out_proj.weight keeps nn.Linear's
        nn.init.xavier_uniform_(self.in_proj.weight)
        nn.init.zeros_(self.in_proj.bias)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        """``x`` (N, L, width); ``padding`` (N, L) bool, True where a key is padding (never a whole row)."""
        n, length, width = x.shape
        # (N, L, 3·width) → queries, keys, values, each (N, heads, L, width/heads)
        q, k, v = self.in_proj(x).view(n, length, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=~padding[:, None, None, :])
        return self.out_proj(attended.transpose(1, 2).reshape(n, length, width))
