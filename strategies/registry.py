"""Strategy name -> Flower strategy (legacy ``flwr.server.strategy``, which SecAgg+'s workflow drives).

A registry instead of an if-chain; every entry is Flower's own implementation (Multi-Krum a thin
subclass of Flower's Krum). FedProx is absent on purpose: it needs a proximal term in the sites' loss,
which our ClientApp does not add yet.

Robust aggregation and the attackers each tolerates among n sites of a round, when the update checks
(:mod:`fedshield.strategies.update_checks`) have already dropped non-finite, misshapen and outsized updates:

- ``fedmedian`` (coordinate-wise median, Yin et al. 2018): any f < n/2;
- ``fedtrimmedavg`` (mean after trimming 20 % at each end per coordinate): f ≤ 0.2·n;
- ``krum`` (Blanchard et al. 2017): f = ``--tolerate-attackers``, needs n ≥ 2f + 3;
- ``multikrum``: Krum's n − f best-scored updates averaged, same f and n.

Krum's f counts down by the sites the checks caught (:mod:`fedshield.strategies.caught_sites`).

None of them can work on a sum, so none is allowed with SecAgg+.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flwr.server.strategy import (
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedTrimmedAvg,
    FedYogi,
    Krum,
    Strategy,
)

from fedshield.common.errors import ConfigError
from fedshield.strategies.caught_sites import CaughtSites

# name -> (Flower class, extra keyword arguments beyond FedAvg's)
_STRATEGIES: dict[str, tuple[Callable[..., Strategy], dict[str, Any]]] = {
    "fedavg": (FedAvg, {}),
    "fedavgm": (FedAvgM, {"server_momentum": 0.9}),
    # Adaptive server optimisers (Reddi et al. 2021, "Adaptive Federated Optimization"):
    # they need initial parameters, which the ServerApp always provides.
    "fedadam": (FedAdam, {"eta": 1e-2, "eta_l": 1e-2}),
    "fedyogi": (FedYogi, {"eta": 1e-2, "eta_l": 1e-2}),
    "fedadagrad": (FedAdagrad, {"eta": 1e-1, "eta_l": 1e-1}),
    "fedmedian": (FedMedian, {}),
    "fedtrimmedavg": (FedTrimmedAvg, {"beta": 0.2}),
}


class CountingKrum(Krum):
    """Flower's Krum with f = ``--tolerate-attackers`` less the sites the update checks caught this round
    (``caught``): their updates are gone, and Krum's scores (sums over the n − f − 2 nearest updates) would
    otherwise leave out honest neighbours in their place."""

    def __init__(self, *, caught: CaughtSites | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.tolerate = self.num_malicious_clients
        self.caught = caught

    def remaining(self) -> int:
        """The attackers that may still be among this round's updates."""
        return self.caught.remaining(self.tolerate) if self.caught else self.tolerate

    def aggregate_fit(self, server_round, results, failures):  # Flower's signature
        self.num_malicious_clients = self.remaining()
        return super().aggregate_fit(server_round, results, failures)


class MultiKrum(CountingKrum):
    """Multi-Krum (Blanchard et al. 2017): the mean of the n − f updates Krum scores best.

    Our own subclass because Flower's Krum keeps a fixed count (``num_clients_to_keep``), which cannot
    follow how many updates a round actually has after failures and rejected updates.
    """

    def aggregate_fit(self, server_round, results, failures):  # Flower's signature
        self.num_clients_to_keep = max(1, len(results) - self.remaining())
        return super().aggregate_fit(server_round, results, failures)


_STRATEGIES["krum"] = (CountingKrum, {})
_STRATEGIES["multikrum"] = (MultiKrum, {})


def strategy_names() -> list[str]:
    """Names accepted by ``--strategy``."""
    return sorted(_STRATEGIES)


def make_strategy(name: str, *, tolerate: int = 1, caught: CaughtSites | None = None,
                  **fedavg_kwargs: Any) -> Strategy:
    """Instantiate the named Flower strategy with FedAvg's keyword arguments plus its own defaults
    (``tolerate``: the attackers Krum and Multi-Krum assume; ``caught``: the sites the update checks caught,
    which Krum and Multi-Krum no longer count among them)."""
    try:
        cls, extra = _STRATEGIES[name]
    except KeyError:
        raise ConfigError(f"--strategy {name!r} is unknown; choose one of: {', '.join(strategy_names())}") from None
    if name in ("krum", "multikrum"):
        extra = {**extra, "num_malicious_clients": tolerate, "caught": caught}
    return cls(**fedavg_kwargs, **extra)
