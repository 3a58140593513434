"""Client-level (central) differential privacy: Flower's DP strategy wrappers, and their ε.

The wrappers are Flower's own (``flwr.server.strategy.DifferentialPrivacy*``): each site's update is
clipped to norm C (by the server, or by the site through Flower's clipping mod) and Gaussian noise of
σ = z·C/m is added to the average of the m sampled updates (McMahan et al. 2018, "Learning
Differentially Private Recurrent Language Models"). Flower 1.41's legacy wrappers do not account
privacy, so the client-level ε is computed here with Opacus' RDP accountant: one step per round
with noise multiplier z at sampling rate q = m/n (n sites). With q = 1 (every site every round)
the bound is exact for the Gaussian mechanism; with q < 1 it treats Flower's fixed-size sampling as
Poisson sampling, the usual approximation, and says so in the results.
"""

from __future__ import annotations

import math

from flwr.server.strategy import (
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    Strategy,
)

from fedshield.common.privacy_accounting import epsilon_of
from fedshield.common.run_config import RunConfig

# Round-config key telling sites to clip their own update (client-side central DP).
CLIENT_CLIPPING_KEY = "central-dp-client-clipping"


def sampled_per_round(cfg: RunConfig, n_sites: int) -> int:
    """Sites sampled per round, as Flower's FedAvg computes it (fraction, at least min-clients)."""
    if cfg.per_round:
        return min(n_sites, cfg.per_round)
    # the ServerApp's round minimum after round 1 (server_app.round_min_sites): min(--min-clients, 2)
    return min(n_sites, max(int(n_sites * cfg.fraction_train), min(cfg.min_clients, 2)))


def wrap_central_dp(strategy: Strategy, cfg: RunConfig, n_sites: int) -> Strategy:
    """Wrap ``strategy`` in the Flower DP wrapper ``cfg`` names; unchanged when central DP is off."""
    if cfg.central_dp == "off":
        return strategy
    m = sampled_per_round(cfg, n_sites)
    if cfg.central_dp == "fixed":
        fixed = (DifferentialPrivacyServerSideFixedClipping if cfg.central_dp_side == "server"
                 else DifferentialPrivacyClientSideFixedClipping)
        return fixed(strategy, noise_multiplier=cfg.central_noise, clipping_norm=cfg.central_clip,
                     num_sampled_clients=m)
    adaptive = (DifferentialPrivacyServerSideAdaptiveClipping if cfg.central_dp_side == "server"
                else DifferentialPrivacyClientSideAdaptiveClipping)
    return adaptive(strategy, noise_multiplier=cfg.central_noise, num_sampled_clients=m,
                    initial_clipping_norm=cfg.central_clip)


def client_level_epsilon(cfg: RunConfig, n_sites: int, rounds_done: int) -> float:
    """Client-level ε after ``rounds_done`` rounds (RDP, Opacus), at ``cfg.central_delta``.

    Adaptive clipping also spends privacy on the clipped-count estimate; Flower's wrapper sets that
    noise from z (Andrew et al. 2021), and this figure covers the update noise z only.
    """
    if cfg.central_dp == "off" or rounds_done <= 0:
        return 0.0
    if cfg.central_noise <= 0:
        return math.inf
    q = sampled_per_round(cfg, n_sites) / n_sites
    return epsilon_of([(cfg.central_noise, q, rounds_done)], cfg.central_delta)
