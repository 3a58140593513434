"""Simulation beyond one machine: a two-node Ray cluster, head and worker each in its own network namespace.

`ray start --head` runs in one namespace and `ray start --address` in another, each bound to its own address
(--node-ip-address); `fl-sim run --ray-address HEAD:PORT` from the head's namespace trains virtual sites on
both nodes, and results.json says which node trained each reply. Each node offers one CPU, so Flower's Ray
backend runs one actor per node.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from netns_hosts import Host, NetnsLab, missing_requirement

from conftest import BIN, cli_env

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(missing_requirement() is not None, reason=str(missing_requirement()))]

RAY_PORT = 6379


@pytest.fixture
def lab() -> Iterator[NetnsLab]:
    made = NetnsLab("y")
    try:
        yield made
    finally:
        made.close()  # ends the Ray processes of both nodes: they run inside the lab's namespaces


@pytest.fixture
def ray_temp() -> Iterator[Path]:
    """Ray's session folder for this test: short (Ray's socket paths must fit 107 bytes), away from /tmp/ray."""
    path = Path(f"/tmp/fsnray{os.getpid()}")
    shutil.rmtree(path, ignore_errors=True)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def ray_start(host: Host, *args: str, temp: Path) -> None:
    proc = subprocess.run(host.argv(str(BIN / "ray"), "start", "--node-ip-address", host.address, "--num-cpus", "1",
                                    "--num-gpus", "0", "--object-store-memory", str(100 * 2**20),
                                    "--disable-usage-stats", "--temp-dir", str(temp), *args),
                          env={**cli_env(), "RAY_USAGE_STATS_ENABLED": "0", "RAY_worker_niceness": "0"},
                          capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_a_simulation_uses_both_nodes_of_a_two_host_ray_cluster(tmp_path: Path, lab: NetnsLab,
                                                                   ray_temp: Path) -> None:
    head, worker = lab.add_host("head"), lab.add_host("worker")
    ray_start(head, "--head", "--port", str(RAY_PORT), "--include-dashboard=false", temp=ray_temp)
    ray_start(worker, "--address", f"{head.address}:{RAY_PORT}", temp=ray_temp)

    run_dir = tmp_path / "sim"
    sim = subprocess.run(head.argv(str(BIN / "fl-sim"), "run", "--task", "digits-cnn", "--clients", "4", "--rounds",
                                   "2", "--run-dir", str(run_dir), "--no-plots", "--ray-address",
                                   f"{head.address}:{RAY_PORT}"),
                         env=cli_env(), capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL,
                         check=False)
    assert sim.returncode == 0, sim.stdout[-3000:] + sim.stderr[-3000:]

    doc = json.loads((run_dir / "results.json").read_text())
    assert doc["status"] == "finished"
    trained = [site for rnd in doc["rounds"] if "train" in rnd for site in rnd["train"]["sites"].values()]
    assert len(trained) == 8
    # every training reply names the node that trained it: both nodes, by their own addresses
    assert {site["worker-node-ip"] for site in trained} == {head.address, worker.address}, trained
    assert len({site["worker-node"] for site in trained}) == 2
    assert doc["final"]["centralized"]["accuracy"] > 0.3
