"""One simulated federation, as ``fl-sim run`` drives it: check, deal the data to virtual sites, simulate.

:func:`plan_simulation` checks every setting and writes nothing; :func:`prepare_sites` writes the run
folder's data (partition plan, central test set) and leaves no partial folder behind on bad input;
:func:`simulate` runs the rounds on Flower's simulation engine, reporting each round as it lands in
``results.json``, and draws the report. Errors are :class:`FedShieldError` with the cause and the fix.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedshield.common.cli_options import CentralDpOptions, SecAggOptions, TrainingOptions
from fedshield.common.errors import ConfigError, RunFolderError
from fedshield.common.results_view import ResultsWatcher
from fedshield.common.run_config import RunConfig
from fedshield.simulations.attacks import Attack
from fedshield.simulations.partition import PartitionSpec
from fedshield.tasks.registry import check_task_name

if TYPE_CHECKING:  # torch, Flower and Ray load only once every flag is checked
    from fedshield.simulations.run_setup import PreparedData
    from fedshield.simulations.runner import SimulationResources

#: the bundled data set a task simulates on when ``--dataset`` is not given
DEFAULT_DATASET = {"digits-cnn": "digits", "tabular": "breast-cancer", "cifar-cnn": "shapes",
                   "text-transformer": "reviews", "transfer-mobilenet": "shapes", "dcgan": "digits",
                   "seq2seq-attention": "dates"}


@dataclass(frozen=True)
class SimulationPlan:
    """A simulation checked by :func:`plan_simulation`, nothing written yet.

    Attributes:
        cfg: the validated run config (model, initial weights and learning rate resolved by the task).
        folder: the run folder: results.json, data/, partition.npz, plots.
        dataset: the bundled data set dealt to the sites.
        clients: number of virtual sites.
        spec: how examples are dealt to sites.
        test_fraction: share of the real examples held out as the server's central test set.
        augment: image data: examples per real one given to sites (0 = automatic).
        trusted_examples: held-out examples the coordinator holds as its trusted data (``--trusted-examples``;
            0 = none; None = ``auto``: ten per class, decided once the held-out share is known).
        trusted_note: why ``auto`` gave the coordinator no trusted examples ("" when it did or was not asked).
    """

    cfg: RunConfig
    folder: Path
    dataset: str
    clients: int
    spec: PartitionSpec
    test_fraction: float
    augment: int
    trusted_examples: int | None = 0
    trusted_note: str = ""


def plan_simulation(training: TrainingOptions, central: CentralDpOptions, secagg: SecAggOptions,
                    spec: PartitionSpec, *, clients: int, per_round: int, dataset: str | None, test_fraction: float,
                    augment: int, dp: bool, epsilon: float, delta: float, max_grad_norm: float, accountant: str,
                    site_metrics: str, device: str, run_dir: Path | None, state_dir: Path | None,
                    ray_address: str | None, attack: str = "", trusted_examples: str = "0") -> SimulationPlan:
    """Check the simulation's settings, run folder, state folder and Ray cluster; write nothing.

    ``attack``: ``KIND:SITES`` attacking virtual sites (:mod:`fedshield.simulations.attacks`), for robustness
    experiments. ``dataset`` None: the task's :data:`DEFAULT_DATASET`; ``run_dir`` None: ``./runs/sim-<time>``;
    ``state_dir`` None: the virtual sites' ledgers in the run folder. Every flag is checked before
    torch, Flower or Ray is imported. Raises ``ConfigError``/``RunFolderError`` naming the flag and the fix.
    """
    check_task_name(training.task)
    data_name = dataset or DEFAULT_DATASET.get(training.task)
    if data_name is None:
        raise ConfigError(f"--dataset is required for task {training.task!r}")
    if Attack.parse(attack).sites >= clients:
        raise ConfigError(f"--attack {attack}: at least one of the --clients {clients} sites must be honest")
    trusted, trusted_note = _trusted_examples(trusted_examples, training, secagg, dp)
    if per_round > clients:
        raise ConfigError(f"--per-round {per_round} is more than --clients {clients}; sample at most every site")
    folder = run_dir or Path("runs") / time.strftime("sim-%Y%m%d-%H%M%S")
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise RunFolderError(f"--run-dir {folder}: exists and is not empty; pass a new folder")
    if state_dir is not None and state_dir.exists() and not state_dir.is_dir():
        raise ConfigError(f"--state-dir {state_dir}: is a file; pass a folder (it holds one ledger folder per site)")
    cfg = RunConfig(**training.config_fields(dp), **asdict(central), **asdict(secagg),
                    min_clients=clients, per_round=per_round, dp=dp, epsilon=epsilon, delta=delta,
                    max_grad_norm=max_grad_norm, accountant=accountant, run_dir=str(folder.resolve()),
                    sim_data_dir=str((folder / "data").resolve()),
                    sim_state_dir=str(state_dir.resolve()) if state_dir else "",
                    device=device, site_metrics=site_metrics, sim_attack=attack).validate()
    from fedshield.simulations import runner

    if ray_address:  # a socket, before the task's torch import: a wrong address costs a fraction of a second
        runner.check_ray_address(ray_address)
    # loads the task: a plugin that fails to load fails here, before anything is written
    from fedshield.tasks.run_settings import resolve_settings

    settings = resolve_settings(training.task, model=training.model, init_weights=training.init_weights,
                                lr=training.lr, dp=dp, trusted_data=training.trusted_data, seed=training.seed)
    cfg.model, cfg.init_weights, cfg.lr = settings.model, settings.init_weights, settings.lr
    cfg.trusted_data = settings.trusted_data
    cfg.validate()
    from fedshield.tasks.registry import get_task

    if trusted is None and "accuracy" not in get_task(training.task).metrics:
        # measured on classifiers only: whether a GAN's or a translator's honest updates agree with the
        # coordinator's own is not known, and an honest update that does not would sit out rounds
        trusted, trusted_note = 0, f"{training.task} is not a classifier"
    return SimulationPlan(cfg, folder, data_name, clients, spec, test_fraction, augment, trusted, trusted_note)


def _trusted_examples(text: str, training: TrainingOptions, secagg: SecAggOptions, dp: bool
                      ) -> tuple[int | None, str]:
    """``--trusted-examples``: a count (0 = none) or ``auto`` (None: ten per class of the held-out share, once it
    is known); with ``auto``, 0 and the reason where the coordinator cannot use trusted examples, or where
    they were not measured to keep every honest site in (without DP)."""
    if text.strip().lower() == "auto":
        if training.trusted_data is not None:
            return 0, ""  # --trusted-data gives the coordinator its examples
        if secagg.secagg:
            return 0, "--secagg hides single updates from the server"
        if not dp:
            # DP noise makes an honest update agree with the coordinator's by a margin the test's levels
            # describe; without it, a full digits-cnn at Dirichlet 0.5 had an honest site at cosine −0.28 in
            # round 2, as far away as a flipper
            return 0, "--no-dp: honest updates without DP noise were not measured against them"
        return None, ""
    try:
        count = int(text)
    except ValueError:
        count = -1
    if count < 0:
        raise ConfigError(f"--trusted-examples {text}: give a count of held-out examples, 0 for none, or auto")
    if count and training.trusted_data is not None:
        raise ConfigError("--trusted-examples and --trusted-data both give the coordinator trusted examples; "
                          "pass one of them")
    if count and secagg.secagg:
        raise ConfigError("--trusted-examples compares each site's update with the coordinator's own, and --secagg "
                          "hides single updates from the server: drop one of them")
    return count, ""


def prepare_sites(plan: SimulationPlan) -> PreparedData:
    """Create the run folder and deal the data set to the virtual sites (the partition's counts per site);
    sets ``plan.cfg.max_site_examples``. On any failure the run folder is removed."""
    from fedshield.simulations.run_setup import prepare_data

    plan.folder.mkdir(parents=True, exist_ok=True)
    try:
        prepared = prepare_data(plan.folder, plan.dataset, plan.clients, plan.spec, seed=plan.cfg.seed,
                                test_fraction=plan.test_fraction, augment=plan.augment,
                                trusted_examples=plan.trusted_examples)
    except BaseException:
        shutil.rmtree(plan.folder, ignore_errors=True)  # bad input leaves no partial run folder behind
        raise
    plan.cfg.max_site_examples = prepared.largest_site
    if prepared.trusted_examples:
        from fedshield.simulations.virtual_sites import TRUSTED_DIR

        plan.cfg.trusted_data = str((plan.folder / "data" / TRUSTED_DIR).resolve())
    return prepared


def simulate(plan: SimulationPlan, resources: SimulationResources, *,
             on_round: Callable[[dict[str, Any], dict[str, Any]], None], report: bool) -> dict[str, Any]:
    """Run the simulation on Flower's engine with ``resources`` (Ray CPUs and GPUs per site, cluster); the
    run's results.json document.

    ``on_round(doc, entry)`` is called once per evaluated round as results.json records it; with
    ``report``, the plots and summary.md are drawn from whatever results.json holds at the end, also
    after a failure.
    """
    from fedshield.simulations import runner

    watcher = ResultsWatcher(plan.folder / "results.json", on_round).start()
    try:
        return runner.run(plan.cfg, plan.clients, resources)
    finally:
        watcher.stop()
        if report and (plan.folder / "results.json").exists():
            from fedshield.simulations.report import report_run

            report_run(plan.folder)
