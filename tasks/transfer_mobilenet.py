"""``transfer-mobilenet``: transfer learning on a MobileNetV2 backbone (the design documents' model).

``--model`` picks what trains and how wide the network is: ``head`` (the feature extractor frozen,
only the 1280→K classifier trains: the usual transfer-learning set-up, and under DP-SGD far cheaper
per step, since Opacus needs per-sample gradients of the head only), ``full`` (end to end), or
``auto`` (``head`` when the run starts from ``--init-weights``, else ``full``). A suffix ``@W`` sets
the width multiplier W (0.35, 0.5, 0.75 or 1.0, default 1.0), e.g. ``--model full@0.35``.

Sites hold colour images in ``cifar-cnn``'s formats, resized to 32×32.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from fedshield.common.errors import ConfigError
from fedshield.tasks.base import DataSchema, SiteData, TaskOptions
from fedshield.tasks.cifar_cnn import CifarCNNTask
from fedshield.tasks.mobilenet_v2 import MobileNetV2

WIDTHS = (0.35, 0.5, 0.75, 1.0)
TRAINED_PARTS = ("auto", "head", "full")


@dataclass(frozen=True)
class Variant:
    """``trains``: ``auto``, ``head`` or ``full``; ``width``: the width multiplier."""

    trains: str
    width: float

    def __str__(self) -> str:
        return f"{self.trains}@{self.width:g}"


def parse_variant(model: str) -> Variant:
    """``head``, ``full@0.35``... → Variant; a one-line ``ConfigError`` naming ``--model`` otherwise."""
    trains, at, width_text = model.partition("@")
    fix = (f"--model {model!r}: transfer-mobilenet models are auto, head or full, optionally @WIDTH with "
           f"WIDTH one of {', '.join(format(w, 'g') for w in WIDTHS)} (e.g. head@0.5)")
    if trains not in TRAINED_PARTS:
        raise ConfigError(fix)
    try:
        width = float(width_text) if at else 1.0
    except ValueError:
        raise ConfigError(fix) from None
    if width not in WIDTHS:
        raise ConfigError(fix)
    return Variant(trains, width)


class TransferMobileNetTask(CifarCNNTask):
    """MobileNetV2 (GroupNorm) on 32×32 colour images; head-only or end-to-end training."""

    name = "transfer-mobilenet"
    models = None  # variants (auto, head, full, @WIDTH) are parsed by resolve_model, not listed
    summary = ("MobileNetV2 backbone (GroupNorm) with a trainable classifier head; --model head freezes the "
               "features (start from --init-weights), full trains end to end; colour images resized to 32×32")
    data_format = CifarCNNTask.data_format
    reads_sites_of = ("cifar-cnn",)  # a site folder written for cifar-cnn joins this task's runs too
    metrics = CifarCNNTask.metrics
    # Book-keeping clips GroupNorm and depthwise convolutions in one backward pass (client/book_keeping.py);
    # Opacus' ghost clipping is the fallback (benchmarks/dp_overhead.py measures the full network and the head).
    dp_mode = "bk"

    def resolve_model(self, model: str, *, pretrained: bool, dp: bool) -> str:
        """The variant every site builds: ``auto`` becomes ``head`` when the run starts from
        pretrained weights, else ``full`` (with or without DP); the width is always spelled out."""
        variant = parse_variant(model)
        trains = ("head" if pretrained else "full") if variant.trains == "auto" else variant.trains
        return str(Variant(trains, variant.width))

    def load_site(self, path: Path, options: TaskOptions) -> SiteData:
        parse_variant(options.model)  # a bad --model fails before the images are read
        return super().load_site(path, options)

    def build_model(self, schema: DataSchema, options: TaskOptions) -> nn.Module:
        variant = parse_variant(options.model)
        model = MobileNetV2(schema.num_outputs, width=variant.width)
        if variant.trains == "head":
            model.freeze_features()
        return model

    @staticmethod
    def head_prefixes() -> tuple[str, ...]:
        """Parameters that ``--init-weights`` may leave out or give another shape (the classifier of
        a network pretrained on other classes): they keep their fresh initialisation."""
        return ("classifier.",)
