"""The FedShield ServerApp: handshake, rounds through Flower's workflow, results and checkpoints.

API path: Flower's ``DefaultWorkflow`` with a legacy strategy under the Message-API ``ServerApp``.
Why: SecAgg+ exists only as ``SecAggPlusWorkflow``, a fit workflow for exactly this path; secure
aggregation then replaces the fit workflow and nothing else.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedshield.common.flower_env import silence_flower

silence_flower()

from flwr.app import Context
from flwr.common import ndarrays_to_parameters
from flwr.server import ServerConfig
from flwr.server.compat import LegacyContext
from flwr.server.workflow import DefaultWorkflow
from flwr.serverapp import Grid, ServerApp

from fedshield.common.errors import RunFolderError
from fedshield.common.metrics import weighted_mean
from fedshield.common.run_config import RunConfig
from fedshield.common.torch_arrays import fixed_mask, model_to_ndarrays
from fedshield.common.update_bounds import DirectionTest, NormBound, parse_min_cosine
from fedshield.flower_ext import serverapp as flower_serverapp
from fedshield.flower_ext.legacy_api import default_evaluate_workflow, default_fit_workflow
from fedshield.flower_ext.network_limits import MAX_MESSAGE_KEY, check_model_fits
from fedshield.server.admitted_grid import AdmittedGrid
from fedshield.server.audit_trail import RunAudit
from fedshield.server.central_evaluation import central_test_fn
from fedshield.server.initial_evaluation import with_initial_evaluation
from fedshield.server.prompt_grid import PromptGrid
from fedshield.server.run_results import RunRecorder
from fedshield.server.run_resume import (
    RESUME_ROUND_KEY,
    ResumePoint,
    after_round,
    read_run,
    resume_point,
    with_saved_round,
)
from fedshield.server.site_handshake import agree_schema, query_sites, tell_refused, wait_for_sites
from fedshield.server.site_identity import EnrolledNames, identity_required, refuse_false_claims
from fedshield.server.trusted_reference import TrustedReference
from fedshield.strategies.caught_sites import CaughtSites
from fedshield.strategies.central_dp import wrap_central_dp
from fedshield.strategies.fixed_parameters import FixedParameters
from fedshield.strategies.recording import RecordingStrategy
from fedshield.strategies.registry import make_strategy
from fedshield.strategies.strategy_state import restore_strategy_state, strategy_state
from fedshield.strategies.update_checks import UpdatePolicy, ValidatingStrategy
from fedshield.tasks.base import TaskOptions
from fedshield.tasks.init_weights import load_weights, resolve_model, start_from
from fedshield.tasks.model_factory import build_model
from fedshield.tasks.registry import get_task

log = logging.getLogger("fedshield.server")

# How long to wait for sites to join (deployment: the CLI's --join-timeout travels in the run config).
DEFAULT_JOIN_TIMEOUT_S = 0.0
QUERY_TIMEOUT_S = 300.0


def _numeric_mean(results: list[tuple[int, dict[str, Any]]]) -> dict[str, Any]:
    """Weighted mean of the numeric metrics sites report (site names and flags are skipped)."""
    numeric = [(n, {k: float(v) for k, v in m.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
               for n, m in results]
    return weighted_mean(numeric)


def run_federation(grid: Grid, context: Context, cfg: RunConfig, *, mode: str) -> None:
    """Run ``cfg.rounds`` rounds over the sites connected to ``grid``; record everything."""
    cfg.validate()
    resume = resuming(context, cfg)
    if not cfg.fedshield_run_id:  # the sites' ledgers know the run by it; a resumed run keeps the original's
        cfg.fedshield_run_id = str(context.run_id)
    recorder = RunRecorder(Path(cfg.run_dir) if cfg.run_dir else None, cfg, mode=mode,
                           earlier=resume.results if resume else None,
                           resumed_after=resume.point.last_round if resume else 0)
    recorder.audit = RunAudit.for_server_app(Path(cfg.run_dir) if cfg.run_dir else None)
    join_timeout = float(context.run_config.get("join-timeout", DEFAULT_JOIN_TIMEOUT_S))
    node_ids: list[int] = []
    try:
        recorder.set_status("waiting-for-sites", connected=0)
        node_ids = wait_for_sites(grid, cfg.min_clients, timeout=join_timeout,
                                  on_progress=lambda n: recorder.set_status("waiting-for-sites", connected=n))
        replies = query_sites(grid, handshake_nodes(node_ids, cfg, mode), cfg, "describe", timeout=QUERY_TIMEOUT_S)
        if identity_required(context.run_config):  # sites are their keys' enrolled names (server/site_identity.py)
            names = EnrolledNames(grid)
            recorder.name_sites_by(names)
            impostors = refuse_false_claims(replies, names)
            for reason in impostors.values():
                log.warning(reason)
            tell_refused(grid, impostors, cfg)
            grid = AdmittedGrid(grid, impostors)
        schema, healthy = agree_schema(replies)
        task = get_task(cfg.task)
        cfg.model = resolve_model(task, cfg.model, pretrained=bool(cfg.init_weights), dp=cfg.dp)
        model = build_model(task, schema, TaskOptions(model=cfg.model, seed=cfg.seed), seed=cfg.seed)
        if cfg.init_weights:
            start_from(task, model, cfg.init_weights)
        if resume is not None and resume.point.state_dict is not None:  # the global model after the last round
            load_weights(model, resume.point.state_dict, source=resume.point.source)
        exchanged = model_to_ndarrays(model)
        if MAX_MESSAGE_KEY in context.run_config:  # deployment: the SuperLink refuses larger requests
            check_model_fits(sum(a.size for a in exchanged), len(exchanged), secagg=cfg.secagg,
                             max_message_bytes=int(context.run_config[MAX_MESSAGE_KEY]))
        recorder.set_sites(healthy, schema, model, total=len(node_ids),
                           refused={nid: str(r["site"]) for nid, r in replies.items() if "error" in r and "site" in r})
        refused_sites = {str(r.get("site", nid)): str(r["error"]) for nid, r in replies.items() if "error" in r}
        recorder.set_status("running", connected=len(node_ids), refused_sites=refused_sites)
        if recorder.audit is not None:
            recorder.audit.sites_joined(sorted(str(info["site"]) for info in healthy.values()), refused_sites)

        def round_config(rnd: int) -> dict[str, Any]:
            sent = {**cfg.to_flower(), **schema.to_config(), "round": rnd}
            sent.pop("trusted-data", None)  # a path on the coordinator: nothing a site needs
            return sent

        caught = CaughtSites()
        inner = make_strategy(
            cfg.strategy,
            tolerate=cfg.tolerate_attackers,
            caught=caught,
            **sampling_options(cfg),
            initial_parameters=ndarrays_to_parameters(exchanged),
            on_fit_config_fn=round_config,
            on_evaluate_config_fn=round_config,
            evaluate_fn=central_test_fn(cfg, schema) if mode == "simulation" else None,
            fit_metrics_aggregation_fn=_numeric_mean,
            evaluate_metrics_aggregation_fn=_numeric_mean,
        )
        # checks first: a rejected update never reaches central DP's clipping nor the strategy, and the
        # recorder sees it as a failure that names the site and the reason
        fixed = fixed_mask(model)
        aggregating = wrap_central_dp(inner, cfg, len(node_ids))
        if fixed is not None:  # frozen layers stay as every site built them, whatever the server's arithmetic
            aggregating = FixedParameters(aggregating, exchanged, fixed)
        trusted = TrustedReference(cfg, schema) if cfg.trusted_data else None
        strategy = ValidatingStrategy(RecordingStrategy(aggregating, recorder),
                                      update_policy(cfg, replies, fixed, trusted), caught)
        if resume is not None:
            restore_server_state(strategy, resume.point.state, healthy)
            strategy.resume_from = ndarrays_to_parameters(exchanged)
        recorder.state_source = lambda: server_state(strategy, recorder.node_sites)
        legacy = LegacyContext(context, config=ServerConfig(num_rounds=cfg.rounds), strategy=strategy)
        fit = secure_fit_workflow(cfg, replies, recorder.on_secagg_stages) if cfg.secagg else default_fit_workflow
        done = resume.point.last_round if resume else 0
        if resume is None or not resume.initial_evaluated:
            fit = with_initial_evaluation(fit)
        DefaultWorkflow(fit_workflow=after_round(fit, done),
                        evaluate_workflow=after_round(default_evaluate_workflow, done))(grid, legacy)
    except Exception as exc:
        _notify(grid, cfg, "failed", mode)
        recorder.finish("failed", error=str(exc))
        raise
    # Sites first, results last: `fl-server start` stops the SuperLink once results say "finished".
    _notify(grid, cfg, "finished", mode)
    recorder.finish("finished")


@dataclass(frozen=True)
class Resumption:
    """The run this ServerApp resumes: where it stopped, and its results.json so far."""

    point: ResumePoint
    results: dict[str, Any]

    @property
    def initial_evaluated(self) -> bool:
        """Whether the earlier run evaluated the initial model (round 0) on the sites."""
        return any(r.get("round") == 0 and "evaluate" in r for r in self.results.get("rounds", []))


def resuming(context: Context, cfg: RunConfig) -> Resumption | None:
    """The resume point ``fl-server start --resume`` named in the run config, or None for a new run."""
    if RESUME_ROUND_KEY not in context.run_config or not cfg.run_dir:
        return None
    run_dir = Path(cfg.run_dir)
    point = resume_point(run_dir)
    if point.last_round != int(context.run_config[RESUME_ROUND_KEY]):
        raise RunFolderError(f"{point.source}: says round {point.last_round}, the coordinator resumed after round "
                             f"{context.run_config[RESUME_ROUND_KEY]}; was the run folder changed meanwhile?")
    return Resumption(point, with_saved_round(read_run(run_dir), point))


def server_state(strategy: ValidatingStrategy, node_sites: dict[int, str]) -> dict[str, Any]:
    """What a resumed run needs besides the model: the strategy's state and the update checks'."""
    return {"strategy": strategy_state(strategy),
            "checks": strategy.checks_state(lambda node_id: node_sites.get(node_id, f"node-{node_id}"))}


def restore_server_state(strategy: ValidatingStrategy, state: dict[str, Any],
                         sites: dict[int, dict[str, Any]]) -> None:
    """Put back :func:`server_state` for the sites that answered this run's handshake."""
    restore_strategy_state(strategy, state.get("strategy", {}))
    strategy.restore_checks(state.get("checks", {}), {str(r["site"]): nid for nid, r in sites.items()})


def update_policy(cfg: RunConfig, replies: dict[int, dict[str, Any]], fixed: list[np.ndarray] | None = None,
                  trusted: TrustedReference | None = None) -> UpdatePolicy:
    """The update checks for this run: counts capped at what each site released in its handshake, the
    ``fixed`` values (:func:`fixed_mask` of the global model) held unchanged, and with ``trusted`` examples
    (``--trusted-data``) the direction test on against the coordinator's update (threshold 0 unless
    ``--min-update-cosine`` gives one).

    A site the handshake did not ask (a sampled simulation; a site that connected later) may claim at most
    the largest virtual site's count plus five standard deviations of the count noise (simulation), or
    twice the largest count any site released (deployment).
    """
    limits = {nid: (int(r.get("examples-train", 0)), int(r.get("examples-val", 0)))
              for nid, r in replies.items() if "error" not in r}
    largest = max((max(t, v) for t, v in limits.values()), default=0)
    default = cfg.max_site_examples + 100 if cfg.max_site_examples else 2 * largest
    direction = parse_min_cosine(cfg.min_update_cosine)
    if trusted is not None and not direction.on:
        direction = DirectionTest(0.0)
    return UpdatePolicy(norm_bound=NormBound.parse(cfg.max_update_norm), max_rejections=cfg.max_rejections,
                        count_limits=limits, default_count_limit=default, aggregate_only=cfg.secagg,
                        direction=direction, fixed=fixed, trusted=trusted)


def handshake_nodes(node_ids: list[int], cfg: RunConfig, mode: str) -> list[int]:
    """Which sites describe their data before round 1: all of them, except in a sampled simulation.

    A simulation's virtual sites all come from one partition of one data set, so a seeded sample of
    ``--per-round`` of them establishes the schema; asking all 1,000 would load every site's data.
    """
    if mode != "simulation" or not cfg.per_round or cfg.per_round >= len(node_ids):
        return node_ids
    rng = np.random.default_rng(cfg.seed)  # sample positions: node ids are uint64, numpy would round them
    picked = rng.choice(len(node_ids), size=max(cfg.per_round, 2), replace=False)
    return sorted(node_ids[int(i)] for i in picked)


def sampling_options(cfg: RunConfig) -> dict[str, Any]:
    """FedAvg's sampling arguments: a share of the sites, or exactly ``--per-round`` of them.

    Flower samples ``max(int(available · fraction), min_clients)`` sites; with ``--per-round`` the
    fraction is set negligible so the count is exactly ``min_clients`` (a fraction such as 0.29 would
    otherwise round down to one site fewer).
    """
    if cfg.per_round:
        tiny = 1e-9
        return {"fraction_fit": tiny, "fraction_evaluate": tiny, "min_fit_clients": cfg.per_round,
                "min_evaluate_clients": cfg.per_round, "min_available_clients": cfg.per_round}
    round_min = round_min_sites(cfg)
    return {"fraction_fit": cfg.fraction_train, "fraction_evaluate": 1.0, "min_fit_clients": round_min,
            "min_evaluate_clients": round_min, "min_available_clients": round_min}


def round_min_sites(cfg: RunConfig) -> int:
    """Sites a round needs once the run has started.

    ``--min-clients`` is what the run waits for before round 1 (``wait_for_sites``). From then on a round
    goes ahead with the sites still connected, at least two: a site that drops out must not stall the
    federation (Flower's sampling would otherwise wait up to a day for it to return).
    """
    return min(cfg.min_clients, 2)


def secure_fit_workflow(cfg: RunConfig, replies: dict[int, dict[str, Any]],
                        on_stages: Callable[[int, dict[str, float]], None] | None = None):
    """SecAgg+ as the fit workflow (see :mod:`fedshield.flower_ext.secagg_workflow`)."""
    from fedshield.flower_ext.secagg_workflow import FedShieldSecAggPlus

    # Weights are the sites' example counts; SecAgg+ scales them by max_weight, which must cover the largest.
    largest = max((int(r.get("examples-train", 0)) for r in replies.values() if "error" not in r), default=1)
    largest = max(largest, cfg.max_site_examples)  # a sampled simulation's handshake did not see every site

    def sampled_sites(context: LegacyContext) -> int:  # what the strategy will sample this round (FedAvg's rule)
        if cfg.per_round:
            return cfg.per_round
        available = context.client_manager.num_available()
        return max(int(available * cfg.fraction_train), round_min_sites(cfg))

    return FedShieldSecAggPlus(shares=cfg.secagg_shares, threshold_fraction=cfg.secagg_threshold,
                               sampled_sites=sampled_sites, max_weight=float(max(largest, 1)),
                               timeout=cfg.secagg_timeout, on_stages=on_stages)


def _notify(grid: Grid, cfg: RunConfig, status: str, mode: str) -> None:
    """Tell every connected site the run is over, so `fl-client join` can exit cleanly.

    Deployment only: virtual sites have no process to stop, and a 1,000-site simulation would
    otherwise end with 1,000 messages.
    """
    if mode == "simulation":
        return
    try:
        nodes = sorted(grid.get_node_ids())
        if nodes:
            query_sites(grid, nodes, cfg, "run-complete", timeout=30.0, extra={"status": status})
    except Exception as exc:  # a site that left early must not turn a finished run into a failure
        log.warning("could not notify sites of the run's end: %s", exc)


def build_server_app(overrides: dict[str, Any] | None = None, *, mode: str = "deployment") -> ServerApp:
    """A ServerApp whose config is Flower's run config with ``overrides`` on top (simulation uses them)."""
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        flower_serverapp.install()  # this process's Flower adaptations, SecAgg+ included (flower_ext/serverapp.py)
        cfg = RunConfig.from_flower({**dict(context.run_config), **(overrides or {})})
        # "prompt-polling = false" keeps Flower's own 3 s reply polling (benchmarks compare the two).
        prompt = str(context.run_config.get("prompt-polling", True)).lower() not in ("false", "0")
        run_federation(PromptGrid(grid) if prompt else grid, context, cfg, mode=mode)

    return server_app


app = build_server_app()
