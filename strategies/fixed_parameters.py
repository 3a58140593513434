"""A strategy wrapper that keeps the parameters a task never trains exactly as the run began.

Sites never change a frozen parameter (``requires_grad`` False: digits-cnn's Gabor and random layers
under DP, a transfer task's backbone), and the update checks refuse a reply that does. Yet the server's
own arithmetic moved them: FedAvg's weighted mean of equal values rounds (about 1e-7), and Flower's
adaptive optimisers (FedAdam, FedYogi, FedAdagrad) divide that rounding by its own tiny second moment,
which moved digits-cnn's fixed Gabor filters by up to 0.0056 in two rounds of FedAdam. Central DP's
server-side noise lands on them too. After every aggregation this wrapper puts the fixed values back:
they depend on no site's data, so this is post-processing of anything private, and each round's model
has the frozen layers every site built.
"""

from __future__ import annotations

import numpy as np
from flwr.common import FitRes, Parameters, Scalar, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.strategy import Strategy

from fedshield.flower_ext.legacy_api import ClientProxy
from fedshield.strategies.delegating import DelegatingStrategy


class FixedParameters(DelegatingStrategy):
    """Delegate to ``inner``; in each aggregated model, the values ``fixed`` marks are set to ``initial``'s.

    ``initial``: the run's starting model as exchanged (arrays); ``fixed``: one boolean mask per array
    (:func:`fedshield.common.torch_arrays.fixed_mask`)."""

    def __init__(self, inner: Strategy, initial: list[np.ndarray], fixed: list[np.ndarray]) -> None:
        super().__init__(inner)
        self.fixed = fixed
        self.values = [np.asarray(a)[m].copy() for a, m in zip(initial, fixed, strict=True)]

    def aggregate_fit(self, server_round: int, results: list[tuple[ClientProxy, FitRes]],
                      failures: list) -> tuple[Parameters | None, dict[str, Scalar]]:
        parameters, metrics = self.inner.aggregate_fit(server_round, results, failures)
        if parameters is None:
            return None, metrics
        arrays = parameters_to_ndarrays(parameters)
        for array, mask, values in zip(arrays, self.fixed, self.values, strict=True):
            array[mask] = values  # (cast to the aggregate's dtype: float64 under the adaptive optimisers)
        return ndarrays_to_parameters(arrays), metrics
