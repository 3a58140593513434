"""LSTM encoder–decoder with attention (Luong et al. 2015, "Effective Approaches to Attention-based
Neural Machine Translation", the "general" score hₜᵀ W h̄ₛ), the design documents' translator.

Both LSTMs are Opacus' ``DPLSTM``: it unrolls each cell over time as two ``RNNLinear`` layers called once
per step, whose per-step inputs and output gradients give per-sample gradients (book-keeping joins each
layer's calls over the steps, client/book_keeping.py; Opacus' hooks sum them); PyTorch's fused ``nn.LSTM``
exposes neither. Training is teacher-forced and parallel over target positions; decoding is greedy, one
byte at a time.
Shapes: source (N, S) left-padded ids, decoder input (N, T) ids; output (N, T, vocab) logits.
"""

from __future__ import annotations

import torch
from opacus.layers import DPLSTM
from torch import nn

from fedshield.tasks.byte_tokens import BOS, EOS, PAD, VOCAB


class Seq2SeqAttention(nn.Module):
    """Byte embeddings (32) → DPLSTM encoder (hidden 96) → DPLSTM decoder initialised with the
    encoder's final state → attention over the encoder outputs → tanh(W[h; c]) → vocabulary."""

    def __init__(self, vocab: int = VOCAB, embed: int = 32, hidden: int = 96) -> None:
        super().__init__()
        # no padding_idx: Opacus' per-sample embedding gradients ignore it (they would update the pad row
        # that autograd keeps fixed); pads are masked out of attention and the loss instead
        self.src_embed = nn.Embedding(vocab, embed)
        self.tgt_embed = nn.Embedding(vocab, embed)
        self.encoder = DPLSTM(embed, hidden, batch_first=True)
        self.decoder = DPLSTM(embed, hidden, batch_first=True)
        self.score = nn.Linear(hidden, hidden, bias=False)
        self.combine = nn.Linear(2 * hidden, hidden)
        self.out = nn.Linear(hidden, vocab)

    def encode(self, src: torch.Tensor):
        outputs, state = self.encoder(self.src_embed(src))
        return outputs, state, src != PAD

    def step(self, tgt_in: torch.Tensor, enc: torch.Tensor, state, mask: torch.Tensor):
        # contiguous: the teacher-forced input is a slice of the target, whose view Opacus' ghost-clipping
        # embedding rule (the fallback where book-keeping is refused) cannot flatten
        dec, state = self.decoder(self.tgt_embed(tgt_in.contiguous()), state)
        scores = torch.bmm(self.score(dec), enc.transpose(1, 2)).masked_fill(~mask[:, None, :], -1e9)
        context = torch.bmm(scores.softmax(dim=-1), enc)
        return self.out(torch.tanh(self.combine(torch.cat([dec, context], dim=-1)))), state

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        enc, state, mask = self.encode(src)
        return self.step(tgt_in, enc, state, mask)[0]

    @torch.no_grad()
    def greedy(self, src: torch.Tensor, max_len: int) -> torch.Tensor:
        """(N, ≤ max_len + 1) ids decoded greedily, stopping when every row has produced EOS."""
        enc, state, mask = self.encode(src)
        token = torch.full((len(src), 1), BOS, dtype=torch.long, device=src.device)
        out = []
        done = torch.zeros(len(src), dtype=torch.bool, device=src.device)
        for _ in range(max_len + 1):
            logits, state = self.step(token, enc, state, mask)
            token = logits.argmax(dim=-1)
            out.append(token)
            done |= token[:, 0] == EOS
            if bool(done.all()):
                break
        return torch.cat(out, dim=1)
