"""SecAgg+'s server workflow with two Flower 1.42 defects fixed: even share counts, and modulus overflow.

Protocol: Bell et al., "Secure Single-Server Aggregation with (Poly)Logarithmic Overhead", CCS 2020.

1. **Even share counts.** With an integer ``num_shares`` Flower sends the sites the requested count and
   only afterwards bumps an even count to odd for its own neighbour graph; the sites then reject the
   keys they receive and every site fails the round. :func:`effective_shares` makes the count odd (or
   all sampled sites) *before* the workflow sees it.
2. **Modulus overflow.** The default modulus 2**32 with quantisation range 2**22 wraps once the sum of
   more than 1,024 sites' quantised values exceeds it. :func:`modulus_for` picks the smallest power of
   two that holds ``sites × quantisation_range × 2`` (masks are drawn from the full range, and the
   ChaCha20 expansion of :mod:`.secagg` is not limited to 32 bits as ``RandomState`` was).

Both are set per round on Flower's ``SecAggPlusWorkflow`` attributes that its ``setup_stage`` reads;
:class:`FedShieldSecAggPlus` checks, when built, that Flower's workflow still reads them there, and refuses
to run SecAgg+ otherwise (:class:`~fedshield.flower_ext.version_check.FlowerHookMissing`), because a share
count or modulus that silently stopped taking effect fails rounds or wraps sums.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

from flwr.server.compat import LegacyContext
from flwr.server.workflow import SecAggPlusWorkflow

from fedshield.flower_ext.version_check import FLOWER_VERSION, FlowerHookMissing, installed_flower_version
from fedshield.flower_ext.workflow_round import current_round

#: what FedShield sets per round on Flower's workflow, each read by its setup_stage
ROUND_ATTRIBUTES = ("num_shares", "modulus_range")
QUANTIZATION_RANGE = 2**22
CLIPPING_RANGE = 8.0
MIN_MODULUS = 2**32
FLOWER_LOG = logging.getLogger("flwr")  # Flower's own logger: the stage times appear among its lines
INT64_LIMIT = 2**63  # Flower adds sites' masked int64 vectors before reducing them modulo the modulus


def effective_shares(requested: int, sampled: int) -> int:
    """The share count to use: all sampled sites if ``requested`` covers them, else odd and ≥ 3.

    ``requested`` 0 means automatic: every sampled site up to 7 sites, beyond that an odd count of
    about 2·log2(n)+1 neighbours, the logarithmic neighbourhood SecAgg+ is designed around (Bell et
    al. 2020, Sec. 3): each site then expands O(log n) masks instead of n-1.
    """
    if sampled < 2:
        raise ValueError("secure aggregation needs at least 2 sites per round")
    if requested == 0:
        requested = sampled if sampled <= 7 else 2 * math.ceil(math.log2(sampled)) + 1
    if requested >= sampled - 1:
        return sampled
    shares = max(3, requested)
    return shares + 1 if shares % 2 == 0 else shares


def modulus_for(sites: int, quantization_range: int = QUANTIZATION_RANGE) -> int:
    """Smallest power of two ≥ 2**32 holding the sum of ``sites`` quantised values with a factor 2 margin."""
    need = max(MIN_MODULUS, 2 * sites * quantization_range)
    modulus = 1 << math.ceil(math.log2(need))
    if modulus * (sites + 2) >= INT64_LIMIT:
        raise ValueError(f"{sites} sites would overflow int64 sums under SecAgg+; lower the quantization range")
    return modulus


class FedShieldSecAggPlus(SecAggPlusWorkflow):
    """Flower's SecAgg+ fit workflow with the share count fixed per round (see module docstring).

    ``sampled_sites`` tells how many sites the strategy will sample this round, so the share count and
    the modulus are chosen before Flower builds its setup message.
    """

    def __init__(self, *, shares: int, threshold_fraction: float, sampled_sites: Callable[[LegacyContext], int],
                 max_weight: float, timeout: float | None,
                 on_stages: Callable[[int, dict[str, float]], None] | None = None, **kwargs: Any) -> None:
        super().__init__(num_shares=max(3, shares), reconstruction_threshold=threshold_fraction,
                         max_weight=max_weight, clipping_range=CLIPPING_RANGE,
                         quantization_range=QUANTIZATION_RANGE, timeout=timeout, **kwargs)
        _check_round_attributes(self)
        self.requested_shares = shares
        self.sampled_sites = sampled_sites
        self.on_stages = on_stages  # told each round's stage times (s): the run's results.json records them
        self._stage_s: dict[str, float] = {}

    def setup_stage(self, grid, context, state):  # Flower's signature
        sampled = self.sampled_sites(context)
        self.num_shares = effective_shares(self.requested_shares, sampled)
        self.modulus_range = modulus_for(sampled, self.quantization_range)
        self._stage_s = {}
        return self._timed("setup", super().setup_stage, grid, context, state)

    def share_keys_stage(self, grid, context, state):
        return self._timed("key shares", super().share_keys_stage, grid, context, state)

    def collect_masked_vectors_stage(self, grid, context, state):
        return self._timed("masked updates", super().collect_masked_vectors_stage, grid, context, state)

    def unmask_stage(self, grid, context, state):
        ok = self._timed("unmasking", super().unmask_stage, grid, context, state)
        FLOWER_LOG.info("SecAgg+ stages (s): %s", ", ".join(f"{k} {v:.2f}" for k, v in self._stage_s.items()))
        if self.on_stages is not None:
            self.on_stages(current_round(context), dict(self._stage_s))
        return ok

    def _timed(self, name: str, stage: Callable[..., bool], *args: Any) -> bool:
        """Run one protocol stage and note its wall time (the server log's per-round breakdown)."""
        start = time.perf_counter()
        try:
            return stage(*args)
        finally:
            self._stage_s[name] = time.perf_counter() - start


def _check_round_attributes(workflow: SecAggPlusWorkflow) -> None:
    """Flower's workflow must still hold and read in ``setup_stage`` the attributes set per round (module doc)."""
    read = set(SecAggPlusWorkflow.setup_stage.__code__.co_names)
    missing = [name for name in ROUND_ATTRIBUTES if not hasattr(workflow, name) or name not in read]
    if missing:
        raise FlowerHookMissing(f"flwr {installed_flower_version()}'s SecAggPlusWorkflow no longer reads "
                                f"{', '.join(missing)} in setup_stage, where FedShield sets the share count and "
                                f"modulus of each SecAgg+ round; install flwr=={FLOWER_VERSION}")
