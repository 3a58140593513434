"""Command-line options shared by `fl-server start` and `fl-sim run` (one definition, one help text)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

Task = Annotated[str, typer.Option("--task", help="Task every site trains (see `fl-sim tasks`).")]
Rounds = Annotated[int, typer.Option("--rounds", min=1, help="Federated rounds.")]
LocalEpochs = Annotated[int, typer.Option("--local-epochs", min=1, help="Local passes over each site's data per round.")]
BatchSize = Annotated[int, typer.Option("--batch-size", min=1, help="Expected local batch size.")]
LearningRate = Annotated[Optional[float], typer.Option(
    "--lr", help="Local SGD learning rate (default 0.5 with DP, 0.05 with --no-dp).")]
Momentum = Annotated[float, typer.Option(
    "--momentum", help="Local SGD momentum in [0, 1) (default 0: plain SGD; applied after DP-SGD's noise, so free in privacy).")]
Seed = Annotated[int, typer.Option("--seed", help="Seed of initialisation, sampling and splits.")]
Strategy = Annotated[str, typer.Option(
    "--strategy", help="fedavg, fedavgm, fedadam, fedyogi, fedadagrad, fedmedian, fedtrimmedavg.")]
Model = Annotated[str, typer.Option("--model", help="Task model variant (tabular: auto, logistic, linear, mlp; transfer-mobilenet: auto, head, full, optionally @WIDTH, e.g. head@0.5; digits-cnn: auto, full, frozen-middle, gabor: for DP, 2,122 or 1,290 of 454,922 parameters trained, tanh; auto is gabor under DP).")]
InitWeights = Annotated[Optional[Path], typer.Option("--init-weights", help="Start the global model from these weights (a run's model-final.pt or a torch state_dict file) instead of a fresh one; read by the server only.")]
MaxGradNorm = Annotated[float, typer.Option("--max-grad-norm", help="Per-sample clipping bound C of DP-SGD.")]
CentralDp = Annotated[str, typer.Option(
    "--central-dp", help="Client-level DP on the server: off, fixed or adaptive clipping (Flower's DP wrappers).")]
CentralDpSide = Annotated[str, typer.Option(
    "--central-dp-side", help="Who clips each site's update for central DP: server or client.")]
NoiseMultiplier = Annotated[float, typer.Option(
    "--noise-multiplier", help="Central DP noise multiplier z (σ = z·C / sampled sites).")]
Clip = Annotated[float, typer.Option(
    "--clip", help="Central DP clipping norm C of a site's update (initial norm if adaptive).")]
CentralDelta = Annotated[float, typer.Option("--central-delta", help="δ for the reported client-level ε.")]
JsonOut = Annotated[bool, typer.Option("--json", help="Print results.json at the end.")]
Debug = Annotated[bool, typer.Option("--debug", help="Show tracebacks (and Flower/Ray logs).")]
SecAgg = Annotated[bool, typer.Option(
    "--secagg", help="Secure aggregation (Flower's SecAgg+, ChaCha20 masks): the server learns only the sum of the "
    "sites' updates; a site that drops out mid-round is recovered from its shares.")]
SecAggShares = Annotated[int, typer.Option(
    "--secagg-shares", min=0, help="SecAgg+ neighbours (secret shares) per site: 0 = automatic (every sampled site up to 7, "
    "then about 2·log2(n)+1); else made odd, at least 3.")]
SecAggThreshold = Annotated[float, typer.Option(
    "--secagg-threshold", help="Share of a site's shares needed to reconstruct its masks (fraction in (0,1)).")]
SecAggTimeout = Annotated[float, typer.Option(
    "--secagg-timeout", help="Seconds a SecAgg+ stage waits before treating silent sites as dropped.")]
