"""``fl-sim``: split bundled data into site folders, simulate a federation, list tasks."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from fedshield.common import cli_options as opts
from fedshield.common.cli_support import console, guarded, set_debug, warn_loudly
from fedshield.common.errors import ConfigError, RunFolderError
from fedshield.common.results_view import ResultsWatcher, round_line, summary_table
from fedshield.common.run_config import RunConfig

app = typer.Typer(
    help="Experiments on one machine: split bundled real data into site folders and run the same "
    "FedShield ServerApp/ClientApp on Flower's simulation engine (Ray).",
    no_args_is_help=True,
    add_completion=False,
)

DEFAULT_DATASET = {"digits-cnn": "digits", "tabular": "breast-cancer"}


@app.command()
@guarded
def split(
    dataset: str = typer.Option(..., "--dataset", help="Bundled real data set: digits, breast-cancer or diabetes."),
    sites: int = typer.Option(3, "--sites", min=1, help="Number of site folders to write."),
    out: Path = typer.Option(..., "--out", help="New (or empty) folder to write hospital_a, hospital_b, ... into."),
    dirichlet: Optional[float] = typer.Option(None, "--dirichlet", help="Label skew: Dirichlet α (small = very non-IID). Default: IID."),
    iid: bool = typer.Option(False, "--iid", help="Split uniformly at random (the default)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the split."),
) -> None:
    """Write one site folder per site from a bundled data set, in the documented site formats.

    Example: fl-sim split --dataset digits --sites 3 --dirichlet 0.5 --out ./data
    """
    from fedshield.simulations.split import write_sites

    if iid and dirichlet is not None:
        raise ConfigError("--iid and --dirichlet exclude each other; pick one")
    paths = write_sites(dataset, sites, out, dirichlet=dirichlet, seed=seed)
    for path in paths:
        console.print(f"wrote {path}")


@app.command()
@guarded
def run(
    task: opts.Task = "digits-cnn",
    clients: int = typer.Option(10, "--clients", min=1, help="Number of virtual sites."),
    rounds: opts.Rounds = 5,
    dataset: Optional[str] = typer.Option(None, "--dataset", help="Bundled data set (default: digits for digits-cnn, breast-cancer for tabular)."),
    dirichlet: Optional[float] = typer.Option(None, "--dirichlet", help="Dirichlet α label skew; default IID."),
    iid: bool = typer.Option(False, "--iid", help="IID split (the default)."),
    seed: opts.Seed = 0,
    local_epochs: opts.LocalEpochs = 1,
    batch_size: opts.BatchSize = 32,
    lr: opts.LearningRate = None,
    strategy: opts.Strategy = "fedavg",
    model: opts.Model = "auto",
    epsilon: float = typer.Option(8.0, "--epsilon", help="Each site's ε budget (sample-level DP-SGD)."),
    delta: float = typer.Option(0.0, "--delta", help="δ; 0 picks min(1e-5, 1/(10·N)) per site."),
    max_grad_norm: opts.MaxGradNorm = 1.0,
    accountant: str = typer.Option("rdp", "--accountant", help="Privacy accountant: rdp or prv (Opacus)."),
    central_dp: opts.CentralDp = "off",
    central_dp_side: opts.CentralDpSide = "server",
    noise_multiplier: opts.NoiseMultiplier = 1.0,
    clip: opts.Clip = 0.5,
    central_delta: opts.CentralDelta = 1e-5,
    secagg: opts.SecAgg = False,
    secagg_shares: opts.SecAggShares = 0,
    secagg_threshold: opts.SecAggThreshold = 0.6,
    secagg_timeout: opts.SecAggTimeout = 300.0,
    no_dp: bool = typer.Option(False, "--no-dp", help="Train WITHOUT differential privacy (explicit opt-out, recorded in results)."),
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="Output folder (default ./runs/sim-<time>)."),
    cpus_per_client: float = typer.Option(1.0, "--cpus-per-client", help="Ray CPUs per virtual site."),
    gpus_per_client: float = typer.Option(0.0, "--gpus-per-client", help="Ray GPU fraction per virtual site."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="Join an existing Ray cluster (e.g. auto)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    json_out: opts.JsonOut = False,
    debug: opts.Debug = False,
) -> None:
    """Simulate a federation of --clients sites on this machine and write results.json.

    Example: fl-sim run --task digits-cnn --clients 10 --rounds 5 --dirichlet 0.5
    """
    set_debug(debug)
    from fedshield.simulations import runner
    from fedshield.simulations.split import write_sites
    from fedshield.tasks.registry import get_task

    if iid and dirichlet is not None:
        raise ConfigError("--iid and --dirichlet exclude each other; pick one")
    get_task(task)  # unknown task: fail before writing anything
    data_name = dataset or DEFAULT_DATASET.get(task)
    if data_name is None:
        raise ConfigError(f"--dataset is required for task {task!r}")
    folder = run_dir or Path("runs") / time.strftime("sim-%Y%m%d-%H%M%S")
    if (folder / "results.json").exists():
        raise RunFolderError(f"{folder}: already holds a run; pass a new --run-dir")
    learning_rate = lr if lr is not None else RunConfig.default_lr(not no_dp)
    cfg = RunConfig(task=task, rounds=rounds, local_epochs=local_epochs, batch_size=batch_size, lr=learning_rate,
                    seed=seed, min_clients=clients, strategy=strategy, model=model, dp=not no_dp,
                    central_dp=central_dp, central_dp_side=central_dp_side, central_noise=noise_multiplier,
                    central_clip=clip, central_delta=central_delta, secagg=secagg, secagg_shares=secagg_shares,
                    secagg_threshold=secagg_threshold, secagg_timeout=secagg_timeout,
                    epsilon=epsilon, delta=delta, max_grad_norm=max_grad_norm, accountant=accountant,
                    run_dir=str(folder.resolve()), sim_data_dir=str((folder / "data").resolve()),
                    device=device).validate()
    if no_dp:
        warn_loudly("--no-dp: sites train WITHOUT differential privacy; recorded in results.json")
    write_sites(data_name, clients, folder / "data", dirichlet=dirichlet, seed=seed,
                names=[f"site_{i:04d}" for i in range(clients)])
    console.print(f"simulating {clients} sites of {data_name} for {task}, {rounds} rounds, "
                  f"{'DP-SGD ε≤' + format(epsilon, 'g') + ' per site' if not no_dp else 'NO DP'} → {folder}")
    watcher = ResultsWatcher(folder / "results.json", lambda doc, entry: console.print(round_line(doc, entry))).start()
    try:
        doc = runner.run(cfg, clients, runner.SimulationResources(cpus_per_client, gpus_per_client, ray_address, debug))
    finally:
        watcher.stop()
    if json_out:
        import json

        console.print_json(json.dumps(doc))
    else:
        console.print(summary_table(doc))
        console.print(f"results: {folder / 'results.json'}")


@app.command()
@guarded
def tasks() -> None:
    """List installed tasks (built-in and third-party plugins): name, data format, metrics."""
    from fedshield.tasks.registry import available_tasks

    for name, task in sorted(available_tasks().items()):
        console.print(f"[bold]{name}[/]: {task.summary}")
        console.print(f"  data: {task.data_format}")
        console.print(f"  metrics: {', '.join(task.metrics)}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
