"""Strategy name -> Flower strategy (legacy ``flwr.server.strategy``, which SecAgg+'s workflow drives).

A registry instead of an if-chain; every entry is Flower's own implementation. FedProx is absent on
purpose: it needs a proximal term in the sites' loss, which our ClientApp does not add yet.
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
    Strategy,
)

from fedshield.common.errors import ConfigError

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


def strategy_names() -> list[str]:
    """Names accepted by ``--strategy``."""
    return sorted(_STRATEGIES)


def make_strategy(name: str, **fedavg_kwargs: Any) -> Strategy:
    """Instantiate the named Flower strategy with FedAvg's keyword arguments plus its own defaults."""
    try:
        cls, extra = _STRATEGIES[name]
    except KeyError:
        raise ConfigError(f"--strategy {name!r} is unknown; choose one of: {', '.join(strategy_names())}") from None
    return cls(**fedavg_kwargs, **extra)
