"""Run a federation on Flower's simulation engine (Ray backend) with the deployment apps.

The ServerApp and ClientApp are the very objects deployment runs; the simulation only differs in
where sites find their data (``<run-dir>/data/site_NNNN``, written by the partitioner) and in that the
ServerApp can also evaluate the pooled validation data (the centralized-equivalent figure).
Flower's in-process ``run_simulation`` is deprecated in 1.4x but is the only engine entry point that
runs without a background SuperLink process; it is used as Flower's own docs show.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedshield.common.atomic_io import read_json
from fedshield.common.errors import ConfigError, FedShieldError
from fedshield.common.flower_env import silence_flower
from fedshield.common.run_config import RunConfig

silence_flower()


@dataclass(frozen=True)
class SimulationResources:
    """Per-virtual-site resources for Ray: CPUs and GPU fraction; ``ray_address`` joins a cluster."""

    cpus_per_client: float = 1.0
    gpus_per_client: float = 0.0
    ray_address: str | None = None
    debug: bool = False


class SimulationFailed(FedShieldError):
    """The ServerApp ended with an error (the message says which)."""


def run(cfg: RunConfig, clients: int, resources: SimulationResources) -> dict[str, Any]:
    """Simulate ``clients`` sites; return the run's ``results.json`` document."""
    if not cfg.run_dir or not cfg.sim_data_dir:
        raise ConfigError("simulation needs run_dir and sim_data_dir")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from flwr.simulation import run_simulation

        from fedshield.client.client_app import app as client_app
        from fedshield.server.server_app import build_server_app

    init_args: dict[str, Any] = {
        "logging_level": "DEBUG" if resources.debug else "ERROR",
        "log_to_driver": resources.debug,
        "include_dashboard": False,
    }
    if resources.ray_address:
        init_args["address"] = resources.ray_address
    else:
        init_args["num_cpus"] = os.cpu_count() or 1
        init_args["num_gpus"] = _visible_gpus()
    backend_config = {
        "client_resources": {"num_cpus": resources.cpus_per_client, "num_gpus": resources.gpus_per_client},
        "init_args": init_args,
    }
    if not resources.debug:
        logging.getLogger("flwr").setLevel(logging.ERROR)
    server_app = build_server_app(cfg.to_flower(), mode="simulation")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_simulation(server_app=server_app, client_app=client_app, num_supernodes=clients,
                       backend_config=backend_config, verbose_logging=resources.debug)
    results_path = Path(cfg.run_dir) / "results.json"
    if not results_path.exists():
        raise SimulationFailed(f"{results_path}: the simulation wrote no results; rerun with --debug to see why")
    doc = read_json(results_path)
    if doc.get("status") != "finished":
        raise SimulationFailed(f"simulation {doc.get('status')}: {doc.get('error', 'see --debug output')}")
    return doc


def _visible_gpus() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # pragma: no cover
        return 0
