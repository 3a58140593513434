"""``text-transformer``: an encoder-only transformer text classifier, trained from scratch under DP-SGD.

The design documents' BERT-style classifier, scaled to what a site can train privately on a CPU:
hashed word ids (:mod:`fedshield.tasks.hashing_tokenizer`, no vocabulary download) → token +
position embeddings (d = 64) → 2 encoder layers (4-head self-attention, feed-forward 128, post-norm,
as in Vaswani et al. 2017) → mean over the non-padding positions → linear layer to K classes. Attention is
:class:`~fedshield.tasks.self_attention.MultiheadSelfAttention`, equal to ``nn.MultiheadAttention`` on the same
weights (which has no per-sample gradients) out of ``nn.Linear`` layers; no BatchNorm.
About 202,000 parameters with the defaults (131,000 of them the hashed-word embeddings).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset

from fedshield.tasks.base import DataSchema, SiteData, TaskOptions
from fedshield.tasks.hashing_tokenizer import PAD, encode
from fedshield.tasks.holdout import holdout_indices
from fedshield.tasks.self_attention import MultiheadSelfAttention
from fedshield.tasks.supervised import CLASSIFICATION_METRICS, SupervisedTask
from fedshield.tasks.text_csv import find_csv, read_text_csv, text_label_set

BUCKETS = 2048
DEFAULT_MAX_LENGTH = 64
WIDTH, HEADS, LAYERS, FEED_FORWARD = 64, 4, 2, 128


class EncoderLayer(nn.Module):
    """Self-attention and feed-forward, each with a residual connection and LayerNorm (post-norm)."""

    def __init__(self, width: int, heads: int, feed_forward: int) -> None:
        super().__init__()
        self.attention = MultiheadSelfAttention(width, heads)
        self.norm1 = nn.LayerNorm(width)
        self.feed_forward = nn.Sequential(nn.Linear(width, feed_forward), nn.ReLU(), nn.Linear(feed_forward, width))
        self.norm2 = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.attention(x, padding))
        return self.norm2(x + self.feed_forward(x))


class TextTransformer(nn.Module):
    """Input (N, L) int64 token ids (0 = padding, position 0 = ``[CLS]``, never padding); output (N, K) logits."""

    def __init__(self, classes: int, max_length: int = DEFAULT_MAX_LENGTH, buckets: int = BUCKETS, width: int = WIDTH,
                 heads: int = HEADS, layers: int = LAYERS, feed_forward: int = FEED_FORWARD) -> None:
        super().__init__()
        self.tokens = nn.Embedding(buckets, width)
        self.positions = nn.Embedding(max_length, width)
        self.layers = nn.ModuleList(EncoderLayer(width, heads, feed_forward) for _ in range(layers))
        self.head = nn.Linear(width, classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        # positions get a batch dimension so that Opacus computes per-sample gradients for them too; contiguous,
        # because Opacus 1.6's ghost clipping views the ids (an expanded view made it fail at the first step)
        positions = torch.arange(ids.shape[1], device=ids.device).expand(ids.shape[0], -1).contiguous()
        x = self.tokens(ids) + self.positions(positions)
        padding = ids == PAD
        for layer in self.layers:
            x = layer(x, padding)
        # mean over the real tokens ([CLS] included): every word reaches the classifier directly, which
        # learns in far fewer noisy DP-SGD steps than reading the [CLS] position alone
        keep = (~padding).unsqueeze(-1).to(x.dtype)
        return self.head((x * keep).sum(dim=1) / keep.sum(dim=1))

    @staticmethod
    def retired_weights(weights: Mapping[str, torch.Tensor]) -> str | None:
        """Why ``weights`` (a state_dict) cannot start this model, when they come from the model as it was with
        Opacus' ``DPMultiheadAttention``: it saved ``attention.in_proj_weight`` (this model:
        ``attention.in_proj.weight``) and did not compute multi-head attention, so the same tensors would
        compute something else here; ``None`` otherwise."""
        old = next((name for name in weights if name.endswith(".attention.in_proj_weight")), None)
        if old is None:
            return None
        return (f"a text-transformer saved before its attention was corrected (tensor {old!r}: Opacus' "
                "DPMultiheadAttention, whose batch-first output was not multi-head attention), so its weights do "
                "not fit the corrected model; start a new run without --init-weights or --resume")


class TextTransformerTask(SupervisedTask):
    """Encoder-only transformer on a CSV of ``text,label`` rows."""

    name = "text-transformer"
    models = ("auto",)  # one model: any other --model is refused before a run starts
    summary = "encoder-only transformer (2 layers, 4 heads, d=64) classifying short texts, hashed words, from scratch"
    data_format = ("one CSV with header text,label (UTF-8); labels 0..K-1 (classes = K in fedshield.toml, default "
                   "2) or the names of fedshield.toml labels = [...]; at most max_length tokens (default 64) per "
                   "text; 20% held out for validation")
    metrics = CLASSIFICATION_METRICS
    # one-pass book-keeping (client/book_keeping.py: its Embedding, LayerNorm and sequence Linear rules); Opacus'
    # ghost and hooks modes, the fallbacks, train it too (tests/test_dp_training.py)
    dp_mode = "bk"

    def load_site(self, path: Path, options: TaskOptions) -> SiteData:
        path = Path(path)
        labels = text_label_set(options.extra)
        max_length = int(options.extra.get("max_length", DEFAULT_MAX_LENGTH))
        texts, y = read_text_csv(find_csv(path, options.extra), labels=labels, max_length=max_length)
        train, val = holdout_indices(texts, y, val_fraction=options.val_fraction, seed=options.seed, where=str(path))
        ids = torch.as_tensor(encode(texts, buckets=BUCKETS, max_length=max_length))
        yt = torch.as_tensor(y)
        schema = DataSchema(kind="classification", input_shape=(max_length,), num_outputs=len(labels), labels=labels)
        return SiteData(TensorDataset(ids[train], yt[train]), TensorDataset(ids[val], yt[val]), schema, path)

    def build_model(self, schema: DataSchema, options: TaskOptions) -> nn.Module:
        return TextTransformer(schema.num_outputs, max_length=schema.input_shape[0])
