"""Fréchet distance between two sets of 28×28 greyscale images, in the feature space of a small CNN
trained on scikit-learn's handwritten digits: ``frechet_digits``.

The formula is the Fréchet (2-Wasserstein) distance between Gaussians fitted to the two feature sets,
as in FID (Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash
Equilibrium"): ``|μ₁ − μ₂|² + Tr(Σ₁ + Σ₂ − 2 (Σ₁ Σ₂)^½)``. It is *not* FID: the features are the
64-unit penultimate layer of a digits classifier, not Inception-v3's (which cannot be downloaded
here, and would see 28×28 digits poorly anyway). Values are comparable only with each other.

The feature network is trained on first use in each process from the 1,797 bundled digits with a
fixed seed (about a second), so the server and every site measure in the same space.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import nn

FEATURES = 64


class DigitsFeatures(nn.Module):
    """(N, 1, 28, 28) in [0, 1] → (N, 64) features (``forward``) or (N, 10) logits (``classify``)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 16, 5, stride=2, padding=2), nn.ReLU(),
            nn.Conv2d(16, 32, 5, stride=2, padding=2), nn.ReLU(),
            nn.Flatten(), nn.Linear(32 * 7 * 7, FEATURES), nn.ReLU(),
        )
        self.out = nn.Linear(FEATURES, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(x))


def _bundled_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 8×8 digits (values 0-16) upscaled bilinearly to (N, 1, 28, 28) in [0, 1]."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = nn.functional.interpolate(images, size=(28, 28), mode="bilinear", align_corners=False).clamp(0, 1)
    return x, torch.as_tensor(bunch.target, dtype=torch.long)


@functools.cache
def feature_network() -> DigitsFeatures:
    """The frozen feature CNN (trained once per process: 4 epochs of Adam, seed 0)."""
    x, y = _bundled_digits()
    with torch.random.fork_rng(devices=[]), torch.enable_grad():  # callers may be under no_grad
        torch.manual_seed(0)
        net = DigitsFeatures()
        opt = torch.optim.Adam(net.parameters(), lr=2e-3)
        for _ in range(4):
            for idx in torch.randperm(len(x)).split(64):
                opt.zero_grad()
                nn.functional.cross_entropy(net.classify(x[idx]), y[idx]).backward()
                opt.step()
    net.eval().requires_grad_(False)
    return net


@torch.no_grad()
def features(images: torch.Tensor) -> np.ndarray:
    """(N, 1, 28, 28) images in [0, 1] → (N, 64) float64 features."""
    net = feature_network()
    return torch.cat([net(chunk.float().cpu()) for chunk in images.split(512)]).double().numpy()


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to feature rows ``a`` (N, D) and ``b`` (M, D)."""
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    value = float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_sqrt_product(cov_a, cov_b))
    return max(value, 0.0)


def trace_sqrt_product(cov_a: np.ndarray, cov_b: np.ndarray) -> float:
    """``Tr((Σa Σb)^½)`` for symmetric positive semi-definite ``Σa``, ``Σb`` (D, D).

    ``Σa Σb`` is similar to the symmetric ``Σa^½ Σb Σa^½`` (positive semi-definite), so the trace is the sum
    of the square roots of that matrix's eigenvalues: two symmetric eigendecompositions, exact also for the
    singular covariances that ReLU features of few images give (eigenvalues below zero by rounding count as
    zero). No ``scipy.linalg.sqrtm``: its ``disp`` argument, which this module once passed, is gone in SciPy
    1.18, and its general (Schur) square root needed regularising on singular products.
    """
    values, vectors = np.linalg.eigh(cov_a)
    root_a = (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T
    product = root_a @ cov_b @ root_a
    return float(np.sqrt(np.clip(np.linalg.eigvalsh((product + product.T) / 2), 0.0, None)).sum())
