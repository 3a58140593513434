"""Every site's update checked before any strategy aggregates it: finite, the model's shape, a bounded norm,
a plausible example count.

Why our own wrapper: Flower's strategies trust every ``FitRes``. One enrolled site sending NaN made all
parameters of the global model NaN (FedAvg, and FedMedian too, since ``np.median`` propagates NaN), an
update scaled by 1e6 took over the model, a wrong-shaped array aborted the run, and a site claiming 1e9
examples took almost all of FedAvg's weight. This wrapper sits in front of any Flower strategy (and of
its DP wrappers), drops what fails with the reason, and hands the rest on unchanged.

The checks, per site and round (plaintext updates):

1. the arrays decode, with the global model's shapes and kinds of dtype (float, int), every value is
   finite, and the values of the parameters the task keeps fixed (``fixed``: a frozen backbone,
   digits-cnn's Gabor filters) are the global model's, unchanged: no honest site's training moves them,
   and an update that does would change layers that every site's DP noise leaves alone (a random update
   spread over all of digits-cnn's 454,922 values moved its fixed layers, costing 9.4 points);
2. the example count is a positive integer no larger than the count the site released in its handshake
   (``count_limits``; unknown sites: ``default_count_limit``), and FedAvg weighs it at most that;
3. ‖update − global‖₂ is at most the bound: a number, or ``k``× the median norm of the round's
   updates that passed 1-2 (``"5x"``, the default; ``"off"``). An update above the bound is scaled
   down to it (norm bounding, Sun et al. 2019, "Can You Really Backdoor Federated Learning?"): honest
   sites' norms differ severalfold with their sizes under DP, so a bound must not cost them their
   round. One above :data:`IMPLAUSIBLE`× the bound is refused as a model-replacement attempt. A median
   bound holds while fewer than half the sites attack.
4. the site's updates point the way the other sites agree on (``direction``, ``--min-update-cosine``; off
   by default): the cosine similarity of each update with the coordinate-wise median of the round's other
   updates that passed 1-3, averaged over the k rounds the site took part in (rounds with 3 or more
   updates; d the coordinates any update moved, σ = 1/√d the standard deviation of the cosine of unrelated
   vectors in d dimensions). With a threshold m (``0``): a mean below m − 3σ/√k is refused (and counts
   towards exclusion); below m − σ/√k the update sits out this round only, without counting. Honest
   updates that are mostly DP noise agree with the others only by chance: they are never refused for it,
   and sit out about one round in six. A sign-flipped update scores about minus an honest one's, every
   round (digits-cnn at ε = 8, 1,290 trained values: honest cosines +0.05 ± 0.03, flipped about −0.05):
   the 3σ refusal alone let three flippers of ten in for 3-4 rounds, which cost 37 points of accuracy;
   with the one-sigma sit-out they are out from round 1. ``auto`` (threshold 0, rounds of 5 or more
   sites) besides requires the site's mean to lie 2 (refusal: 3) robust deviations below the median of
   the round's sites' means: sites whose data differ spread out, and one at the low end of that spread is
   no outlier. Sites whose data no other site holds are, though, whatever the test: on digits at
   Dirichlet 0.1 (seed 1) a site holding most of class 1 pointed away from the others' median as far as
   a flipper (cosines near −0.09), and holding it back cost 12 points. Measured on digits at ε = 8:
   Dirichlet 0.5 (3, 5 and 10 sites), no honest site sat out with either; Dirichlet 0.1 (10 sites), the
   threshold 0 held two to five of ten back in most rounds, ``auto`` one in one round (seed 0) or two
   from round 3 (seed 1); three flippers of ten sat out from round 1 with 0 and from round 3 with
   ``auto``, one flipper from round 1 with both.
   With ``--trusted-data`` (examples the coordinator holds and trusts) each update is compared instead with
   the coordinator's own update on them (:mod:`fedshield.server.trusted_reference`; FLTrust's idea), and the
   test is on (threshold 0; ``fl-sim run`` gives its coordinator ten held-out examples per class by
   default): a reference no site can move, which a site whose data no other site holds still agrees with
   when the trusted examples cover its classes. An update sits out there two chance deviations below the
   threshold, not one (the reference carries no DP noise, and flipped updates lie far below it). A refusal
   there besides needs the site's mean to lie below
   minus half the agreeing sites' median mean (:data:`MIRROR_FRACTION`): a flipped update points away as
   far as an honest one points towards the reference, and without DP an honest update is no random vector
   (the 3σ level alone refused an honest Dirichlet-0.5 site at cosine −0.03 in 454,922 dimensions).
   Measured on digits at ε = 8 with 100 trusted examples: three flippers of ten (IID) refused from round
   1; at Dirichlet 0.1 (seed 1) no honest site refused, two held back for one round each, accuracy 0.635
   against 0.617 without any test.

A site whose update fails ``max_rejections`` times is excluded for the rest of the run (it is no longer
sampled). Rejections reach the strategy as failures (:class:`RejectedUpdate`), so results name the site
and the reason, and the round goes on with the others.

Under SecAgg+ the server only ever sees the sum: the same aggregate arrives as every site's result.
Then only the aggregate is checked: finite and shaped (a failing aggregate is discarded and the global
model stays as it was), its fixed values put back to the global model's (SecAgg+'s quantisation moves
every value a little, so the sum cannot be held to "unchanged"), and its norm bounded as in 3, relative
to the earlier rounds' aggregates.
"""

from __future__ import annotations

import logging
import math
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from flwr.common import (
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    Parameters,
    Scalar,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server import ClientManager
from flwr.server.strategy import Strategy

from fedshield.common.update_bounds import (
    DEFAULT_MIN_COSINE,
    DEFAULT_NORM_BOUND,
    DirectionTest,
    NormBound,
    parse_min_cosine,
)
from fedshield.flower_ext.legacy_api import ClientProxy, Criterion
from fedshield.strategies.caught_sites import CaughtSites

log = logging.getLogger("fedshield.server")

DEFAULT_MAX_REJECTIONS = 3
MEDIAN_SAMPLE = 100
LEAVE_ONE_OUT = 20
# The direction test (--min-update-cosine), in standard deviations of a chance cosine in d dimensions (1/√d):
# a site whose summed cosines fall this far below the threshold is refused (and, max_rejections times, excluded)
EXCLUDE_SIGMAS = 3.0
# ... and an update this far below it in one round is held back from that round only (not counted)
HOLD_SIGMAS = 1.0
# ... two against the coordinator's trusted update: a reference without DP noise, which a flipped update points
# away from by far more (digits at ε = 8: −0.16 to −0.19, 6 chance deviations), while honest updates that are
# mostly DP noise (200 sites of 7 examples) fell one deviation below it in one round of six and sat out
TRUSTED_HOLD_SIGMAS = 2.0
# ... and among peers (auto), a site's mean cosine must besides lie this many robust deviations below the
# round's sites' median: held back, refused (see ValidatingStrategy._direction)
PEER_HOLD_Z = 2.0
PEER_EXCLUDE_Z = 3.0
# the fewest sites with a cosine in a round for the peer test to judge any of them
PEER_MIN_SITES = 5
# Against the coordinator's trusted update a refusal (which counts towards exclusion) besides needs the site's
# mean cosine to lie below minus this fraction of the median mean of the sites whose updates agree with it: a
# flipped update points away as far as an honest one points towards it, while an honest update whose data the
# trusted examples cover less leans only a little away. Without DP, honest updates are no random vectors, and
# the chance level 3/√d (0.0045 for digits-cnn's 454,922 values) refused such an honest site at cosine −0.03.
MIRROR_FRACTION = 0.5
# a normal distribution's standard deviation over its median absolute deviation (Hampel 1974)
HAMPEL = 1.4826
# An update this many times the norm bound is no update at all (a model-replacement attempt): refused, not clipped.
IMPLAUSIBLE = 100.0


class RejectedUpdate(Exception):
    """A site's reply that failed a check: ``node_id`` and the reason (the failure Flower's strategies see)."""

    def __init__(self, node_id: int, reason: str, *, counts: bool = True) -> None:
        super().__init__(reason)
        self.node_id = node_id
        self.reason = reason
        self.counts = counts  # towards the site's exclusion (a round's direction hold-back does not)


@dataclass
class UpdatePolicy:
    """What a plausible update is: see the module docstring.

    ``count_limits``: node id → the (training, validation) example counts the site released in its
    handshake; ``default_count_limit``: both limits for sites the handshake did not ask (a sampled
    simulation), 0 = no limit;
    ``aggregate_only``: SecAgg+ (the server sees only the sum);
    ``fixed``: :func:`fedshield.common.torch_arrays.fixed_mask` of the global model.
    """

    norm_bound: NormBound = field(default_factory=lambda: NormBound.parse(DEFAULT_NORM_BOUND))
    max_rejections: int = DEFAULT_MAX_REJECTIONS
    count_limits: dict[int, tuple[int, int]] = field(default_factory=dict)
    default_count_limit: int = 0
    aggregate_only: bool = False
    direction: DirectionTest = field(default_factory=lambda: parse_min_cosine(DEFAULT_MIN_COSINE))
    #: per array of the model, True at the values of parameters the task keeps fixed (None: all train)
    fixed: list[np.ndarray] | None = None
    #: ``--trusted-data``: (round, global arrays) → the coordinator's own model trained on its trusted examples
    #: (:class:`fedshield.server.trusted_reference.TrustedReference`); the direction test compares each update
    #: with that update instead of the other sites' median
    trusted: Callable[[int, list[np.ndarray]], list[np.ndarray]] | None = None

    @property
    def compared_with(self) -> str:
        """What the direction test compares each update with, for its messages."""
        return ("the coordinator's update on its trusted examples" if self.trusted is not None
                else "the other sites' median update")

    def count_limit(self, node_id: int, split: str) -> int:
        """The most examples ``node_id`` may claim for ``split`` (``train`` or ``val``); 0: no limit."""
        limits = self.count_limits.get(node_id)
        if limits is None:
            return self.default_count_limit
        return limits[0] if split == "train" else limits[1]


def _flat_norm(arrays: list[np.ndarray], reference: list[np.ndarray]) -> float:
    return math.sqrt(sum(float(np.sum((a.astype(np.float64) - r.astype(np.float64)) ** 2))
                         for a, r in zip(arrays, reference, strict=True)))


def _clipped(arrays: list[np.ndarray], reference: list[np.ndarray], factor: float) -> list[np.ndarray]:
    """``reference + factor · (arrays − reference)``, in the arrays' own dtypes."""
    return [(r.astype(np.float64) + factor * (a.astype(np.float64) - r.astype(np.float64))).astype(a.dtype)
            if a.dtype.kind == "f" else a for a, r in zip(arrays, reference, strict=True)]


def array_problem(arrays: list[np.ndarray], reference: list[np.ndarray], *, dtypes: bool = True) -> str | None:
    """Why ``arrays`` cannot be an update of a model shaped like ``reference`` (None: it can); ``dtypes``:
    the dtypes must match too."""
    if len(arrays) != len(reference):
        return f"{len(arrays)} arrays where the model has {len(reference)}"
    for i, (a, r) in enumerate(zip(arrays, reference, strict=True)):
        # the kind, not the width: Flower's adaptive optimisers (FedAdam, …) send a float64 global model back
        # to sites that train, and answer, in float32
        if a.shape != r.shape or (dtypes and a.dtype.kind != r.dtype.kind):
            return f"array {i} is {a.dtype}{list(a.shape)} where the model has {r.dtype}{list(r.shape)}"
        if a.dtype.kind in "fc" and not np.isfinite(a).all():
            return f"array {i} holds NaN or infinite values"
    return None


def fixed_problem(arrays: list[np.ndarray], reference: list[np.ndarray], fixed: list[np.ndarray] | None
                  ) -> str | None:
    """Why ``arrays`` (shaped as ``reference``) is no honest update: it changes values ``fixed`` marks.

    Compared in the reply's dtype: Flower's adaptive optimisers (FedAdam, …) send a float64 model to sites
    that train and answer in float32, so an honest site returns each fixed value rounded to float32."""
    if fixed is None:
        return None
    changed = sum(int(np.count_nonzero(a[m] != r[m].astype(a.dtype)))
                  for a, r, m in zip(arrays, reference, fixed, strict=True))
    if changed:
        return (f"changes {changed} values of the parameters the task keeps fixed (frozen layers), which no "
                "site's training moves")
    return None


def _with_fixed(arrays: list[np.ndarray], reference: list[np.ndarray], fixed: list[np.ndarray]) -> list[np.ndarray]:
    """``arrays`` with the values ``fixed`` marks put back to ``reference``'s."""
    return [np.where(m, r, a).astype(a.dtype) for a, r, m in zip(arrays, reference, fixed, strict=True)]


class _Allowed(Criterion):
    def __init__(self, excluded: dict[int, str], also: Criterion | None) -> None:
        self.excluded, self.also = excluded, also

    def select(self, client: ClientProxy) -> bool:
        return client.node_id not in self.excluded and (self.also is None or self.also.select(client))


class ExcludingClientManager(ClientManager):
    """Flower's client manager without the excluded sites: strategies size and draw their samples from the
    sites still allowed, so an excluded site is never sampled (nor counted as a missing reply)."""

    def __init__(self, inner: ClientManager, excluded: dict[int, str]) -> None:
        self.inner, self.excluded = inner, excluded

    def num_available(self) -> int:
        return sum(1 for proxy in self.inner.all().values() if proxy.node_id not in self.excluded)

    def register(self, client: ClientProxy) -> bool:
        return self.inner.register(client)

    def unregister(self, client: ClientProxy) -> None:
        self.inner.unregister(client)

    def all(self) -> dict[str, ClientProxy]:
        return {cid: p for cid, p in self.inner.all().items() if p.node_id not in self.excluded}

    def wait_for(self, num_clients: int, timeout: int = 86400) -> bool:
        return self.inner.wait_for(num_clients, timeout)

    def sample(self, num_clients: int, min_num_clients: int | None = None,
               criterion: Criterion | None = None) -> list[ClientProxy]:
        return self.inner.sample(num_clients, min_num_clients, _Allowed(self.excluded, criterion))


class ValidatingStrategy(Strategy):
    """Check every site's reply (see the module docstring), then delegate to ``inner`` with what passed."""

    def __init__(self, inner: Strategy, policy: UpdatePolicy, caught: CaughtSites | None = None) -> None:
        self.inner = inner
        self.policy = policy
        #: told each round which sites the checks hold responsible (Krum counts its f down by them)
        self.caught = caught if caught is not None else CaughtSites()
        self.rejections: Counter[int] = Counter()
        self.excluded: dict[int, str] = {}
        self._global: dict[int, list[np.ndarray]] = {}  # round -> the global model the sites were sent
        self._aggregate_norms: list[float] = []
        self._agreement_sum: defaultdict[int, float] = defaultdict(float)  # node -> summed cosines
        self._agreement_rounds: Counter[int] = Counter()
        #: a resumed run's global model, which the workflow starts from instead of what the strategy holds
        #: (FedAvgM keeps its own weights before central DP's noise: never sent to sites)
        self.resume_from: Parameters | None = None

    def __repr__(self) -> str:
        return f"Validating({self.inner!r})"

    # ------------------------------------------------------------------ resumption
    def checks_state(self, site_of: Callable[[int], str]) -> dict[str, Any]:
        """What the checks remember, by site name (a site that reconnects gets another node id): rejections,
        exclusions, each site's summed direction cosines and their rounds, and under SecAgg+ the earlier
        rounds' aggregate norms."""
        rejections: Counter[str] = Counter()
        for node_id, count in self.rejections.items():
            rejections[site_of(node_id)] += count
        agreement = {site_of(n): [float(self._agreement_sum[n]), int(k)] for n, k in self._agreement_rounds.items()}
        return {"rejections": dict(rejections), "excluded": {site_of(n): r for n, r in self.excluded.items()},
                "aggregate_norms": [float(n) for n in self._aggregate_norms], "agreement": agreement}

    def restore_checks(self, state: dict[str, Any], node_ids: dict[str, int]) -> None:
        """Put back :meth:`checks_state` for the sites connected now (site name -> node id); a site not
        connected now starts again from zero, should it join later."""
        for site, count in dict(state.get("rejections", {})).items():
            if site in node_ids:
                self.rejections[node_ids[site]] = int(count)
        for site, reason in dict(state.get("excluded", {})).items():
            if site in node_ids:
                self.excluded[node_ids[site]] = str(reason)
        for site, (total, rounds) in dict(state.get("agreement", {})).items():
            if site in node_ids and math.isfinite(float(total)) and int(rounds) > 0:
                self._agreement_sum[node_ids[site]] = float(total)
                self._agreement_rounds[node_ids[site]] = int(rounds)
        self._aggregate_norms = [float(n) for n in state.get("aggregate_norms", [])]

    # ------------------------------------------------------------------ delegation
    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        initial = self.inner.initialize_parameters(client_manager)
        return self.resume_from if self.resume_from is not None else initial

    def evaluate(self, server_round: int, parameters: Parameters) -> tuple[float, dict[str, Scalar]] | None:
        return self.inner.evaluate(server_round, parameters)

    def configure_fit(self, server_round: int, parameters: Parameters,
                      client_manager: ClientManager) -> list[tuple[ClientProxy, FitIns]]:
        self._global = {server_round: parameters_to_ndarrays(parameters)}
        return self.inner.configure_fit(server_round, parameters, ExcludingClientManager(client_manager, self.excluded))

    def configure_evaluate(self, server_round: int, parameters: Parameters,
                           client_manager: ClientManager) -> list[tuple[ClientProxy, EvaluateIns]]:
        return self.inner.configure_evaluate(server_round, parameters,
                                             ExcludingClientManager(client_manager, self.excluded))

    # ------------------------------------------------------------------ training
    def aggregate_fit(self, server_round: int, results: list[tuple[ClientProxy, FitRes]],
                      failures: list) -> tuple[Parameters | None, dict[str, Scalar]]:
        reference = self._global.get(server_round)
        if reference is None or not results:  # nothing to compare with (a strategy driven from elsewhere)
            return self.inner.aggregate_fit(server_round, results, failures)
        if self.policy.aggregate_only:
            return self._aggregate_sum(server_round, results, failures, reference)
        accepted: list[tuple[ClientProxy, FitRes, list[np.ndarray], float]] = []
        rejected: list[RejectedUpdate] = []
        for proxy, res in results:
            problem, arrays = self._decode(res, reference)
            if problem is None:
                problem = fixed_problem(arrays, reference, self.policy.fixed)
            count, count_problem = self._count(proxy.node_id, res.num_examples)
            problem = problem or count_problem
            if problem is not None:
                rejected.append(self._reject(proxy.node_id, problem))
                continue
            accepted.append((proxy, replace(res, num_examples=count), arrays, _flat_norm(arrays, reference)))
        bound = self.policy.norm_bound.limit([n for *_, n in accepted])
        bounded: list[tuple[ClientProxy, FitRes, list[np.ndarray]]] = []
        for proxy, res, arrays, norm in accepted:
            if norm > IMPLAUSIBLE * bound:
                rejected.append(self._reject(proxy.node_id, f"update norm {norm:.3g} above {IMPLAUSIBLE:g}x the bound "
                                                            f"{bound:.3g} (--max-update-norm)"))
                continue
            if norm > bound:
                log.warning("round %s, node %s: update norm %.3g clipped to the bound %.3g (--max-update-norm)",
                            server_round, proxy.node_id, norm, bound)
                arrays = _clipped(arrays, reference, bound / norm)
                res = replace(res, parameters=ndarrays_to_parameters(arrays))
            bounded.append((proxy, res, arrays))
        kept = []
        cosines, moved = self._agreement(server_round, [arrays for *_, arrays in bounded], reference)
        verdicts = self._direction([proxy.node_id for proxy, *_ in bounded], cosines, moved)
        for proxy, res, _ in bounded:
            verdict = verdicts.get(proxy.node_id)
            if verdict is None:
                kept.append((proxy, res))
            else:
                rejected.append(self._reject(proxy.node_id, verdict[0], counts=verdict[1]))
        self.caught.now = frozenset(self.excluded) | {r.node_id for r in rejected if r.counts}
        if not kept:
            log.warning("round %s: no update passed the checks; the global model stays as it was", server_round)
            return None, {}
        return self.inner.aggregate_fit(server_round, kept, [*failures, *rejected])

    def _direction(self, node_ids: list[int], cosines: list[float | None], moved: int
                   ) -> dict[int, tuple[str, bool]]:
        """Add this round's cosines to each site's evidence; the sites whose evidence now says their updates
        point away from the others': node id → (reason, whether it counts towards exclusion).

        With ``least`` = m and a site's k cosines summing to S, its mean S/k has a chance deviation of
        σ/√k, σ = 1/√d: below m − 3σ/√k it is refused, below m − σ/√k held back. Among peers (``auto``) a
        site must besides lie :data:`PEER_HOLD_Z` (refusal: :data:`PEER_EXCLUDE_Z`) robust deviations
        below the median of the round's sites' means, the deviation being 1.4826 × the median distance of
        the means above that median (Hampel's estimate of a standard deviation, taken on the upper half,
        which sign-flippers below cannot widen) or σ/√k, whichever is larger: honest sites
        of similar data cluster within chance of one another and a sign-flipper lies far below them, while
        sites whose data differ strongly spread widely, and one of them at the low end is no outlier.
        """
        test = self.policy.direction
        checked = [(nid, c) for nid, c in zip(node_ids, cosines, strict=True) if c is not None]
        if test.least is None or not checked:
            return {}
        for nid, cosine in checked:
            self._agreement_sum[nid] += cosine
            self._agreement_rounds[nid] += 1
        means = {nid: self._agreement_sum[nid] / self._agreement_rounds[nid] for nid, _ in checked}
        if test.among_peers and len(means) < PEER_MIN_SITES:
            return {}  # too few sites to tell a site that stands out from sites that differ
        center = float(np.median(list(means.values())))
        # the spread of the sites above the median: sign-flippers below it would widen a two-sided one
        spread = HAMPEL * float(np.median([m - center for m in means.values() if m >= center]))
        chance = 1.0 / math.sqrt(max(moved, 1))  # the standard deviation of one chance cosine
        mirror = self._mirror_level(means, test.least)
        hold_sigmas = HOLD_SIGMAS if self.policy.trusted is None else TRUSTED_HOLD_SIGMAS
        verdicts: dict[int, tuple[str, bool]] = {}
        for nid, cosine in checked:
            k, mean = self._agreement_rounds[nid], means[nid]
            sigma = chance / math.sqrt(k)
            depth = (mean - center) / max(spread, sigma) if test.among_peers else -math.inf
            refuse_below = min(test.least - EXCLUDE_SIGMAS * sigma, mirror)
            if mean < refuse_below and depth < -PEER_EXCLUDE_Z:
                verdicts[nid] = (f"updates point away from {self.policy.compared_with} (cosine {cosine:.3f} "
                                 f"this round, {mean:.3f} on average over {k} round(s), below "
                                 f"{refuse_below:.3f}{self._peer_note(depth, center)}; "
                                 "--min-update-cosine)", True)
            elif mean < test.least - hold_sigmas * sigma and depth < -PEER_HOLD_Z:
                verdicts[nid] = (f"update held back this round: it points away from {self.policy.compared_with} "
                                 f"(cosine {cosine:.3f}, {mean:.3f} on average over {k} round(s), below "
                                 f"{test.least - hold_sigmas * sigma:.3f}{self._peer_note(depth, center)}; "
                                 "--min-update-cosine)", False)
        return verdicts

    def _mirror_level(self, means: dict[int, float], least: float) -> float:
        """Against trusted examples, the level a site's mean cosine must also fall below to be refused:
        ``least`` minus :data:`MIRROR_FRACTION` of how far the agreeing sites' median mean lies above it;
        −∞ (held back at most, never refused) when no site agrees. Other references: +∞ (no such level)."""
        if self.policy.trusted is None:
            return math.inf
        agreeing = [m - least for m in means.values() if m > least]
        return least - MIRROR_FRACTION * float(np.median(agreeing)) if agreeing else -math.inf

    @staticmethod
    def _peer_note(depth: float, center: float) -> str:
        return "" if depth == -math.inf else f", {-depth:.1f} deviations below the sites' median {center:.3f}"

    def _aggregate_sum(self, server_round: int, results: list[tuple[ClientProxy, FitRes]], failures: list,
                       reference: list[np.ndarray]) -> tuple[Parameters | None, dict[str, Scalar]]:
        """SecAgg+: every result carries the one unmasked aggregate; check it, not the sites.

        Its dtype is SecAgg+'s dequantised one, not the model's: only shapes and values are checked. A sum
        above the bound (relative: to the earlier rounds' sums) is clipped to it; far above, discarded.
        """
        problem, arrays = self._decode(results[0][1], reference, dtypes=False)
        if problem is None and self.policy.fixed is not None:  # before the norm: fixed values never count
            arrays = _with_fixed(arrays, reference, self.policy.fixed)
            parameters = ndarrays_to_parameters(arrays)
            results = [(proxy, replace(res, parameters=parameters)) for proxy, res in results]
        if problem is None:
            norm = _flat_norm(arrays, reference)
            bound = self.policy.norm_bound.limit(self._aggregate_norms)  # inf in round 1 of a relative bound
            if norm > IMPLAUSIBLE * bound:
                problem = f"aggregate norm {norm:.3g} above {IMPLAUSIBLE:g}x the bound {bound:.3g} (--max-update-norm)"
        if problem is not None:
            log.warning("round %s: the securely aggregated update was discarded (%s); one of the sites sent a "
                        "malformed or outsized masked update", server_round, problem)
            return None, {"aggregate-rejected": problem}
        if norm > bound:
            log.warning("round %s: the securely aggregated update's norm %.3g clipped to the bound %.3g",
                        server_round, norm, bound)
            parameters = ndarrays_to_parameters(_clipped(arrays, reference, bound / norm))
            results = [(proxy, replace(res, parameters=parameters)) for proxy, res in results]
            norm = bound
        self._aggregate_norms.append(norm)
        return self.inner.aggregate_fit(server_round, results, failures)

    def _agreement(self, server_round: int, updates: list[list[np.ndarray]], reference: list[np.ndarray]
                   ) -> tuple[list[float | None], int]:
        """Each update's cosine similarity with the coordinate-wise median of the *other* updates, and d, the
        coordinates any update moved (Nones below 3 updates or with the test off).

        Leaving the update itself out matters: under heavy DP noise each update correlates with a median
        taken over it, sign-flipped or not. Beyond :data:`LEAVE_ONE_OUT` updates, one median over a seeded
        sample of at most :data:`MEDIAN_SAMPLE` of them stands in (each weighs at most 1/n in it), so a
        round of 1,000 sites does not stack 1,000 model-sized vectors. With trusted examples
        (``policy.trusted``) every update is compared with the coordinator's own update instead, from one
        update a round on.
        """
        trusted = self.policy.trusted
        if not self.policy.direction.on or not updates or (trusted is None and len(updates) < 3):
            return [None] * len(updates), 0
        flat_reference = np.concatenate([r.ravel().astype(np.float32) for r in reference])

        def delta(arrays: list[np.ndarray]) -> np.ndarray:
            return np.concatenate([a.ravel().astype(np.float32) for a in arrays]) - flat_reference

        if trusted is not None:  # one reference no site moves: every update against it, alone
            target = delta(trusted(server_round, reference))
            deltas = [delta(u) for u in updates]
            moved_mask = target != 0
            for d in deltas:
                moved_mask |= d != 0
            moved = int(np.count_nonzero(moved_mask))
            medians = [target] * len(updates)
        elif len(updates) <= LEAVE_ONE_OUT:
            stack = np.stack([delta(u) for u in updates])
            medians = [np.median(np.delete(stack, i, axis=0), axis=0) for i in range(len(updates))]
            moved = int(np.count_nonzero(np.any(stack != 0, axis=0)))
            deltas = list(stack)
        else:
            rng = np.random.default_rng(server_round)
            picked = rng.choice(len(updates), size=min(len(updates), MEDIAN_SAMPLE), replace=False)
            sample = np.stack([delta(updates[i]) for i in picked])
            median = np.median(sample, axis=0)
            moved = int(np.count_nonzero(np.any(sample != 0, axis=0)))
            medians = [median] * len(updates)
            deltas = [delta(u) for u in updates]
        out: list[float | None] = []
        for d, m in zip(deltas, medians, strict=True):
            norm = float(np.linalg.norm(d)) * float(np.linalg.norm(m))
            out.append(float(np.dot(d, m)) / norm if norm > 0 else None)
        return out, moved

    # ------------------------------------------------------------------ evaluation
    def aggregate_evaluate(self, server_round: int, results: list[tuple[ClientProxy, EvaluateRes]],
                           failures: list) -> tuple[float | None, dict[str, Scalar]]:
        kept = []
        rejected = []
        for proxy, res in results:
            count, problem = self._count(proxy.node_id, res.num_examples, split="val")
            if problem is None and not math.isfinite(float(res.loss)):
                problem = "loss is NaN or infinite"
            if problem is None and any(isinstance(v, float) and not math.isfinite(v) for v in res.metrics.values()):
                problem = "a metric is NaN or infinite"
            if problem is not None:
                rejected.append(RejectedUpdate(proxy.node_id, f"evaluation rejected: {problem}"))
                continue
            kept.append((proxy, replace(res, num_examples=count)))
        if not kept:
            return None, {}
        return self.inner.aggregate_evaluate(server_round, kept, [*failures, *rejected])

    # ------------------------------------------------------------------ checks
    @staticmethod
    def _decode(res: FitRes, reference: list[np.ndarray], *,
                dtypes: bool = True) -> tuple[str | None, list[np.ndarray]]:
        try:
            arrays = parameters_to_ndarrays(res.parameters)
        except Exception as exc:  # any bytes a site sent: numpy's loader raises many kinds
            return f"arrays do not decode ({type(exc).__name__})", []
        return array_problem(arrays, reference, dtypes=dtypes), arrays

    def _count(self, node_id: int, num_examples: object, split: str = "train") -> tuple[int, str | None]:
        if not isinstance(num_examples, int) or isinstance(num_examples, bool) or num_examples < 1:
            return 0, f"example count {num_examples!r} is not a positive integer"
        limit = self.policy.count_limit(node_id, split)
        if limit and num_examples > limit:
            return 0, f"claims {num_examples} {split} examples, its handshake released {limit}"
        return num_examples, None

    def _reject(self, node_id: int, problem: str, *, counts: bool = True) -> RejectedUpdate:
        """``counts``: towards the site's exclusion (a round's direction hold-back does not)."""
        if not counts:
            log.warning("node %s: %s", node_id, problem)
            return RejectedUpdate(node_id, problem, counts=False)
        self.rejections[node_id] += 1
        reason = f"update rejected: {problem}"
        if self.rejections[node_id] >= self.policy.max_rejections and node_id not in self.excluded:
            self.excluded[node_id] = problem
            reason += f"; excluded from the rest of the run after {self.rejections[node_id]} rejected updates"
        log.warning("node %s: %s", node_id, reason)
        return RejectedUpdate(node_id, reason)
