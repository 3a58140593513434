"""The coordinator's update checks in front of Flower's own strategies: each attack performed, each refused.

Honest sites send the global model plus a small update; an attacker sends NaN, a scaled update, a
misshapen or undecodable array, or an inflated count. Without the checks (the first test shows it on
Flower's FedAvg and FedMedian) one NaN update made the whole model NaN.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from flwr.common import (
    Code,
    EvaluateRes,
    FitIns,
    FitRes,
    Parameters,
    Status,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server.client_manager import SimpleClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedAvg, FedMedian, FedTrimmedAvg

from fedshield.common.errors import ConfigError
from fedshield.common.run_config import RunConfig
from fedshield.common.update_bounds import DirectionTest, NormBound, parse_min_cosine
from fedshield.strategies.caught_sites import CaughtSites
from fedshield.strategies.recording import RecordingStrategy
from fedshield.strategies.registry import make_strategy
from fedshield.strategies.update_checks import RejectedUpdate, UpdatePolicy, ValidatingStrategy

OK = Status(code=Code.OK, message="")
GLOBAL = [np.zeros((4, 3), dtype=np.float32), np.zeros(3, dtype=np.float32)]


class Proxy(ClientProxy):
    """A connected site as Flower's client manager holds it (no transport: the strategy never calls it)."""

    def __init__(self, node_id: int) -> None:
        super().__init__(str(node_id))
        self.node_id = node_id

    def get_properties(self, ins, timeout, group_id):  # pragma: no cover - never called by strategies
        raise NotImplementedError

    def get_parameters(self, ins, timeout, group_id):  # pragma: no cover
        raise NotImplementedError

    def fit(self, ins, timeout, group_id):  # pragma: no cover
        raise NotImplementedError

    def evaluate(self, ins, timeout, group_id):  # pragma: no cover
        raise NotImplementedError

    def reconnect(self, ins, timeout, group_id):  # pragma: no cover
        raise NotImplementedError


def _honest(rng: np.random.Generator, shift: float = 1.0) -> list[np.ndarray]:
    return [(g + shift + 0.1 * rng.standard_normal(g.shape)).astype(np.float32) for g in GLOBAL]


def _fit(arrays: list[np.ndarray] | Parameters, count: int = 100) -> FitRes:
    params = arrays if isinstance(arrays, Parameters) else ndarrays_to_parameters(arrays)
    return FitRes(status=OK, parameters=params, num_examples=count, metrics={})


def _manager(n: int) -> SimpleClientManager:
    manager = SimpleClientManager()
    for nid in range(1, n + 1):
        manager.register(Proxy(nid))
    return manager


class Observer:
    """What the run's results would record (RecordingStrategy's observer)."""

    def __init__(self) -> None:
        self.failed: dict[int, list[tuple[int, str]]] = {}
        self.evaluation_failed: list[tuple[int, str]] = []

    def on_train(self, rnd, sampled, results, failed, aggregate, parameters) -> None:
        self.failed[rnd] = failed

    def on_evaluate(self, rnd, results, failed, loss, aggregate) -> None:
        self.evaluation_failed = failed

    def on_centralized(self, rnd, loss, metrics) -> None:  # pragma: no cover
        pass

    def on_sampled(self, rnd, stage, sampled) -> None:
        pass


def _round(strategy: ValidatingStrategy, manager: SimpleClientManager, rnd: int,
           replies: dict[int, FitRes]) -> tuple[list[np.ndarray] | None, list[int]]:
    instructions = strategy.configure_fit(rnd, ndarrays_to_parameters(GLOBAL), manager)
    sampled = [p.node_id for p, _ in instructions]
    results = [(p, replies[p.node_id]) for p, _ in instructions if p.node_id in replies]
    params, _ = strategy.aggregate_fit(rnd, results, [])
    return (parameters_to_ndarrays(params) if params is not None else None), sampled


@pytest.mark.parametrize("inner", [FedAvg, FedMedian])
def test_without_the_checks_one_nan_site_poisons_flowers_strategies(inner) -> None:
    rng = np.random.default_rng(0)
    results = [(Proxy(i), _fit(_honest(rng))) for i in (1, 2, 3)]
    results.append((Proxy(4), _fit([np.full_like(g, np.nan) for g in GLOBAL])))
    params, _ = inner().aggregate_fit(1, results, [])
    assert np.isnan(parameters_to_ndarrays(params)[0]).all()


def _poisoned(kind: str) -> FitRes:
    if kind == "nan":
        return _fit([np.full_like(g, np.nan) for g in GLOBAL])
    if kind == "inf":
        return _fit([np.full_like(g, np.inf) for g in GLOBAL])
    if kind == "scale":
        return _fit([g + 1e6 for g in GLOBAL])  # honest norms are ~1: a million times that is no update
    if kind == "shape":
        return _fit([GLOBAL[0], np.zeros((5,), dtype=np.float32)])
    if kind == "dtype":
        return _fit([g.astype(np.int32) for g in GLOBAL])
    if kind == "arrays":
        return _fit(GLOBAL[:1])
    if kind == "bytes":
        return _fit(Parameters(tensors=[b"\x93NUMPY garbage", b""], tensor_type="numpy.ndarray"))
    if kind == "count":
        return _fit(_honest(np.random.default_rng(9)), count=10**9)
    if kind == "zero-count":
        return _fit(_honest(np.random.default_rng(9)), count=0)
    raise AssertionError(kind)


@pytest.mark.parametrize("strategy_name", ["fedavg", "fedmedian", "fedtrimmedavg", "krum", "multikrum"])
@pytest.mark.parametrize("kind,reason", [
    ("nan", "NaN or infinite"), ("inf", "NaN or infinite"), ("scale", "above 100x the bound"),
    ("shape", "where the model has"), ("dtype", "where the model has"), ("arrays", "arrays where the model has"),
    ("bytes", "do not decode"), ("count", "claims 1000000000 train examples"), ("zero-count", "not a positive"),
])
def test_a_poisoned_update_is_dropped_named_and_the_round_goes_on(strategy_name: str, kind: str, reason: str) -> None:
    observer = Observer()
    inner = make_strategy(strategy_name, tolerate=1, min_fit_clients=2, min_available_clients=2)
    strategy = ValidatingStrategy(RecordingStrategy(inner, observer),
                                  UpdatePolicy(count_limits={i: (120, 30) for i in range(1, 7)}))
    rng = np.random.default_rng(1)
    replies = {i: _fit(_honest(rng)) for i in range(1, 6)}
    replies[6] = _poisoned(kind)
    params, _ = _round(strategy, _manager(6), 1, replies)
    assert params is not None and all(np.isfinite(a).all() for a in params)
    assert all(abs(float(a.mean()) - 1.0) < 0.2 for a in params)  # the honest sites' update, not the attacker's
    ((node, why),) = observer.failed[1]
    assert node == 6 and why.startswith("update rejected: ") and reason in why


def test_a_site_claiming_more_than_its_handshake_is_refused_and_an_honest_count_weighs_as_sent() -> None:
    observer = Observer()
    strategy = ValidatingStrategy(RecordingStrategy(FedAvg(), observer),
                                  UpdatePolicy(count_limits={1: (100, 10), 2: (300, 10), 3: (50, 10)}))
    replies = {1: _fit([g + 1 for g in GLOBAL], 100), 2: _fit([g + 2 for g in GLOBAL], 300),
               3: _fit([g + 9 for g in GLOBAL], 51)}
    params, _ = _round(strategy, _manager(3), 1, replies)
    assert params[0][0, 0] == pytest.approx((100 * 1 + 300 * 2) / 400)
    assert observer.failed[1] == [(3, "update rejected: claims 51 train examples, its handshake released 50")]


def test_a_site_rejected_max_rejections_times_is_no_longer_sampled() -> None:
    observer = Observer()
    strategy = ValidatingStrategy(RecordingStrategy(FedAvg(min_fit_clients=2, min_available_clients=2), observer),
                                  UpdatePolicy(max_rejections=2))
    manager = _manager(4)
    rng = np.random.default_rng(2)
    for rnd in (1, 2, 3):
        replies = {i: _fit(_honest(rng)) for i in (1, 2, 3)}
        replies[4] = _poisoned("nan")
        params, sampled = _round(strategy, manager, rnd, replies)
        assert params is not None
        if rnd < 3:
            assert 4 in sampled and [n for n, _ in observer.failed[rnd]] == [4]
        else:
            assert sorted(sampled) == [1, 2, 3] and observer.failed[rnd] == []
    assert "excluded from the rest of the run" in observer.failed[2][0][1]
    assert set(strategy.excluded) == {4}
    evaluation = strategy.configure_evaluate(3, ndarrays_to_parameters(GLOBAL), manager)
    assert 4 not in {p.node_id for p, _ in evaluation}


def test_the_norm_bound_is_relative_to_the_round_median_absolute_or_off() -> None:
    assert NormBound.parse("5x").limit([1.0, 2.0, 30.0]) == pytest.approx(10.0)
    assert NormBound.parse("20").limit([1.0, 2.0]) == 20.0
    assert NormBound.parse("off").limit([1.0]) == math.inf
    for bad in ("0.5x", "-3", "x", "lots", "nan", "inf"):
        with pytest.raises(ConfigError, match="--max-update-norm"):
            NormBound.parse(bad)


def test_sign_flipped_updates_are_refused_so_fedavg_keeps_learning() -> None:
    observer = Observer()
    strategy = ValidatingStrategy(RecordingStrategy(FedAvg(), observer), UpdatePolicy(direction=DirectionTest(0.0)))
    rng = np.random.default_rng(4)
    replies = {i: _fit(_honest(rng)) for i in range(1, 8)}
    replies.update({i: _fit([-a for a in _honest(rng)]) for i in (8, 9, 10)})  # Δ → −Δ at 3 of 10 sites
    params, _ = _round(strategy, _manager(10), 1, replies)
    assert sorted(n for n, _ in observer.failed[1]) == [8, 9, 10]
    assert all("point away from the other sites' median update" in why for _, why in observer.failed[1])
    assert all(abs(float(a.mean()) - 1.0) < 0.1 for a in params)


D = 1290  # digits-cnn's trained values under DP


def _flip_round(strategy: ValidatingStrategy, manager: SimpleClientManager, rnd: int, signal: np.ndarray,
                rng: np.random.Generator) -> set[int]:
    """One round of 10 sites, 8-10 sign-flipping, each update ``signal·√D`` plus unit noise (as measured on
    digits-cnn at ε = 8: honest cosines with the others' median +0.05 ± 0.03, flipped about −0.05); the
    sites sampled."""
    replies = {}
    for nid in range(1, 11):
        update = signal * math.sqrt(D) + rng.standard_normal(D)
        replies[nid] = _fit([(-update if nid > 7 else update).astype(np.float32)])
    instructions = strategy.configure_fit(rnd, ndarrays_to_parameters([np.zeros(D, dtype=np.float32)]), manager)
    strategy.aggregate_fit(rnd, [(p, replies[p.node_id]) for p, _ in instructions], [])
    return {p.node_id for p, _ in instructions}


def _signal(rng: np.random.Generator) -> np.ndarray:
    signal = rng.standard_normal(D)
    return signal * 0.25 / np.linalg.norm(signal)


def _flip_setup(policy: UpdatePolicy, seed: int
                ) -> tuple[Observer, ValidatingStrategy, SimpleClientManager, np.random.Generator, np.ndarray]:
    """A FedAvg run of ten sites under ``policy`` for :func:`_flip_round`: observer, strategy, manager, rng
    and the common signal."""
    observer = Observer()
    rng = np.random.default_rng(seed)
    return (observer, ValidatingStrategy(RecordingStrategy(FedAvg(), observer), policy), _manager(10), rng,
            _signal(rng))


def test_weak_but_steady_sign_flips_are_caught_over_rounds_while_noisy_honest_sites_stay() -> None:
    """Under DP noise an update barely agrees with the others (cosines of ±0.05 in 1,290 dimensions); one round
    cannot prove a flip, a few rounds of the same sign can."""
    _, strategy, manager, rng, signal = _flip_setup(UpdatePolicy(max_rejections=2, direction=DirectionTest(0.0)), 7)
    excluded_at = None
    for rnd in range(1, 8):
        _flip_round(strategy, manager, rnd, signal, rng)
        if excluded_at is None and set(strategy.excluded) == {8, 9, 10}:
            excluded_at = rnd
        assert not set(strategy.excluded) - {8, 9, 10}, (rnd, strategy.excluded)  # no honest site, ever
    assert excluded_at is not None and excluded_at <= 5, excluded_at


def test_a_float64_global_model_takes_float32_updates() -> None:
    """FedAdam and the other adaptive optimisers send a float64 model; sites answer in their float32."""
    observer = Observer()
    strategy = ValidatingStrategy(RecordingStrategy(FedAvg(), observer), UpdatePolicy())
    wide = [g.astype(np.float64) for g in GLOBAL]
    instructions = strategy.configure_fit(1, ndarrays_to_parameters(wide), _manager(3))
    rng = np.random.default_rng(5)
    params, _ = strategy.aggregate_fit(1, [(p, _fit(_honest(rng))) for p, _ in instructions], [])
    assert params is not None and observer.failed[1] == []


@pytest.mark.parametrize("seed", range(5))
def test_honest_updates_of_pure_noise_are_never_refused_by_the_direction_test(seed: int) -> None:
    """Heavy DP noise: updates with no common direction, in a 15-parameter model. A site whose summed cosines
    fall one chance deviation below the threshold sits out that round (about one in six, by chance), but no
    such update counts as a rejection and no site is excluded over 20 rounds."""
    observer = Observer()
    strategy = ValidatingStrategy(RecordingStrategy(FedAvg(), observer), UpdatePolicy(direction=DirectionTest(0.0)))
    manager = _manager(10)
    rng = np.random.default_rng(seed)
    held = 0
    for rnd in range(1, 21):
        _round(strategy, manager, rnd, {i: _fit(_honest(rng, shift=0.0)) for i in range(1, 11)})
        assert all(why.startswith("update held back this round") for _, why in observer.failed[rnd])
        held += len(observer.failed[rnd])
    assert not strategy.excluded and not strategy.rejections
    assert held <= 0.35 * 200, held


def test_a_steady_sign_flip_sits_out_every_round_from_the_first() -> None:
    """One chance deviation is 1/√1290 = 0.028: the flippers sit out round 1 already (the 3σ refusal alone let
    them in for 3-4 rounds: 37 points lost on digits-cnn), and are excluded once their sum is 3σ low."""
    observer, strategy, manager, rng, signal = _flip_setup(UpdatePolicy(direction=DirectionTest(0.0)), 11)
    for rnd in range(1, 7):
        sampled = _flip_round(strategy, manager, rnd, signal, rng)
        assert {n for n, _ in observer.failed[rnd]} == {8, 9, 10} & sampled, rnd  # no honest site, every round
    assert set(strategy.excluded) == {8, 9, 10}


def test_auto_holds_back_and_excludes_sign_flippers_that_stand_out_from_similar_sites() -> None:
    """``--min-update-cosine auto``: three flippers of ten similar sites stand far below the others' tight
    cluster of cosines, so they sit out and are then excluded, with no honest site ever held back."""
    observer, strategy, manager, rng, signal = _flip_setup(UpdatePolicy(direction=parse_min_cosine("auto")), 11)
    first_held = None
    for rnd in range(1, 9):
        _flip_round(strategy, manager, rnd, signal, rng)
        held = {n for n, _ in observer.failed[rnd]}
        assert not held - {8, 9, 10}, (rnd, observer.failed[rnd])  # never an honest site
        if first_held is None and held:
            first_held = rnd
    assert first_held is not None and first_held <= 2, first_held
    assert set(strategy.excluded) == {8, 9, 10}


def _spread_round(strategy: ValidatingStrategy, manager: SimpleClientManager, rnd: int, signal: np.ndarray,
                  rng: np.random.Generator) -> None:
    """Ten honest sites whose data differ strongly: each update is ``a·signal·√D`` plus unit noise with ``a``
    from −0.6 to 1.8 in even steps, so some lean against the common direction and the rest spread between."""
    replies = {nid: _fit([((-0.6 + 0.27 * (nid - 1)) * signal * math.sqrt(D) + rng.standard_normal(D))
                          .astype(np.float32)]) for nid in range(1, 11)}
    instructions = strategy.configure_fit(rnd, ndarrays_to_parameters([np.zeros(D, dtype=np.float32)]), manager)
    strategy.aggregate_fit(rnd, [(p, replies[p.node_id]) for p, _ in instructions], [])


def test_auto_leaves_honest_sites_that_spread_widely_alone() -> None:
    """Sites whose data differ strongly disagree with the others' median in a continuum, not as a cluster
    apart: the absolute test at 0 holds back the three that lean against the common direction and excludes
    two; ``auto`` holds back only the one leaning furthest (as far as −0.6 of a typical site) and excludes
    none."""
    signal = _signal(np.random.default_rng(3))
    held: dict[str, list[int]] = {}
    excluded: dict[str, set[int]] = {}
    for name, direction in (("auto", parse_min_cosine("auto")), ("absolute", DirectionTest(0.0))):
        observer = Observer()
        strategy = ValidatingStrategy(RecordingStrategy(FedAvg(), observer), UpdatePolicy(direction=direction))
        manager = _manager(10)
        rng = np.random.default_rng(5)
        for rnd in range(1, 11):
            _spread_round(strategy, manager, rnd, signal, rng)
        held[name] = [n for failed in observer.failed.values() for n, _ in failed]
        excluded[name] = set(strategy.excluded)
    assert set(held["auto"]) == {1} and not excluded["auto"]
    assert set(held["absolute"]) == {1, 2, 3} and excluded["absolute"] == {1, 2}


def test_auto_judges_no_one_in_a_round_of_few_sites() -> None:
    """Four sites cannot tell a site that stands out from sites that differ: ``auto`` leaves them be (the
    absolute test, from three sites a round, is for that)."""
    observer = Observer()
    strategy = ValidatingStrategy(RecordingStrategy(FedAvg(), observer),
                                  UpdatePolicy(direction=parse_min_cosine("auto")))
    rng = np.random.default_rng(4)
    for rnd in range(1, 4):
        replies = {i: _fit(_honest(rng)) for i in range(1, 4)}
        replies[4] = _fit([-a for a in _honest(rng)])
        _round(strategy, _manager(4), rnd, replies)
        assert observer.failed[rnd] == []


def test_multikrum_counts_the_attackers_the_checks_caught_out_of_f() -> None:
    """``--tolerate-attackers 3`` and three sites refused for NaN: Multi-Krum averages all seven honest updates
    left, not the n − f = 4 it kept before (10.6 points below the clean run on digits-cnn)."""
    caught = CaughtSites()
    strategy = ValidatingStrategy(make_strategy("multikrum", tolerate=3, caught=caught), UpdatePolicy(), caught)
    rng = np.random.default_rng(6)
    honest = {i: _honest(rng) for i in range(4, 11)}
    replies = {i: _fit(a) for i, a in honest.items()}
    replies.update({i: _poisoned("nan") for i in (1, 2, 3)})
    params, _ = _round(strategy, _manager(10), 1, replies)
    assert caught.now == {1, 2, 3}
    for got, *each in zip(params, *honest.values(), strict=True):
        np.testing.assert_allclose(got, np.mean(each, axis=0), rtol=1e-5)


def test_the_direction_threshold_parses_or_names_its_flag() -> None:
    assert parse_min_cosine("0") == DirectionTest(0.0) and parse_min_cosine("-0.2") == DirectionTest(-0.2)
    assert parse_min_cosine("off") == DirectionTest() and not DirectionTest().on
    # among peers: a site must stand out from the others, not only disagree with their median
    assert parse_min_cosine("auto") == DirectionTest(0.0, among_peers=True)
    # off unless asked for: a site whose data no other site holds looks like a flipper
    assert UpdatePolicy().direction == parse_min_cosine(RunConfig().min_update_cosine) == DirectionTest()
    for bad in ("1", "2", "-1.5", "nan", "south"):
        with pytest.raises(ConfigError, match="--min-update-cosine"):
            parse_min_cosine(bad)


def test_an_update_above_the_bound_is_clipped_to_it_and_an_absurd_one_refused() -> None:
    """Honest sites' DP updates differ severalfold in norm with their sizes: a large one is scaled down to
    the bound, not dropped; one of 100x the bound or more is a model-replacement attempt, refused."""
    observer = Observer()
    strategy = ValidatingStrategy(RecordingStrategy(FedAvg(), observer), UpdatePolicy(direction=DirectionTest()))
    replies = {1: _fit([g + 1 for g in GLOBAL]), 2: _fit([g + 1 for g in GLOBAL]), 3: _fit([g + 1 for g in GLOBAL]),
               4: _fit([g + 12 for g in GLOBAL]), 5: _fit([g + 1000 for g in GLOBAL])}
    params, _ = _round(strategy, _manager(5), 1, replies)
    assert [n for n, _ in observer.failed[1]] == [5] and "above 100x the bound" in observer.failed[1][0][1]
    # site 4 clipped to 5x the median norm: it counts with 5 per coordinate, not 12
    assert params[0][0, 0] == pytest.approx((1 + 1 + 1 + 5) / 4, rel=1e-5)


def test_when_every_update_fails_the_model_stays_as_it_was() -> None:
    strategy = ValidatingStrategy(FedAvg(), UpdatePolicy())
    params, _ = _round(strategy, _manager(2), 1, {1: _poisoned("nan"), 2: _poisoned("shape")})
    assert params is None


def test_under_secagg_only_the_sum_is_checked_and_an_outsized_one_is_discarded() -> None:
    """SecAgg+ hands every site's result the one unmasked aggregate; a hostile site can only spoil it whole."""
    strategy = ValidatingStrategy(FedAvg(), UpdatePolicy(aggregate_only=True))
    manager = _manager(3)
    normal = ndarrays_to_parameters([g + 1 for g in GLOBAL])
    params, _ = _round(strategy, manager, 1, {i: _fit(normal) for i in (1, 2, 3)})
    assert params is not None
    large = ndarrays_to_parameters([(g + 20).astype(np.float64) for g in GLOBAL])  # SecAgg+'s dequantised dtype
    params, _ = _round(strategy, manager, 2, {i: _fit(large) for i in (1, 2, 3)})
    assert params[0][0, 0] == pytest.approx(5.0)  # clipped to 5x the earlier sums' median norm
    huge = ndarrays_to_parameters([g + 1e4 for g in GLOBAL])
    params, _ = _round(strategy, manager, 3, {i: _fit(huge) for i in (1, 2, 3)})
    assert params is None  # discarded: the global model stays as it was
    nan = ndarrays_to_parameters([np.full_like(g, np.nan) for g in GLOBAL])
    params, _ = _round(strategy, manager, 4, {i: _fit(nan) for i in (1, 2, 3)})
    assert params is None
    params, _ = _round(strategy, manager, 5, {i: _fit(normal) for i in (1, 2, 3)})
    assert params is not None


# the bias (array 1) and the first row of the weight (array 0) are frozen: an honest site sends them back as received
FIXED = [np.zeros((4, 3), dtype=bool), np.ones(3, dtype=bool)]
FIXED[0][0] = True


def _trains_unfixed(rng: np.random.Generator) -> list[np.ndarray]:
    return [np.where(m, g, u).astype(np.float32) for g, u, m in zip(GLOBAL, _honest(rng), FIXED, strict=True)]


def test_an_update_that_moves_a_frozen_parameter_is_refused_and_the_frozen_layers_stay() -> None:
    """A random update spread over every value moved digits-cnn's fixed Gabor and random layers: no honest
    site's training moves them, so any change to one is refused (its size does not matter)."""
    observer = Observer()
    strategy = ValidatingStrategy(RecordingStrategy(FedAvg(), observer), UpdatePolicy(fixed=FIXED))
    rng = np.random.default_rng(2)
    replies = {i: _fit(_trains_unfixed(rng)) for i in (1, 2, 3, 4)}
    attack = _trains_unfixed(rng)
    attack[1] = attack[1] + np.float32(1e-3)  # a small nudge to a frozen layer, well inside the norm bound
    replies[5] = _fit(attack)
    params, _ = _round(strategy, _manager(5), 1, replies)
    assert params is not None
    for out, g, m in zip(params, GLOBAL, FIXED, strict=True):
        np.testing.assert_array_equal(out[m], g[m])  # untouched: exactly the global model's values
    assert abs(float(params[0][1:].mean()) - 1.0) < 0.2  # the honest sites' training went through
    ((node, why),) = observer.failed[1]
    assert node == 5 and "changes 3 values of the parameters the task keeps fixed" in why


def test_a_float64_global_model_s_frozen_values_come_back_rounded_and_pass() -> None:
    """FedAdam's float64 global model: a site loads it into its float32 model and answers in float32, so
    an honest site's frozen values are the global model's rounded, not the same float64 numbers."""
    observer = Observer()
    strategy = ValidatingStrategy(RecordingStrategy(FedAvg(), observer), UpdatePolicy(fixed=FIXED))
    wide = [(g + 0.1).astype(np.float64) for g in GLOBAL]  # 0.1: no float32 holds it exactly
    instructions = strategy.configure_fit(1, ndarrays_to_parameters(wide), _manager(3))
    rng = np.random.default_rng(6)
    replies = [(p, _fit([np.where(m, w, w + u).astype(np.float32) for w, u, m in zip(wide, _honest(rng), FIXED,
                                                                                    strict=True)]))
               for p, _ in instructions]
    params, _ = strategy.aggregate_fit(1, replies, [])
    assert params is not None and observer.failed[1] == []


def test_fedadam_moves_frozen_values_by_rounding_unless_they_are_held() -> None:
    """FedAvg's mean of equal float32 values rounds, and FedAdam divides that rounding by its own tiny second
    moment: frozen values drift (digits-cnn's Gabor filters by 0.0056 in two rounds). Held, each round's
    model carries exactly the values the run began with."""
    from flwr.server.strategy import FedAdam

    from fedshield.strategies.fixed_parameters import FixedParameters

    start = [g + np.random.default_rng(9).standard_normal(g.shape).astype(np.float32) for g in GLOBAL]
    drifted = {}
    for held in (False, True):
        inner = FedAdam(initial_parameters=ndarrays_to_parameters(start), eta=0.1)
        strategy = FixedParameters(inner, start, FIXED) if held else inner
        sent, rng = start, np.random.default_rng(8)
        for rnd in (1, 2, 3):
            replies = [(Proxy(i), _fit([np.where(m, s, s + 0.01 * rng.standard_normal(s.shape)).astype(np.float32)
                                        for s, m in zip(sent, FIXED, strict=True)], count=c))
                       for i, c in ((1, 7), (2, 11), (3, 13), (4, 17), (5, 19))]
            params, _ = strategy.aggregate_fit(rnd, replies, [])
            sent = parameters_to_ndarrays(params)
        drifted[held] = max(float(np.abs(a[m] - b[m]).max()) for a, b, m in zip(sent, start, FIXED, strict=True))
    assert drifted[True] == 0.0 < drifted[False]


def test_under_secagg_the_sums_frozen_values_are_the_global_models() -> None:
    """Under SecAgg+ no site's update can be checked alone: the sum's frozen values are put back instead, so a
    masked attack cannot move a frozen layer either (nor SecAgg+'s quantisation error)."""
    strategy = ValidatingStrategy(FedAvg(), UpdatePolicy(aggregate_only=True, fixed=FIXED))
    moved = ndarrays_to_parameters([(g + 0.5).astype(np.float64) for g in GLOBAL])
    params, _ = _round(strategy, _manager(3), 1, {i: _fit(moved) for i in (1, 2, 3)})
    assert params is not None
    for out, g, m in zip(params, GLOBAL, FIXED, strict=True):
        np.testing.assert_array_equal(out[m], g[m])
        np.testing.assert_allclose(out[~m], g[~m] + 0.5)


def test_the_fixed_mask_marks_exactly_the_frozen_parameters_of_the_packed_model() -> None:
    from torch import nn

    from fedshield.common.torch_arrays import fixed_mask, model_to_ndarrays

    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    assert fixed_mask(model) is None  # everything trains
    model[2].weight.requires_grad_(False)
    (mask,) = fixed_mask(model)
    (vector,) = model_to_ndarrays(model)
    assert mask.shape == vector.shape and int(mask.sum()) == 8
    np.testing.assert_array_equal(vector[mask], model[2].weight.detach().numpy().ravel())


def test_evaluation_replies_with_nan_or_inflated_counts_are_dropped() -> None:
    observer = Observer()
    strategy = ValidatingStrategy(RecordingStrategy(FedAvg(), observer),
                                  UpdatePolicy(count_limits={1: (100, 20), 2: (100, 20), 3: (100, 20)}))
    manager = _manager(3)
    strategy.configure_evaluate(1, ndarrays_to_parameters(GLOBAL), manager)
    proxies = {nid: manager.all()[str(nid)] for nid in (1, 2, 3)}
    results = [(proxies[1], EvaluateRes(status=OK, loss=0.5, num_examples=20, metrics={"accuracy": 0.8})),
               (proxies[2], EvaluateRes(status=OK, loss=math.nan, num_examples=20, metrics={})),
               (proxies[3], EvaluateRes(status=OK, loss=9.0, num_examples=10**6, metrics={}))]
    loss, _ = strategy.aggregate_evaluate(1, results, [])
    assert loss == pytest.approx(0.5)
    assert sorted(n for n, _ in observer.evaluation_failed) == [2, 3]


@pytest.mark.parametrize("strategy", ["fedmedian", "fedtrimmedavg", "krum", "multikrum"])
def test_a_robust_strategy_under_secagg_is_refused_not_silently_a_mean(strategy: str) -> None:
    with pytest.raises(ConfigError, match=f"--strategy {strategy} needs every site's update, which --secagg hides"):
        RunConfig(strategy=strategy, secagg=True, min_clients=5).validate()


def test_krum_needs_two_f_plus_three_sites() -> None:
    with pytest.raises(ConfigError, match="needs --min-clients of at least 7"):
        RunConfig(strategy="krum", tolerate_attackers=2, min_clients=6).validate()
    RunConfig(strategy="multikrum", tolerate_attackers=2, min_clients=7).validate()


def test_rejections_name_their_site_among_flowers_unnamed_failures() -> None:
    observer = Observer()
    recording = RecordingStrategy(FedAvg(), observer)
    recording.configure_fit(1, ndarrays_to_parameters(GLOBAL), _manager(4))
    recording.aggregate_fit(1, [(Proxy(1), _fit(_honest(np.random.default_rng(3))))],
                            [TimeoutError("no reply in time"), RejectedUpdate(3, "update rejected: x")])
    failed = dict(observer.failed[1])
    assert failed[3] == "update rejected: x"  # by its node id, whatever order Flower sampled in
    assert sorted(failed) == [2, 3, 4] and sorted([failed[2], failed[4]]) == ["no reply", "no reply in time"]


def test_fit_instructions_still_reach_every_allowed_site() -> None:
    strategy = ValidatingStrategy(FedTrimmedAvg(), UpdatePolicy())
    instructions = strategy.configure_fit(1, ndarrays_to_parameters(GLOBAL), _manager(5))
    assert sorted(p.node_id for p, _ in instructions) == [1, 2, 3, 4, 5]
    assert all(isinstance(ins, FitIns) for _, ins in instructions)


def _unique_data_round(strategy: ValidatingStrategy, manager: SimpleClientManager, rnd: int, common: np.ndarray,
                       own: np.ndarray, rng: np.random.Generator) -> None:
    """Ten sites: 1-6 honest with similar data (``common·√D`` plus unit noise); 7 honest but holding data no
    other site holds, so its update leans against theirs (``(own − common)·√D``, as digits' class-1 site did at
    Dirichlet 0.1); 8-10 sign-flippers (``−common·√D``)."""
    replies = {}
    for nid in range(1, 11):
        signal = own - common if nid == 7 else (-common if nid > 7 else common)
        replies[nid] = _fit([(signal * math.sqrt(D) + rng.standard_normal(D)).astype(np.float32)])
    instructions = strategy.configure_fit(rnd, ndarrays_to_parameters([np.zeros(D, dtype=np.float32)]), manager)
    strategy.aggregate_fit(rnd, [(p, replies[p.node_id]) for p, _ in instructions], [])


def test_trusted_examples_tell_a_site_with_unique_data_from_sign_flippers() -> None:
    """Against the other sites' median, the site whose data no other site holds is held back like the three
    flippers (12 points of accuracy lost on digits at Dirichlet 0.1). Against the coordinator's own update on
    trusted examples that cover every site's data (``common + own``, without DP noise) it stays in every
    round, while the flippers are refused from round 1 and excluded."""
    rng = np.random.default_rng(3)
    common, own = _signal(rng), _signal(rng)
    own -= common * float(own @ common) / float(common @ common)  # a direction no other site's data pushes
    own *= 1.5

    def trusted(_rnd: int, global_arrays: list[np.ndarray]) -> list[np.ndarray]:
        return [g + (common + own).astype(np.float32) for g in global_arrays]

    median_observer, median_test, median_manager, *_ = _flip_setup(UpdatePolicy(direction=DirectionTest(0.0)), 0)
    observer, strategy, manager, *_ = _flip_setup(UpdatePolicy(direction=DirectionTest(0.0), trusted=trusted), 0)
    for rnd in range(1, 7):
        _unique_data_round(median_test, median_manager, rnd, common, own, np.random.default_rng(rnd))
        _unique_data_round(strategy, manager, rnd, common, own, np.random.default_rng(rnd))
        assert 7 not in {n for n, _ in observer.failed[rnd]}, rnd
        if rnd == 1:
            assert {n for n, _ in observer.failed[1]} == {8, 9, 10}
            assert all("the coordinator's update on its trusted examples" in why for _, why in observer.failed[1])
    assert 7 in median_test.excluded or sum(7 in {n for n, _ in f} for f in median_observer.failed.values()) >= 4
    assert set(strategy.excluded) == {8, 9, 10}


def test_the_trusted_reference_judges_even_a_round_of_two_updates() -> None:
    """The median of the others needs three updates a round; the coordinator's own update needs none."""
    observer = Observer()

    def trusted(_rnd: int, global_arrays: list[np.ndarray]) -> list[np.ndarray]:
        return [g + 1.0 for g in global_arrays]

    strategy = ValidatingStrategy(RecordingStrategy(FedAvg(), observer),
                                  UpdatePolicy(direction=DirectionTest(0.0), trusted=trusted))
    rng = np.random.default_rng(2)
    params, _ = _round(strategy, _manager(2), 1, {1: _fit(_honest(rng)), 2: _fit([-a for a in _honest(rng)])})
    assert [n for n, _ in observer.failed[1]] == [2]
    assert params is not None and all(abs(float(a.mean()) - 1.0) < 0.1 for a in params)


def test_without_dp_an_honest_site_leaning_a_little_away_from_the_trusted_update_is_never_refused() -> None:
    """Without DP an update is no random vector: digits-cnn at Dirichlet 0.5 (454,922 values, `--no-dp`) had an
    honest site at cosine −0.03 with the coordinator's update in round 1, 20 chance deviations below 0, and the
    3σ level refused it (three such rounds would have excluded it). It may sit out a round; refused are only
    sites pointing away at least half as far as the agreeing sites point towards it, as a flipper does."""
    dims = 100_000
    rng = np.random.default_rng(5)
    direction = rng.standard_normal(dims)
    direction /= np.linalg.norm(direction)

    def leaning(cosine: float) -> np.ndarray:
        other = rng.standard_normal(dims)
        other -= direction * float(other @ direction)
        return (cosine * direction + math.sqrt(1 - cosine**2) * other / np.linalg.norm(other)).astype(np.float32)

    def trusted(_rnd: int, global_arrays: list[np.ndarray]) -> list[np.ndarray]:
        return [g + direction.astype(np.float32) for g in global_arrays]

    observer = Observer()
    strategy = ValidatingStrategy(RecordingStrategy(FedAvg(), observer),
                                  UpdatePolicy(direction=DirectionTest(0.0), trusted=trusted))
    manager = _manager(4)
    for rnd in range(1, 7):
        honest = {1: leaning(0.12), 2: leaning(0.08), 3: leaning(-0.03)}
        replies = {**{nid: _fit([u]) for nid, u in honest.items()}, 4: _fit([-honest[1]])}  # 4 flips site 1's
        instructions = strategy.configure_fit(rnd, ndarrays_to_parameters([np.zeros(dims, dtype=np.float32)]),
                                              manager)
        strategy.aggregate_fit(rnd, [(p, replies[p.node_id]) for p, _ in instructions], [])
        reasons = dict(observer.failed[rnd])
        assert reasons[3].startswith("update held back this round"), (rnd, reasons)
        if rnd == 1:
            assert "held back" not in reasons[4] and "below -0.050" in reasons[4], reasons
    assert set(strategy.excluded) == {4}
