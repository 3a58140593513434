"""`fl-sim run`'s orchestration as a library (simulations/experiment.py): the plan checks everything and
writes nothing; dealing the data leaves no partial run folder behind when it fails."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fedshield.common.cli_options import CentralDpOptions, SecAggOptions, TrainingOptions
from fedshield.common.errors import ConfigError, FedShieldError, RunFolderError
from fedshield.simulations.experiment import SimulationPlan, plan_simulation, prepare_sites
from fedshield.simulations.partition import spec_from_flags


def _plan(tmp_path: Path, training: TrainingOptions | None = None, **changes: Any) -> SimulationPlan:
    settings: dict[str, Any] = {
        "clients": 4, "per_round": 0, "dataset": None, "test_fraction": 0.2, "augment": 1, "dp": True, "epsilon": 8.0,
        "delta": 0.0, "max_grad_norm": 1.0, "accountant": "rdp", "site_metrics": "dp", "device": "cpu",
        "run_dir": tmp_path / "run", "state_dir": None, "ray_address": None}
    settings.update(changes)
    spec = spec_from_flags(partition=None, iid=False, dirichlet=None, shards=None, quantity_skew=None)
    return plan_simulation(training or TrainingOptions(task="tabular"), CentralDpOptions(), SecAggOptions(), spec,
                           **settings)


def test_a_plan_fills_the_run_config_and_writes_nothing(tmp_path: Path) -> None:
    plan = _plan(tmp_path, per_round=2, state_dir=tmp_path / "ledgers", epsilon=3.0)
    assert plan.dataset == "breast-cancer" and plan.clients == 4  # tabular's bundled data set
    cfg = plan.cfg
    assert (cfg.min_clients, cfg.per_round, cfg.epsilon, cfg.task) == (4, 2, 3.0, "tabular")
    assert cfg.sim_data_dir == str((tmp_path / "run" / "data").resolve())
    assert cfg.sim_state_dir == str((tmp_path / "ledgers").resolve())
    assert list(tmp_path.iterdir()) == []


def test_a_plan_refuses_bad_settings(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--per-round 5 is more than --clients 4"):
        _plan(tmp_path, per_round=5)
    with pytest.raises(ConfigError, match="--epsilon must be positive"):
        _plan(tmp_path, epsilon=-1.0)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(RunFolderError, match="exists and is not empty"):
        _plan(tmp_path, run_dir=tmp_path / "full")
    with pytest.raises(ConfigError, match="--state-dir .*is a file"):
        _plan(tmp_path, state_dir=tmp_path / "full" / "x")


def test_dealing_data_that_does_not_fit_leaves_no_run_folder(tmp_path: Path) -> None:
    plan = _plan(tmp_path, clients=2000)
    with pytest.raises(FedShieldError, match="2000 sites is more than the 455 examples"):
        prepare_sites(plan)
    assert not (tmp_path / "run").exists()


def test_dealing_data_records_the_largest_site(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    prepared = prepare_sites(plan)
    assert plan.cfg.max_site_examples == prepared.largest_site > 0 and len(prepared.names) == 4
    assert (tmp_path / "run" / "partition.npz").exists()
