"""``fl-sim``: split bundled data into site folders, simulate a federation, list tasks."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from fedshield.common import cli_options as opts
from fedshield.common.cli_groups import with_option_groups
from fedshield.common.cli_support import console, guarded, model_note, print_json, print_tasks, set_debug, warn_loudly
from fedshield.common.errors import ConfigError
from fedshield.common.results_view import round_line, summary_table
from fedshield.common.run_config import RunConfig

if TYPE_CHECKING:
    from fedshield.simulations.partition import PartitionSpec

app = typer.Typer(
    help="Experiments on one machine: split bundled real data into site folders and run the same "
    "FedShield ServerApp/ClientApp on Flower's simulation engine (Ray).",
    no_args_is_help=True,
    add_completion=False,
)


@dataclass(frozen=True)
class PartitionOptions:
    """How `fl-sim split` and `fl-sim run` deal examples to sites: one partitioner and its parameter."""

    partition: Annotated[str | None, typer.Option(
        "--partition", help="How examples are dealt to sites: iid, dirichlet (label skew, --dirichlet α), shards "
        "(--shards K labels per site) or quantity (size skew, --quantity-skew β). Implied by those flags; "
        "default iid.")] = None
    dirichlet: Annotated[float | None, typer.Option(
        "--dirichlet", help="Dirichlet α label skew: small = very non-IID (0.1), large = near IID (100).")] = None
    shards: Annotated[int | None, typer.Option(
        "--shards", help="Pathological non-IID: each site gets K label-sorted shards, so at most K labels.")] = None
    quantity_skew: Annotated[float | None, typer.Option(
        "--quantity-skew", help="Site sizes ∝ Dirichlet(β): small β = very unequal sizes, labels stay IID.")] = None
    iid: Annotated[bool, typer.Option("--iid", help="Split uniformly at random (the default).")] = False

    def spec(self) -> PartitionSpec:
        """The partition these flags ask for (``ConfigError`` on conflicting or out-of-range flags)."""
        from fedshield.simulations.partition import spec_from_flags

        return spec_from_flags(partition=self.partition, iid=self.iid, dirichlet=self.dirichlet, shards=self.shards,
                               quantity_skew=self.quantity_skew)


@app.command()
@guarded
@with_option_groups
def split(
    *,
    dataset: str = typer.Option(
        ..., "--dataset", help="Bundled data set: digits, breast-cancer, diabetes (real, from scikit-learn) shapes "
        "(generated 32×32 colour images, cifar-cnn), reviews (generated texts, text-transformer) or dates (generated "
        "date translations, seq2seq-attention)."),
    sites: int = typer.Option(3, "--sites", min=1, help="Number of site folders to write."),
    out: Path = typer.Option(..., "--out", help="New (or empty) folder to write hospital_a, hospital_b, ... into."),
    partitioning: PartitionOptions,
    seed: int = typer.Option(0, "--seed", help="Seed of the split."),
) -> None:
    """Write one site folder per site from a bundled data set, in the documented site formats.

    Example: fl-sim split --dataset digits --sites 3 --dirichlet 0.5 --out ./data
    """
    from fedshield.simulations.split import write_sites

    paths = write_sites(dataset, sites, out, dirichlet=None, seed=seed, spec=partitioning.spec())
    for path in paths:
        console.print(f"wrote {path}")


@app.command()
@guarded
@with_option_groups
def run(
    *,
    training: opts.TrainingOptions,
    clients: int = typer.Option(
        10, "--clients", min=1, help="Number of virtual sites (1,000 fit on a laptop: only sampled sites are built)."),
    per_round: int = typer.Option(
        RunConfig.per_round, "--per-round", min=0,
        help="Sites sampled per round for training and evaluation (0 = every site)."),
    dataset: str | None = typer.Option(
        None, "--dataset", help="Bundled data set (default: digits for digits-cnn and dcgan, breast-cancer for "
        "tabular, shapes for cifar-cnn and transfer-mobilenet, reviews for text-transformer, dates for "
        "seq2seq-attention)."),
    partitioning: PartitionOptions,
    augment: int = typer.Option(
        0, "--augment", min=0, help="Image data: examples per real one given to sites (1 = none; 0 = automatic: "
        "enough for ~16 per site, e.g. 1,000 digit sites)."),
    test_fraction: float = typer.Option(
        0.2, "--test-fraction", help="Share of the real examples held out of every site as the server's central "
        "test set (0 = none: the sites hold every example, as `fl-sim split` deals them)."),
    trusted_examples: str = typer.Option(
        "auto", "--trusted-examples", help="Give the coordinator this many of the held-out examples (stratified, "
        "taken out of the central test set) as trusted data: the direction test then compares every site's update "
        "with the coordinator's own update on them, and sign-flipping sites are refused (see --trusted-data). auto: "
        "ten per class, at most a third of the held-out share, for classifiers under DP without --secagg (digits: "
        "100 of 360); 0: none, the sites' updates are checked for shape, values, counts and norm only."),
    epsilon: float = typer.Option(RunConfig.epsilon, "--epsilon", help="Each site's ε budget (sample-level DP-SGD)."),
    delta: float = typer.Option(RunConfig.delta, "--delta", help="δ; 0 picks min(1e-5, 1/(10·N)) per site."),
    max_grad_norm: opts.MaxGradNorm = RunConfig.max_grad_norm,
    accountant: str = typer.Option(RunConfig.accountant, "--accountant",
                                   help="Privacy accountant: rdp or prv (Opacus)."),
    central: opts.CentralDpOptions,
    secure_aggregation: opts.SecAggOptions,
    no_dp: bool = typer.Option(
        False, "--no-dp", help="Train WITHOUT differential privacy (explicit opt-out, recorded in results)."),
    site_metrics: str = typer.Option(
        RunConfig.site_metrics, "--site-metrics", help="What the virtual sites' replies say about their data: dp "
        "(losses, metrics, counts as Gaussian releases inside each site's ε) or exact (outside ε). "
        "The central test set's figures are exact either way."),
    attack: str = typer.Option(
        "", "--attack", help="Robustness experiment: KIND:SITES makes the first SITES virtual sites attack; KIND is "
        "nan, scale (update x1000), sign-flip or random (noise of the update's norm)."),
    run_dir: Path | None = typer.Option(None, "--run-dir", help="Output folder (default ./runs/sim-<time>)."),
    state_dir: Path | None = typer.Option(
        None, "--state-dir", help="Folder of the virtual sites' privacy ledgers (default RUN_DIR/site-state); reuse "
        "it across runs and their ε composes, as a real site's does."),
    cpus_per_client: float = typer.Option(
        1.0, "--cpus-per-client", help="Ray CPUs per virtual site (sites trained at once = CPUs / this)."),
    gpus_per_client: float = typer.Option(
        0.0, "--gpus-per-client", help="Ray GPU fraction per virtual site (e.g. 0.25: four sites share a GPU)."),
    ray_address: str | None = typer.Option(
        None, "--ray-address", help="Join an existing Ray cluster: auto (the one `ray start` runs here) or "
        "HOST:PORT of its head."),
    device: str = typer.Option(RunConfig.device, "--device", help="auto, cpu or cuda."),
    no_plots: bool = typer.Option(
        False, "--no-plots", help="Skip the PNG plots and summary.md (`fl-sim report` draws them later)."),
    track: opts.Track = None,
    json_out: opts.JsonOut = False,
    debug: opts.Debug = False,
) -> None:
    """Simulate a federation of --clients sites on this machine; write results.json, plots and summary.md.

    Examples:
      fl-sim run --task digits-cnn --clients 10 --rounds 5 --dirichlet 0.5
      fl-sim run --task digits-cnn --clients 1000 --per-round 50 --rounds 20 --dirichlet 0.3 --epsilon 3
    """
    set_debug(debug)
    from fedshield.common.run_tracking import open_run_tracking
    from fedshield.common.track_spec import parse_track_specs
    from fedshield.simulations.experiment import plan_simulation, prepare_sites, simulate

    # every flag is checked before torch, Flower or Ray is imported: a typo costs well under a second
    track_specs = parse_track_specs(track)
    spec = partitioning.spec()
    plan = plan_simulation(training, central, secure_aggregation, spec, clients=clients, per_round=per_round,
                           dataset=dataset, test_fraction=test_fraction, augment=augment, dp=not no_dp,
                           epsilon=epsilon, delta=delta, max_grad_norm=max_grad_norm, accountant=accountant,
                           site_metrics=site_metrics, device=device, run_dir=run_dir, state_dir=state_dir,
                           ray_address=ray_address, attack=attack, trusted_examples=trusted_examples)
    from fedshield.simulations.partition_view import partition_table
    from fedshield.simulations.runner import SimulationResources

    if no_dp:
        warn_loudly("--no-dp: sites train WITHOUT differential privacy; recorded in results.json")
    elif site_metrics == "exact":
        warn_loudly("--site-metrics exact: the virtual sites report EXACT losses, metrics and counts, outside their ε")
    with open_run_tracking(track_specs, plan.folder, on_warning=warn_loudly) as tracking:
        prepared = prepare_sites(plan)
        console.print(partition_table(prepared, spec.describe()))
        if prepared.trusted_examples:
            console.print(f"coordinator's trusted examples: {prepared.trusted_examples} held-out examples, not tested "
                          "on; every update's direction is checked against its own update on them")
        elif not plan.cfg.trusted_data and not plan.cfg.secagg and plan.cfg.min_update_cosine == "off":
            why = plan.trusted_note or prepared.trusted_note or "--trusted-examples 0"
            console.print(f"no trusted examples at the coordinator ({why}): sign-flipped updates are not refused "
                          "unless --min-update-cosine is set")
        sampled = f"{per_round} per round" if per_round else "all every round"
        privacy = f"DP-SGD ε≤{epsilon:g} per site" if not no_dp else "NO DP"
        console.print(f"simulating {clients} sites ({sampled}) of {plan.dataset} for {training.task}"
                      f"{model_note(training.model, plan.cfg.model)}, {training.rounds} rounds, {privacy} → "
                      f"{plan.folder}")
        doc = simulate(plan, SimulationResources(cpus_per_client, gpus_per_client, ray_address, debug),
                       on_round=tracking.after(lambda doc, entry: console.print(round_line(doc, entry))),
                       report=not no_plots)
    if json_out:
        import json

        console.print_json(json.dumps(doc))
    else:
        console.print(summary_table(doc))
        results = f"results: {plan.folder / 'results.json'}"
        console.print(results + ("" if no_plots else f"; report: {plan.folder / 'summary.md'}"))


@app.command()
@guarded
def sweep(
    task: opts.Task = RunConfig.task,
    clients: int = typer.Option(10, "--clients", min=1, help="Virtual sites in every cell."),
    rounds: opts.Rounds = RunConfig.rounds,
    epsilon: str = typer.Option("1,3,8,inf", "--epsilon", help="Comma-separated ε per site; inf = no DP."),
    dirichlet: str = typer.Option("iid", "--dirichlet", help="Comma-separated Dirichlet α label skews; iid = no skew."),
    per_round: str = typer.Option("0", "--per-round", help="Comma-separated sites per round (0 = every site)."),
    strategy: str = typer.Option("fedavg", "--strategy", help="Comma-separated strategies (see fl-sim run --help)."),
    seeds: int = typer.Option(1, "--seeds", min=1, help="Seeds per setting (0, 1, ...): the error bars."),
    out: Path | None = typer.Option(
        None, "--out", help="Sweep folder; rerun with the same one to resume (default ./runs/sweep-<time>)."),
    dataset: str | None = typer.Option(None, "--dataset", help="Bundled data set (default: the task's)."),
    local_epochs: opts.LocalEpochs = RunConfig.local_epochs,
    batch_size: opts.BatchSize = RunConfig.batch_size,
    lr: opts.LearningRate = None,
    momentum: opts.Momentum = RunConfig.momentum,
    track: opts.Track = None,
    debug: opts.Debug = False,
) -> None:
    """Run every combination of the listed values as one simulated federation; resumable; one CSV and a plot.

    Example: fl-sim sweep --task digits-cnn --clients 20 --epsilon 0.5,1,3,8,inf --dirichlet 0.1,1.0 --seeds 3
    """
    set_debug(debug)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from fedshield.common.track_spec import parse_track_specs
    from fedshield.simulations import sweep as sw
    from fedshield.tasks.registry import check_task_name

    track_specs = parse_track_specs(track)
    check_task_name(task)
    fixed = {"--local-epochs": str(local_epochs), "--batch-size": str(batch_size)}
    if dataset:
        fixed["--dataset"] = dataset
    if lr is not None:
        fixed["--lr"] = str(lr)
    if momentum:
        fixed["--momentum"] = str(momentum)
    spec = sw.SweepSpec(task=task, clients=clients, rounds=rounds, epsilons=sw.parse_list("--epsilon", epsilon, float),
                        partitions=["iid" if p.lower() == "iid" else p
                                    for p in sw.parse_list("--dirichlet", dirichlet, str)],
                        per_round=sw.parse_list("--per-round", per_round, int),
                        strategies=sw.parse_list("--strategy", strategy, str), seeds=seeds, fixed=fixed).validate()
    from fedshield.strategies.registry import strategy_names

    unknown = [name for name in spec.strategies if name not in strategy_names()]
    if unknown:
        raise ConfigError(f"--strategy {unknown[0]!r} is unknown; choose from: {', '.join(strategy_names())}")
    folder = out or Path("runs") / time.strftime("sweep-%Y%m%d-%H%M%S")
    sw.open_sweep(spec, folder)
    cells = spec.cells()
    todo = [c for c in cells if not sw.cell_finished(folder, c)]
    console.print(f"sweep {folder}: {len(cells)} cells, {len(cells) - len(todo)} already finished, {len(todo)} to run")
    errors: dict[str, str] = {}
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        bar = progress.add_task("cells", total=len(cells), completed=len(cells) - len(todo))
        for cell in todo:
            progress.update(bar, description=cell.key)
            ok, error = sw.run_cell(spec, folder, cell)
            sw.track_cell(track_specs, folder, cell, on_warning=warn_loudly)
            row = sw.cell_row(folder, cell, "" if ok else error)
            if not ok:
                errors[cell.key] = error
            figure = f"{row['metric']} {row['central']:.4f}" if ok and row.get("central") is not None else error
            progress.console.print(f"{'done' if ok else 'FAILED'} {cell.key}: {figure}")
            sw.write_table(folder, spec, errors)
            progress.advance(bar)
    for path in sw.report_sweep(folder, errors):
        console.print(f"wrote {path}")
    if errors:
        raise sw.SweepIncomplete(f"{len(errors)} of {len(cells)} cells failed (first: {next(iter(errors.values()))}); "
                                 f"logs in {folder / sw.CELLS_DIR}; rerun the same command to retry them")


@app.command()
@guarded
def report(
    folder: Path = typer.Argument(
        ..., help="A run folder (fl-sim run --run-dir) or a sweep folder (fl-sim sweep --out)."),
) -> None:
    """Redraw the plots and summary.md of a finished run or sweep from its result files.

    Example: fl-sim report ./runs/sim-20261123-101500
    """
    from fedshield.simulations.report import report_run
    from fedshield.simulations.sweep import is_sweep, report_sweep

    written = report_sweep(folder) if is_sweep(folder) else report_run(folder)
    for path in written:
        console.print(f"wrote {path}")


@app.command()
@guarded
def tasks(
    json_out: bool = typer.Option(False, "--json", help="Machine-readable: the tasks as a JSON list, nothing else on "
                                  "stdout."),
) -> None:
    """List installed tasks (built-in and third-party plugins): name, data format, metrics."""
    from fedshield.tasks.registry import task_catalogue

    if json_out:
        print_json([{"name": name, "builtin": builtin, "summary": summary, "data": data_format,
                     "metrics": list(metrics)} for name, builtin, summary, data_format, metrics in task_catalogue()])
        return
    print_tasks(task_catalogue())


def main() -> None:
    """The ``fl-sim`` console script."""
    app()


if __name__ == "__main__":
    main()
