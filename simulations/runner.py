"""Run a federation on Flower's simulation engine (Ray backend) with the deployment apps.

The ServerApp and ClientApp are the very objects deployment runs; the simulation only differs in
where sites find their data (``<run-dir>/data/site_NNNN``, written by the partitioner) and in that the
ServerApp can also evaluate a central test set that no site holds (see server/central_evaluation.py).
Flower's in-process ``run_simulation`` is deprecated in 1.4x but is the only engine entry point that
runs without a background SuperLink process; it is used as Flower's own docs show.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedshield.common.atomic_io import read_json
from fedshield.common.errors import ConfigError, FedShieldError
from fedshield.common.flower_env import silence_flower
from fedshield.common.run_config import RunConfig
from fedshield.flower_ext import simulation_engine

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

        from fedshield.client.client_app import build_client_app
        from fedshield.server.server_app import build_server_app
        from fedshield.simulations.attacks import Attack, AttackingSites
        from fedshield.simulations.ray_node import RayNodeTag
        from fedshield.simulations.virtual_sites import VirtualSiteFolders

    init_args = ray_init_args(resources)
    backend_config = {
        "client_resources": {"num_cpus": resources.cpus_per_client, "num_gpus": resources.gpus_per_client},
        "init_args": init_args,
    }
    if not resources.debug:
        logging.getLogger("flwr").setLevel(logging.ERROR)
    simulation_engine.install()  # Flower polls every virtual node every 0.1 s otherwise (see simulation_engine)
    server_app = build_server_app(cfg.to_flower(), mode="simulation")
    attack = Attack.parse(cfg.sim_attack)
    innermost = (AttackingSites(attack, cfg.seed),) if attack.sites else ()
    if resources.ray_address:  # on a cluster, each training reply says which node trained it
        innermost = (RayNodeTag(), *innermost)
    client_app = build_client_app(first=(VirtualSiteFolders(cfg.sim_data_dir),), innermost=innermost)
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


# Ray starts its worker processes at niceness 15 (its `worker_niceness` setting) so that its own daemons win
# the CPU; in a simulation those workers are the virtual sites, so on a busy host every other process won
# instead (measured: a 10-site digits run beside 8 busy loops on 2 cores got no reply to its first query in
# 300 s; at niceness 0 it finished in 89 s).
WORKER_NICENESS = 0


def ray_init_args(resources: SimulationResources) -> dict[str, Any]:
    """``ray.init`` arguments: join the cluster at ``resources.ray_address``, or start a local instance.

    A local instance is always a new one, even when `ray start` runs a cluster on this machine: ray.init()
    would otherwise attach to that cluster and, given num_cpus, hang (measured: no progress in 300 s). A
    cluster's nodes keep the settings `ray start` gave them (docs/simulation.md: start them with
    ``RAY_worker_niceness=0``).
    """
    init_args: dict[str, Any] = {
        "logging_level": "DEBUG" if resources.debug else "ERROR",
        "log_to_driver": resources.debug,
        "include_dashboard": False,
    }
    if resources.ray_address:
        check_ray_address(resources.ray_address)
        init_args["address"] = resources.ray_address
        return init_args
    init_args["address"] = "local"
    init_args["num_cpus"] = os.cpu_count() or 1
    init_args["num_gpus"] = _visible_gpus()
    init_args["_system_config"] = {"worker_niceness": WORKER_NICENESS}
    return init_args


RAY_CURRENT_CLUSTER = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
RAY_DEFAULT_PORT = 6379


def check_ray_address(address: str, *, timeout: float = 3.0) -> None:
    """Fail fast, in one line, when no Ray cluster answers at ``address`` (Ray itself retries for minutes).

    ``auto`` means the cluster this machine runs (``RAY_ADDRESS`` or the one ``ray start`` recorded);
    ``host:port`` and ``ray://host:port`` are checked with a TCP connection to that port.
    """
    target = address
    if address == "auto":
        target = os.environ.get("RAY_ADDRESS", "")
        if not target and RAY_CURRENT_CLUSTER.is_file():
            target = RAY_CURRENT_CLUSTER.read_text().strip()
        if not target or target == "auto":
            raise ConfigError("--ray-address auto: no Ray cluster runs on this machine; start one with "
                              "`ray start --head`, or drop --ray-address to simulate locally")
    hostport = target.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host:
        host, port = hostport, str(RAY_DEFAULT_PORT)
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--ray-address {address}: no Ray cluster answers at {host}:{port} ({exc}); check the "
                          "head's address and that `ray start --head` runs there, or drop --ray-address") from None


def _visible_gpus() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # pragma: no cover
        return 0
