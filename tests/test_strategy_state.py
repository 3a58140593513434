"""What a strategy remembers between rounds survives a coordinator restart: a resumed strategy aggregates
round N+1 exactly as the one that never stopped, and the update checks keep their rejections by site."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.client_manager import SimpleClientManager
from test_update_checks import Proxy

from fedshield.common.errors import ConfigError
from fedshield.common.run_config import RunConfig
from fedshield.common.update_bounds import DirectionTest
from fedshield.strategies.central_dp import wrap_central_dp
from fedshield.strategies.registry import make_strategy
from fedshield.strategies.strategy_state import restore_strategy_state, strategy_state
from fedshield.strategies.update_checks import UpdatePolicy, ValidatingStrategy

OK = Status(code=Code.OK, message="")
START = [np.zeros(6, dtype=np.float32)]


def _results(rnd: int, dtype: np.dtype) -> list:
    """Three sites' updates, in the model's dtype (Flower's FedAdam, FedYogi and FedAdagrad turn a float32 model
    into float64 after round 1)."""
    rng = np.random.default_rng(rnd)
    return [(Proxy(n), FitRes(OK, ndarrays_to_parameters([rng.normal(0.1, 0.05, 6).astype(dtype)]), 10, {}))
            for n in (1, 2, 3)]


def _strategy(name: str, cfg: RunConfig | None = None) -> ValidatingStrategy:
    inner = make_strategy(name, initial_parameters=ndarrays_to_parameters(START), min_fit_clients=2,
                          min_available_clients=2)
    return ValidatingStrategy(wrap_central_dp(inner, cfg or RunConfig(), 3), UpdatePolicy(direction=DirectionTest()))


def _round(strategy: ValidatingStrategy, rnd: int, model: list[np.ndarray]) -> list[np.ndarray]:
    sites = SimpleClientManager()
    for node_id in (1, 2, 3):
        sites.register(Proxy(node_id))
    strategy.configure_fit(rnd, ndarrays_to_parameters(model), sites)
    parameters, _ = strategy.aggregate_fit(rnd, _results(rnd, model[0].dtype), [])
    assert parameters is not None
    return parameters_to_ndarrays(parameters)


def _through_a_file(state: dict) -> dict:
    """As the run folder keeps it: torch.save, then torch.load(weights_only=True)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("name", ["fedadam", "fedyogi", "fedadagrad", "fedavgm"])
def test_a_resumed_server_optimiser_aggregates_as_the_one_that_never_stopped(name: str) -> None:
    running = _strategy(name)
    model = START
    for rnd in (1, 2, 3):
        model = _round(running, rnd, model)
    saved = _through_a_file(strategy_state(running))
    assert saved  # moments / momentum exist after three rounds

    resumed = _strategy(name)  # a new coordinator, its strategy built from the checkpoint of round 3
    resumed.inner.initial_parameters = ndarrays_to_parameters(model)
    restore_strategy_state(resumed, saved)
    expected, got = _round(running, 4, model), _round(resumed, 4, model)
    np.testing.assert_array_equal(expected[0], got[0])

    fresh = _strategy(name)  # without the state: another round 4 (FedAvgM refuses to run it at all)
    fresh.inner.initial_parameters = ndarrays_to_parameters(model)
    try:
        differs = not np.array_equal(_round(fresh, 4, model)[0], expected[0])
    except AssertionError:
        differs = True
    assert differs


def test_adaptive_clipping_keeps_its_clipping_norm() -> None:
    cfg = RunConfig(central_dp="adaptive", central_noise=0.0)
    running = _strategy("fedavg", cfg)
    _round(running, 1, START)
    saved = _through_a_file(strategy_state(running))
    (norms,) = [v["clipping_norm"] for v in saved.values() if "clipping_norm" in v]
    assert norms != cfg.central_clip  # it adapted
    resumed = _strategy("fedavg", cfg)
    restore_strategy_state(resumed, saved)
    assert [v["clipping_norm"] for v in strategy_state(resumed).values() if "clipping_norm" in v] == [norms]


def test_a_state_for_another_strategy_is_refused() -> None:
    running = _strategy("fedadam")
    _round(running, 1, START)
    with pytest.raises(ConfigError, match="FedAdam"):
        restore_strategy_state(_strategy("fedyogi"), strategy_state(running))


def test_rejections_and_exclusions_follow_the_site_not_its_node_id() -> None:
    checks = ValidatingStrategy(make_strategy("fedavg"), UpdatePolicy(max_rejections=2))
    checks._reject(11, "NaN")
    checks._reject(11, "NaN")
    checks._reject(12, "NaN")
    saved = checks.checks_state({11: "hospital_a", 12: "hospital_b"}.__getitem__)
    assert saved["rejections"] == {"hospital_a": 2, "hospital_b": 1} and list(saved["excluded"]) == ["hospital_a"]
    resumed = ValidatingStrategy(make_strategy("fedavg"), UpdatePolicy(max_rejections=2))
    resumed.restore_checks(_through_a_file(saved), {"hospital_a": 71, "hospital_b": 72})  # new node ids
    assert resumed.excluded == {71: "NaN"} and resumed.rejections == {71: 2, 72: 1}
    resumed._reject(72, "NaN")  # hospital_b's second rejection excludes it, as it would have before the restart
    assert set(resumed.excluded) == {71, 72}


def test_a_sites_direction_evidence_survives_a_restart() -> None:
    """A sign-flipper two rounds from its 3σ refusal must not start again from zero after a coordinator crash
    (its summed cosines would otherwise reset with each resume)."""
    checks = ValidatingStrategy(make_strategy("fedavg"), UpdatePolicy(direction=DirectionTest(0.0)))
    checks._agreement_sum.update({11: -0.12, 12: 0.2})
    checks._agreement_rounds.update({11: 2, 12: 2})
    saved = checks.checks_state({11: "hospital_a", 12: "hospital_b"}.__getitem__)
    resumed = ValidatingStrategy(make_strategy("fedavg"), UpdatePolicy(direction=DirectionTest(0.0)))
    resumed.restore_checks(_through_a_file(saved), {"hospital_a": 71, "hospital_b": 72})
    assert dict(resumed._agreement_sum) == {71: -0.12, 72: 0.2} and dict(resumed._agreement_rounds) == {71: 2, 72: 2}
