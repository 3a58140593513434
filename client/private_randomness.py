"""The randomness DP-SGD rests on: Poisson sampling and Gaussian noise, drawn from a generator of its own.

Why not torch's global generator (Opacus' default when ``secure_mode`` is off): model construction
calls ``torch.manual_seed(run seed)`` and the run seed comes from the server, so every later draw of
the global generator — which examples each step samples, and each noise vector — is a function of the
server's own choices and the code. A curious server could replay it and subtract the noise. A site
in deployment therefore draws its DP randomness from a generator seeded with 63 bits from the
operating system's CSPRNG (:mod:`secrets`), fresh every round.

Opacus' ``secure_mode`` (a CSPRNG for every draw, via ``torchcsprng``) is stronger still but
unavailable for current torch; the seeded Mersenne Twister is the same generator Opacus uses outside
``secure_mode``, now with a seed nobody else knows.

A simulation's virtual sites are one party's experiment on one machine: there the seed is derived
from the run seed, the virtual site and the round, so ``fl-sim run --seed S`` repeats its noise.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

import torch


def simulation_noise_seed(run_seed: int, virtual_site: int, rnd: int) -> int:
    """A reproducible 63-bit seed for one virtual site's round (simulation only)."""
    digest = hashlib.sha256(f"fedshield-dp-noise/{run_seed}/{virtual_site}/{rnd}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


@dataclass(frozen=True)
class DPRandomness:
    """One round's generators: ``sampling`` on the CPU (Opacus draws Poisson masks there), ``noise`` on
    the training device (the noise is drawn where the gradients are)."""

    sampling: torch.Generator
    noise: torch.Generator


def dp_randomness(seed: int | None, device: torch.device) -> DPRandomness:
    """Generators seeded from ``seed`` (simulation), or each from 63 fresh OS-random bits (``None``)."""
    def seeded(offset: int, on: torch.device) -> torch.Generator:
        value = secrets.randbits(63) if seed is None else (seed + offset) % (1 << 63)
        return torch.Generator(device=on).manual_seed(value)
    return DPRandomness(sampling=seeded(0, torch.device("cpu")), noise=seeded(1, device))
