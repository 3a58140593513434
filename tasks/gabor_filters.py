"""A fixed bank of 2-D Gabor filters: oriented edge and bar detectors that need no training data.

A Gabor filter is a sinusoid under a Gaussian envelope (Daugman 1985, "Uncertainty relation for
resolution in space, spatial frequency, and orientation optimized by two-dimensional visual cortical
filters"): ``g(x, y) = exp(-(x'² + y'²) / 2s²) · cos(2π x' / λ + ψ)`` with ``x'``, ``y'`` the pixel
offsets from the kernel's centre rotated by the orientation θ. Even (ψ = 0) and odd (ψ = π/2) phases
answer to bars and to edges. Used as a network's fixed first layer, such handcrafted features let a
differentially private model train far fewer parameters, so the DP-SGD noise, whose norm grows with
the square root of the trained parameter count, costs less accuracy (Tramèr & Boneh 2021,
"Differentially Private Learning Needs Better Features (or Much More Data)", with ScatterNet's
wavelets, a Gabor-like family).
"""

from __future__ import annotations

import math

import torch

# (wavelength λ, envelope width s) in pixels: strokes of 8×8 digits drawn at 28×28 are 3-5 pixels wide
SCALES: tuple[tuple[float, float], ...] = ((4.0, 1.2), (8.0, 1.8))
ORIENTATIONS = 8  # θ = kπ/8, k = 0..7
PHASES = (0.0, math.pi / 2)  # even (bars) and odd (edges)


def gabor_bank(size: int = 5, *, norm: float = 1.0) -> torch.Tensor:
    """``len(SCALES) · ORIENTATIONS · len(PHASES)`` filters (32), shape (32, 1, size, size), float32.

    Each filter has zero mean (a flat patch answers 0) and L2 norm ``norm``; order: scale, then
    orientation, then phase. Deterministic: every site and the server build the same bank.
    """
    if size < 3 or size % 2 == 0:
        raise ValueError(f"Gabor kernel size must be odd and at least 3, got {size}")
    offsets = torch.arange(size, dtype=torch.float64) - size // 2
    ys, xs = torch.meshgrid(offsets, offsets, indexing="ij")
    filters = []
    for wavelength, width in SCALES:
        for k in range(ORIENTATIONS):
            theta = math.pi * k / ORIENTATIONS
            along = xs * math.cos(theta) + ys * math.sin(theta)
            across = -xs * math.sin(theta) + ys * math.cos(theta)
            envelope = torch.exp(-(along**2 + across**2) / (2 * width**2))
            for phase in PHASES:
                f = envelope * torch.cos(2 * math.pi * along / wavelength + phase)
                f = f - f.mean()
                filters.append(f * (norm / f.norm()))
    return torch.stack(filters).unsqueeze(1).to(torch.float32)
