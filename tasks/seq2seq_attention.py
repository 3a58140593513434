"""``seq2seq-attention``: the design documents' LSTM translator with attention, on byte-level tokens.

Sites hold ``source<TAB>target`` pairs (UTF-8 TSV). Trained under DP-SGD with teacher forcing
(loss: per-example mean cross-entropy over its target bytes); evaluated by greedy decoding.
Metrics: ``exact_match`` (share of targets reproduced exactly) and ``bleu`` (sacreBLEU's corpus BLEU,
0-100, default 13a tokenisation), plus the teacher-forced ``loss``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedshield.common.errors import DataError
from fedshield.tasks.base import DataSchema, RecordStatistics, SiteData, TaskOptions
from fedshield.tasks.byte_tokens import PAD, VOCAB, decode, source_tensor, target_tensor
from fedshield.tasks.holdout import holdout_indices
from fedshield.tasks.seq2seq_model import Seq2SeqAttention
from fedshield.tasks.supervised import SupervisedTask
from fedshield.tasks.tsv_pairs import find_tsv, read_pairs

DEFAULT_MAX_SOURCE = 48
DEFAULT_MAX_TARGET = 16


def _limit(options: TaskOptions, key: str, default: int) -> int:
    value = options.extra.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 1024:
        raise DataError(f"fedshield.toml: {key} = {value!r}; give a whole number of bytes from 1 to 1024")
    return value


def example_losses(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Each example's mean cross-entropy over its non-pad target bytes: logits (N, T, V), target (N, T) → (N,)."""
    ce = nn.functional.cross_entropy(logits.transpose(1, 2), target, ignore_index=PAD, reduction="none")
    valid = (target != PAD).sum(dim=1).clamp(min=1)
    return ce.sum(dim=1) / valid


def sequence_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over examples of :func:`example_losses` (per-example means keep every example's weight
    equal under DP-SGD's per-sample clipping)."""
    return example_losses(logits, target).mean()


class SequenceLoss(nn.Module):
    """:func:`example_losses` as a criterion module, reduced over examples by ``reduction`` (``mean``,
    ``sum`` or ``none``): what DP-SGD's loss wrappers set and call. Book-keeping sets ``sum``, so each
    example's row of every output gradient is its own loss's gradient; Opacus' ghost clipping sets ``none``."""

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = reduction

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:  # nn.CrossEntropyLoss's names
        """``input``: logits (N, T, V); ``target``: ids (N, T), PAD ignored."""
        losses = example_losses(input, target)
        if self.reduction == "none":
            return losses
        return losses.sum() if self.reduction == "sum" else losses.mean()


class Seq2SeqAttentionTask(SupervisedTask):
    """LSTM encoder–decoder with Luong attention translating short texts byte by byte."""

    name = "seq2seq-attention"
    models = ("auto",)  # one model: any other --model is refused before a run starts
    summary = ("LSTM encoder-decoder with attention (DPLSTM, hidden 96) translating short texts byte by byte; "
               "exact match and BLEU")
    data_format = ("data.tsv: one source<TAB>target pair per line (UTF-8, no header); at most max_length bytes "
                   "of source (default 48) and max_target_length of target (default 16); 20% held out")
    metrics = ("loss", "exact_match", "bleu")
    # book-keeping joins each DPLSTM RNNLinear's per-step calls into one call over time steps
    # (client/book_keeping.py); falls back to ghost, then Opacus' hooks
    dp_mode = "bk"

    def default_lr(self, dp: bool) -> float:
        """SGD step: 1.0 with DP-SGD, 2.0 without (measured, docs/tasks/seq2seq-attention.md)."""
        return 1.0 if dp else 2.0

    def criterion(self, schema: DataSchema) -> nn.Module:
        return SequenceLoss()

    def load_site(self, path: Path, options: TaskOptions) -> SiteData:
        path = Path(path)
        max_source = _limit(options, "max_length", DEFAULT_MAX_SOURCE)
        max_target = _limit(options, "max_target_length", DEFAULT_MAX_TARGET)
        sources, targets = read_pairs(find_tsv(path, options.extra.get("file")), max_source=max_source,
                                      max_target=max_target)
        train, val = holdout_indices(sources, targets, val_fraction=options.val_fraction, seed=options.seed,
                                     where=str(path))
        src, tgt = source_tensor(sources, max_source), target_tensor(targets, max_target)
        schema = DataSchema(kind="sequence", input_shape=(max_source,), num_outputs=VOCAB)
        index_train, index_val = torch.as_tensor(train), torch.as_tensor(val)
        return SiteData(TensorDataset(src[index_train], tgt[index_train]),
                        TensorDataset(src[index_val], tgt[index_val]), schema, path)

    def build_model(self, schema: DataSchema, options: TaskOptions) -> nn.Module:
        return Seq2SeqAttention(vocab=schema.num_outputs)

    def step_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                  criterion: nn.Module | None) -> torch.Tensor:
        """Teacher forcing: the decoder reads the target shifted right and predicts it. ``criterion``: the DP
        mode's wrapper around :class:`SequenceLoss` when given."""
        if criterion is not None:
            return criterion(model(x, y[:, :-1]), y[:, 1:])
        return sequence_loss(model(x, y[:, :-1]), y[:, 1:])

    @torch.no_grad()
    def per_example_statistics(self, model: nn.Module, data: TensorDataset, *, device: torch.device,
                               batch_size: int = 256, loss_only: bool = False) -> RecordStatistics:
        """Each pair's teacher-forced loss (bounded at 2·ln 256, twice an uninformed model's) and whether
        greedy decoding reproduces its target exactly (0/1). BLEU is a corpus statistic, not a sum of
        per-record values, so a site under DP does not report it."""
        model.eval()
        losses, exact = [], []
        for src, tgt in DataLoader(data, batch_size=batch_size):
            src, tgt = src.to(device), tgt.to(device)
            losses.append(example_losses(model(src, tgt[:, :-1]), tgt[:, 1:]).double().cpu())
            if not loss_only:
                decoded = model.greedy(src, max_len=tgt.shape[1] - 2).cpu()  # type: ignore[operator]  # Seq2SeqAttention.greedy, the task's own model
                exact += [float(decode(p.tolist()) == decode(r[1:].tolist()))
                          for p, r in zip(decoded, tgt.cpu(), strict=True)]
        values = {"loss": torch.cat(losses).numpy()}
        bounds = {"loss": 2.0 * math.log(256)}
        if not loss_only:
            values["exact_match"], bounds["exact_match"] = np.asarray(exact), 1.0
        return RecordStatistics(values, bounds)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, data: TensorDataset, *, device: torch.device,
                 batch_size: int = 256) -> dict[str, float]:
        import sacrebleu

        model.eval()
        losses, predictions, references = [], [], []
        for src, tgt in DataLoader(data, batch_size=batch_size):
            src, tgt = src.to(device), tgt.to(device)
            losses.append(float(sequence_loss(model(src, tgt[:, :-1]), tgt[:, 1:])) * len(src))
            decoded = model.greedy(src, max_len=tgt.shape[1] - 2).cpu()  # type: ignore[operator]  # Seq2SeqAttention.greedy, the task's own model
            predictions += [decode(row.tolist()) for row in decoded]
            references += [decode(row[1:].tolist()) for row in tgt.cpu()]
        exact = sum(p == r for p, r in zip(predictions, references, strict=True)) / max(len(references), 1)
        bleu = sacrebleu.corpus_bleu(predictions, [references]).score
        return {"loss": sum(losses) / max(len(references), 1), "exact_match": float(exact), "bleu": float(bleu)}
