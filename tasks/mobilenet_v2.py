"""MobileNetV2 (Sandler et al. 2018, "MobileNetV2: Inverted Residuals and Linear Bottlenecks") in
plain torch, with GroupNorm where the paper has BatchNorm so that Opacus can compute per-sample
gradients (BatchNorm mixes the examples of a batch).

Module names follow the common torch layout of this network (``features.<i>...``, ``classifier.1``),
so a local MobileNetV2 state dict trained elsewhere loads by name: convolution weights as they are,
BatchNorm's affine ``weight``/``bias`` into GroupNorm's (its running statistics have no counterpart and
are skipped). Input (N, 3, H, W) in [0, 1], normalised inside; output (N, K) logits.
"""

from __future__ import annotations

from torch import Tensor, nn

#: (expansion t, output channels c, repeats n, first stride s) of the paper's Table 2.
SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
STEM_CHANNELS = 32
LAST_CHANNELS = 1280
GROUPS = 8  # GroupNorm groups; every channel count of the network is a multiple of 8


def scaled_channels(channels: int, width: float) -> int:
    """``channels × width`` rounded to a multiple of 8, never more than 10% below it (the paper's rule)."""
    scaled = max(8, int(channels * width + 4) // 8 * 8)
    return scaled + 8 if scaled < 0.9 * channels * width else scaled


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(GROUPS, channels)


class ConvNormReLU6(nn.Sequential):
    """conv k×k (no bias) → GroupNorm → ReLU6; ``groups=channels`` makes it depthwise."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> None:
        super().__init__(nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
                         _norm(cout), nn.ReLU6(inplace=False))


class InvertedResidual(nn.Module):
    """1×1 expansion (×t) → 3×3 depthwise (stride s) → 1×1 linear projection; identity shortcut
    when the stride is 1 and the channel count is unchanged."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = cin * expansion
        layers: list[nn.Module] = [] if expansion == 1 else [ConvNormReLU6(cin, hidden, kernel=1)]
        layers += [ConvNormReLU6(hidden, hidden, stride=stride, groups=hidden),
                   nn.Conv2d(hidden, cout, 1, bias=False), _norm(cout)]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileNetV2(nn.Module):
    """A 19-block feature extractor ``features`` (output 1280 channels, overall stride 32) and the
    ``classifier`` head (dropout 0.2 → linear 1280→K) on globally averaged features.

    ``width`` is the paper's width multiplier on every layer but the last (which stays 1280 wide
    for widths up to 1): 1.0 has 2.24 M parameters at K = 10, 0.35 has 0.41 M.
    """

    def __init__(self, classes: int, width: float = 1.0) -> None:
        super().__init__()
        cin = scaled_channels(STEM_CHANNELS, width)
        blocks: list[nn.Module] = [ConvNormReLU6(3, cin, stride=1)]
        for t, c, n, s in SETTINGS:
            cout = scaled_channels(c, width)
            for i in range(n):
                blocks.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        blocks.append(ConvNormReLU6(cin, max(LAST_CHANNELS, scaled_channels(LAST_CHANNELS, width)), kernel=1))
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        last = max(LAST_CHANNELS, scaled_channels(LAST_CHANNELS, width))
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        # ImageNet's channel statistics, the usual input scaling of this network (fixed, no parameters)
        mean = x.new_tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = x.new_tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        features = self.pool(self.features((x - mean) / std)).flatten(1)
        return self.classifier(features)

    def freeze_features(self) -> None:
        """Train the head only: the feature extractor keeps its (pretrained) weights."""
        self.features.requires_grad_(False)
