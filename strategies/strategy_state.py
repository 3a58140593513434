"""What a strategy remembers between rounds, taken out and put back, so a resumed run aggregates as the
original would have.

Flower's server-side optimisers keep state across rounds that the global model does not hold: FedAdam,
FedYogi and FedAdagrad their moments ``m_t``, ``v_t`` and the weights they step from (``current_weights``,
before any central-DP noise), FedAvgM its momentum and current weights (``momentum_vector``,
``initial_parameters``), the adaptive-clipping DP wrappers their clipping norm. Without them a resumed
FedAdam run would restart its moments at zero, and FedAvgM would fail round N+1 (it asserts that its
momentum exists after round 1).

:func:`strategy_state` walks the wrapper chain (``inner`` of FedShield's wrappers, ``strategy`` of Flower's
DP wrappers) and returns, per class name, the attributes that class keeps, arrays as torch tensors (so the
file loads with ``torch.load(weights_only=True)``); :func:`restore_strategy_state` puts them back.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from flwr.common import Parameters, ndarrays_to_parameters, parameters_to_ndarrays

from fedshield.common.errors import ConfigError

#: attributes a strategy class keeps between rounds (any class in the chain that has them)
STATEFUL_ATTRIBUTES = ("m_t", "v_t", "current_weights", "momentum_vector", "initial_parameters", "clipping_norm")


def strategy_chain(strategy: object) -> list[object]:
    """The strategy and every strategy it wraps, outermost first."""
    chain = [strategy]
    while True:
        inner = getattr(chain[-1], "inner", None) or getattr(chain[-1], "strategy", None)
        if inner is None or inner in chain:
            return chain
        chain.append(inner)


def _dump(value: Any) -> Any:
    if isinstance(value, Parameters):
        return {"parameters": [torch.from_numpy(np.array(a)) for a in parameters_to_ndarrays(value)]}
    if isinstance(value, list) and all(isinstance(a, np.ndarray) for a in value):
        return [torch.from_numpy(np.array(a)) for a in value]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise TypeError(f"strategy state of type {type(value).__name__} cannot be saved")


def _load(value: Any) -> Any:
    if isinstance(value, dict) and "parameters" in value:
        return ndarrays_to_parameters([t.numpy() for t in value["parameters"]])
    if isinstance(value, list):
        return [t.numpy() for t in value]
    return value


def strategy_state(strategy: object) -> dict[str, dict[str, Any]]:
    """Class name -> {attribute: value} for every stateful attribute set in the chain (None ones skipped)."""
    state: dict[str, dict[str, Any]] = {}
    for part in strategy_chain(strategy):
        kept = {name: _dump(getattr(part, name)) for name in STATEFUL_ATTRIBUTES
                if getattr(part, name, None) is not None}
        if kept:
            state[type(part).__name__] = kept
    return state


def restore_strategy_state(strategy: object, state: dict[str, dict[str, Any]]) -> None:
    """Put back what :func:`strategy_state` took; a class in ``state`` missing from the chain is refused
    (the run would aggregate differently from the one that was saved)."""
    parts = {type(part).__name__: part for part in strategy_chain(strategy)}
    for name, attributes in state.items():
        if name not in parts:
            raise ConfigError(f"the saved strategy state is for {name}, which this run's strategy "
                              f"({type(strategy).__name__}) does not use; resume with the run's own settings")
        for attribute, value in attributes.items():
            if attribute not in STATEFUL_ATTRIBUTES:
                raise ConfigError(f"the saved strategy state names an unknown attribute {name}.{attribute}")
            setattr(parts[name], attribute, _load(value))
