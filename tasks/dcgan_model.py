"""The DCGAN of the design documents for 28×28 greyscale images (Radford et al. 2016, "Unsupervised
Representation Learning with Deep Convolutional Generative Adversarial Networks"), sized for CPU.

Generator: z (N, 64) ~ N(0, I) → linear → 128×7×7 → GroupNorm, ReLU → transposed conv 4×4 stride 2
→ 64×14×14 → GroupNorm, ReLU → transposed conv 4×4 stride 2 → 1×28×28 → sigmoid (pixels in [0, 1]).
Discriminator: 1×28×28 → conv 4×4 s2 → 32×14×14, LeakyReLU 0.2 → conv 4×4 s2 → 64×7×7,
GroupNorm, LeakyReLU → linear → one logit (real vs generated). GroupNorm instead of the paper's
BatchNorm: the discriminator trains under DP-SGD, where a batch statistic would mix examples.
"""

from __future__ import annotations

import torch
from torch import nn

LATENT = 64


class Generator(nn.Module):
    """(N, 64) latent codes → (N, 1, 28, 28) images in [0, 1]."""

    def __init__(self, latent: int = LATENT) -> None:
        super().__init__()
        self.latent = latent
        self.project = nn.Linear(latent, 128 * 7 * 7)
        self.body = nn.Sequential(
            nn.GroupNorm(8, 128), nn.ReLU(),
            nn.ConvTranspose2d(128, 64, 4, stride=2, padding=1), nn.GroupNorm(8, 64), nn.ReLU(),
            nn.ConvTranspose2d(64, 1, 4, stride=2, padding=1), nn.Sigmoid(),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.body(self.project(z).view(-1, 128, 7, 7))


class Discriminator(nn.Module):
    """(N, 1, 28, 28) images in [0, 1] → (N,) logits, positive = real."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 4, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(32, 64, 4, stride=2, padding=1), nn.GroupNorm(8, 64), nn.LeakyReLU(0.2),
            nn.Flatten(), nn.Linear(64 * 7 * 7, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x * 2 - 1).squeeze(1)


class DCGAN(nn.Module):
    """Both networks in one module, so a round exchanges and averages them together.
    ``forward`` is the discriminator's; :meth:`sample` draws images from the generator."""

    def __init__(self, latent: int = LATENT) -> None:
        super().__init__()
        self.generator = Generator(latent)
        self.discriminator = Discriminator()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.discriminator(x)

    @torch.no_grad()
    def sample(self, n: int, *, seed: int) -> torch.Tensor:
        """``n`` images (n, 1, 28, 28) from fixed latent codes (the same ``seed`` gives the same codes)."""
        z = torch.randn(n, self.generator.latent, generator=torch.Generator().manual_seed(seed))
        device = next(self.parameters()).device
        was_training = self.generator.training
        self.generator.eval()
        images = self.generator(z.to(device)).cpu()
        self.generator.train(was_training)
        return images
