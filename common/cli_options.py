"""Command-line options shared by `fl-server start`, `fl-sim run` and `fl-sim sweep`: one definition, one help text.

Options that travel together are an option group, a dataclass whose fields are ``Annotated[type,
typer.Option(...)]`` (:mod:`fedshield.common.cli_groups` splices a group into a command). Every default
is :class:`RunConfig`'s field default, the single source; ``--lr`` and ``--init-weights`` default to
None: the task resolves them (``fedshield.tasks.run_settings.resolve_settings``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from fedshield.common.run_config import RunConfig

Task = Annotated[str, typer.Option("--task", help="Task every site trains (see `fl-sim tasks`).")]
Rounds = Annotated[int, typer.Option("--rounds", min=1, help="Federated rounds.")]
LocalEpochs = Annotated[int, typer.Option(
    "--local-epochs", min=1, help="Local passes over each site's data per round.")]
BatchSize = Annotated[int, typer.Option("--batch-size", min=1, help="Expected local batch size.")]
LearningRate = Annotated[float | None, typer.Option(
    "--lr", help="Local SGD learning rate (default 0.5 with DP, 0.05 with --no-dp).")]
Momentum = Annotated[float, typer.Option(
    "--momentum",
    help="Local SGD momentum in [0, 1) (default 0: plain SGD; applied after DP-SGD's noise, so free in privacy).")]
Seed = Annotated[int, typer.Option("--seed", help="Seed of initialisation, sampling and splits.")]
Strategy = Annotated[str, typer.Option(
    "--strategy", help="fedavg, fedavgm, fedadam, fedyogi, fedadagrad, or robust to attacking sites: fedmedian "
    "(f < n/2), fedtrimmedavg (f ≤ 0.2n), krum, multikrum (f = --tolerate-attackers, n ≥ 2f+3); robust ones not with "
    "--secagg.")]
MaxUpdateNorm = Annotated[str, typer.Option(
    "--max-update-norm", help="Largest L2 norm of a site's update the server accepts: Nx = N times the round's "
    "median (default), a number = absolute, off = no bound. Non-finite, misshapen updates and inflated example "
    "counts are always refused.")]
MinUpdateCosine = Annotated[str, typer.Option(
    "--min-update-cosine", help="Direction test against sign-flipping sites: each site's cosines with the other sites' "
    "median update, averaged over its rounds. off (default): a site whose data no other site holds points away "
    "from the others as a flipper does. A number such as 0: every site must stay above it, 3 or more sites a round "
    "(similar sites: flippers sit out from round 1). auto: only sites that also stand out from the others' spread, "
    "5 or more a round (sites that differ somewhat; flippers among similar sites sit out from round 3). With "
    "--trusted-data the cosines are with the coordinator's own update and the test is on (0) by default.")]
TrustedData = Annotated[Path | None, typer.Option(
    "--trusted-data", help="A folder of examples the coordinator holds and trusts, in the task's site format (a "
    "few dozen per class the sites hold): each round the coordinator trains the global model on them, without DP, "
    "and the direction test compares every site's update with that update instead of the other sites' median, so "
    "sites whose data no other site holds are not taken for sign-flippers. Turns the direction test on (threshold "
    "0 unless --min-update-cosine gives one). Read by the server only; not with --secagg.")]
MaxRejections = Annotated[int, typer.Option(
    "--max-rejections", min=1, help="Rejected updates after which a site is excluded for the rest of the run.")]
TolerateAttackers = Annotated[int, typer.Option(
    "--tolerate-attackers", min=0, help="Attacking sites krum and multikrum tolerate per round (f; they need at "
    "least 2f+3 sites).")]
Model = Annotated[str, typer.Option(
    "--model", help="Task model variant (tabular: auto, logistic, linear, mlp; transfer-mobilenet: auto, head, full, "
    "optionally @WIDTH, e.g. head@0.5; digits-cnn: auto, full, frozen-middle, gabor: for DP, 2,122 or 1,290 of "
    "454,922 parameters trained, tanh; auto is gabor under DP).")]
InitWeights = Annotated[Path | None, typer.Option(
    "--init-weights", help="Start the global model from these weights (a run's model-final.pt or a torch state_dict "
    "file) instead of a fresh one; read by the server only.")]
MaxGradNorm = Annotated[float, typer.Option("--max-grad-norm", help="Per-sample clipping bound C of DP-SGD.")]
Track = Annotated[list[str] | None, typer.Option(
    "--track", help="Also log the run's metrics per round, configuration, final model and plots: tensorboard:DIR "
    "(event files in DIR/<run>) or mlflow:URI (a folder = a local SQLite store there, no server; "
    "sqlite:///PATH.db; http://HOST:PORT); repeat for both. Needs pip install 'fedshield[tracking]'.")]
JsonOut = Annotated[bool, typer.Option("--json", help="Print results.json at the end.")]
Debug = Annotated[bool, typer.Option("--debug", help="Show tracebacks (and Flower/Ray logs).")]


@dataclass(frozen=True)
class TrainingOptions:
    """What every site trains, and how the server aggregates it (`fl-server start`, `fl-sim run`)."""

    task: Task = RunConfig.task
    rounds: Rounds = RunConfig.rounds
    local_epochs: LocalEpochs = RunConfig.local_epochs
    batch_size: BatchSize = RunConfig.batch_size
    lr: LearningRate = None
    momentum: Momentum = RunConfig.momentum
    seed: Seed = RunConfig.seed
    strategy: Strategy = RunConfig.strategy
    model: Model = RunConfig.model
    init_weights: InitWeights = None
    max_update_norm: MaxUpdateNorm = RunConfig.max_update_norm
    min_update_cosine: MinUpdateCosine = RunConfig.min_update_cosine
    trusted_data: TrustedData = None
    max_rejections: MaxRejections = RunConfig.max_rejections
    tolerate_attackers: TolerateAttackers = RunConfig.tolerate_attackers

    def config_fields(self, dp: bool) -> dict[str, Any]:
        """:class:`RunConfig` keyword arguments; without ``--lr``, :meth:`RunConfig.default_lr` (until the task's
        settings are resolved); ``init_weights`` and ``trusted_data`` are left to the task's settings."""
        fields = asdict(self)
        del fields["init_weights"], fields["trusted_data"]  # resolved with the task (resolve_settings)
        fields["lr"] = self.lr if self.lr is not None else RunConfig.default_lr(dp)
        return fields


@dataclass(frozen=True)
class CentralDpOptions:
    """Client-level DP on the server (Flower's DP wrappers); the field names are :class:`RunConfig`'s, so
    ``RunConfig(**asdict(options))`` takes them."""

    central_dp: Annotated[str, typer.Option(
        "--central-dp", help="Client-level DP on the server: off, fixed or adaptive clipping (Flower's DP wrappers).",
    )] = RunConfig.central_dp
    central_dp_side: Annotated[str, typer.Option(
        "--central-dp-side", help="Who clips each site's update for central DP: server or client.",
    )] = RunConfig.central_dp_side
    central_noise: Annotated[float, typer.Option(
        "--noise-multiplier", help="Central DP noise multiplier z (σ = z·C / sampled sites).",
    )] = RunConfig.central_noise
    central_clip: Annotated[float, typer.Option(
        "--clip", help="Central DP clipping norm C of a site's update (initial norm if adaptive).",
    )] = RunConfig.central_clip
    central_delta: Annotated[float, typer.Option(
        "--central-delta", help="δ for the reported client-level ε.",
    )] = RunConfig.central_delta


@dataclass(frozen=True)
class SecAggOptions:
    """Secure aggregation (Flower's SecAgg+); the field names are :class:`RunConfig`'s, as for
    :class:`CentralDpOptions`."""

    secagg: Annotated[bool, typer.Option(
        "--secagg", help="Secure aggregation (Flower's SecAgg+, ChaCha20 masks): the server learns only the sum of "
        "the sites' updates; a site that drops out mid-round is recovered from its shares.",
    )] = RunConfig.secagg
    secagg_shares: Annotated[int, typer.Option(
        "--secagg-shares", min=0, help="SecAgg+ neighbours (secret shares) per site: 0 = automatic (every sampled "
        "site up to 7, then about 2·log2(n)+1); else made odd, at least 3.",
    )] = RunConfig.secagg_shares
    secagg_threshold: Annotated[float, typer.Option(
        "--secagg-threshold", help="Share of a site's shares needed to reconstruct its masks (fraction in (0,1)).",
    )] = RunConfig.secagg_threshold
    secagg_timeout: Annotated[float, typer.Option(
        "--secagg-timeout", help="Seconds a SecAgg+ stage waits before treating silent sites as dropped.",
    )] = RunConfig.secagg_timeout
