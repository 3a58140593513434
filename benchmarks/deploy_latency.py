"""Deployed vs simulated round time, side by side in one run, on loopback.

The same job three ways — digits-cnn, 3 sites (Dirichlet 0.5), 5 rounds, DP-SGD ε = 8 per site:

1. stock Flower: ``flower-superlink`` and three ``flower-supernode`` with Flower's default polling,
   running the FedShield app (only ``--disable-runtime-dependency-installation`` added, so nothing
   is downloaded);
2. FedShield: ``fl-server start`` + three ``fl-client join``;
3. ``fl-sim run`` (Flower's simulation engine).

Prints the steady round time (median of rounds 2-5, evaluate-to-evaluate), start-up time (start to
round 1 starting) and peak memory of the whole process tree, and the ratios.

    python benchmarks/deploy_latency.py          # ~8 minutes on 2 cores; run on an idle machine
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

BIN = Path(sys.executable).parent
SITES = ("hospital_a", "hospital_b", "hospital_c")


def _env() -> dict[str, str]:
    from fedshield.common.flower_env import NO_PHONE_HOME

    env = dict(os.environ)
    env.update(NO_PHONE_HOME)
    env["PATH"] = os.pathsep.join([str(BIN), env.get("PATH", "")])
    return env


class TreeMemory:
    """Peak summed RSS of the given processes and all their descendants, sampled every 0.2 s."""

    def __init__(self) -> None:
        self.roots: list[int] = []
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            total = 0
            seen: set[int] = set()
            for pid in list(self.roots):
                try:
                    root = psutil.Process(pid)
                    for proc in [root, *root.children(recursive=True)]:
                        if proc.pid not in seen:
                            seen.add(proc.pid)
                            total += proc.memory_info().rss
                except psutil.Error:
                    continue
            self.peak = max(self.peak, total)
            self._stop.wait(0.2)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak / 2**30


def steady_round_s(results: Path) -> float:
    doc = json.loads(results.read_text())
    done = {r["round"]: r["finished_at"] for r in doc["rounds"] if "finished_at" in r}
    return statistics.median(done[r] - done[r - 1] for r in range(2, max(done) + 1))


def startup_s(results: Path, t0: float) -> float:
    doc = json.loads(results.read_text())
    first = min(r["started_at"] for r in doc["rounds"])
    return first - t0


def run_fedshield(data: Path, work: Path, rounds: int, extra: list[str]) -> dict:
    port = _free_port()
    mem = TreeMemory()
    t0 = time.time()
    server = subprocess.Popen([str(BIN / "fl-server"), "start", "--task", "digits-cnn", "--rounds", str(rounds),
                               "--min-clients", "3", "--run-dir", str(work / "run"), "--insecure", "--port", str(port),
                               *extra], env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    mem.roots.append(server.pid)
    sites = [subprocess.Popen([str(BIN / "fl-client"), "join", "--data", str(data / s), "--server", f"127.0.0.1:{port}",
                               "--insecure", "--threads", "1", "--state-dir", str(work / f"st-{s}"),
                               "--connect-timeout", "120", *extra], env=_env(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL) for s in SITES]
    mem.roots += [p.pid for p in sites]
    assert server.wait(timeout=1800) == 0
    for p in sites:
        p.wait(timeout=120)
    peak = mem.stop()
    results = work / "run" / "results.json"
    return {"round_s": steady_round_s(results), "startup_s": startup_s(results, t0), "peak_gb": peak}


def run_stock_flower(data: Path, work: Path, rounds: int, extra_cfg: dict) -> dict:
    port = _free_port()
    mem = TreeMemory()
    t0 = time.time()
    work.mkdir(parents=True, exist_ok=True)
    link = subprocess.Popen([str(BIN / "flower-superlink"), "--insecure", "--port", str(port), "--database",
                             str(work / "state.db"), "--disable-runtime-dependency-installation"],
                            env=_env(), stdout=open(work / "superlink.log", "wb"),  # noqa: SIM115 - the child owns it
                            stderr=subprocess.STDOUT,
                            start_new_session=True)
    mem.roots.append(link.pid)
    nodes: list[subprocess.Popen] = []
    try:
        return _drive_stock(data, work, rounds, extra_cfg, port, mem, t0, nodes)
    finally:
        for proc in (*nodes, link):  # never leave a stock federation running behind a failed benchmark
            try:
                os.killpg(proc.pid, 15)
            except ProcessLookupError:
                pass


def _drive_stock(data: Path, work: Path, rounds: int, extra_cfg: dict, port: int, mem: TreeMemory, t0: float,
                 nodes: list) -> dict:
    from fedshield.client.supernode import node_config_arg
    from fedshield.common.run_config import RunConfig
    from fedshield.server.run_submission import submit, write_app, write_flwr_home

    for site in SITES:
        cfg = {"data-path": str(data / site), "site-name": site, "state-dir": str(work / f"st-{site}"),
               "dp": extra_cfg["dp"], "epsilon": 8.0}
        nodes.append(subprocess.Popen([str(BIN / "flower-supernode"), "--insecure", "--superlink",
                                       f"127.0.0.1:{port}", "--port", str(_free_port()), "--node-config",
                                       node_config_arg(cfg)], env=_env(), stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, start_new_session=True))
    mem.roots += [n.pid for n in nodes]
    _wait_healthy(port)
    cfg = RunConfig(task="digits-cnn", rounds=rounds, min_clients=3, lr=RunConfig.default_lr(extra_cfg["dp"]),
                    run_dir=str(work / "run"), **extra_cfg)
    app = write_app(work / "app", cfg, {"join-timeout": 0.0, "prompt-polling": False})
    home = write_flwr_home(work / ".flwr", f"127.0.0.1:{port}", root_certificates=None)
    submit(app, home)
    results = work / "run" / "results.json"
    while True:
        try:
            if json.loads(results.read_text()).get("status") in ("finished", "failed"):
                break
        except (FileNotFoundError, ValueError):
            pass
        time.sleep(0.5)
    peak = mem.stop()
    return {"round_s": steady_round_s(results), "startup_s": startup_s(results, t0), "peak_gb": peak}


def run_simulation(work: Path, rounds: int, extra: list[str]) -> dict:
    mem = TreeMemory()
    t0 = time.time()
    proc = subprocess.Popen([str(BIN / "fl-sim"), "run", "--task", "digits-cnn", "--clients", "3", "--rounds",
                             str(rounds), "--dirichlet", "0.5", "--run-dir", str(work / "sim"),
                             "--trusted-examples", "0", *extra],  # the deployed coordinator holds none either
                            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    mem.roots.append(proc.pid)
    assert proc.wait(timeout=1800) == 0
    peak = mem.stop()
    results = work / "sim" / "results.json"
    return {"round_s": steady_round_s(results), "startup_s": startup_s(results, t0), "peak_gb": peak}


def _wait_healthy(port: int, timeout: float = 120.0) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1.0):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"stock SuperLink on port {port} did not become healthy (see its superlink.log)")


def _free_port() -> int:
    from fedshield.common.net import free_port

    return free_port()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-dp", action="store_true", help="run all three without DP")
    parser.add_argument("--skip-stock", action="store_true", help="skip the stock-Flower run (slowest)")
    args = parser.parse_args()
    extra = ["--no-dp"] if args.no_dp else []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        subprocess.run([str(BIN / "fl-sim"), "split", "--dataset", "digits", "--sites", "3", "--dirichlet", "0.5",
                        "--out", str(root / "data")], check=True, env=_env(), capture_output=True)
        rows = {}
        rows["simulation (fl-sim run)"] = run_simulation(root / "sim", args.rounds, extra)
        rows["FedShield deployment"] = run_fedshield(root / "data", root / "fs", args.rounds, extra)
        if not args.skip_stock:
            rows["stock Flower deployment"] = run_stock_flower(root / "data", root / "stock", args.rounds,
                                                               {"dp": not args.no_dp})
    sim = rows["simulation (fl-sim run)"]["round_s"]
    print(f"digits-cnn, 3 sites, {args.rounds} rounds, DP {'off' if args.no_dp else 'on (ε=8)'}, loopback, "
          f"{os.cpu_count()} cores")
    print(f"{'setup':<28}{'round s':>9}{'x sim':>7}{'start-up s':>12}{'peak GB':>9}")
    for name, row in rows.items():
        print(f"{name:<28}{row['round_s']:>9.2f}{row['round_s'] / sim:>7.2f}{row['startup_s']:>12.1f}"
              f"{row['peak_gb']:>9.2f}")


if __name__ == "__main__":
    main()
